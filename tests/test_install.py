"""`tools/install.py`, which `make` sets `.venv/` up with: uv, told where pip finds packages here,
and pip itself where uv cannot be had."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, load_script, make_wheel

SCRIPT = ROOT / "tools" / "install.py"
install = load_script(SCRIPT)

LISTING = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.find-links='/opt/wheels'
:env:.index-url=''
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='\\nfile:///opt/a/simple\\nfile:///opt/b/simple'
global.find-links='/elsewhere'
install.index-url='https://mirror.example/simple'
global.index-url='https://pypi.org/simple'
"""


def test_pips_sources_become_uvs_options_as_pip_applies_them():
    settings = install.pip_settings(LISTING)
    assert settings["find-links"] == "/opt/wheels"  # the environment's, not the file's
    # [install] over [global]; the environment's empty value is no value, as for pip
    assert settings["index-url"] == "https://mirror.example/simple"
    assert install.uv_arguments(settings) == [
        *("--index-url", "https://mirror.example/simple"),
        # a value on several lines of pip.conf: one source a line
        *("--extra-index-url", "file:///opt/a/simple", "--extra-index-url", "file:///opt/b/simple"),
        *("--find-links", "/opt/wheels"),
        *("--constraint", "/etc/xdg/pip/constraints.txt"),
        *("--build-constraint", "/etc/xdg/pip/constraints.txt"),
    ]
    assert "--no-index" in install.uv_arguments(install.pip_settings(":env:.no-index='yes'\n"))


def test_a_pip_setting_uv_would_not_honour_leaves_the_install_to_pip():
    assert install.uv_arguments(install.pip_settings("global.trusted-host='mirror.example'\n")) is None
    assert install.uv_arguments(install.pip_settings("install.no-binary=':all:'\n")) is None


def wheel_folder(tmp_path) -> Path:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "tinypkg", {"tinypkg/__init__.py": b"ANSWER = 42\n"})
    return wheels


def install_from(wheels: Path) -> tuple[subprocess.CompletedProcess, str]:
    """`tools/install.py tinypkg` run by a fresh virtual environment's Python, with no index: only
    the folder `wheels`; that Python."""
    subprocess.run([sys.executable, "-m", "venv", str(wheels.parent / "venv")], check=True)
    python = str(wheels.parent / "venv" / "bin" / "python")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
    done = subprocess.run([python, str(SCRIPT), "tinypkg"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    answer = subprocess.run(
        [python, "-c", "import tinypkg; print(tinypkg.ANSWER)"], capture_output=True, text=True
    )
    assert answer.stdout.strip() == "42", answer.stderr
    return done, python


def test_uv_installs_the_packages_from_pips_sources_and_is_not_left_behind(tmp_path):
    wheels = wheel_folder(tmp_path)
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels)]
    if subprocess.run([*download, install.UV], capture_output=True).returncode != 0:
        pytest.skip(f"{install.UV} cannot be fetched from a package index here")
    done, python = install_from(wheels)
    assert "with pip" not in done.stderr, done.stderr  # uv did it
    listed = subprocess.run([python, "-m", "pip", "list"], capture_output=True, text=True).stdout
    assert "tinypkg" in listed and "uv " not in listed  # uv ran from a folder of its own


def test_without_uv_to_be_had_pip_installs_the_packages(tmp_path):
    done, _ = install_from(wheel_folder(tmp_path))  # uv is nowhere to be found
    assert "installing the packages with pip" in done.stderr
