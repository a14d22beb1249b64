"""Experiment specs: YAML parsed into typed, strict config objects, and the grid they describe.

Lists under `search` are searched (the grid is their product); scalars are fixed. Unknown keys and
wrong types are UserErrors that name the file, the key and what is allowed.
"""

from __future__ import annotations

import itertools
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.data.sources import LAYOUTS, SOURCE_NAME, Source
from orchestrator.errors import UserError
from orchestrator.evaluation.clinical import Options, Targets
from orchestrator.storage import normalise
from trainables.color import COLOR_METHODS
from trainables.diagnosis_metrics import DIAGNOSIS_RANKING_METRICS
from trainables.metrics import RANKING_METRICS, THRESHOLD_METHODS
from trainables.optimizers import OPTIMIZERS
from trainables.transforms import PRESETS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = PROJECT_ROOT / "experiments" / "default.yaml"
DATA_CPUS_PER_TRIAL = 1.0  # left free per trial for Ray Data's decode + augment

Optimizer = Literal[OPTIMIZERS]
Color = Literal[COLOR_METHODS]
LearningRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
BatchSize = Annotated[int, Field(ge=1)]
WeightDecay = Annotated[float, Field(ge=0, allow_inf_nan=False)]
SEARCHABLE = ("backbone", "lr", "optimizer", "batch_size", "weight_decay")
# the axes besides SEARCHABLE that tell two configurations apart (validation splits do not)
CONFIGURATION_AXES = (*SEARCHABLE, "color")
IN_SOURCE = ""  # val_source of a trial validated on a fold of every source
NO_FOLD = -1  # val_fold of a trial validated on a held-out source


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(Strict):
    """One image collection of a multi-source study."""

    name: str = Field(pattern=SOURCE_NAME, description="a short name, e.g. kaggle, isic2017")
    path: Path
    layout: str = Field("auto", description="auto, folder-per-class or an ISIC layout (see sources.py)")
    malignant: list[str] | None = Field(
        None,
        description="diagnoses called malignant, or the malignant class folder (default: the source's rule)",
    )
    subfolder: str | None = Field(
        None, description="only the images under this sub-folder of path, e.g. ISIC-2017_Training_Data"
    )

    @model_validator(mode="after")
    def _known_layout(self) -> SourceSpec:
        if self.layout not in LAYOUTS:
            raise ValueError(
                f"source '{self.name}': unknown layout '{self.layout}'; known: {', '.join(LAYOUTS)}"
            )
        return self

    def source(self) -> Source:
        malignant = frozenset(self.malignant) if self.malignant else None
        return Source(self.name, self.path, self.layout, malignant, self.subfolder)


