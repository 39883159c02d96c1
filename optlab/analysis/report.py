"""``write_report(results, out)``: a self-contained HTML report (figures embedded, works
offline) and a Markdown version with the figures beside it."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import re
import warnings
from pathlib import Path

import pandas as pd

from optlab.store import atomic_write

from .compare import DEFAULT_CONTROLS, DEFAULT_MARGIN
from .data import REPORT_METRIC, SELECT_METRIC, SelectionBiasWarning
from .sections import (
    Section,
    budgets_section,
    cost_section,
    curves_section,
    environment_note,
    environment_rows,
    environment_section,
    heatmap_section,
    load_inputs,
    overview_section,
    problems_section,
    profile_section,
    sensitivity_section,
    spec_section,
    summary_section,
)
from .verdict import comparison_details_section, verdict_section, verdict_table

__all__ = ["write_report", "build_sections", "verdict_table", "environment_rows", "environment_note"]

_verdict_section = verdict_section  # the name tests and older callers use
_Section = Section


def build_sections(
    results: str | Path,
    fig_dir: Path,
    baseline: str = "sgd",
    controls=DEFAULT_CONTROLS,
    margin: float = DEFAULT_MARGIN,
    alpha: float = 0.05,
    select: str = SELECT_METRIC,
    metric: str = REPORT_METRIC,
) -> tuple[str, list[Section]]:
    """The report's title and sections, in reading order: verdict, budgets, overview, spec,
    environment, summary, heatmaps, sensitivity, comparison details, curves, cost, profile, problems."""
    inp = load_inputs(Path(results), fig_dir, select, metric)
    verdict, cmp = verdict_section(inp.trials, baseline, controls, margin, alpha, select, metric)
    overview, missing, live = overview_section(inp)
    sections = [
        verdict,
        budgets_section(inp),
        overview,
        spec_section(inp),
        environment_section(inp),
        summary_section(inp),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelectionBiasWarning)
        sections += [
            heatmap_section(inp),
            sensitivity_section(inp),
            comparison_details_section(cmp),
            curves_section(inp),
            cost_section(inp),
            profile_section(inp),
        ]
    sections.append(problems_section(inp, missing, live))
    return f"optlab report: {inp.results.name}", [sec for sec in sections if sec is not None]


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #4C72B0;padding-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px} th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f2f5fa} td{white-space:nowrap} .tbl{overflow-x:auto;max-width:100%} td:first-child,th:first-child{text-align:left} tr:nth-child(even){background:#fafafa}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:12px} figure{margin:1em 0} img{max-width:100%}
figcaption{color:#555;font-size:13px} nav a{margin-right:1em} .meta{color:#666;font-size:13px}
.warn{background:#fff3cd;border-left:5px solid #d9534f;padding:.5em 1em}
"""


def _anchor(t: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in t.lower())


def write_report(
    results: str | Path, output: str | Path | None = None, title: str | None = None, **options
) -> list[Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``figures/``) into ``output``.

    ``options`` go to :func:`build_sections`: ``baseline``, ``controls``, ``margin``, ``alpha``,
    ``select`` (the validation metric selection reads), ``metric`` (the test metric compared)."""
    results = Path(results)
    out = Path(output) if output else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto_title, sections = build_sections(results, out / "figures", **options)
    title = title or auto_title
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    h = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='meta'>generated {stamp} from <code>{html.escape(str(results))}</code></p><nav>",
    ]
    h += [f"<a href='#{_anchor(s.title)}'>{html.escape(s.title)}</a>" for s in sections]
    h.append("</nav>")
    md = [f"# {title}", "", f"_generated {stamp} from `{results}`_", ""]
    for s in sections:
        h.append(f"<h2 id='{_anchor(s.title)}'>{html.escape(s.title)}</h2>")
        md += [f"## {s.title}", ""]
        for w in s.warnings:
            h.append(f"<p class='warn'><b>WARNING</b>: {html.escape(w).replace('`', '')}</p>")
            md += [f"> **WARNING**: {_md_escape(w)}", ""]
        if s.text:
            h.append(f"<p>{_bold(html.escape(s.text)).replace('`', '')}</p>")
            md += [_md_escape(s.text), ""]
        if s.pre is not None:
            h.append(f"<pre>{html.escape(s.pre)}</pre>")
            fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", s.pre)), default=0))
            md += [f"{fence}toml", s.pre.rstrip(), fence, ""]
        # figures first: the picture reads at a glance, the table behind it gives the numbers
        for cap, png, _svg in s.figures:
            b64 = base64.b64encode(Path(png).read_bytes()).decode()
            h.append(
                f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{html.escape(cap)}</figcaption></figure>"
            )
            md += [f"![{cap}](figures/{Path(png).name})", f"_{cap}_ ([SVG](figures/{Path(_svg).name}))", ""]
        for cap, t in s.tables:
            if cap:
                h.append(f"<h3>{html.escape(cap)}</h3>")
                md += [f"**{_md_escape(cap)}**", ""]
            h.append(f"<div class='tbl'>{t.to_html(index=False, escape=True, border=0)}</div>")
            md += [_md_table(t), ""]
    h.append("</body></html>")
    html_path, md_path = out / "report.html", out / "report.md"
    atomic_write(html_path, "\n".join(h))
    atomic_write(md_path, "\n".join(md))
    return [html_path, md_path]


def _md_escape(text: str) -> str:
    """Markdown text with raw HTML neutralised (an error message may contain ``<script>``)."""
    return html.escape(str(text), quote=False)


def _bold(text: str) -> str:
    """``**word**`` -> ``<b>word</b>`` for the HTML version of a section text."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(empty)_"
    cols = [_md_escape(c) for c in df.columns]
    esc = lambda v: _md_escape(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
