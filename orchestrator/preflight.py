"""What a sweep checks before Ray starts: backbones, their weights, and the test sets."""

from __future__ import annotations

from orchestrator.config import SourceSpec, Spec
from orchestrator.data.selection import check_data
from orchestrator.data.sources import read_sources
from orchestrator.errors import UserError
from orchestrator.hub_check import check_weights
from trainables.backbones import WeightSource, check_backbone


def preflight(spec: Spec, tests: bool = True) -> None:
    """Everything that can be checked before Ray starts: backbones, their weights, and (`tests`)
    the test sets. A weights mapping may name backbones the grid does not search (a narrowed grid),
    but no unknown ones."""
    if isinstance(spec.train.weights, dict):
        for name in spec.train.weights:
            if name != "default":
                check_backbone(name)
    for backbone in spec.backbones():
        check_weights(backbone, WeightSource.parse(spec.train.weights_for(backbone)))
    if tests:
        check_test_sets(spec)


def check_test_sets(spec: Spec) -> None:
    """A test set that cannot be read fails now, not after the training."""
    read_sources([test.source() for test in spec.evaluation.test if isinstance(test, SourceSpec)])
    for test in spec.evaluation.test:
        if not isinstance(test, SourceSpec):
            try:
                check_data(test)
            except UserError as err:
                raise UserError(f"evaluation.test: {err}") from None
