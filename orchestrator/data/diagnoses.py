"""The diagnosis classes of a dataset being prepared: the source's own labels (ISIC 2017: melanoma,
seborrheic keratosis, nevus; ISIC 2018 and 2019: 7 and 8 classes; archive and 2020 exports: the
`diagnosis` field), kept next to the binary label so that one preparation serves both tasks
(`data.task: binary | diagnosis`). The manifest's `diagnoses` section holds them with their counts;
folds are stratified by diagnosis, which refines the binary label.
"""

from __future__ import annotations

import numpy as np

from orchestrator.data.folds import fold_counts


def diagnosis_labels(diagnoses: list[str]) -> tuple[list[str], np.ndarray] | None:
    """The diagnosis classes (sorted) and each image's index among them; None unless every image
    has a diagnosis (a folder-per-class source has none)."""
    if not diagnoses or not all(diagnoses):
        return None
    classes = sorted(set(diagnoses))
    index = {name: i for i, name in enumerate(classes)}
    return classes, np.array([index[name] for name in diagnoses])


def diagnoses_section(
    classes: list[str], index: np.ndarray, labels: np.ndarray, fold: np.ndarray, sources: list[str]
) -> dict:
    """The manifest's `diagnoses`: the classes, those called malignant (most of their images carry
    the malignant label), those whose images carry both labels (`mixed`), and counts as `counts`."""
    malignant_share = [float(labels[index == i].mean()) for i in range(len(classes))]
    return {
        "classes": classes,
        "malignant": [name for name, share in zip(classes, malignant_share, strict=True) if share >= 0.5],
        "mixed": [name for name, share in zip(classes, malignant_share, strict=True) if 0 < share < 1],
        "counts": fold_counts(index, fold, classes, sources),
    }
