"""The GPU throughput run, carried to an offline GPU machine that has PyTorch but not Ray.

Here, with a package index at hand (the project's environment):

    python benchmarks/gpu/offline_bundle.py build --have box-packages.txt [--python 3.12]

`--have` is what the GPU machine already holds: the output of `python3 -m pip list --format=freeze`
run there (a few KB to carry out). The bundle holds the rest of what the sweep imports, as wheels
for that Python on x86-64 Linux (Ray without its Java jar, which Python never loads), and this
project's source with its bundled image sample: one .tar.xz file (the wheels inside are stored
uncompressed, so xz compresses them), refused when over `--limit-mib`.

There, with no network:

    tar xf isic-gpu-bundle-cp312.tar.xz
    python3 isic-gpu-bundle-cp312/project/benchmarks/gpu/offline_bundle.py run [-- GPU_THROUGHPUT_ARGS]

installs the wheels into the bundle's own folder (the machine's Python environment is left as it
is), checks that everything the sweep imports is there, and runs `benchmarks/gpu_throughput.py`:
a short ResNet-50 sweep (2 trials, bf16, channels-last) through `orchestrator.sweep` and the bare
loop on the same card. It prints images/s both ways, GPU utilisation and their ratio, last.
Only Python's standard library is used until the wheels are installed.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

# What the sweep imports beyond PyTorch, torchvision and timm (the GPU machine has those), in the
# versions this project's environment holds (`constraints`). Not the project's full dependency list:
# Ray's dashboard extras ("default"), boto3 and the test tools are not needed for a local sweep.
REQUIREMENTS = [
    "ray[data,train,tune]",
    "albumentations",
    "tensorboardX",
    "pydantic",
    "jsonschema",
    "pyyaml",
    "pandas",
    "pyarrow",
    "numpy",
    "scipy",
    "scikit-learn",
    "matplotlib",
    "jinja2",
    "tqdm",
    "safetensors",
    "pillow",
]
# imported by `run` before the benchmark, so that a missing package is named in seconds
IMPORTS = ["torch", "timm", "ray.train.torch", "ray.tune", "ray.data", "albumentations"]
IMPORTS += ["orchestrator.driver"]  # the sweep's whole driver: `orchestrator.sweep` imports it late
PROVIDED = {"torch", "torchvision", "timm"}  # never bundled: the machine's own build for its GPU
RAY_JAR = re.compile(r"^ray/jars/")
PROJECT_FILES = ["orchestrator", "trainables", "benchmarks", "datasets/isic-sample", "pyproject.toml"]
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in (17, 24, 27, 28)] + ["manylinux2014_x86_64"]
ROOT = Path(__file__).resolve().parents[2]  # the project: here a checkout, there the bundle's copy


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_have(path: Path) -> dict[str, str | None]:
    """Package name -> pinned version (None when the line has none), from `pip list
    --format=freeze` (or `pip freeze`, or one name a line)."""
    have: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            have[canonical(re.split(r"[<>~! @;\[]", name, maxsplit=1)[0])] = version.strip() or None
    return have


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def target_args(python: str) -> list[str]:
    version = python.replace(".", "")
    args = [
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        "--abi",
        f"cp{version}",
    ]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def constraints(folder: Path, have: dict[str, str | None]) -> Path:
    """The versions to resolve to: the GPU machine's where `--have` pins them (the bundled wheels run
    beside those), else this environment's, so the bundle carries what the project is tested with."""
    pinned = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    pinned.update({name: version for name, version in have.items() if version and "+" not in version})
    path = folder / "constraints.txt"
    path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pinned.items())))
    return path


