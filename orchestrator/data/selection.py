"""A DATA argument (of `isic-evaluate`, and of a spec's `evaluation.test`): a prepared dataset with
what '@' selects in it (PREPARED[@FOLD][,SOURCE]), or a raw source; checked without preparing it."""

from __future__ import annotations

from pathlib import Path

from orchestrator.data.dataset_format import MANIFEST, read_manifest
from orchestrator.data.sources import read_source
from orchestrator.errors import UserError


def check_data(text: str) -> tuple[Path, int | None, str | None]:
    """(folder, fold or None, source or None) of a DATA argument, checked without preparing it: a
    prepared dataset and what '@' selects in it, or a raw source that can be read."""
    path_text, at, selection = text.partition("@")
    path = Path(path_text)
    if not path.exists():
        raise UserError(f"data not found: {path}")
    parts = [part for part in selection.split(",") if part]
    folds, named = [p for p in parts if p.isdigit()], [p for p in parts if not p.isdigit()]
    if len(folds) > 1 or len(named) > 1 or (at and not parts):
        raise UserError(f"{text}: after '@' give one fold, one source or FOLD,SOURCE (e.g. @0,isic2017)")
    fold, source = (int(folds[0]) if folds else None), (named[0] if named else None)
    if (path / MANIFEST).exists():
        manifest = read_manifest(path)
        if fold is not None and not 0 <= fold < manifest.folds:
            raise UserError(f"{text}: {path} has folds 0 to {manifest.folds - 1}")
        names = [s.name for s in manifest.sources]
        if source is not None and source not in names:
            raise UserError(
                f"{text}: {path} has no source '{source}' (its sources: {', '.join(names) or 'none named'})"
            )
        return path, fold, source
    if selection:
        raise UserError(f"{text}: '@' selects folds or sources of a prepared dataset; {path} is not one")
    read_source(path)
    return path, None, None
