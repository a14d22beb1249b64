"""Run an experiment spec as a Ray Tune grid with ASHA early stopping; write the leaderboard.

    python -m orchestrator.sweep [SPEC.yaml] [--set KEY=VALUE ...] [--storage DIR|URI] [--address ADDR]
    python -m orchestrator.sweep SPEC.yaml --resume        # the spec's latest unfinished run
    python -m orchestrator.sweep --resume RUN_DIR|RUN_URI

Without SPEC it runs the embedded default, `experiments/default.yaml`. Results land in
`<storage>/<name>-<time>/` (a folder, or `s3://`/`gs://` storage): run.json (what ran), the
leaderboard (CSV and Markdown), TensorBoard event files (HParams tab: the leaderboard; Scalars:
the curves) and the checkpoints. A resumed run finishes its unfinished trials, each from its last
checkpoint, and leaves finished ones as they are.

The console gets the plan, a line per trial start, epoch, early stop and failure, and the
leaderboard; Ray's own output goes to the run's sweep.log (`--verbose`: to the console).

A mistake in the spec or the arguments is reported before Ray, torch or timm are imported (in about
a second); the run itself is `orchestrator.driver`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.config import Spec, load_spec
from orchestrator.errors import UserError, command
from orchestrator.run_record import read_run_record, unfinished_run
from orchestrator.storage import Storage, normalise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isic-sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", help="experiment spec (default: experiments/default.yaml)")
    parser.add_argument("--storage", help="where run folders go (overrides the spec's 'storage')")
    parser.add_argument("--address", help="Ray cluster to join, e.g. 'auto' (default: start a local one)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. --set train.epochs=3 --set 'search.lr=[1e-3,3e-4]' (repeatable)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print Ray's own output (Tune's status table, worker logs) here, not to the run's sweep.log",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="RUN",
        help="finish an interrupted run: SPEC's latest unfinished run, or the run folder/URI RUN",
    )
    args = parser.parse_args(argv)
    if args.resume:
        spec, resume = resumed_run(args)
    else:
        spec, resume = load_spec(args.spec, args.set), None
        if args.storage:
            spec = spec.model_copy(update={"storage": normalise(args.storage, Path.cwd())})
    from orchestrator.preflight import preflight  # torch and timm: for a spec that parsed

    # a resumed run's test sets were prepared when it started: if they are gone, testing says so
    preflight(spec, tests=not resume)
    from orchestrator.driver import run_sweep, summarise  # Ray: for a spec that passed preflight

    run_dir, frame = run_sweep(spec, args.address, resume, checked=True, quiet=not args.verbose)
    return summarise(spec, run_dir, frame)


def resumed_run(args: argparse.Namespace) -> tuple[Spec, str]:
    """The spec a run was started with (from its run.json) and the run's name in its storage."""
    if args.set:
        raise UserError("--set cannot change a run being resumed; start a new run instead")
    if args.resume is True:
        if args.spec is None:
            raise UserError("--resume needs the spec (SPEC --resume) or the run folder (--resume RUN)")
        given = load_spec(args.spec)
        storage = normalise(args.storage, Path.cwd()) if args.storage else given.storage
        name = unfinished_run(Storage(storage), given.name)
    else:
        if args.resume.endswith((".yaml", ".yml")):
            raise UserError(f"--resume takes a run folder; for {args.resume}'s latest run: SPEC --resume")
        storage, _, name = normalise(args.resume, Path.cwd()).rpartition("/")
    record = read_run_record(Storage(storage).child(name))
    spec = Spec.model_validate({**record["spec"], "storage": storage})
    return spec, name


cli = command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    cli()