class DataSpec(Strict):
    source: Path | list[SourceSpec] | None = Field(
        None, description="raw images (one folder, or a list of named sources), prepared on first use"
    )
    prepared: str | None = Field(
        None, description="a dataset made by orchestrator.data.prepare (folder or URI)"
    )
    layout: str = Field("auto", description="auto, folder-per-class or an ISIC layout (see sources.py)")
    malignant: list[str] | None = Field(
        None,
        description="diagnoses called malignant, or the malignant class folder (default: the source's rule)",
    )
    folds: int = Field(5, ge=2)
    val_fold: int | list[int] | Literal["all", "none"] = Field(
        0, description="the validation fold; a list or 'all' trains every configuration on each (k-fold CV)"
    )
    val_source: str | list[str] | None = Field(
        None, description="hold out a whole source: its name, a list, or 'all' (leave-one-source-out)"
    )
    color: Color | list[Color] = Field(
        "none", description="colour constancy: none or shades_of_gray (p = 6); a list makes it a grid axis"
    )
    test_fold: int | None = Field(
        None, ge=0, description="a fold no trial trains or validates on: the internal test set"
    )
    image_size: int | None = Field(None, ge=16, description="pixels; default: each backbone's own")
    cache: Path = Field(Path("prepared"), description="where prepared copies of `source` are kept")
    shortcut_audit: bool = Field(
        False, description="before training, measure how well non-lesion features predict the label"
    )
    task: Literal["binary", "diagnosis"] = Field(
        "binary",
        description="binary: benign vs malignant; diagnosis: the source's diagnosis classes (ISIC layouts)",
    )
    balance: Literal["oversample", "class_weight", "none"] = Field(
        "oversample", description="oversample the minority class, weight the loss by class, or neither"
    )
    seed: int = 0

    @property
    def malignant_set(self) -> frozenset[str] | None:
        return frozenset(self.malignant) if self.malignant else None

    @property
    def val_folds(self) -> list[int]:
        if self.val_fold == "all":
            return [fold for fold in range(self.folds) if fold != self.test_fold]
        return [] if self.val_fold == "none" else as_list(self.val_fold)

    @property
    def val_sources(self) -> list[str]:
        """Held-out sources; 'all' is resolved against the dataset's sources (see `with_sources`)."""
        return [] if self.val_source is None else as_list(self.val_source)

    @property
    def sources(self) -> list[Source]:
        """The raw sources: a single folder is one source named after the folder."""
        if isinstance(self.source, list):
            return [entry.source() for entry in self.source]
        if self.source is None:
            return []
        return [Source(self.source.name, self.source, self.layout, self.malignant_set)]

    def splits(self) -> list[tuple[int, str]]:
        """(val_fold, val_source) of every validation split: each fold of all sources, then each
        held-out source."""
        return [(fold, IN_SOURCE) for fold in self.val_folds] + [(NO_FOLD, s) for s in self.val_sources]

    def with_sources(self, names: list[str]) -> DataSpec:
        """This spec with `val_source: all` resolved to the dataset's source names, and checked."""
        try:
            return self.model_copy(update={"val_source": held_out_sources(self.val_source, names)})
        except ValueError as err:
            raise UserError(f"data.val_source: {err}") from None

    @model_validator(mode="after")
    def _one_location(self) -> DataSpec:
        if (self.source is None) == (self.prepared is None):
            raise ValueError("give exactly one of 'source' (raw images) or 'prepared'")
        if isinstance(self.source, list):
            names = [entry.name for entry in self.source]
            if not names or len(set(names)) != len(names):
                raise ValueError(f"the sources need distinct names (got {names})")
            if self.layout != "auto" or self.malignant:
                raise ValueError("with a list of sources, give layout and malignant in each source entry")
            self.val_source = held_out_sources(self.val_source, names)
        elif self.source is not None and self.val_source is not None:
            raise ValueError("val_source needs a list of sources to hold one out of")
        if self.val_source is not None and self.test_fold is not None:
            raise ValueError(
                "test_fold cannot be combined with val_source: a held-out source's trials train on "
                "every fold of the other sources; test on another source with evaluation.test"
            )
        if self.val_fold == "none" and self.val_source is None:
            raise ValueError("val_fold: none needs a val_source to validate on")
        bad = [fold for fold in self.val_folds if not 0 <= fold < self.folds]
        if bad or len(set(self.val_folds)) != len(self.val_folds):
            raise ValueError(f"val_fold must be distinct folds from 0 to {self.folds - 1}, 'all' or 'none'")
        if self.test_fold is not None and (self.test_fold >= self.folds or self.test_fold in self.val_folds):
            raise ValueError(f"test_fold must be a fold below {self.folds} that is not a validation fold")
        return self


class SearchSpec(Strict):
    backbone: str | list[str]
    lr: LearningRate | list[LearningRate]
    optimizer: Optimizer | list[Optimizer] = "adamw"
    batch_size: BatchSize | list[BatchSize] = 32
    weight_decay: WeightDecay | list[WeightDecay] = 0.0

    @field_validator("*")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("an empty list searches nothing")
        return value


class TrainSpec(Strict):
    epochs: int = Field(ge=1)
    weights: str | dict[str, str] = Field(
        "hub", description="hub | file:PATH | package | none, or a mapping backbone -> source"
    )
    seed: int = 0
    max_failures: int = Field(2, ge=0, description="restarts from the last checkpoint after a worker dies")
    freeze_epochs: int = Field(0, ge=0, description="epochs that train only the new head, backbone frozen")
    backbone_lr_scale: float = Field(
        1.0, gt=0, le=1, description="backbone learning rate = lr x this (the head gets lr)"
    )
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up; again for the unfrozen backbone")
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that have it, else fp16 with loss scaling; fp32 on CPU"
    )

    @model_validator(mode="after")
    def _unfreezes(self) -> TrainSpec:
        if self.freeze_epochs >= self.epochs:
            raise ValueError(f"freeze_epochs ({self.freeze_epochs}) must be below epochs ({self.epochs})")
        return self

    def weights_for(self, backbone: str) -> str:
        if isinstance(self.weights, str):
            return self.weights
        return self.weights.get(backbone, self.weights.get("default", "hub"))


