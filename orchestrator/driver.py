"""The sweep's driver: prepares the data, starts or joins Ray, runs the spec's grid as Ray Tune
trials with ASHA early stopping, and publishes the leaderboard, its tests and the report.
`orchestrator.sweep` is its command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from orchestrator.config import DATA_CPUS_PER_TRIAL, ResourcesSpec, SourceSpec, Spec, split_of
from orchestrator.console import SWEEP_LOG, Progress, print_plan, quiet_output
from orchestrator.data import shortcuts
from orchestrator.data.dataset_format import (
    MANIFEST,
    SHARDS,
    Manifest,
    parse_manifest,
    read_manifest,
    source_names,
    task_labels,
)
from orchestrator.data.pipeline import held_splits, shared_rows
from orchestrator.data.prepare import prepare_once
from orchestrator.data.sources import read_sources
from orchestrator.errors import UserError
from orchestrator.evaluation.sweep_page import SWEEP_PAGE, write_sweep_page
from orchestrator.heartbeat import beating, check_not_live
from orchestrator.preflight import preflight
from orchestrator.run_record import LEADERBOARD, RUN_RECORD, new_run_name, read_run_record
from orchestrator.storage import (
    Storage,
    StorageError,
    download_whole,
    is_remote,
    local_copy,
    reason,
    staging_dir,
)
from orchestrator.tuning import leaderboard
from orchestrator.tuning.tensorboard import TrialCurves, write_hparams
from orchestrator.tuning.top_trials import (
    DIAGNOSIS_PREFIX,
    ENSEMBLE_REPORT,
    ENSEMBLE_SHOWN,
    REPORT,
    TEST_ERROR,
    candidates,
    evaluate_ensemble,
    evaluate_top_trials,
    failure,
    has_tests,
)
from orchestrator.tuning.trial import CHECKPOINTS, run_trial, trial_image_size
from trainables.backbones import input_config
from trainables.diagnosis_metrics import diagnosis_ranking_metrics
from trainables.metrics import RANKING_METRICS
from trainables.storage import ray_storage

log = logging.getLogger(__name__)

DRIVER_MEMORY = 64 * 1024**2  # a trial that drives Ray Train workers: no CPU, a token of memory
# mmap threshold 1 GiB, trim threshold 4 GiB (see LOCAL_RAY_ENV)
GLIBC_MALLOC = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"
# A local instance is never drained: no preemption watcher (one more actor process per trial).
# glibc's malloc keeps a CPU step's large tensors for the next step: one arena per process (Tune and
# Ray Train run the loop in a thread, and a thread's own arena cannot hold them), and neither mapping
# them one by one (glibc does so above its mmap threshold, 32 MB at most by its own rule) nor trimming
# the heap's top. Otherwise each step's allocations are faulted in again, page by page: measured,
# 50,000 to 130,000 page faults a step for MobileNetV2 at 160 px, and 15 to 20% of the step's time.
# Train's controller polls its workers every 0.5 s, not 2 s: it sees a trial's end, and passes each
# epoch's report on to Tune, up to 1.5 s sooner.
# Workers at nice 0, as any script's: at Ray's default of 15, each wake-up of Ray's own processes
# (dashboard, agents, monitors: nice 0) stalls a CPU trial's torch threads.
# Ray Data reads Parquet footers in a pool of actors it starts for each read, 32 by default, to
# spread the reads over a cluster's nodes: on one machine that is up to 32 processes started (about
# a CPU-second each) for what one actor's 128 concurrent reads do. Measured on 2 CPUs, the pipeline
# tests: 85 CPU-s and 55 s with 32, 54 CPU-s and 46 s with one.
LOCAL_RAY_ENV: dict[str, str] = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "MALLOC_ARENA_MAX": "1",
    "GLIBC_TUNABLES": GLIBC_MALLOC,
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_worker_niceness": "0",
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
}
# Tune warns when it saves the experiment's state more than once in 5 s, which it does at each
# checkpoint (see `new_tuner`) of trials with short epochs. A save that is slow still warns.
TUNE_DRIVER_ENV: dict[str, str] = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
PREPARED_COPIES = "prepared"
ENSEMBLE = "ensemble"  # the run folder's table of the ensemble and its members (.csv, .md)
NOTE_WIDTH = 100  # characters a line of the notes under the printed leaderboard
SHORTCUTS = "shortcuts"  # the shortcut audit's files in the run folder
AUDIT_FILE = shortcuts.AUDIT_FILE  # beside the runs in remote storage, where every node can read them


class LastEpochASHA(ASHAScheduler):
    """ASHA that never stops a trial at its last epoch: such a trial ends by itself. On Ray Train
    workers (`train_in: ray_train`) its Train controller then releases its placement group (a trial
    actor killed by Tune can leave it reserved, and the next trial's Ray Data waits for a CPU
    forever); a trial that trains in its own process has no such group."""

    def __init__(self, epochs: int, **kwargs: Any) -> None:
        super().__init__(max_t=epochs + 1, **kwargs)
        self.epochs = epochs

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if result.get(self._time_attr, 0) >= self.epochs:
            return TrialScheduler.CONTINUE  # the loop returns after its last epoch
        return decision


def prepared_dataset(spec: Spec) -> Path:
    """The prepared dataset, as a local folder: the spec's own (a copy in the cache if it is remote),
    or `source` prepared once into the cache."""
    data = spec.data
    if data.prepared is not None:
        local = local_prepared(data.prepared, data.cache)
        manifest = read_manifest(local)
        if manifest.folds != data.folds:
            raise UserError(
                f"{data.prepared} was prepared with {manifest.folds} folds, the spec asks for "
                f"{data.folds}; set data.folds: {manifest.folds} or prepare again"
            )
        return local
    size = max(trial_image_size(spec, input_config(backbone)) for backbone in spec.backbones())
    name = "+".join(source.name for source in data.sources)
    out = data.cache / f"{name}-{size}px-{data.folds}f-s{data.seed}-{_fingerprint(spec)}"
    return prepare_once(data.sources, out, size, data.folds, data.seed)


def with_dataset(spec: Spec, prepared: Path) -> Spec:
    """The spec with its held-out sources checked against the dataset's and its raw test sets
    prepared (de-duplicated against the training data, at its image size)."""
    manifest = read_manifest(prepared)
    check_task(spec, manifest, prepared)
    data = spec.data.with_sources(source_names(manifest))
    tests = [test_dataset(test, prepared, manifest, spec.data.cache) for test in spec.evaluation.test]
    evaluation = spec.evaluation.model_copy(update={"test": tests})
    return spec.model_copy(update={"data": data, "evaluation": evaluation})


def check_task(spec: Spec, manifest: Manifest, prepared: Path) -> None:
    """The dataset has the labels of the spec's task, and the scheduler's metric is one it reports."""
    labels = task_labels(manifest, spec.data.task, prepared)
    if spec.data.task != "diagnosis":
        return
    reported = [*RANKING_METRICS, *diagnosis_ranking_metrics(labels.classes)]
    if spec.scheduler.metric not in reported:
        raise UserError(
            f"scheduler.metric {spec.scheduler.metric!r} is not reported for the classes of {prepared} "
            f"({', '.join(labels.classes)}); use one of {', '.join(reported)}"
        )
    mixed = manifest.diagnoses.mixed
    if mixed or not labels.malignant:
        why = f"the images of {', '.join(mixed)} carry both labels" if mixed else "no class is malignant"
        raise UserError(
            f"{prepared}: {why}, so P(malignant) cannot be the sum of the malignant classes' "
            "probabilities; use data.task: binary, or name the malignant diagnoses (data.malignant) "
            "and prepare again"
        )


def test_dataset(test: str | SourceSpec, prepared: Path, manifest: Manifest, cache: Path) -> str:
    """A test set as PREPARED[@FOLD]: a source entry is prepared once, `--against` the training data."""
    if not isinstance(test, SourceSpec):
        return test
    source = test.source()
    layout, _, images, _ = read_sources([source])[0][1]
    listing = f"{prepared.resolve()}:{layout}:{source.describe()}:" + ",".join(
        f"{image.image_id}:{image.label}" for image in images
    )
    digest = hashlib.sha256(listing.encode()).hexdigest()[:10]
    out = cache / f"{test.name}-{manifest.image_size}px-against-{prepared.name}-{digest}"
    return str(prepare_once([source], out, manifest.image_size, manifest.folds, against=prepared))


def local_prepared(location: str, cache: Path) -> Path:
    """A prepared dataset's folder: `location` itself, or for a URI a copy in `cache/remote/`
    named by its manifest's content, so that a changed remote dataset is downloaded beside the copy
    another sweep may still be reading, never over it."""
    if not is_remote(location):
        return Path(location)
    remote = Storage(location)
    if not remote.exists(MANIFEST):
        raise UserError(f"{location} is not a prepared dataset (no {MANIFEST})")
    digest = hashlib.sha256(remote.read_text(MANIFEST).encode()).hexdigest()[:10]
    copy = cache / "remote" / f"{location.split('://', 1)[1]}-{digest}"
    if not (copy / MANIFEST).is_file():
        log.info("downloading the prepared dataset %s to %s", location, copy)
        download_whole(remote, "", copy)
    return copy


def _fingerprint(spec: Spec) -> str:
    """Changes when any image is added, removed, renamed, relabelled or rewritten, or a source is
    renamed, added or reordered."""
    data = spec.data
    listing = ""
    for source, (layout, _, images, _) in read_sources(data.sources):
        described = source.describe() if len(data.sources) > 1 else sorted(source.malignant or [])
        listing += f"{layout}:{described}\n" + "".join(
            f"{image.image_id}:{image.label}:{image.path.stat().st_size}\n" for image in images
        )
    return hashlib.sha256(listing.encode()).hexdigest()[:10]


def check_gpus(spec: Spec, local: bool) -> None:
    """A local Ray instance without GPUs would leave GPU trials pending forever: say so instead."""
    if spec.resources.gpus_per_worker and not ray.cluster_resources().get("GPU"):
        message = (
            "the spec asks for GPUs (resources.gpus_per_worker) but the Ray cluster has none; "
            "to train on CPU: --set resources.gpus_per_worker=0"
            + ("; to use a cluster started with `ray start` on this machine: --address auto" if local else "")
        )
        if local:
            raise UserError(message)
        log.warning("%s (waiting for an autoscaler to add GPU nodes)", message)


def concurrent_trials(spec: Spec) -> int:
    """How many trials fit the cluster at once, each with its workers plus room for Ray Data."""
    if spec.resources.max_concurrent_trials:
        return spec.resources.max_concurrent_trials
    res, cluster = spec.resources, ray.cluster_resources()
    fits = int(cluster.get("CPU", 1) // (res.workers_per_trial * res.cpus_per_worker + DATA_CPUS_PER_TRIAL))
    if res.gpus_per_worker:
        fits = min(fits, int(cluster.get("GPU", 0) // (res.workers_per_trial * res.gpus_per_worker)))
    return max(1, fits)


def param_space(spec: Spec) -> dict[str, Any]:
    """Every searchable key as a grid axis, fixed ones with a single value, so that each trial's
    configuration (params.json, the leaderboard) is whole. With held-out sources the validation
    split is one axis (`validation`: folds and sources), and val_fold / val_source follow from it."""
    space: dict[str, Any] = {key: tune.grid_search(values) for key, values in spec.searched().items()}
    if "validation" in space:
        space["val_fold"] = tune.sample_from(_split_value("val_fold"))
        space["val_source"] = tune.sample_from(_split_value("val_source"))
    return space


def _split_value(key: str):
    return lambda resolved: split_of({"validation": resolved.config["validation"]})[key]


def _trial_dirname(trial) -> str:
    return trial.trial_id


def scheduler_for(spec: Spec) -> TrialScheduler:
    sched = spec.scheduler
    if sched.type == "fifo":
        return FIFOScheduler()
    return LastEpochASHA(
        spec.train.epochs,
        time_attr="epoch",  # the loop's own count: it goes on across restarts and resumed runs
        grace_period=min(sched.grace_period, spec.train.epochs),
        reduction_factor=sched.reduction_factor,
    )


def shared_prepared(storage: Storage, prepared: Path) -> str:
    """Where every node can read the prepared dataset: the folder itself with local storage, else a
    copy beside the runs, uploaded once (the manifest last, so a copy with one is complete) under a
    name of its content: two datasets of one folder name never share a `shards/` folder."""
    if not storage.remote:
        return str(prepared)
    manifest = (prepared / MANIFEST).read_text()
    digest = hashlib.sha256(manifest.encode()).hexdigest()[:10]
    copy = storage.child(PREPARED_COPIES).child(f"{prepared.name}-{digest}")
    if copy.exists(MANIFEST) and copy.read_text(MANIFEST) == manifest:
        return copy.uri
    log.info("copying the prepared dataset %s to %s", prepared, copy.uri)
    copy.upload(prepared / SHARDS, SHARDS)
    copy.write_atomic(MANIFEST, manifest.encode())
    return copy.uri


def warn_if_storage_is_node_local(storage: Storage) -> None:
    if not storage.remote and sum(node["Alive"] for node in ray.nodes()) > 1:
        log.warning(
            "storage %s is a local folder but the cluster has several nodes: every node must see it "
            "at the same path (NFS); otherwise use --storage s3://... or gs://...",
            storage.uri,
        )


def run_sweep(
    spec: Spec,
    address: str | None = None,
    resume: str | None = None,
    checked: bool = False,
    quiet: bool = False,
) -> tuple[Path, Any]:
    """Run the spec's grid, or finish the unfinished trials of run `resume` (a run folder's name in
    the spec's storage); return the local folder holding the run's leaderboard, and its frame.
    `checked`: the caller ran `preflight` already (the command line does, before importing Ray).
    `quiet`: Ray's output goes to the run's log (`console.SWEEP_LOG`), the console gets the plan
    and a line per trial event; a Ray instance the sweep started is shut down before it returns."""
    storage = Storage(spec.storage)
    if not checked:
        preflight(spec, tests=not resume)
    if storage.remote:  # fail in seconds, not after preparing the data
        storage.check_writable()
    if resume:
        run_name = resume
        check_not_live(storage.child(run_name))
        record = read_run_record(storage.child(run_name))
        prepared = Path(record["prepared"])
        shared = record["shared_prepared"]
    else:
        prepared = prepared_dataset(spec)
        spec = with_dataset(spec, prepared)
        run_name = new_run_name(spec.name)
        given = spec.data.prepared
        shared = given if given and is_remote(given) else shared_prepared(storage, prepared)
        record = {"spec": spec.model_dump(mode="json"), "prepared": str(prepared), "shared_prepared": shared}
        record["ray"] = ray.__version__
    run = storage.child(run_name)
    if not storage.remote:
        storage.check_writable()
    if not resume:  # written first: it is what --resume reads
        run.write_atomic(RUN_RECORD, json.dumps(record, indent=2).encode())
    local_dir = staging_dir(run_name) if run.remote else Path(run.uri)
    manifest = parse_manifest(Storage(shared).read_text(MANIFEST), shared)
    log_path = local_dir / SWEEP_LOG
    if quiet and resume and run.remote and not log_path.exists() and run.exists(SWEEP_LOG):
        log_path.parent.mkdir(parents=True, exist_ok=True)  # resumed elsewhere: the log goes on
        log_path.write_text(run.read_text(SWEEP_LOG))
    with quiet_output(log_path) if quiet else contextlib.nullcontext(sys.stdout) as console:
        ended = ended_run_results(run, spec) if resume else None
        print_plan(console, spec, manifest, run, log_path if quiet else None, bool(resume), ended is not None)
        if spec.data.shortcut_audit and not (local_dir / SHORTCUTS / AUDIT_FILE).exists():
            warn_about_shortcuts(shortcuts.audited(prepared, local_dir / SHORTCUTS))
        with ray_instance(spec, storage, address, quiet) if ended is None else contextlib.nullcontext():
            for name, value in TUNE_DRIVER_ENV.items():
                os.environ.setdefault(name, value)
            progress = Progress(spec, console)
            frame = tune_and_publish(
                spec, run, run_name, bool(resume), shared, manifest, prepared, local_dir, progress, ended
            )
    if quiet and run.remote:  # the log again, whole
        run.upload(log_path, SWEEP_LOG)
    return local_dir, frame


@contextlib.contextmanager
def ray_instance(spec: Spec, storage: Storage, address: str | None, quiet: bool) -> Iterator[None]:
    """The Ray cluster at `address` (or `RAY_ADDRESS`) joined, else a Ray instance of the sweep's
    own started, and the spec checked against it; with `quiet`, one the sweep started is shut down
    at the end, while its output still goes to the run's log."""
    joined = address is not None or "RAY_ADDRESS" in os.environ  # a cluster (e.g. under `ray job submit`)
    ours = not ray.is_initialized()
    if ours:
        # no address: a Ray instance of this sweep's own, not whichever cluster the machine last started
        if not joined:
            for name, value in LOCAL_RAY_ENV.items():  # its processes inherit the driver's environment
                os.environ.setdefault(name, value)
        ray.init(address=address if joined else "local", configure_logging=False)
    try:
        check_gpus(spec, local=not joined)
        warn_if_storage_is_node_local(storage)
        yield
    finally:
        if quiet and ours:
            ray.shutdown()


