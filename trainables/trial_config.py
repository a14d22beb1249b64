"""What one trial's train loop needs, as one typed, picklable value (built by the driver in
`orchestrator/tuning/trial.py`, read by attribute on every Ray Train worker).

Ray Train's `train_loop_config` must be a dict: the driver passes `dataclasses.asdict(config)` and
the loop rebuilds it with `TrialConfig(**config)`. A dict of plain values is what Ray Train records
and shows for the run (an object there would be reduced to its repr), and rebuilding it at the top
of the loop fails at once, with the field's name, if a field is missing or unknown.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrialConfig:
    # the trial's configuration, as Tune searched it
    backbone: str  # the registry name
    lr: float
    optimizer: str
    batch_size: int
    weight_decay: float
    color: str  # colour constancy applied to every image (`color.py`)
    val_fold: int
    val_source: str  # a held-out source, or "" for a fold of every source
    # the model and its input
    model: str  # the timm model behind `backbone`
    weights: str  # hub | file:PATH | package | none
    task: str  # binary | diagnosis
    classes: tuple[str, ...]  # label i is classes[i]
    malignant: tuple[str, ...]  # the classes whose probabilities add up to P(malignant)
    image_size: int
    mean: tuple[float, ...]  # the backbone's normalisation
    std: tuple[float, ...]
    # the data of one epoch
    train_rows: int  # training images per epoch, over all workers (after oversampling)
    class_weights: tuple[float, ...] | None  # loss weight per label, or None
    # the training policy (see `finetune.py`)
    epochs: int
    seed: int
    freeze_epochs: int
    backbone_lr_scale: float
    warmup_epochs: float
    schedule: str  # cosine | constant
    label_smoothing: float
    precision: str  # auto | fp32 | bf16 | fp16
    threads: int  # torch threads of a CPU worker
    checkpoints: str  # where a restarted trial looks for its newest checkpoint ("" for nowhere)
