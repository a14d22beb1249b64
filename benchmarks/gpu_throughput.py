"""Training images/s on a GPU: the whole project path against a bare loop, same model, same card.

    python benchmarks/gpu_throughput.py [--backbone resnet50] [--batch-size 128] [--trials 2]
        [--epochs 3] [--copies 96] [--image-size N] [--out result.json]

Bare loop: synthetic uint8 images already on the GPU, fed to the same model with the same
optimizer groups, mixed precision (bf16), channels-last and device-side normalisation as the train
loop. Project path: `orchestrator.sweep` on the bundled ISIC sample prepared at the backbone's size
and replicated `--copies` times (so an epoch lasts long enough to time), `--trials` learning rates:
Ray Data decodes and augments, one Ray Train worker trains. Its figure is the median of the train
loop's own `train_images_per_s` over every trial's epochs after its first (the first includes
starting Ray Data's workers). GPU utilisation: nvidia-smi's for the machine's first GPU, sampled
every 200 ms, averaged over the bare loop's timed steps and over the trials' epochs (from their
first to their last optimizer step: `trainables/timing.py`). Without a GPU it runs on CPU as a
smoke run. The last line is the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from orchestrator.config import PROJECT_ROOT, parse_spec
from orchestrator.data.dataset_format import MANIFEST, SHARDS
from orchestrator.data.prepare import prepare
from orchestrator.driver import run_sweep
from trainables.backbones import create_backbone, input_config
from trainables.finetune import param_groups
from trainables.optimizers import build_optimizer
from trainables.precision import Normalize, autocast_dtype, grad_scaler, in_layout
from trainables.timing import TIMING_LOG, read_marks

PRECISION = "bf16"  # on CPU autocast to bf16 is slow: the smoke run trains in fp32


class GpuUtilisation:
    """nvidia-smi's GPU utilisation (%) every 200 ms, each sample with its time; none without a GPU."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        smi = shutil.which("nvidia-smi") if torch.cuda.is_available() else None
        query = ["--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200", "-i", "0"]
        self.process = subprocess.Popen([smi, *query], stdout=subprocess.PIPE, text=True) if smi else None
        if self.process:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip().isdigit():
                self.samples.append((time.time(), float(line)))

    def mean(self, windows: list[tuple[float, float]]) -> float | None:
        inside = [value for at, value in self.samples if any(start <= at <= end for start, end in windows)]
        return statistics.fmean(inside) if inside else None

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait()


def device_for_run() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TrainStep:
    """The train loop's step (optimizer groups, mixed precision, channels-last, device-side
    normalisation) on a fresh random-init model, without Ray."""

    def __init__(self, backbone: str, device: torch.device) -> None:
        cfg = input_config(backbone)
        model = create_backbone(backbone, "none", 2)
        self.model = in_layout(model.to(device)).train()  # as the loop
        self.optimizer = build_optimizer("adamw", param_groups(self.model, 1e-3, 0.0, 1.0), 1e-3)
        self.dtype = autocast_dtype(PRECISION if device.type == "cuda" else "fp32", device)
        self.scaler = grad_scaler(self.dtype, device)
        self.normalize = Normalize(cfg.mean, cfg.std, device)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(images.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.model(self.normalize(images))
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def bare_loop(backbone: str, size: int, batch_size: int, steps: int, warmup: int = 15) -> tuple[float, tuple]:
    """Images/s of the train loop's step on synthetic images already on the device, and the
    (start, end) wall-clock window of the timed steps."""
    device = device_for_run()
    step = TrainStep(backbone, device)
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 2, (batch_size,), device=device)
    for done in range(warmup + steps):
        if done == warmup:
            sync(device)
            started, wall = time.perf_counter(), time.time()
        step(images, labels)
    sync(device)
    elapsed = time.perf_counter() - started
    return steps * batch_size / elapsed, (wall, wall + elapsed)


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


def project_path(
    args: argparse.Namespace, size: int, root: Path, prepared: Path | None = None
) -> tuple[list[list[float]], list[tuple]]:
    """Each trial's images/s per epoch, and the (first step, last step) windows of every trial's
    epochs after its first. `prepared`: the replicated sample, made here when not given."""
    prepared = prepared or replicated_sample(size, args.copies, root)
    gpus = 1 if torch.cuda.is_available() else 0
    spec = parse_spec(
        {
            "name": "gpu-throughput",
            "data": {"prepared": str(prepared), "image_size": size},
            "search": {
                "backbone": args.backbone,
                "lr": [1e-3 / 3**trial for trial in range(args.trials)],
                "batch_size": args.batch_size,
            },
            "train": {
                "epochs": args.epochs,
                "weights": "none",
                "warmup_epochs": 0,
                "precision": PRECISION if gpus else "fp32",
            },
            "scheduler": {"type": "fifo", "metric": "train_loss"},
            "resources": {
                "cpus_per_worker": 2 if gpus else 1,
                "gpus_per_worker": gpus,
                "threads_per_worker": getattr(args, "threads", None),
            },
            "storage": str(root / "runs"),
        }
    )
    timing = root / "timing.jsonl"
    os.environ[TIMING_LOG] = str(timing)  # Ray's processes inherit it
    run_dir, _ = run_sweep(spec)
    per_trial = [
        [json.loads(line)["train_images_per_s"] for line in result.read_text().splitlines()]
        for result in sorted(run_dir.glob("*/result.json"))
    ]
    windows = []
    for events in read_marks(timing).values():
        windows += list(zip(events.get("first_step", []), events.get("last_step", []), strict=False))[1:]
    return per_trial, windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--trials", type=int, default=2, help="learning rates, one trial each")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--copies", type=int, default=96, help="times the 300-image sample is repeated")
    parser.add_argument("--image-size", type=int, help="pixels; default: the backbone's own")
    parser.add_argument("--steps", type=int, default=60, help="timed steps of the bare loop")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch's figure includes starting Ray Data")
    size = args.image_size or input_config(args.backbone).input_size
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke run)"
    utilisation = GpuUtilisation()
    try:
        bare, bare_window = bare_loop(args.backbone, size, args.batch_size, args.steps)
        print(f"{card}: bare loop {bare:.0f} images/s", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            per_trial, epochs = project_path(args, size, Path(folder))
    finally:
        utilisation.stop()
    project = statistics.median(rate for trial in per_trial for rate in trial[1:])
    result = {
        "card": card,
        "backbone": args.backbone,
        "image_size": size,
        "batch_size": args.batch_size,
        "precision": PRECISION if torch.cuda.is_available() else "fp32",
        "bare_images_per_s": round(bare, 1),
        "project_images_per_s_by_trial_and_epoch": [[round(rate, 1) for rate in t] for t in per_trial],
        "project_images_per_s": round(project, 1),
        "gpu_utilisation_bare_pct": utilisation.mean([bare_window]),
        "gpu_utilisation_project_pct": utilisation.mean(epochs),
        "ratio": round(project / bare, 3),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    print(f"ratio (project path / bare loop): {result['ratio']:.3f}")


if __name__ == "__main__":
    main()
