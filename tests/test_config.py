import copy

import pytest

from orchestrator.config import DEFAULT_SPEC, PROJECT_ROOT, load_spec, parse_spec
from orchestrator.errors import UserError
from tests.helpers import spec_dict

BASE = spec_dict(
    search={"backbone": ["resnet18", "test_efficientnet"], "lr": [1e-3, 1e-4], "optimizer": "adam"},
    train={"epochs": 2},
)


def spec_with(**overrides):
    raw = copy.deepcopy(BASE)
    raw.update(overrides)
    return raw


def error_of(raw) -> str:
    with pytest.raises(UserError) as caught:
        parse_spec(raw, "spec.yaml")
    return str(caught.value)


def test_lists_are_searched_and_scalars_fixed():
    spec = parse_spec(spec_with(search={"backbone": ["a", "b"], "lr": [1, 2, 3], "batch_size": 16}))
    grid = spec.grid()
    assert len(grid) == 6
    assert {(g["backbone"], g["lr"]) for g in grid} == {(b, lr) for b in "ab" for lr in (1, 2, 3)}
    assert all(g["batch_size"] == 16 and g["optimizer"] == "adamw" for g in grid)


def test_a_value_of_a_key_that_takes_several_kinds_names_every_kind():
    message = error_of(spec_with(evaluation={"test": ["prepared/x"], "ensemble": "fold"}))
    assert message == (
        "spec.yaml: 'evaluation.ensemble': Input should be a valid integer, or 'folds' (got 'fold')"
    )
    message = error_of(spec_with(data={**BASE["data"], "val_fold": "x"}))
    assert "'data.val_fold': Input should be a valid integer, or a valid list, or 'all' or 'none'" in message
    assert "'data.task': Input should be 'binary' or 'diagnosis'" in error_of(
        spec_with(data={**BASE["data"], "task": "diagnosys"})
    )


def test_unknown_key_names_the_key_and_the_allowed_ones():
    message = error_of(spec_with(train={"epochs": 2, "epoch": 3}))
    assert message.startswith("spec.yaml: unknown key 'epoch' in 'train'")
    assert "epochs" in message and "weights" in message


def test_unknown_top_level_key():
    assert "unknown key 'schedular'" in error_of(spec_with(schedular={}))


def test_wrong_type_names_key_and_value():
    message = error_of(spec_with(train={"epochs": "two"}))
    assert "'train.epochs'" in message and "'two'" in message


def test_bad_list_item_is_pointed_at():
    message = error_of(spec_with(search={"backbone": "a", "lr": 0.1, "optimizer": ["adam", "lion"]}))
    assert "'search.optimizer[1]'" in message and "'lion'" in message and "rmsprop" in message


@pytest.mark.parametrize(
    ("search", "where", "what"),
    [
        ({"lr": -1e-3}, "'search.lr'", "greater than 0"),
        ({"lr": [1e-3, 0.0]}, "'search.lr[1]'", "greater than 0"),
        ({"lr": float("nan")}, "'search.lr'", "finite"),
        ({"batch_size": 0}, "'search.batch_size'", "greater than or equal to 1"),
        ({"batch_size": [16, -8]}, "'search.batch_size[1]'", "greater than or equal to 1"),
        ({"weight_decay": -0.1}, "'search.weight_decay'", "greater than or equal to 0"),
    ],
)
def test_values_that_cannot_train_are_refused_in_the_spec(search, where, what):
    message = error_of(spec_with(search={"backbone": "a", "lr": 1e-3, **search}))
    assert where in message and what in message


def test_missing_required_key():
    raw = spec_with()
    del raw["train"]
    assert "missing required key 'train'" in error_of(raw)


def test_source_and_prepared_are_exclusive():
    assert "exactly one of" in error_of(spec_with(data={"source": "a", "prepared": "b"}))


def test_weights_mapping_may_not_name_unknown_backbones():
    from orchestrator.preflight import preflight

    spec = parse_spec(spec_with(train={"epochs": 1, "weights": {"resnet19": "none", "default": "none"}}))
    with pytest.raises(UserError, match="unknown backbone 'resnet19'"):
        preflight(spec)
    narrowed = parse_spec(spec_with(train={"epochs": 1, "weights": {"resnet34": "none", "default": "none"}}))
    preflight(narrowed)  # a known backbone outside the grid is fine: the grid was narrowed


def test_weights_mapping_with_default():
    spec = parse_spec(spec_with(train={"epochs": 1, "weights": {"resnet18": "package", "default": "none"}}))
    assert spec.train.weights_for("resnet18") == "package"
    assert spec.train.weights_for("test_efficientnet") == "none"