def ended_run_results(run: Storage, spec: Spec) -> tune.ResultGrid | None:
    """A run's results, read from Tune's saved state, when that holds each trial of its grid,
    ended (finished, or stopped by the scheduler): resuming it then publishes its leaderboard
    again, and needs no Ray. None otherwise, and when the state cannot be read: Tune's own restore
    then resumes the run, or says what is wrong."""
    try:
        path, fs = ray_storage(run.uri)
        analysis = tune.ExperimentAnalysis(path, storage_filesystem=fs)
    except Exception as err:  # no state saved yet, or one this version of Ray cannot read
        log.info("%s: Tune's saved state was not read here (%s)", run.uri, err)
        return None
    trials = analysis.trials
    if len(trials) == len(spec.grid()) and all(trial.status == Trial.TERMINATED for trial in trials):
        log.info("resuming %s: all its trials ended", run.uri)
        return tune.ResultGrid(analysis)
    return None


def tune_and_publish(
    spec: Spec,
    run: Storage,
    run_name: str,
    resume: bool,
    shared: str,
    manifest: Manifest,
    prepared: Path,
    local_dir: Path,
    progress: Progress,
    ended: tune.ResultGrid | None = None,
) -> Any:
    """Run the grid (or a resumed run's unfinished trials) on the Ray instance joined, then publish
    the leaderboard and test its best trials; returns the leaderboard. `ended`: the results of a
    resumed run whose trials have all ended (`ended_run_results`), published with no Ray instance."""
    try:
        with beating(run):  # a second driver on this run refuses to start
            results = ended
            if results is None:
                results = run_trials(spec, run, run_name, resume, shared, manifest, progress)
            frame = leaderboard.build(results, spec, leaderboard.checkpoint_metas(run.child(CHECKPOINTS)))
            frame = finish(frame, spec, manifest, prepared, shared, local_dir, run)
            histories = {Path(result.path).name: result.metrics_dataframe for result in results}
            try:
                write_sweep_page(local_dir / REPORT, frame, histories, spec, run_name)
            except Exception as err:  # the leaderboard is published: the page is a view of it
                log.warning("the sweep's page was not written: %s", err, exc_info=True)
            if run.remote:
                run.upload(local_dir / REPORT, REPORT)
            return frame
    except (StorageError, OSError) as err:  # Ray Tune's own reads and writes of the storage raise OSError
        why = err if isinstance(err, StorageError) else f"the storage failed: {reason(err)}"
        kept = f" (what the driver wrote is in {local_dir})" if run.remote else ""
        raise StorageError(
            f"{why}. The trials' results and checkpoints are in {run.uri}{kept}; when the storage "
            f"works again, finish the run with: python -m orchestrator.sweep --resume {run.uri}"
        ) from None


