"""Mistakes a user will make: one line on stderr, exit status 2, no traceback, within seconds."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, spec_dict, write_yaml


def run(*args, env=None, cwd=ROOT):
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    return done, time.monotonic() - start


def assert_user_error(done, *expected):
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in lines[-1]


def write_spec(tmp_path: Path, source="datasets/isic-sample", backbone="test_efficientnet", weights="none"):
    raw = spec_dict(
        data={"source": str(source)},
        search={"backbone": backbone},
        train={"weights": weights},
        storage=str(tmp_path / "runs"),
    )
    return write_yaml(tmp_path / "spec.yaml", raw)


def test_spec_file_that_does_not_exist(tmp_path):
    done, _ = run("orchestrator.sweep", str(tmp_path / "missing.yaml"))
    assert_user_error(done, "spec file not found", "missing.yaml")


def test_unknown_key(tmp_path):
    path = write_spec(tmp_path)
    path.write_text(path.read_text() + "schedule: {type: asha}\n")
    done, _ = run("orchestrator.sweep", str(path))
    assert_user_error(done, "unknown key 'schedule'", "scheduler")


def test_wrong_type(tmp_path):
    path = write_spec(tmp_path)
    path.write_text(path.read_text().replace("epochs: 1", "epochs: many"))
    done, _ = run("orchestrator.sweep", str(path))
    assert_user_error(done, "'train.epochs'", "'many'")


def test_unknown_backbone_suggests_names(tmp_path):
    done, _ = run("orchestrator.sweep", str(write_spec(tmp_path, backbone="resnet5O")))
    assert_user_error(done, "unknown backbone 'resnet5O'", "resnet50")


def test_data_path_with_no_images(tmp_path):
    (tmp_path / "empty" / "benign").mkdir(parents=True)
    done, _ = run("orchestrator.sweep", str(write_spec(tmp_path, source=tmp_path / "empty")))
    assert_user_error(done, "no usable images", "benign/ and malignant/")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_hub_unreachable_fails_within_seconds(tmp_path, env):
    # against the same start-up ending at once in the same check (an unknown backbone), so that a
    # loaded machine's slower interpreter and imports (torch, timm) do not count: the check itself
    # takes well under a second, not a timeout. It runs first: the first of two runs also pays for
    # reading the imports from a cold disk.
    (tmp_path / "typo").mkdir()
    _, start_up = run("orchestrator.sweep", str(write_spec(tmp_path / "typo", backbone="resnet5O")), env=env)
    spec = write_spec(tmp_path, backbone="resnet18", weights="hub")
    done, seconds = run("orchestrator.sweep", str(spec), env=env)
    assert_user_error(done, "cannot reach the model hub", "file:PATH", "'none'")
    assert seconds - start_up < 15, (seconds, start_up)


def test_prepare_cli_error(tmp_path):
    done, _ = run("orchestrator.data.prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert_user_error(done, "data source not found")


@pytest.mark.parametrize("command", ["orchestrator.evaluate", "orchestrator.predict"])
def test_evaluate_and_predict_name_an_argument_that_is_no_checkpoint(tmp_path, command):
    done, _ = run(command, str(tmp_path), "datasets/isic-sample")
    assert_user_error(done, f"{tmp_path} is not a checkpoint", "checkpoints first")