class SchedulerSpec(Strict):
    type: Literal["asha", "fifo"] = "asha"
    metric: str = Field(
        "val_auc", description=f"what ranks trials: {', '.join(RANKING_METRICS)} (a diagnosis task: more)"
    )
    mode: Literal["max", "min"] | None = None
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, ge=2.0)

    @property
    def resolved_mode(self) -> str:
        if self.mode:
            return self.mode
        return "min" if self.metric.endswith("loss") else "max"


class ResourcesSpec(Strict):
    workers_per_trial: int = Field(1, ge=1)
    train_in: Literal["auto", "trial", "ray_train"] = Field(
        "auto",
        description="where a trial trains: 'trial', in the Tune trial's own process (one worker, "
        "seconds sooner to its first step); 'ray_train', on Ray Train workers (DDP, Train's worker "
        "restarts); 'auto': 'trial' for one worker per trial, else 'ray_train'",
    )
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    threads_per_worker: int | None = Field(
        None,
        ge=1,
        description="torch threads of a CPU worker (default: its CPUs plus its share of the CPU left "
        "to Ray Data, which decoding leaves mostly idle; rounded down)",
    )
    max_concurrent_trials: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_worker_in_trial(self) -> ResourcesSpec:
        if self.train_in == "trial" and self.workers_per_trial > 1:
            raise ValueError(
                "resources.train_in: trial trains on one worker; for workers_per_trial > 1 "
                "set train_in: ray_train (or auto)"
            )
        return self

    @property
    def in_trial(self) -> bool:
        """Whether the loop runs in the Tune trial's own process rather than on Ray Train workers."""
        return self.train_in == "trial" or (self.train_in == "auto" and self.workers_per_trial == 1)

    @property
    def torch_threads(self) -> int:
        shared = DATA_CPUS_PER_TRIAL / self.workers_per_trial
        return self.threads_per_worker or max(1, math.floor(self.cpus_per_worker + shared))


class EvaluationSpec(Strict):
    """After the sweep: the best trials, with a threshold chosen on each one's validation fold,
    tested on these datasets (kept out of training: a held-out or external set)."""

    test: list[str | SourceSpec] = Field(
        default_factory=list,
        description="PREPARED, PREPARED@FOLD, raw image folders, or a source entry (name, path, "
        "layout, subfolder) prepared against the training data; tested after the sweep",
    )
    top: int = Field(1, ge=1, description="how many of the best trials are tested")
    threshold: Literal[THRESHOLD_METHODS] = Options.threshold
    target_sensitivity: float = Field(
        Options.target_sensitivity, gt=0, le=1, description="for threshold: sensitivity"
    )
    fixed_specificity: float = Field(
        Targets.fixed_specificity, gt=0, lt=1, description="sensitivity is reported at this specificity"
    )
    fixed_sensitivity: float = Field(
        Targets.fixed_sensitivity, gt=0, lt=1, description="specificity is reported at this sensitivity"
    )
    tta: bool = Options.tta
    bootstrap: int = Field(Options.bootstrap, ge=10, description="resamples for the 95% intervals")
    ensemble: Annotated[int, Field(ge=2)] | Literal["folds"] | None = Field(
        None,
        description="also test the mean of the N best trials' probabilities, or (folds) of the best "
        "configuration's fold models",
    )