def run_trials(
    spec: Spec, run: Storage, run_name: str, resume: bool, shared: str, manifest: Manifest, progress: Progress
) -> tune.ResultGrid:
    """Tune runs the grid, or a resumed run's unfinished trials, on the Ray instance joined."""
    trainable = trial_runner(spec, shared, manifest, run)
    if resume:
        path, fs = ray_storage(run.uri)
        tuner = tune.Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
        # this session's callbacks, not the saved ones (the console is not saved with them)
        tuner._local_tuner.get_run_config().callbacks = [progress, TrialCurves()]
        log.info("resuming %s: unfinished trials go on from their last checkpoints", run.uri)
    else:
        tuner = new_tuner(spec, trainable, run_name, [progress, TrialCurves()])
        log.info("sweep %s: %d trials -> %s", run_name, len(spec.grid()), run.uri)
    return tuner.fit()


def trial_runner(spec: Spec, shared: str, manifest: Manifest, run: Storage) -> Any:
    """What Tune runs for each trial: `run_trial` with the sweep's arguments and the rows it reads,
    held in Ray's object store when they fit (`pipeline.shared_rows`), already cut into the sweep's
    validation splits when those fit too (`pipeline.held_splits`)."""
    shard_bytes = sum(Storage(shared).sizes(SHARDS).values())
    with_diagnosis = spec.data.task == "diagnosis"
    rows = shared_rows(shared, bool(spec.data.val_sources), shard_bytes, with_diagnosis)
    splits = None if rows is None else held_splits(rows, spec.data.splits(), spec.data.test_fold, shard_bytes)
    inputs = {backbone: input_config(backbone) for backbone in spec.backbones()}
    return tune.with_resources(
        tune.with_parameters(
            run_trial,
            spec=spec,
            prepared=shared,
            manifest=manifest,
            run_uri=run.uri,
            inputs=inputs,
            rows=None if splits else rows,
            splits=splits,
        ),
        trial_resources(spec.resources),
    )


