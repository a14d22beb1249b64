"""Data in: ISIC sources, preparation into Parquet shards, audits, and the Ray Data pipeline."""