def test_loss_metric_defaults_to_minimising():
    spec = parse_spec(spec_with(scheduler={"metric": "val_loss"}))
    assert spec.scheduler.resolved_mode == "min"


def test_a_trial_trains_in_its_own_process_only_alone():
    def in_trial(**resources) -> bool:
        return parse_spec(spec_with(resources=resources)).resources.in_trial

    assert in_trial() and in_trial(train_in="trial")
    assert not in_trial(workers_per_trial=2) and not in_trial(train_in="ray_train")
    message = error_of(spec_with(resources={"workers_per_trial": 2, "train_in": "trial"}))
    assert "train_in: ray_train" in message, message


def test_missing_spec_file(tmp_path):
    with pytest.raises(UserError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_spec(bad)


def test_relative_paths_resolve_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ndata: {source: imgs}\nsearch: {backbone: a, lr: 0.1}\ntrain: {epochs: 1}\n")
    spec = load_spec(path)
    assert spec.data.source == tmp_path / "imgs"
    assert spec.storage == str(tmp_path / "runs")


def test_embedded_default_is_a_real_grid_on_the_bundled_sample():
    spec = load_spec(None)
    assert DEFAULT_SPEC.is_file()
    assert spec.data.source == PROJECT_ROOT / "datasets" / "isic-sample"
    searched = spec.searched()
    assert len(searched["backbone"]) >= 2 and len(searched["lr"]) >= 2 and len(searched["optimizer"]) >= 2
    weights = {b: spec.train.weights_for(b) for b in spec.backbones()}
    assert "package" in weights.values() and "none" in weights.values()


def test_overrides_set_nested_keys_and_are_validated(tmp_path):
    from orchestrator.config import load_spec

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\ndata: {source: images}\nsearch: {backbone: resnet18, lr: 0.001}\ntrain: {epochs: 2}\n"
    )
    spec = load_spec(path, ["train.epochs=5", "search.lr=[0.1, 0.01]", "data.val_fold=all"])
    assert spec.train.epochs == 5 and spec.search.lr == [0.1, 0.01] and spec.data.val_folds == [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match="unknown key 'epoch' in 'train'"):
        load_spec(path, ["train.epoch=5"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_spec(path, ["train.epochs"])


def test_file_weights_resolve_against_the_working_directory(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\ndata: {source: images}\nsearch: {backbone: [resnet18, resnet34], lr: 0.001}\n"
        "train: {epochs: 2, weights: {resnet18: 'file:w/r18.safetensors', default: none}}\n"
    )
    monkeypatch.chdir(tmp_path)
    spec = load_spec(path)
    assert spec.train.weights_for("resnet18") == f"file:{tmp_path / 'w' / 'r18.safetensors'}"
    assert spec.train.weights_for("resnet34") == "none"


def test_test_fold_is_kept_out_of_validation():
    spec = parse_spec(spec_with(data={"source": "a", "folds": 5, "val_fold": "all", "test_fold": 4}))
    assert spec.data.val_folds == [0, 1, 2, 3]
    assert "test_fold" in error_of(spec_with(data={"source": "a", "val_fold": [0, 1], "test_fold": 1}))
    assert "test_fold" in error_of(spec_with(data={"source": "a", "folds": 3, "test_fold": 3}))


def test_every_committed_experiment_is_a_valid_spec():
    for path in sorted((PROJECT_ROOT / "experiments").glob("*.yaml")):
        assert load_spec(path).grid(), path
    paper = load_spec(PROJECT_ROOT / "experiments" / "paper.yaml")
    assert len(paper.grid()) == 5 * 3 * 3 * 3
    study = {"resnet50", "mobilenet", "inception_v3", "densenet169", "inception_resnet_v2"}
    assert set(paper.backbones()) == study


def test_prepared_data_and_storage_may_be_uris(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\ndata: {prepared: 's3://bucket/prepared/isic-224/'}\nsearch: {backbone: a, lr: 0.1}\n"
        "train: {epochs: 1}\nstorage: gs://bucket/runs\n"
    )
    spec = load_spec(path)
    assert spec.data.prepared == "s3://bucket/prepared/isic-224"
    assert spec.storage == "gs://bucket/runs"
    path.write_text(path.read_text().replace("s3://", "ftp://"))
    with pytest.raises(UserError, match="unknown scheme 'ftp://'"):
        load_spec(path)