def trial_resources(resources: ResourcesSpec) -> dict[str, float]:
    """What Tune reserves for a trial's own process: the worker's CPU (and GPU) when it trains
    itself; else a token, since Ray Train reserves its workers' resources."""
    if resources.in_trial:
        return {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker}
    return {"cpu": 0, "memory": DRIVER_MEMORY}


def finish(
    frame: Any, spec: Spec, manifest: Manifest, prepared: Path, shared: str, local_dir: Path, run: Storage
) -> Any:
    """Publish the leaderboard, test its best trials, publish it again with their test columns; a
    test that fails leaves the leaderboard whole, its reason in the `test_error` column of the
    trials it was to test. Returns the final leaderboard."""
    held_out = held_out_table(spec, frame, manifest)
    publish(frame, spec, local_dir, run, held_out)
    frame = tested(frame, spec, prepared, shared, local_dir, held_out)
    if spec.evaluation.ensemble is not None:
        ensembled(frame, spec, prepared, shared, local_dir)
    try:
        write_hparams(frame, spec, local_dir, run)
    except StorageError:
        raise
    except Exception as err:  # the leaderboard is published: HParams is a view of it
        log.warning("TensorBoard's HParams were not written: %s", err, exc_info=True)
    publish(frame, spec, local_dir, run, held_out)
    return frame


