"""The report's page (a Jinja2 template, autoescaped) and the metric names every reader shares."""

import math
import re
import typing

import numpy as np
import pandas as pd

from orchestrator.config import EvaluationSpec, parse_spec
from orchestrator.evaluation.clinical import Targets
from orchestrator.evaluation.evaluate import Scored, metrics_with_intervals
from orchestrator.evaluation.report import LABELS, Section, short_label, write_report
from orchestrator.tuning import leaderboard
from tests.helpers import spec_dict
from trainables.metrics import (
    RANKING_METRICS,
    REPORTED_METRICS,
    THRESHOLD_FREE_METRICS,
    THRESHOLD_METHODS,
    THRESHOLD_METRICS,
)


def test_every_reader_takes_the_names_from_the_metrics_module():
    for metric in RANKING_METRICS:
        assert parse_spec(spec_dict(scheduler={"metric": metric})).scheduler.metric == metric
    assert typing.get_args(EvaluationSpec.model_fields["threshold"].annotation) == THRESHOLD_METHODS
    assert set(leaderboard.CV_METRICS) <= set(REPORTED_METRICS)
    assert set(leaderboard.SUMMARY_METRICS) <= set(REPORTED_METRICS)
    assert set(LABELS) == set(THRESHOLD_FREE_METRICS) | set(THRESHOLD_METRICS)


def test_the_page_holds_every_table_and_picture_and_escapes_what_it_shows(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    scored = [Scored("<b>set</b>", [f"id{i}" for i in range(60)], labels, scores)]
    summary = {
        "checkpoint": "runs/<script>alert(1)</script>",
        "backbone": "resnet50",
        "threshold": 0.5,
        "threshold_origin": "stored",
        "tta": False,
        "bootstrap": 5,
        "targets": Targets().__dict__,
        "datasets": {"<b>set</b>": {"images": 60, "malignant": int(labels.sum())}},
        "metrics": {"<b>set</b>": metrics_with_intervals(scored[0], 0.5, Targets(), 5, 0)},
    }
    table = pd.DataFrame({"view": ["whole & <all>"], "auc": [0.75]})
    section = Section("Audit <one>", "a & b", table, tmp_path / "roc.png", "the audit's picture")
    write_report(tmp_path / "out", summary, scored, [])  # draws roc.png for the section
    (tmp_path / "roc.png").write_bytes((tmp_path / "out" / "roc.png").read_bytes())
    page = write_report(tmp_path / "out", summary, scored, [section]).read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;set&lt;/b&gt;" in page
    assert "<h2>Audit &lt;one&gt;</h2>" in page and "<p>a &amp; b</p>" in page
    assert "whole &amp; &lt;all&gt;" in page and page.count("<table") == 1 + 3 + 1  # header, metrics, audit
    for title in ("Threshold-free", "At the chosen threshold", "At threshold 0.5", "Pictures"):
        assert f"<h2>{title}</h2>" in page
    assert len(re.findall(r'<img src="data:image/png;base64,[^"]+"', page)) == 5  # 3 curves, 1 matrix, audit
    assert "<figcaption>the audit&#39;s picture</figcaption>" in page


def test_datasets_are_named_by_short_labels_and_a_threshold_chosen_on_them_is_called_optimistic(tmp_path):
    cache = "/home/me/project/prepared/isic-sample-128px-5f-s0-b12853816a"
    assert short_label(f"{cache}@0") == "isic-sample fold 0"
    assert short_label(f"{cache}@2,kaggle") == "isic-sample fold 2, source kaggle"
    assert short_label("/data/isic2017-test/") == "isic2017-test"
    against = "/p/prepared/isic2017-224px-against-kaggle-224px-5f-s0-0123456789-abcdef0123@2"
    assert short_label(against) == "isic2017 fold 2"  # a test set prepared against the training data
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    names = [f"{cache}@0", "/data/isic2017-test"]
    scored = [Scored(name, [f"id{i}" for i in range(40)], labels, scores) for name in names]
    summary = {
        "checkpoint": "runs/x/checkpoint_000003",
        "backbone": "resnet50",
        "threshold": 0.5,
        "threshold_origin": f"chosen on {names[0]} (Youden's J)",
        "tta": False,
        "bootstrap": 5,
        "targets": Targets().__dict__,
        "datasets": {name: {"images": 40, "malignant": int(labels.sum())} for name in names},
        "metrics": {name: metrics_with_intervals(scored[0], 0.5, Targets(), 5, 0) for name in names},
    }
    page = write_report(tmp_path / "out", summary, scored).read_text()
    assert "<th>isic-sample fold 0</th>" in page and "<th>isic2017-test</th>" in page  # table columns
    assert f"isic-sample fold 0: 40 images, {int(labels.sum())} malignant ({names[0]})" in page
    assert (
        "chosen on isic-sample fold 0 (Youden&#39;s J); its figures on isic-sample fold 0 are optimistic"
        in page
    )
    assert "Confusion matrix, isic-sample fold 0" in page


def test_the_rungs_are_where_rays_asha_compares_trials_before_the_last_epoch():
    from ray.tune.schedulers.async_hyperband import _Bracket

    from orchestrator.config import asha_rungs, parse_spec
    from tests.helpers import spec_dict

    for epochs, grace, factor in ((6, 2, 2), (10, 1, 3), (8, 2, 2), (10, 1, 2.5), (3, 1, 4), (1, 1, 2)):
        spec = parse_spec(
            spec_dict(
                train={"epochs": epochs},
                scheduler={"type": "asha", "grace_period": grace, "reduction_factor": factor},
            )
        )
        # Ray's own milestones, as LastEpochASHA sets them (max_t one past the last epoch)
        milestones = [m for m, _ in _Bracket(min(grace, epochs), epochs + 1, factor, 0)._rungs]
        expected = sorted({math.ceil(m) for m in milestones if math.ceil(m) < epochs})
        assert asha_rungs(spec) == expected, (epochs, grace, factor)
    assert asha_rungs(parse_spec(spec_dict(train={"epochs": 6}, scheduler={"type": "asha"}))) != []
    assert asha_rungs(parse_spec(spec_dict(train={"epochs": 6}, scheduler={"type": "fifo"}))) == []
