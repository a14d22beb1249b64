"""Cross-validation folds of a prepared dataset: stratified, with every group kept in one fold."""

from __future__ import annotations

import warnings

import numpy as np

from orchestrator.errors import UserError


def assign_folds(
    labels: np.ndarray,
    groups: np.ndarray,
    folds: int,
    seed: int,
    strata: np.ndarray | None = None,
    classes: list[str] | None = None,
    every_class: bool = True,
) -> np.ndarray:
    """Folds stratified by label (and by `strata`, e.g. the source, when given) in which every group
    (a duplicate cluster, patient or lesion) stays in one fold, and (`every_class`: data to train
    and validate on) every class of `labels` is in every fold. `classes` names the labels in errors."""
    if len(labels) == 0:
        raise UserError("no images to split into folds")
    name = (lambda label: classes[label]) if classes else str
    # a group is one unit of the split: a class needs a group of its own in every fold
    units = {label: len(set(groups[labels == label].tolist())) for label in sorted(set(labels.tolist()))}
    if len(set(groups.tolist())) < folds:
        raise UserError(
            f"too few images for {folds} folds: {len(labels)} in {len(set(groups.tolist()))} groups"
        )
    scarce = {label: count for label, count in units.items() if count < folds} if every_class else {}
    if scarce:
        found = ", ".join(f"{count} of {name(label)}" for label, count in scarce.items())
        fewest = min(scarce.values())
        change = f"set data.folds to at most {fewest}" if fewest >= 2 else "folds need at least 2 of each"
        raise UserError(
            f"too few images for {folds} folds with every class in every fold: {found} (an image, or a "
            f"group of images of one patient, lesion or duplicate cluster); {change}, or add images"
        )
    from sklearn.model_selection import StratifiedGroupKFold  # 2 s of imports: only when cutting folds

    fold = np.empty(len(labels), dtype=np.int8)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    stratify = labels if strata is None else labels * (int(strata.max()) + 1) + strata
    if np.unique(stratify, return_counts=True)[1].max() < folds:  # too fine to split: by label alone
        stratify = labels
    with warnings.catch_warnings():  # a rare diagnosis: the check below says what matters
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        for index, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), stratify, groups)):
            fold[val] = index
    for index in range(folds if every_class else 0):
        missing = [name(label) for label in units if not (labels[fold == index] == label).any()]
        if missing:
            raise UserError(
                f"fold {index} has no {' or '.join(missing)} image: the groups (patients, lesions, "
                "duplicate clusters) could not be spread over the folds; use fewer folds, another "
                "data.seed, or add images"
            )
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
