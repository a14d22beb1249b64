"""The driver/worker split: `trainables/` (what runs in Ray workers and what a checkpoint needs)
imports nothing from `orchestrator/` (the driver)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import trainables
from tests.helpers import SAMPLE, spec_dict, write_yaml

BLOCK_ORCHESTRATOR = """
import importlib, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "orchestrator" or name.startswith("orchestrator."):
            raise ImportError(f"trainables imported {name}")

sys.meta_path.insert(0, Block())
for name in sys.argv[1:]:
    importlib.import_module(name)
"""


def test_trainables_import_without_orchestrator():
    modules = [f"trainables.{m.name}" for m in pkgutil.iter_modules(trainables.__path__)]
    assert "trainables.train_loop" in modules and "trainables.checkpoint" in modules
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_ORCHESTRATOR, *modules], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_block_catches_an_orchestrator_import():
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_ORCHESTRATOR, "orchestrator.errors"], capture_output=True, text=True
    )
    assert done.returncode != 0 and "trainables imported orchestrator" in done.stderr


def test_every_console_script_loads_and_runs():
    from importlib.metadata import entry_points

    scripts = {e.name: e for e in entry_points(group="console_scripts") if e.name.startswith("isic-")}
    assert {"isic-sweep", "isic-prepare", "isic-evaluate", "isic-predict"} <= set(scripts)
    assert all(callable(entry.load()) for entry in scripts.values())
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from orchestrator.data.prepare import cli; sys.argv[1:] = ['--help']; cli()",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: isic-prepare"), done.stderr[-2000:]


def test_every_test_has_a_time_limit_that_fits_it(request):
    """A hang fails its own test (pytest-timeout, signal method) instead of eating CI's budget."""
    from tests.conftest import FAST_LIMIT_S, SLOW_LIMIT_S

    assert request.config.pluginmanager.hasplugin("timeout")
    for item in request.session.items:
        limit = item.get_closest_marker("timeout").args[0]
        assert limit == (SLOW_LIMIT_S if item.get_closest_marker("slow") else FAST_LIMIT_S), item.nodeid


def test_a_trials_actor_imports_neither_timm_nor_the_train_loop():
    """A trial's actor only builds the trial's configuration and passes the train loop on to Ray
    Train: timm (with torchvision) and the loop are imported by the workers alone, seconds a trial."""
    check = (
        "import sys\n"
        "import orchestrator.tuning.trial\n"
        "heavy = ('timm', 'torchvision', 'albumentations', 'trainables.backbones', 'trainables.train_loop')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_command_line_reads_the_spec_before_importing_ray_torch_or_timm(tmp_path):
    """A typo in the spec is reported in about a second, not after ten seconds of imports."""
    spec = write_yaml(tmp_path / "typo.yaml", spec_dict(schedule={"type": "asha"}))
    check = (
        "import sys\n"
        "from orchestrator.errors import UserError\n"
        "from orchestrator.sweep import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except UserError as err:\n"
        "    print(err)\n"
        "print(sorted(name for name in ('ray', 'torch', 'timm', 'sklearn') if name in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(spec)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    error, imported = done.stdout.strip().splitlines()[-2:]
    assert "unknown key 'schedule'" in error
    assert imported == "[]"


DATA_WORKER = """
import pickle, sys
from pathlib import Path
from trainables.transforms import Preprocess

data = [path.read_bytes() for path in sorted(Path(sys.argv[1]).glob("*.jpg"))[:2]]
for step in (Preprocess(32, augment="standard", seed=1), Preprocess(32)):
    out = pickle.loads(pickle.dumps(step))({"image": data, "label": [0, 1], "image_id": ["a", "b"]})
    assert out["image"].shape == (2, 3, 32, 32), out["image"].shape
print("torch imported:", "torch" in sys.modules)
from albumentations.pytorch import ToTensorV2  # still there for code that asks for it
print("torch imported:", "torch" in sys.modules)
"""


def test_a_data_worker_runs_the_transforms_without_importing_torch():
    # albumentations imports torch (3 s of each Ray Data worker's start) unless told not to
    command = [sys.executable, "-c", DATA_WORKER, str(SAMPLE / "benign")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["torch imported: False", "torch imported: True"], done.stdout
