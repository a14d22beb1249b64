"""Re-encode the JPEGs of a prepared dataset at a lower quality, keeping every other column,
the folds and the manifest: a smaller copy to move to a remote GPU machine.

    python benchmarks/shrink_prepared.py PREPARED OUT [--quality 90]
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from orchestrator.data.dataset_format import MANIFEST, SHARDS


def reencode(data: bytes, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    (args.out / SHARDS).mkdir(parents=True)
    shutil.copy(args.prepared / MANIFEST, args.out / MANIFEST)
    for shard in sorted((args.prepared / SHARDS).glob("*.parquet")):
        table = pq.read_table(shard)
        images = [reencode(b, args.quality) for b in table.column("image").to_pylist()]
        index = table.schema.get_field_index("image")
        table = table.set_column(index, table.schema.field("image"), pa.array(images, pa.binary()))
        pq.write_table(table, args.out / SHARDS / shard.name)
    size = sum(f.stat().st_size for f in (args.out / SHARDS).glob("*.parquet"))
    print(f"{args.out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
