"""A contact sheet of duplicate pairs found by `prepare`, so a person can judge the threshold.

    isic-duplicate-sheet PREPARED --out pairs.png [--pairs 24]

Shows the near-duplicate pairs inside PREPARED, or, for a dataset prepared `--against` a
reference, the pairs it dropped (its image beside the reference's), with their Hamming distance.
Pairs are spread over the whole range of distances, the closest calls included.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pyarrow.dataset as pads
from PIL import Image, ImageDraw

from orchestrator.data.dataset_format import SHARDS, read_manifest
from orchestrator.errors import UserError, command

TILE = 128
LABEL = 14


def _images(prepared: Path, ids: set[str]) -> dict[str, Image.Image]:
    table = pads.dataset(Path(prepared) / SHARDS).to_table(
        columns=["image_id", "image"], filter=pads.field("image_id").isin(sorted(ids))
    )
    rows = table.to_pydict()
    return {
        i: Image.open(io.BytesIO(b)).convert("RGB")
        for i, b in zip(rows["image_id"], rows["image"], strict=True)
    }


def spread(pairs: list, count: int) -> list:
    """`count` pairs evenly spaced through `pairs` (sorted by distance), always with the last."""
    if len(pairs) <= count:
        return pairs
    step = (len(pairs) - 1) / (count - 1)
    return [pairs[round(k * step)] for k in range(count)]


def sheet(prepared: Path, out: Path, count: int = 24, columns: int = 4) -> int:
    manifest = read_manifest(prepared)
    against = manifest.against
    if against is not None:
        reference = Path(against.reference)
        if any(len(pair) < 4 for pair in against.duplicates):
            raise UserError(
                f"{prepared}: prepared by an older version that kept no source files; prepare it again"
            )
        pairs = sorted(against.duplicates, key=lambda p: p[2])
        title = f"dropped as duplicates of {reference.name}"
    else:
        reference = Path(prepared)
        pairs = manifest.audit.near_duplicate_pairs if manifest.audit else []
        title = "near-duplicate pairs"
    if not pairs:
        raise UserError(f"{prepared}: no duplicate pairs to show")
    chosen = spread(pairs, count)
    if against is not None:  # dropped images are not in the shards: read them from the source
        left = {p[0]: Image.open(p[3]).convert("RGB") for p in chosen}
    else:
        left = _images(prepared, {p[0] for p in chosen})
    right = _images(reference, {p[1] for p in chosen})
    rows = -(-len(chosen) // columns)
    canvas = Image.new("RGB", (columns * (2 * TILE + 8), LABEL + rows * (TILE + LABEL + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 0), f"{title}: {len(pairs)} pairs, {len(chosen)} shown, Hamming bits of 256", fill="black")
    for k, (a, b, bits, *_) in enumerate(chosen):
        x, y = (k % columns) * (2 * TILE + 8), LABEL + (k // columns) * (TILE + LABEL + 4)
        draw.text((x + 2, y), f"{bits:>3} bits  {a} | {b}"[:44], fill="black")
        canvas.paste(left[a].resize((TILE, TILE)), (x, y + LABEL))
        canvas.paste(right[b].resize((TILE, TILE)), (x + TILE, y + LABEL))
    canvas.save(out)
    return len(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isic-duplicate-sheet", description=__doc__.split("\n\n")[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--pairs", type=int, default=24)
    args = parser.parse_args(argv)
    shown = sheet(args.prepared, args.out, args.pairs)
    print(f"wrote {args.out} ({shown} pairs)")
    return 0


cli = command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    cli()
