"""The fine-tuning policy and the precision choices, on CPU."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import checkpoint_meta
from trainables.backbones import create_backbone
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.finetune import lr_factor, param_groups, set_backbone_frozen, set_learning_rates, train_mode
from trainables.optimizers import build_optimizer
from trainables.precision import Normalize, autocast_dtype, grad_scaler, in_layout


@pytest.fixture(scope="module")
def model():
    return create_backbone("test_efficientnet", "none", num_classes=2)


def test_warmup_then_cosine_to_zero():
    assert lr_factor(0.5, total=10, start=0, warmup=1, schedule="cosine") == pytest.approx(
        0.5 * 0.5 * (1 + math.cos(math.pi * 0.05))
    )
    assert lr_factor(1.0, 10, 0, 1, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert lr_factor(10, 10, 0, 1, "cosine") == pytest.approx(0.0)
    assert lr_factor(5, 10, 0, 0, "constant") == 1.0
    # a group that starts at epoch 2 is off before, then warms up from there
    assert lr_factor(1.9, 10, 2, 1, "cosine") == 0.0
    assert 0 < lr_factor(2.5, 10, 2, 1, "cosine") < lr_factor(3.0, 10, 2, 1, "cosine")


def test_no_weight_decay_on_norms_and_biases(model):
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_scale=0.1)
    for group in groups:
        assert group["weight_decay"] == (0.05 if all(p.ndim > 1 for p in group["params"]) else 0.0)
        assert group["base_lr"] == (1e-3 if group["part"] == "head" else 1e-4)
    decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
    for name, param in model.named_parameters():
        if name.endswith("bias") or ".bn" in name or name.startswith("bn"):
            assert id(param) not in decayed, name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_frozen_backbone_trains_only_the_head_and_keeps_its_statistics(model):
    groups = param_groups(model, lr=1e-2, weight_decay=0.0, backbone_lr_scale=1.0)
    optimizer = build_optimizer("adamw", groups, 1e-2)
    set_backbone_frozen(model, True)
    train_mode(model, backbone_frozen=True)
    stats_before = model.bn1.running_mean.clone()
    stem_before = model.conv_stem.weight.clone()
    head_before = model.get_classifier().weight.clone()
    policy = SimpleNamespace(epochs=4, freeze_epochs=1, warmup_epochs=0, schedule="cosine")
    set_learning_rates(optimizer, 0.5, policy)
    assert [g["lr"] for g in groups if g["part"] == "backbone"] == [0.0, 0.0]
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    optimizer.step()
    assert torch.equal(model.conv_stem.weight, stem_before) and model.conv_stem.weight.grad is None
    assert torch.equal(model.bn1.running_mean, stats_before)
    assert not torch.equal(model.get_classifier().weight, head_before)
    set_backbone_frozen(model, False)
    train_mode(model, backbone_frozen=False)
    assert model.conv_stem.weight.requires_grad and model.bn1.training


def test_cpu_gets_fp32_and_no_scaler():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("fp16", cpu) is None  # fp16 autocast is a GPU feature: fall back, say so
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert not grad_scaler(None, cpu).is_enabled()


def test_normalize_matches_mean_and_std():
    images = torch.tensor([[[[0, 255]], [[128, 128]], [[255, 0]]]], dtype=torch.uint8)
    out = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))(images)
    assert out.dtype == torch.float32
    assert out[0, 0, 0].tolist() == pytest.approx([-2.0, 2.0])
    assert out[0, 1, 0, 0].item() == pytest.approx((128 / 255 - 0.5) / 0.25)


def convolutions_are_channels_last(model: torch.nn.Module) -> bool:
    """Whether every spatial convolution's weights of `model` are laid out channels-last."""
    weights = [
        m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)
    ]
    return bool(weights) and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


def test_batches_and_models_are_channels_last_on_cpu_and_a_checkpoint_loads_back_alike(tmp_path):
    """One layout for training, validation and scoring: a checkpoint saved from a channels-last
    model loads back channels-last and gives the same outputs."""
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    batch = Normalize((0.5,) * 3, (0.25,) * 3, torch.device("cpu"))(images)
    assert batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()
    torch.manual_seed(0)
    trained = in_layout(create_backbone("test_efficientnet", "none", num_classes=2)).eval()
    meta = checkpoint_meta(backbone="test_efficientnet", image_size=32)
    save_checkpoint(tmp_path, trained, meta)
    loaded, _ = load_checkpoint(tmp_path)
    assert convolutions_are_channels_last(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(batch), trained(batch))


def test_a_cpu_worker_trains_a_channels_last_model(tmp_path):
    """The Trainer converts its model (and a step keeps it so), not only the scoring paths."""
    from trainables.registry import timm_name
    from trainables.session import TrialSession
    from trainables.train_loop import Trainer
    from trainables.trial_config import TrialConfig

    config = TrialConfig(
        backbone="test_efficientnet", lr=1e-3, optimizer="adamw", batch_size=4, weight_decay=0.0,
        color="none", val_fold=0, val_source="", model=timm_name("test_efficientnet"), weights="none",
        task="binary", classes=("benign", "malignant"), malignant=("malignant",), image_size=32,
        mean=(0.5,) * 3, std=(0.5,) * 3, train_rows=4,
        class_weights=None, epochs=1, seed=0, freeze_epochs=0, backbone_lr_scale=1.0, warmup_epochs=0.0,
        schedule="cosine", label_smoothing=0.0, precision="auto", checkpoints="",
        threads=torch.get_num_threads(),  # the Trainer sets it: this process's own, unchanged
    )  # fmt: skip
    session = TrialSession("t", {}, str(tmp_path), metric="val_auc", mode="max", keep=1, use_gpu=False)
    trainer = Trainer(config, session)
    batch = {
        "image": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8),
        "label": torch.tensor([0, 1, 0, 1]),
    }
    loss, _ = trainer.epoch(0, [batch])
    assert math.isfinite(loss)
    assert convolutions_are_channels_last(trainer.model)