class Spec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    data: DataSpec
    augment: Literal[PRESETS] = "standard"
    search: SearchSpec
    train: TrainSpec
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    storage: str = "runs"

    @model_validator(mode="after")
    def _known_metric(self) -> Spec:
        allowed = [*RANKING_METRICS, *(DIAGNOSIS_RANKING_METRICS if self.data.task == "diagnosis" else ())]
        metric = self.scheduler.metric
        if metric not in allowed and not (self.data.task == "diagnosis" and metric.startswith("val_auc_")):
            per_class = ", val_auc_<class>" if self.data.task == "diagnosis" else ""
            raise ValueError(
                f"scheduler.metric {metric!r} is not reported for data.task: {self.data.task}; "
                f"use one of {', '.join(allowed)}{per_class}"
            )
        return self

    @model_validator(mode="after")
    def _ensemble_has_tests(self) -> Spec:
        ensemble = self.evaluation.ensemble
        if ensemble is not None and not (self.evaluation.test or self.data.test_fold is not None):
            raise ValueError(
                "evaluation.ensemble is scored on test images, which no trial validated on: give "
                "evaluation.test or data.test_fold"
            )
        if ensemble == "folds" and len(self.data.val_folds) < 2:
            raise ValueError(
                "evaluation.ensemble: folds needs cross-validation (data.val_fold: all, or a list)"
            )
        return self

    @model_validator(mode="after")
    def _comparable_trials(self) -> Spec:
        if self.data.val_source is not None and self.scheduler.type == "asha":
            raise ValueError(
                "trials validated on different held-out sources cannot be compared by ASHA; "
                "use scheduler: {type: fifo} with data.val_source"
            )
        return self

    def searched(self) -> dict[str, list]:
        """Every searchable key with its values (a fixed value is a one-element list), and the
        validation fold, which is an axis of its own under k-fold cross-validation."""
        axes = {key: as_list(getattr(self.search, key)) for key in SEARCHABLE}
        axes["color"] = as_list(self.data.color)
        if self.data.val_sources:
            axes["validation"] = [split_label(*split) for split in self.data.splits()]
        else:
            axes["val_fold"] = self.data.val_folds
        return axes

    def varying(self) -> list[str]:
        """The grid's axes with more than one value: what tells one trial from another."""
        return [axis for axis, values in self.searched().items() if len(values) > 1]

    def grid(self) -> list[dict[str, Any]]:
        """All trial configurations, in a stable order; each names its val_fold and val_source."""
        searched = self.searched()
        grid = [dict(zip(searched, values, strict=True)) for values in itertools.product(*searched.values())]
        for config in grid:
            config.update(split_of(config))
        return grid

    def backbones(self) -> list[str]:
        return as_list(self.search.backbone)


def as_list(value: Any) -> list:
    return list(value) if isinstance(value, list) else [value]


def held_out_sources(val_source: str | list[str] | None, names: list[str]) -> list[str] | None:
    """`val_source` ('all', a name or a list) as distinct names of `names`; ValueError otherwise."""
    if val_source is None:
        return None
    held = names if val_source == "all" else as_list(val_source)
    if not held or len(set(held)) != len(held):
        raise ValueError(f"val_source needs distinct source names (got {held})")
    if unknown := sorted(set(held) - set(names)):
        raise ValueError(f"val_source names {', '.join(unknown)}; sources: {', '.join(names)}")
    if len(names) < 2:
        raise ValueError(f"val_source needs several sources; the dataset has one ({names[0]})")
    return held


def split_label(val_fold: int, val_source: str) -> str:
    """How a validation split reads on the leaderboard and in TensorBoard."""
    return f"fold {val_fold}" if val_source == IN_SOURCE else f"held-out {val_source}"


def split_of(config: dict[str, Any]) -> dict[str, Any]:
    """{"val_fold", "val_source"} of a trial's configuration (searched over `val_fold`, or over
    `validation` when sources are held out)."""
    label = config.get("validation")
    if label is None:
        return {"val_fold": config["val_fold"], "val_source": config.get("val_source", IN_SOURCE)}
    kind, _, value = label.partition(" ")
    if kind == "fold":
        return {"val_fold": int(value), "val_source": IN_SOURCE}
    return {"val_fold": NO_FOLD, "val_source": value}


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config model an annotation holds, directly or inside a list or a union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in typing.get_args(annotation) if (m := _model_in(arg))), None)


def _location(model: type[BaseModel], loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """Dotted key path for a pydantic error location, skipping union-member tags."""
    parts: list[str] = []
    current: type[BaseModel] | None = model
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] += f"[{item}]"
        elif current is not None and item in current.model_fields:
            parts.append(str(item))
            current = _model_in(current.model_fields[item].annotation)
        elif current is not None and not parts:
            parts.append(str(item))
            current = None
        # anything else is a union-member tag (e.g. 'list[SourceSpec]'): skip it
    return ".".join(parts), current