def tested(
    frame: Any, spec: Spec, prepared: Path, shared: str, local_dir: Path, held_out: tuple[Any, str] | None
) -> Any:
    """The leaderboard with its best trials tested, or with `test_error` where that failed (with no
    test set, the best trial's report alone: a failure is a warning)."""
    try:
        if not prepared.is_dir():  # resumed on another machine: evaluate on the shared copy
            prepared = local_copy(shared, staging_dir(PREPARED_COPIES))
        return evaluate_top_trials(frame, spec, prepared, local_dir, report_sections(held_out, local_dir))
    except StorageError:
        raise
    except Exception as err:
        if not has_tests(spec):
            log.warning("the best trial's report was not written: %s", err, exc_info=True)
            return frame
        # the leaderboard is published: say why the tests failed, keep the run
        frame = frame.copy()
        frame.loc[candidates(frame).head(spec.evaluation.top).index, TEST_ERROR] = failure(err)
        return frame


def ensembled(frame: Any, spec: Spec, prepared: Path, shared: str, local_dir: Path) -> None:
    """`evaluation.ensemble` tested: `ensemble.csv` (values and interval bounds) and `ensemble.md`
    (a row per model: the ensemble, then its members) in the run folder, its report beside the best
    trial's. A failure is logged: the leaderboard stands without it."""
    try:
        if not prepared.is_dir():  # resumed on another machine: evaluate on the shared copy
            prepared = local_copy(shared, staging_dir(PREPARED_COPIES))
        table = evaluate_ensemble(frame, spec, prepared, local_dir)
    except StorageError:
        raise
    except Exception as err:
        log.error("the ensemble was not tested: %s", failure(err))
        return
    if table is not None:
        (local_dir / f"{ENSEMBLE}.csv").write_text(table.to_csv(index=False))
        (local_dir / f"{ENSEMBLE}.md").write_text(leaderboard.to_markdown(ensemble_view(table)) + "\n")


