"""Tables as Markdown, without extra dependencies, and the cells they share."""

from __future__ import annotations

import math

import pandas as pd


def to_markdown(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def interval_text(low: float, high: float) -> str:
    """An interval as `0.75-0.95`; empty where it is undefined (NaN or missing)."""
    return "" if pd.isna(low) or pd.isna(high) else f"{low:.2f}-{high:.2f}"