def _describe(error: dict, model: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        parent_path, parent = _location(model, loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else ""
        where = f" in '{parent_path}'" if parent_path else ""
        return f"unknown key '{loc[-1]}'{where}; allowed keys: {allowed}"
    path, _ = _location(model, loc)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"missing required key '{path}'"
    shown = error.get("input")
    got = "" if isinstance(shown, dict) else f" (got {shown!r})"
    return f"'{path}': {message}{got}" if path else f"{message}"


def parse_spec(raw: Any, origin: str = "<spec>") -> Spec:
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: a spec must be a YAML mapping of keys, got {type(raw).__name__}")
    try:
        return Spec.model_validate(raw)
    except ValidationError as err:
        errors = err.errors()
        # a bad list item says more than "not a scalar" does
        first = next((e for e in errors if any(isinstance(i, int) for i in e["loc"])), errors[0])
        more = len({tuple(e["loc"][:2]) for e in errors}) - 1
        extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        raise UserError(f"{origin}: {_describe(_with_alternatives(first, errors), Spec)}{extra}") from None


def _with_alternatives(first: dict, errors: list[dict]) -> dict:
    """An error of one member of a union (`ensemble: 2 | folds`) names what every member accepts:
    "a valid integer, or 'folds'", not the first member's complaint alone."""
    path = _location(Spec, tuple(first["loc"]))[0]
    members = [
        e
        for e in errors
        if tuple(e["loc"][:-1]) == tuple(first["loc"][:-1])
        and e["type"] != "extra_forbidden"
        and _location(Spec, tuple(e["loc"]))[0] == path
    ]
    if len(members) < 2:
        return first
    wanted = [e["msg"].removeprefix("Input should be ").split(", unable to")[0] for e in members]
    return {**first, "msg": "Input should be " + ", or ".join(wanted)}


def apply_override(raw: dict, assignment: str) -> None:
    """Set `a.b.c=VALUE` (VALUE read as YAML: numbers, lists, null) in the raw spec mapping."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"--set takes KEY=VALUE, e.g. train.epochs=3 (got {assignment!r})")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"--set {key}: {text!r} is not a valid YAML value") from None
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: '{part}' is not a mapping in this spec")
    node[leaf] = value


def load_spec(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read a spec file, with `KEY=VALUE` overrides; relative data paths resolve against the current
    directory, except in the embedded default, whose paths are the project's own."""
    spec_path = Path(path) if path is not None else DEFAULT_SPEC
    if not spec_path.is_file():
        raise UserError(f"spec file not found: {spec_path}")
    try:
        raw = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{spec_path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if isinstance(raw, dict):
        for assignment in overrides:
            apply_override(raw, assignment)
    spec = parse_spec(raw, str(spec_path))
    base = PROJECT_ROOT if path is None else Path.cwd()
    return resolve_paths(spec, base)


def resolve_paths(spec: Spec, base: Path) -> Spec:
    data = spec.data
    updates: dict[str, Any] = {"cache": (base / data.cache).resolve()}
    if isinstance(data.source, list):
        updates["source"] = [s.model_copy(update={"path": (base / s.path).resolve()}) for s in data.source]
    elif data.source is not None:
        updates["source"] = (base / data.source).resolve()
    if data.prepared is not None:
        updates["prepared"] = normalise(data.prepared, base)
    storage = normalise(spec.storage, base)

    def weights(source: str) -> str:  # workers do not share the driver's working directory
        if source.startswith("file:"):
            return "file:" + str((base / Path(source[len("file:") :]).expanduser()).resolve())
        return source

    def dataset(test: str | SourceSpec) -> str | SourceSpec:  # PATH, PATH@FOLD or a source entry
        if isinstance(test, SourceSpec):
            return test.model_copy(update={"path": (base / test.path).resolve()})
        path, at, fold = test.partition("@")
        return str((base / path).resolve()) + at + fold

    given = spec.train.weights
    resolved = {k: weights(v) for k, v in given.items()} if isinstance(given, dict) else weights(given)
    tests = [dataset(text) for text in spec.evaluation.test]
    return spec.model_copy(
        update={
            "data": data.model_copy(update=updates),
            "storage": storage,
            "train": spec.train.model_copy(update={"weights": resolved}),
            "evaluation": spec.evaluation.model_copy(update={"test": tests}),
        }
    )


def asha_rungs(spec: Spec) -> list[int]:
    """The epochs at which ASHA compares trials (none for FIFO), as `driver.LastEpochASHA` sets
    Ray's milestones (grace period x reduction factor^k, max_t one past the last epoch), less the
    last epoch, where it stops no trial. A milestone between epochs is reached at the next one."""
    scheduler, epochs = spec.scheduler, spec.train.epochs
    if scheduler.type != "asha":
        return []
    grace, factor = min(scheduler.grace_period, epochs), scheduler.reduction_factor
    count = int(math.log((epochs + 1) / grace) / math.log(factor) + 1)
    found = sorted({math.ceil(grace * factor**k - 1e-9) for k in range(count)})
    return [epoch for epoch in found if epoch < epochs]
