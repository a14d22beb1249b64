"""The one typed value a trial's train loop receives: built from the spec and the dataset's manifest,
carried through Ray Train as a dict of plain values and rebuilt, field by field, on the worker."""

import pickle
from dataclasses import asdict

import pytest

from orchestrator.config import parse_spec
from orchestrator.data.dataset_format import read_manifest
from orchestrator.tuning.trial import trial_config
from tests.helpers import spec_dict
from trainables.backbones import input_config
from trainables.train_loop import META_KEYS
from trainables.trial_config import TrialConfig

INPUTS = {"efficientnet_lite0": input_config("efficientnet_lite0")}


def spec(prepared, **data):
    return parse_spec(
        {
            **spec_dict(
                search={"backbone": "efficientnet_lite0", "batch_size": 8},
                train={"epochs": 3, "freeze_epochs": 1, "weights": "package"},
            ),
            "data": {"prepared": str(prepared), "folds": 4, "image_size": 48, **data},
        }
    )


def test_built_from_the_spec_the_search_and_the_manifest(small_prepared):
    made = spec(small_prepared)
    config = made.grid()[0]
    trial = trial_config(made, config, read_manifest(small_prepared), "runs/x/checkpoints/t1", INPUTS)
    assert (trial.backbone, trial.lr, trial.batch_size, trial.val_fold, trial.val_source) == (
        "efficientnet_lite0",
        1e-3,
        8,
        0,
        "",
    )
    assert trial.classes == ("benign", "malignant") and trial.image_size == 48
    assert trial.train_rows == 30 and trial.class_weights is None  # 3 of 4 folds, already level
    assert (trial.epochs, trial.freeze_epochs, trial.checkpoints) == (3, 1, "runs/x/checkpoints/t1")
    weighted = spec(small_prepared, balance="class_weight")
    assert trial_config(weighted, config, read_manifest(small_prepared), "", INPUTS).class_weights == (
        1.0,
        1.0,
    )


def test_crosses_ray_as_plain_values_and_is_rebuilt_whole(small_prepared):
    made = spec(small_prepared)
    trial = trial_config(made, made.grid()[0], read_manifest(small_prepared), "", INPUTS)
    carried = pickle.loads(pickle.dumps(asdict(trial)))
    assert TrialConfig(**carried) == trial
    assert all(hasattr(trial, key) for key in META_KEYS)
    with pytest.raises(TypeError, match="lr"):
        TrialConfig(**{k: v for k, v in carried.items() if k != "lr"})
    with pytest.raises(TypeError, match="learning_rate"):
        TrialConfig(**carried, learning_rate=0.1)


def test_the_manifest_crosses_ray_too(small_prepared):
    manifest = read_manifest(small_prepared)
    assert pickle.loads(pickle.dumps(manifest)) == manifest