def ensemble_view(table: Any) -> Any:
    """The ensemble table as the console and `ensemble.md` show it: who each row is, then per test
    set its ROC-AUC, sensitivity and specificity and a diagnosis model's metrics, as
    `value [low, high]`."""
    shown = table[[c for c in table if not c.startswith("test")]].copy()
    for column in [c for c in table if c.startswith("test") and f"{c}_low" in table]:
        metric = column.partition("_")[2]
        if metric in ENSEMBLE_SHOWN or metric.startswith(DIAGNOSIS_PREFIX):
            bounds = zip(table[column], table[f"{column}_low"], table[f"{column}_high"], strict=True)
            shown[column] = [f"{value:.3f} [{low:.3f}, {high:.3f}]" for value, low, high in bounds]
    return shown


def warn_about_shortcuts(result: dict) -> None:
    (log.warning if result["warnings"] else log.info)("shortcut audit: %s", shortcuts.headline(result))


def held_out_table(spec: Spec, frame: Any, manifest: Manifest) -> tuple[Any, str] | None:
    """The leave-one-source-out leaderboard and its note (what each held-out source holds)."""
    if not spec.data.val_sources:
        return None
    return leaderboard.by_held_out_source(frame), leaderboard.held_out_note(manifest, spec.data.val_sources)


