"""Cross-validation folds of a prepared dataset: stratified, with every group kept in one fold."""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from orchestrator.errors import UserError


def assign_folds(
    labels: np.ndarray, groups: np.ndarray, folds: int, seed: int, strata: np.ndarray | None = None
) -> np.ndarray:
    """Folds stratified by label (and by `strata`, e.g. the source, when given) in which every group
    (a duplicate cluster, patient or lesion) stays in one fold."""
    counts = Counter(labels.tolist())
    if min(counts.values()) < folds:
        raise UserError(
            f"too few images for {folds} folds: class counts {dict(sorted(counts.items()))}; "
            "use fewer folds or add images"
        )
    fold = np.empty(len(labels), dtype=np.int8)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    stratify = labels if strata is None else labels * (int(strata.max()) + 1) + strata
    for index, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), stratify, groups)):
        fold[val] = index
    return fold


def fold_counts(labels: np.ndarray, fold: np.ndarray, classes: list[str], sources: list[str]) -> dict:
    """Images per class: in all, per fold, per source and per source and fold (the manifest's
    `counts`; fold keys are text, as JSON keys are)."""

    def per_class(mask: np.ndarray) -> dict[str, int]:
        return {name: int((mask & (labels == i)).sum()) for i, name in enumerate(classes)}

    source = np.array(sources)
    folds = sorted(set(fold.tolist()))
    return {
        "total": int(len(labels)),
        "per_class": per_class(np.ones(len(labels), dtype=bool)),
        "per_fold": {str(f): per_class(fold == f) for f in folds},
        "per_source": {name: per_class(source == name) for name in dict.fromkeys(sources)},
        "per_source_fold": {
            name: {str(f): per_class((source == name) & (fold == f)) for f in folds}
            for name in dict.fromkeys(sources)
        },
    }
