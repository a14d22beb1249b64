"""Training images/s on a GPU: the whole project path against a bare loop, same model, same card.

    python benchmarks/gpu_throughput.py [--backbone resnet50] [--batch-size 128] [--copies 24]

Bare loop: synthetic uint8 images already on the GPU, fed to the same model with the same
optimizer groups, mixed precision, channels-last and device-side normalisation as the train loop.
Project path: `orchestrator.sweep` on the bundled ISIC sample prepared at the backbone's size and
replicated `--copies` times (so an epoch lasts long enough to time): Ray Data decodes and augments,
one Ray Train worker trains. Its figure is the train loop's own `train_images_per_s`, best epoch
after the first (the first includes starting Ray Data's workers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from orchestrator.config import PROJECT_ROOT, parse_spec
from orchestrator.data.dataset_format import MANIFEST, SHARDS
from orchestrator.data.prepare import prepare
from orchestrator.sweep import run_sweep
from trainables.backbones import create_backbone, input_config
from trainables.finetune import param_groups
from trainables.optimizers import build_optimizer
from trainables.precision import Normalize, autocast_dtype, grad_scaler


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(backbone: str, batch_size: int, steps: int, warmup: int = 15) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: a smoke run only
    cfg = input_config(backbone)
    model = create_backbone(backbone, "none", 2).to(device, memory_format=torch.channels_last).train()
    optimizer = build_optimizer("adamw", param_groups(model, 1e-3, 0.0, 1.0), 1e-3)
    dtype = autocast_dtype("auto", device)
    scaler = grad_scaler(dtype, device)
    normalize = Normalize(cfg.mean, cfg.std, device)
    size = cfg.input_size
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 2, (batch_size,), device=device)
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(normalize(images))
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - started)


def replicated_sample(size: int, copies: int, root: Path) -> Path:
    """The bundled sample prepared at `size`, its shards repeated `copies` times."""
    once = root / "once"
    prepare(PROJECT_ROOT / "datasets" / "isic-sample", once, size, 5, 0)
    out = root / "replicated"
    shutil.copytree(once, out)
    shards = sorted((once / SHARDS).glob("*.parquet"))
    for copy in range(1, copies):
        for shard in shards:
            shutil.copy(shard, out / SHARDS / f"copy{copy}-{shard.name}")
    manifest = json.loads((out / MANIFEST).read_text())  # the file, rewritten with the new counts
    for per_class in manifest["counts"]["per_fold"].values():
        for name in per_class:
            per_class[name] *= copies
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def project_path(backbone: str, batch_size: int, copies: int, epochs: int, root: Path) -> list[float]:
    prepared = replicated_sample(input_config(backbone).input_size, copies, root)
    gpus = 1 if torch.cuda.is_available() else 0
    spec = parse_spec(
        {
            "name": "gpu-throughput",
            "data": {"prepared": str(prepared)},
            "search": {"backbone": backbone, "lr": 1e-3, "batch_size": batch_size},
            "train": {"epochs": epochs, "weights": "none", "warmup_epochs": 0},
            "scheduler": {"type": "fifo", "metric": "train_loss"},
            "resources": {"cpus_per_worker": 2 if gpus else 1, "gpus_per_worker": gpus},
            "storage": str(root / "runs"),
        }
    )
    run_dir, _ = run_sweep(spec)
    lines = next(run_dir.glob("*/result.json")).read_text().splitlines()
    return [json.loads(line)["train_images_per_s"] for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--copies", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke run)"
    bare = bare_loop(args.backbone, args.batch_size, args.steps)
    print(f"{card}: bare loop {bare:.0f} images/s", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        per_epoch = project_path(args.backbone, args.batch_size, args.copies, args.epochs, Path(folder))
    project = max(per_epoch[1:])
    result = {
        "card": card,
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "precision": str(autocast_dtype("auto", torch.device("cuda" if card[:3] != "CPU" else "cpu"))),
        "bare_images_per_s": bare,
        "project_images_per_s_by_epoch": per_epoch,
        "project_images_per_s": project,
        "ratio": project / bare,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