def report_sections(held_out: tuple[Any, str] | None, local_dir: Path) -> list:
    """What the best trial's report adds to its own metrics: held-out sources, the shortcut audit."""
    from orchestrator.evaluation.report import Section

    sections = []
    if held_out is not None:
        table, note = held_out
        text = (
            "Every configuration trained on the other sources and validated on each held-out one "
            f"(final epoch), beside its in-source validation: the gap is how far the model travels. {note}"
        )
        scores = [c for c in table if c.startswith(leaderboard.HELD_OUT_SCORES)]
        # the configuration's columns that differ (the weights are on the leaderboard), the scores
        varying = [
            c for c in table if c not in scores and c != "weights" and table[c].nunique(dropna=False) > 1
        ]
        if sum(c.startswith("held_out_") for c in scores) == 2:  # one source and its count: no worst/mean
            scores = [c for c in scores if c not in ("worst_held_out", "mean_held_out")]
        sections.append(Section("Held-out sources", text, table[varying + scores].round(3)))
    if (local_dir / SHORTCUTS / AUDIT_FILE).exists():
        result = json.loads((local_dir / SHORTCUTS / AUDIT_FILE).read_text())
        sections.append(shortcuts.report_section(result, local_dir / SHORTCUTS))
    return sections


def new_tuner(spec: Spec, trainable: Any, run_name: str, callbacks: list[tune.Callback]) -> tune.Tuner:
    storage_path, storage_filesystem = ray_storage(spec.storage)
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.scheduler.metric,
            mode=spec.scheduler.resolved_mode,
            scheduler=scheduler_for(spec),
            max_concurrent_trials=concurrent_trials(spec),
            trial_dirname_creator=_trial_dirname,
            # a trial that trains in its own process hands that process, torch and timm imported,
            # to the next trial: it starts training in about a second, not ten
            reuse_actors=spec.resources.in_trial,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            verbose=1,
            callbacks=callbacks,
            # a trial whose driver died with its node starts again, from its last checkpoint
            failure_config=tune.FailureConfig(max_failures=spec.train.max_failures),
            # a trial that trains in its own process reports, with each epoch, a Tune checkpoint that
            # names the epoch's checkpoint (`trainables.session`). A restart needs the newest; and
            # with one kept, Tune saves the experiment's state at each, so a --resume after a killed
            # driver neither trains a finished trial again nor reports an epoch twice
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def publish(frame: Any, spec: Spec, local_dir: Path, run: Storage, held_out: tuple[Any, str] | None) -> None:
    """Write the leaderboards (the cross-validation one first: `leaderboard.csv` marks a finished
    run) and, for remote storage, upload what the driver wrote, leaderboards last."""
    out = Storage(str(local_dir))
    if len(spec.data.val_folds) > 1:
        cv = leaderboard.by_configuration(frame, spec.scheduler.metric, spec.scheduler.resolved_mode)
        leaderboard.write(cv, out, f"{LEADERBOARD}-cv")
    if held_out is not None:
        table, note = held_out
        leaderboard.write(table, out, f"{LEADERBOARD}-loso", note=note)
    leaderboard.write(frame, out, LEADERBOARD)
    if run.remote:
        files = sorted(local_dir.rglob("*"), key=lambda path: (path.name.startswith(LEADERBOARD), str(path)))
        for path in (path for path in files if path.is_file()):
            run.upload(path, path.relative_to(local_dir).as_posix())


