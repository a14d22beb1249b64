"""Nothing a user hands the project is run as code: weight files with a pickled payload are
refused, checkpoints are safetensors, and a spec's YAML cannot construct Python objects."""

import pickle

import pytest
import torch

from orchestrator.config import load_spec
from orchestrator.errors import UserError
from tests.helpers import checkpoint_meta
from trainables.backbones import create_backbone
from trainables.checkpoint import load_checkpoint


class Payload:
    """Unpickling this would create `marker`: the proof that a file ran code when it was loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pth_weights_with_a_pickled_payload_are_refused(tmp_path):
    marker = tmp_path / "was-run"
    weights = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv_stem.weight": torch.zeros(1)}, "extra": Payload(str(marker))}, weights)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        create_backbone("test_efficientnet", f"file:{weights}", num_classes=2)
    assert not marker.exists()


def test_a_checkpoint_is_read_as_safetensors_only(tmp_path):
    marker = tmp_path / "was-run"
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    (folder / "meta.json").write_text(checkpoint_meta().to_json())
    (folder / "model.safetensors").write_bytes(pickle.dumps(Payload(str(marker))))  # not safetensors
    with pytest.raises(Exception, match="(?i)header|safetensor|deserializ"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_spec_yaml_cannot_construct_python_objects(tmp_path):
    marker = tmp_path / "was-run"
    spec = tmp_path / "evil.yaml"
    spec.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(UserError, match="not valid YAML"):
        load_spec(spec)
    assert not marker.exists()
