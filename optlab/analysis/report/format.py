"""What a report is made of (:class:`Section`) and how its values are written: numbers for people,
tables of formatted cells, Markdown with raw HTML neutralised."""

from __future__ import annotations

import html
import math
import re

import pandas as pd

__all__ = [
    "Section",
    "format_value",
    "format_table",
    "difference_units",
    "md_escape",
    "md_table",
    "html_bold",
    "anchor",
]


class Section:
    """One titled part of the report: warnings (shown loudly, before the tables), a text, tables
    ``(caption, frame)``, figures ``(caption, png path, svg path)`` and an optional preformatted block."""

    def __init__(self, title: str, text: str = ""):
        self.title, self.text = title, text
        self.warnings: list[str] = []
        self.tables: list[tuple[str, pd.DataFrame]] = []
        self.figures: list[tuple[str, str, str]] = []
        self.pre: str | None = None


def format_value(v) -> str:
    """A cell for people: 4 significant digits for floats, ``–`` for missing/NaN, yes/no for booleans."""
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}"
    if isinstance(v, (bool,)):
        return "yes" if v else "no"
    return str(v)


def format_table(df: pd.DataFrame, cols: list[str] | None = None, rename: dict | None = None) -> pd.DataFrame:
    """``df`` restricted to ``cols`` (those present, in that order), every cell :func:`format_value`-ed."""
    df = df[[c for c in (cols or df.columns) if c in df]].copy()
    df = df.map(format_value) if len(df) else df
    return df.rename(columns=rename or {})


def difference_units(metric: str) -> tuple[float, str]:
    """Scale and unit of differences of ``metric``: percentage points for accuracies, else as is."""
    return (100.0, " (pp)") if metric.endswith("_acc") else (1.0, "")


def md_escape(text: str) -> str:
    """Markdown text with raw HTML neutralised (an error message may contain ``<script>``)."""
    return html.escape(str(text), quote=False)


def html_bold(text: str) -> str:
    """``**word**`` -> ``<b>word</b>`` for the HTML version of a section text."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)


def md_table(df: pd.DataFrame) -> str:
    """A Markdown pipe table of ``df`` (cells escaped; ``|`` and newlines neutralised)."""
    if df.empty:
        return "_(empty)_"
    cols = [md_escape(c) for c in df.columns]
    esc = lambda v: md_escape(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def anchor(title: str) -> str:
    """The HTML id of a section title."""
    return "".join(ch if ch.isalnum() else "-" for ch in title.lower())