def summarise(spec: Spec, run_dir: Path, frame: Any) -> int:
    """Print the leaderboard (and the cross-validation and held-out ones); the exit status: 1 when
    every trial failed or a test of the best trials did."""
    metric = spec.scheduler.metric
    where = f"{spec.storage}/{run_dir.name}"
    print(f"\nLeaderboard ({metric}, best first) - full table: {where}/{LEADERBOARD}.md\n")
    print(leaderboard.to_markdown(leaderboard.summary(frame, metric)))
    for note in leaderboard.notes(frame):
        print(textwrap.fill(note, width=NOTE_WIDTH))
    if len(spec.data.val_folds) > 1:
        cv = leaderboard.by_configuration(frame, metric, spec.scheduler.resolved_mode)
        print(f"\nCross-validation over folds {spec.data.val_folds} (final epoch, mean and std):\n")
        print(leaderboard.to_markdown(cv))
    if (run_dir / f"{LEADERBOARD}-loso.md").exists():
        print("\nHeld-out sources (final epoch ROC-AUC on each, worst first):\n")
        print((run_dir / f"{LEADERBOARD}-loso.md").read_text())
    print(f"\nTensorBoard: tensorboard --logdir {where}")
    if (run_dir / f"{ENSEMBLE}.md").exists():
        members = len((run_dir / f"{ENSEMBLE}.csv").read_text().splitlines()) - 2  # a header, the ensemble
        which = (
            "fold models of the best configuration" if spec.evaluation.ensemble == "folds" else "best trials"
        )
        print(f"\nThe ensemble of {members} {which} and each of them on the test sets:\n")
        print((run_dir / f"{ENSEMBLE}.md").read_text())
    pages = (
        (REPORT, SWEEP_PAGE, "The sweep's page"),
        (REPORT, "report.html", "The best trial's report"),
        (ENSEMBLE_REPORT, "report.html", "The ensemble's report"),
    )
    for folder, page, what in pages:
        if (run_dir / folder / page).exists():
            print(f"{what}: {where}/{folder}/{page}")
    if (run_dir / SWEEP_LOG).exists():
        print(f"Ray's output: {where}/{SWEEP_LOG}")
    unfinished = int((frame["status"] == leaderboard.UNFINISHED).sum())
    if unfinished:
        print(f"\nThe sweep was interrupted: {unfinished} trials are unfinished. Finish them with:")
        print(f"python -m orchestrator.sweep --resume {where}")
    failed = int((frame["status"] == "failed").sum())
    if failed == len(frame):
        print("every trial failed; see the 'error' column of the leaderboard")
        return 1
    if TEST_ERROR in frame and frame[TEST_ERROR].notna().any():
        print(f"\nTesting the best trials failed: {frame[TEST_ERROR].dropna().iloc[0]}")
        print("The leaderboard above is complete; test its checkpoints again with isic-evaluate.")
        return 1
    return 0