def resolve(python: str, have: dict[str, str | None], folder: Path) -> dict[str, str]:
    """Every package REQUIREMENTS need on the target Python, name -> version (nothing installed)."""
    report = folder / "report.json"
    pip(
        "install", "--quiet", "--dry-run", "--ignore-installed", "--target", str(folder / "unused"),
        "--report", str(report), "-c", str(constraints(folder, have)), *target_args(python), *REQUIREMENTS,
    )  # fmt: skip
    installs = json.loads(report.read_text())["install"]
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def repack(wheel: Path) -> None:
    """Rewrite a wheel uncompressed (the bundle's xz compresses it far better than zip's deflate),
    and Ray's without `ray/jars/` (Java workers only) and the RECORD lines that list it."""
    repacked = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(repacked, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            if RAY_JAR.match(info.filename):
                continue
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                kept = [line for line in data.decode().splitlines() if not RAY_JAR.match(line)]
                data = ("\n".join(kept) + "\n").encode()
            stored = copy.copy(info)  # name, time and permissions kept
            stored.compress_type = zipfile.ZIP_STORED
            out.writestr(stored, data)
    repacked.replace(wheel)


def project_files() -> list[str]:
    """The project's files as the checkout holds them now: tracked or new, not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *PROJECT_FILES],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return [path for path in listed if (ROOT / path).is_file()]


def build(args: argparse.Namespace) -> int:
    have = read_have(args.have)
    name = f"isic-gpu-bundle-cp{args.python.replace('.', '')}"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        resolved = resolve(args.python, have, folder)
        needed = {pkg: version for pkg, version in resolved.items() if pkg not in have.keys() | PROVIDED}
        wheels = folder / name / "wheels"
        pip(
            "download", "--quiet", "--no-deps", "-d", str(wheels), *target_args(args.python),
            *(f"{pkg}=={version}" for pkg, version in sorted(needed.items())),
        )  # fmt: skip
        sizes = {wheel.name: wheel.stat().st_size for wheel in wheels.glob("*.whl")}
        for wheel in wheels.glob("*.whl"):
            repack(wheel)
        for path in project_files():
            (folder / name / "project" / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, folder / name / "project" / path)
        sums = {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in sorted(wheels.glob("*.whl"))}
        (folder / name / "SHA256SUMS").write_text("".join(f"{s}  wheels/{n}\n" for n, s in sums.items()))
        bundle = args.out / f"{name}.tar.xz"
        with tarfile.open(bundle, "w:xz", preset=6) as tar:
            tar.add(folder / name, arcname=name)
        for wheel, size in sorted(sizes.items(), key=lambda item: -item[1]):
            print(f"{size / 2**20:8.1f} MiB  {wheel} (as published)")
    mib = bundle.stat().st_size / 2**20
    print(f"{bundle}: {mib:.1f} MiB, {len(sums)} wheels for Python {args.python} beside what --have lists")
    if mib > args.limit_mib:
        bundle.unlink()
        print(f"removed: over the {args.limit_mib} MiB limit (--limit-mib)", file=sys.stderr)
        return 1
    return 0


def installed_site(bundle: Path) -> Path:
    """The bundle's wheels installed into `bundle/site`, once: checked against SHA256SUMS, installed
    into a temporary folder and renamed, so an install cut short is never taken for a whole one."""
    sums = (bundle / "SHA256SUMS").read_text()
    site, stamp = bundle / "site", hashlib.sha256(sums.encode()).hexdigest()
    if (site / ".installed").is_file() and (site / ".installed").read_text() == stamp:
        return site
    wheels = []
    for line in sums.splitlines():
        digest, name = line.split(maxsplit=1)
        if hashlib.sha256((bundle / name).read_bytes()).hexdigest() != digest:
            raise SystemExit(f"{bundle / name} is damaged (its SHA-256 differs): copy the bundle again")
        wheels.append(str(bundle / name))
    partial = bundle / "site.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(site, ignore_errors=True)
    pip("install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--target", str(partial), *wheels)
    (partial / ".installed").write_text(stamp)
    partial.rename(site)
    return site


def run(args: argparse.Namespace) -> int:
    bundle = ROOT.parent
    if not (bundle / "SHA256SUMS").is_file():
        raise SystemExit(f"no SHA256SUMS beside {ROOT}: run this from an unpacked bundle (see --help)")
    built_for = bundle.name.rpartition("-cp")[2]
    running = f"{sys.version_info.major}{sys.version_info.minor}"
    if built_for != running:
        raise SystemExit(f"this bundle holds wheels for Python cp{built_for}, not {sys.version.split()[0]}")
    started = time.perf_counter()
    site = installed_site(bundle)
    print(f"wheels installed in {site} ({time.perf_counter() - started:.1f} s)", flush=True)
    paths = [str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]
    # offline: albumentations would look up its latest release at import (the project's own
    # imports set this too; the import check below comes first)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(path for path in paths if path), NO_ALBUMENTATIONS_UPDATE="1"
    )
    check = "import " + ", ".join(IMPORTS)
    if subprocess.run([sys.executable, "-c", check], env=env).returncode:
        print("a package the sweep imports is missing (above): build the bundle again with a --have "
              "list that leaves it out", file=sys.stderr)  # fmt: skip
        return 2
    benchmark = [sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), *args.benchmark_args]
    return subprocess.run(benchmark, env=env, cwd=ROOT).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    make = verbs.add_parser("build", help="build the bundle here (needs a package index)")
    make.add_argument("--have", type=Path, required=True, help="the GPU machine's `pip list --format=freeze`")
    make.add_argument("--python", default="3.12", help="the GPU machine's Python version (default 3.12)")
    make.add_argument("--out", type=Path, default=Path("dist"), help="folder for the tar file")
    make.add_argument("--limit-mib", type=float, default=64, help="largest bundle that can travel")
    go = verbs.add_parser("run", help="on the GPU machine: install the bundle offline and run the benchmark")
    go.add_argument("benchmark_args", nargs=argparse.REMAINDER, help="passed on to gpu_throughput.py")
    args = parser.parse_args()
    if args.verb == "run" and args.benchmark_args[:1] == ["--"]:
        args.benchmark_args = args.benchmark_args[1:]
    sys.exit(build(args) if args.verb == "build" else run(args))


if __name__ == "__main__":
    main()
