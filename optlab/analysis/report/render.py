"""``write_report(results, out)``: a self-contained HTML report (figures embedded, works offline), a
Markdown version with the figures beside it, and the CSV tables (:data:`CSV_FILES`)."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import re
import warnings
from pathlib import Path

import pandas as pd

from optlab.store import atomic_write

from .build import CSV_FILES, build_sections
from .format import Section, anchor, html_bold, md_escape, md_table

__all__ = ["write_report", "render_html", "render_markdown"]

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


def write_report(
    results: str | Path, output: str | Path | None = None, title: str | None = None, **options
) -> list[Path]:
    """Write ``report.html`` (self-contained), ``report.md`` (+ ``figures/``) and ``verdicts.csv``,
    ``selection.csv``, ``time_to_target.csv`` (:data:`CSV_FILES`; columns: docs/analysis.md, "CSV
    files") into ``output``; returns the HTML and Markdown paths.

    ``options`` go to :func:`build_sections`: ``baseline``, ``controls``, ``margin``, ``alpha``,
    ``select`` (the validation metric selection reads), ``metric`` (the test metric compared)."""
    results = Path(results)
    out = Path(output) if output else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    exports: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto_title, sections = build_sections(results, out / "figures", exports=exports, **options)
    title = title or auto_title
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    html_path, md_path = out / "report.html", out / "report.md"
    atomic_write(html_path, render_html(title, stamp, results, sections))
    atomic_write(md_path, render_markdown(title, stamp, results, sections))
    for name in CSV_FILES:
        atomic_write(out / f"{name}.csv", exports.get(name, pd.DataFrame()).to_csv(index=False))
    return [html_path, md_path]


def render_html(title: str, stamp: str, results: Path, sections: list[Section]) -> str:
    """One HTML page: navigation, then per section its warnings, text, preformatted block, figures
    (embedded as base64 PNG) and tables."""
    h = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='meta'>generated {stamp} from <code>{html.escape(str(results))}</code></p><nav>",
    ]
    h += [f"<a href='#{anchor(s.title)}'>{html.escape(s.title)}</a>" for s in sections]
    h.append("</nav>")
    for s in sections:
        h.append(f"<h2 id='{anchor(s.title)}'>{html.escape(s.title)}</h2>")
        h += [f"<p class='warn'><b>WARNING</b>: {html.escape(w).replace('`', '')}</p>" for w in s.warnings]
        if s.text:
            h.append(f"<p>{html_bold(html.escape(s.text)).replace('`', '')}</p>")
        if s.pre is not None:
            h.append(f"<pre>{html.escape(s.pre)}</pre>")
        # figures first: the picture reads at a glance, the table behind it gives the numbers
        for cap, png, _svg in s.figures:
            b64 = base64.b64encode(Path(png).read_bytes()).decode()
            h.append(
                f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{html.escape(cap)}</figcaption></figure>"
            )
        for cap, t in s.tables:
            if cap:
                h.append(f"<h3>{html.escape(cap)}</h3>")
            h.append(f"<div class='tbl'>{t.to_html(index=False, escape=True, border=0)}</div>")
    h.append("</body></html>")
    return "\n".join(h)


def render_markdown(title: str, stamp: str, results: Path, sections: list[Section]) -> str:
    """The Markdown version: the same sections, figures linked from ``figures/`` (PNG, with an SVG link)."""
    md = [f"# {title}", "", f"_generated {stamp} from `{results}`_", ""]
    for s in sections:
        md += [f"## {s.title}", ""]
        for w in s.warnings:
            md += [f"> **WARNING**: {md_escape(w)}", ""]
        if s.text:
            md += [md_escape(s.text), ""]
        if s.pre is not None:
            fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", s.pre)), default=0))
            md += [f"{fence}toml", s.pre.rstrip(), fence, ""]
        for cap, png, svg in s.figures:
            md += [f"![{cap}](figures/{Path(png).name})", f"_{cap}_ ([SVG](figures/{Path(svg).name}))", ""]
        for cap, t in s.tables:
            if cap:
                md += [f"**{md_escape(cap)}**", ""]
            md += [md_table(t), ""]
    return "\n".join(md)
