"""The shortcut audit flags a label that can be read off the image border, and only then."""

import contextlib
import io
import json
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from orchestrator.data.prepare import prepare
from orchestrator.data.shortcuts import WARN_AT, main
from tests.helpers import SAMPLE

PER_CLASS = 60


def same_collection_split(destination: Path, corner: bool) -> Path:
    """120 benign images of one collection, split at random into 'benign' and 'malignant': no image
    content tells the two apart. With `corner`, every 'malignant' one gets a green corner patch,
    outside the central region the border view blanks: a synthetic shortcut."""
    images = sorted((SAMPLE / "benign").glob("*.jpg"))
    random.Random(0).shuffle(images)
    for name, chosen in (("benign", images[:PER_CLASS]), ("malignant", images[PER_CLASS : 2 * PER_CLASS])):
        (destination / name).mkdir(parents=True)
        for path in chosen:
            if corner and name == "malignant":
                with Image.open(path) as image:
                    marked = image.convert("RGB")
                marked.paste((0, 200, 0), (0, 0, marked.width // 8, marked.height // 8))
                marked.save(destination / name / path.name, quality=95)
            else:
                shutil.copy(path, destination / name / path.name)
    return destination


@pytest.fixture(scope="module", params=[False, True], ids=["no-corner", "corner"])
def audited(request, tmp_path_factory):
    """(corner?, the audit's result, its output folder, what the CLI printed), through the CLI."""
    root = tmp_path_factory.mktemp("corner" if request.param else "plain")
    prepared = root / "prepared"
    prepare(
        same_collection_split(root / "source", request.param), prepared, image_size=64, folds=4, workers=1
    )
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main([str(prepared), "--bootstrap", "200", "--out", str(root / "audit")]) == 0
    result = json.loads((root / "audit" / "shortcuts.json").read_text())
    return request.param, result, root / "audit", printed.getvalue()


def test_a_coloured_corner_on_one_class_is_flagged_and_nothing_without_it(audited):
    corner, result, _, printed = audited
    views = result["views"]
    assert set(views) == {"whole", "border", "centre", "trivial"}  # one source: no source view
    for row in views.values():
        assert row["low"] <= row["auc"] <= row["high"]
    if corner:
        assert views["border"]["auc"] >= 0.9, views
        assert "border" in result["warnings"] and views["border"]["verdict"].startswith("WARNING")
        assert "SHORTCUT WARNING" in printed and "border only" in printed
    else:
        assert result["warnings"] == [], views
        assert max(row["auc"] for row in views.values()) < WARN_AT, views
        assert "No strong shortcut found" in printed


def test_the_audit_shows_what_the_border_and_centre_views_see(audited):
    _, _, out, _ = audited
    with Image.open(out / "shortcuts.png") as picture:
        assert picture.width > 400 and len(set(picture.convert("L").getdata())) > 50
    assert "| border |" in (out / "shortcuts.md").read_text()
