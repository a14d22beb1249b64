"""The offline GPU bundle's own steps, on small wheels made here: no package index, no GPU."""

import hashlib
import zipfile
from pathlib import Path

import pytest

from tests.helpers import EXECUTABLE, ROOT, load_script, make_wheel

SCRIPT = ROOT / "benchmarks" / "gpu" / "offline_bundle.py"
offline_bundle = load_script(SCRIPT)


def test_repacked_ray_wheel_loses_its_jar_and_keeps_its_binaries_executable(tmp_path):
    wheel = make_wheel(
        tmp_path,
        "ray",
        {"ray/__init__.py": b"", "ray/core/raylet": b"\x7fELF" * 100, "ray/jars/ray_dist.jar": b"PK" * 100},
        executable="ray/core/raylet",
    )
    offline_bundle.repack(wheel)
    with zipfile.ZipFile(wheel) as repacked:
        names = repacked.namelist()
        record = repacked.read("ray-0.1.dist-info/RECORD").decode()
        assert repacked.testzip() is None
        assert {entry.compress_type for entry in repacked.infolist()} == {zipfile.ZIP_STORED}
        assert repacked.getinfo("ray/core/raylet").external_attr == EXECUTABLE
    assert "ray/core/raylet" in names and not [name for name in names if name.startswith("ray/jars/")]
    assert "ray/core/raylet" in record and "jars" not in record


def bundle_with(tmp_path: Path, digest_of=lambda data: hashlib.sha256(data).hexdigest()) -> Path:
    bundle = tmp_path / "isic-gpu-bundle-cp3x"
    (bundle / "wheels").mkdir(parents=True)
    wheel = make_wheel(bundle / "wheels", "tinypkg", {"tinypkg/__init__.py": b"ANSWER = 42\n"})
    (bundle / "SHA256SUMS").write_text(f"{digest_of(wheel.read_bytes())}  wheels/{wheel.name}\n")
    return bundle


def test_bundle_installs_once_into_its_own_folder(tmp_path):
    bundle = bundle_with(tmp_path)
    site = offline_bundle.installed_site(bundle)
    assert site == bundle / "site" and (site / "tinypkg" / "__init__.py").read_text() == "ANSWER = 42\n"
    assert not (bundle / "site.partial").exists()
    (site / "kept").touch()  # a second run finds the install whole and leaves it
    assert offline_bundle.installed_site(bundle) == site and (site / "kept").exists()


def test_a_damaged_wheel_is_named_and_nothing_is_installed(tmp_path):
    bundle = bundle_with(tmp_path, digest_of=lambda data: hashlib.sha256(data + b"!").hexdigest())
    with pytest.raises(SystemExit, match="tinypkg-0.1-py3-none-any.whl is damaged"):
        offline_bundle.installed_site(bundle)
    assert not (bundle / "site").exists()


def test_have_lists_give_names_and_pins(tmp_path):
    have = tmp_path / "have.txt"
    have.write_text("NumPy==2.5.2\nopencv_python_headless==5.0.0\ntimm\n# comment\n-e .\n")
    pins = {"numpy": "2.5.2", "opencv-python-headless": "5.0.0", "timm": None}
    assert offline_bundle.read_have(have) == pins
