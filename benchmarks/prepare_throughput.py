"""Prepare throughput on large JPEGs against a plain single-process Pillow loop, same files, same run.

    python benchmarks/prepare_throughput.py [--images 200] [--size 224]

Makes N 4000x3000 JPEGs from the bundled real sample (upscaled, with the original's detail),
then times:
- plain:    one process, Image.open -> convert("RGB") -> resize (shorter side to --size) -> JPEG;
- prepare:  orchestrator.data.prepare with 1 and 2 worker processes (draft decoding, EXIF, hashing,
            Parquet shards, audit and folds included);
and prints images/s, the ratio per core, the second core's gain, and peak RSS of the prepare
driver and its workers for N and 2N images (each in a fresh process).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "datasets" / "isic-sample"
LARGE = (4000, 3000)


def make_large(folder: Path, count: int) -> None:
    sources = sorted(SAMPLE.glob("*/*.jpg"))
    rng = random.Random(0)
    for index in range(count):
        path = rng.choice(sources)
        big = Image.open(path).convert("RGB").resize(LARGE, Image.Resampling.BICUBIC)
        target = folder / path.parent.name
        target.mkdir(parents=True, exist_ok=True)
        big.save(target / f"{index:05d}.jpg", quality=92)


def plain_loop(files: list[Path], size: int) -> float:
    start = time.perf_counter()
    for path in files:
        image = Image.open(path).convert("RGB")
        scale = size / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        image.save(io.BytesIO(), format="JPEG", quality=95)
    return len(files) / (time.perf_counter() - start)


PREPARE_IN_CHILD = """
import json, resource, sys, time
from pathlib import Path
from orchestrator.data.prepare import prepare
source, out, size, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
start = time.perf_counter()
manifest = prepare(source, out, image_size=size, folds=2, workers=workers)
seconds = time.perf_counter() - start
print(json.dumps({"images": manifest.counts.total, "seconds": seconds,
    "driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_prepare(source: Path, out: Path, size: int, workers: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PREPARE_IN_CHILD, str(source), str(out), str(size), str(workers)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["images_per_s"] = result["images"] / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "n", Path(tmp) / "2n"
        make_large(small, args.images)
        make_large(large, 2 * args.images)
        files = sorted(small.glob("*/*.jpg"))
        plain = plain_loop(files, args.size)
        one = run_prepare(small, Path(tmp) / "out1", args.size, 1)
        two = run_prepare(small, Path(tmp) / "out2", args.size, 2)
        double = run_prepare(large, Path(tmp) / "out3", args.size, 2)
    per_core = one["images_per_s"] / plain
    second_core = two["images_per_s"] / one["images_per_s"] - 1
    print(f"{args.images} JPEGs of {LARGE[0]}x{LARGE[1]} -> shorter side {args.size}")
    print(f"plain Pillow loop, 1 process : {plain:7.1f} images/s")
    print(f"prepare, 1 worker            : {one['images_per_s']:7.1f} images/s  ({per_core:.1f}x plain)")
    print(
        f"prepare, 2 workers           : {two['images_per_s']:7.1f} images/s  (2nd core {second_core:+.0%})"
    )
    for label, result in ((f"{args.images} images", two), (f"{2 * args.images} images", double)):
        driver, worker = result["driver_rss_mb"], result["worker_rss_mb"]
        print(f"peak RSS, {label:>11}: driver {driver:.0f} MB, largest worker {worker:.0f} MB")


if __name__ == "__main__":
    main()
