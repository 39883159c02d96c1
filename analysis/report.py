"""``write_report(results, out)``: a self-contained HTML report (figures embedded, works
offline) and a Markdown version with the figures beside it."""
from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from optlab.store import Store, StoreError

from . import data as D
from . import plots as P

__all__ = ["write_report", "build_sections"]

AXES_ORDER = ["lr", "weight_decay", "hessian_momentum", "tau", "eps", "every", "momentum"]


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}"
    if isinstance(v, (bool,)):
        return "yes" if v else "no"
    return str(v)


def _table(df: pd.DataFrame, cols: list[str] | None = None) -> pd.DataFrame:
    df = df[[c for c in (cols or df.columns) if c in df]].copy()
    return df.map(_fmt) if len(df) else df


class _Section:
    def __init__(self, title: str, text: str = ""):
        self.title, self.text = title, text
        self.tables: list[tuple[str, pd.DataFrame]] = []
        self.figures: list[tuple[str, str, str]] = []   # (caption, png path, svg path)
        self.pre: str | None = None


def build_sections(results: str | Path, fig_dir: Path) -> tuple[str, list[_Section]]:
    results = Path(results)
    store = Store(results)
    records = list(store.iter_results(skip_corrupt=True))
    if not records:
        raise StoreError(f"{results}: no completed trials to report on (trials/ is empty)")
    epochs, trials = D.load(records)
    axes = D.hparam_columns(trials)
    sections: list[_Section] = []
    fig_dir.mkdir(parents=True, exist_ok=True)

    def figure(sec: _Section, fig, name: str, caption: str) -> None:
        png, svg = P.save(fig, fig_dir / name)
        plt.close(fig)
        sec.figures.append((caption, str(png), str(svg)))

    # --- overview / status
    expected = D.expected_trials(results)
    done = set(trials["trial_id"])
    missing = [t for t in (expected or []) if t["trial_id"] not in done]
    live = store.live_claims()
    counts = trials["status"].astype(str).value_counts().to_dict()
    total = len(expected) if expected is not None else len(trials)
    sec = _Section("Overview", f"{len(trials)} of {total} trials have results: "
                   + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                   + (f"; {len(missing)} missing ({len([m for m in missing if m['trial_id'] in live])} running now)"
                      if expected is not None else "") + ".")
    best_metric = "final_test_acc"
    best = D.best_configs(trials, metric=best_metric)
    if len(best):
        sec.tables.append(("Best configuration per optimizer (final test accuracy, mean over seeds)",
                           _table(best, ["task", "model", "optimizer"] + axes + ["mean", "std", "ci95", "n",
                                                                                 "n_missing", "n_diverged", "tie"])))
    sections.append(sec)

    spec = results / "spec.toml"
    sec = _Section("Grid specification")
    sec.pre = spec.read_text() if spec.exists() else "(no spec.toml in the results directory)"
    sections.append(sec)

    env_rows = {}
    for r in records:
        env = r.get("env") or {}
        for k in ("git_revision", "git_dirty", "host", "platform", "python", "torch_threads", "device"):
            env_rows.setdefault(k, set()).add(str(env.get(k)))
        for pkg, v in (env.get("versions") or {}).items():
            env_rows.setdefault(pkg, set()).add(v)
    sec = _Section("Environment", "Values recorded with the trials (several values: trials ran in different "
                   "environments).")
    sec.tables.append(("", pd.DataFrame([{"item": k, "value": ", ".join(sorted(v))} for k, v in env_rows.items()])))
    sections.append(sec)

    # --- summary
    summ = D.summarize(trials, metric=best_metric)
    sec = _Section("Summary over seeds", "Final test accuracy per configuration: mean, standard deviation, "
                   "standard error and 95 % confidence interval (Student t) over seeds that finished; "
                   "`n_missing`/`n_diverged`/`n_failed` show cells that are incomplete -- they are never "
                   "averaged silently over fewer seeds.")
    if len(summ):
        summ = summ.sort_values(["task", "model", "mean"], ascending=[True, True, False])
        sec.tables.append(("", _table(summ, ["task", "model", "optimizer"] + axes +
                                      ["mean", "std", "sem", "ci95", "n", "n_missing", "n_diverged", "n_failed"])))
    sections.append(sec)

    # --- heatmaps and sensitivity
    if "lr" in axes and "weight_decay" in axes:
        sec = _Section("Learning rate x weight decay")
        figure(sec, P.heatmaps(trials, "lr", "weight_decay", metric=best_metric), "heatmap_lr_wd",
               "Final test accuracy over lr x weight decay, one panel per optimizer, one colour scale.")
        sections.append(sec)
    sens_axes = [a for a in AXES_ORDER if a in axes] + [a for a in axes if a not in AXES_ORDER]
    if sens_axes:
        sec = _Section("Sensitivity", "Each axis with the other axes at their best (seed-mean); band: 95 % CI.")
        for a in sens_axes:
            try:
                s = D.sensitivity(trials, a, metric=best_metric)
            except (KeyError, ValueError):
                continue
            if s.empty or s[a].nunique() < 2:
                continue
            figure(sec, P.sensitivity_plot(trials, a, metric=best_metric), f"sensitivity_{a}",
                   f"Sensitivity to {a}.")
            sec.tables.append((f"{a}", _table(s, ["task", "model", "optimizer", a, "mean", "ci95", "n"])))
        sections.append(sec)

    # --- paired comparison
    opts = sorted(trials["optimizer"].astype(str).unique())
    baseline = "sgd" if "sgd" in opts else ("torch-sgd" if "torch-sgd" in opts else None)
    sec = _Section("Paired comparison", "Seed-paired difference of final test accuracy (optimizer - baseline), "
                   "each at its best configuration; 95 % CI and paired t-test over common seeds.")
    if baseline and len(opts) > 1:
        pc = D.paired_comparison(trials, baseline=baseline, metric=best_metric)
        sec.tables.append((f"baseline: {baseline}", _table(pc, ["task", "model", "optimizer", "baseline", "n_pairs",
                                                                 "mean_diff", "ci95", "p_value", "setting",
                                                                 "baseline_setting"])))
    else:
        sec.text += " (Needs a baseline optimizer `sgd` and at least one other optimizer.)"
    sections.append(sec)

    # --- curves, cost, profile
    sec = _Section("Training curves")
    figure(sec, P.training_curves(epochs, trials, x="epoch"), "curves_epoch", "Against epochs.")
    figure(sec, P.training_curves(epochs, trials, x="wall_time"), "curves_time", "Against wall-clock time.")
    sections.append(sec)

    sec = _Section("Cost", "Mean seconds per epoch by phase, as recorded by the runner.")
    figure(sec, P.cost_bars(trials), "cost", "Per-epoch time split.")
    cost = trials.groupby(["task", "model", "optimizer"], observed=True)[
        ["time_epoch", "time_forward_backward", "time_curvature", "time_update", "hvp_count"]].mean().reset_index()
    sec.tables.append(("", _table(cost)))
    sections.append(sec)

    if trials.groupby(["task", "model"], observed=True).ngroups > 1:
        sec = _Section("Performance profile", "Dolan-Moré profile of final test error across task/model problems.")
        figure(sec, P.profile_plot(D.performance_profile(trials, metric=best_metric)), "profile", "")
        sections.append(sec)

    # --- problems
    bad = trials[trials["status"] != "ok"]
    sec = _Section("Missing, failed and diverged trials")
    rows = [{"trial": r["trial_id"], "status": r["status"], "config": r["config"], "seed": r["seed"],
             "error": (r["error"] or "")[:200]} for _, r in bad.iterrows()]
    rows += [{"trial": m["trial_id"], "status": "running" if m["trial_id"] in live else "missing",
              "config": D._config_label(m["optimizer"], m["hparams"], m), "seed": m["seed"], "error": ""}
             for m in missing]
    if rows:
        sec.tables.append(("", pd.DataFrame(rows)))
    else:
        sec.text = "None: every trial of the grid finished ok."
    sections.append(sec)

    title = f"optlab report: {results.name}"
    return title, sections


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #4C72B0;padding-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px} th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f2f5fa} td:first-child,th:first-child{text-align:left} tr:nth-child(even){background:#fafafa}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:12px} figure{margin:1em 0} img{max-width:100%}
figcaption{color:#555;font-size:13px} nav a{margin-right:1em} .meta{color:#666;font-size:13px}
"""


def _anchor(t: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in t.lower())


def write_report(results: str | Path, output: str | Path | None = None, title: str | None = None) -> list[Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``figures/``) into ``output``."""
    results = Path(results)
    out = Path(output) if output else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto_title, sections = build_sections(results, out / "figures")
    title = title or auto_title
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
         f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
         f"<p class='meta'>generated {stamp} from <code>{html.escape(str(results))}</code></p><nav>"]
    h += [f"<a href='#{_anchor(s.title)}'>{html.escape(s.title)}</a>" for s in sections]
    h.append("</nav>")
    md = [f"# {title}", "", f"_generated {stamp} from `{results}`_", ""]
    for s in sections:
        h.append(f"<h2 id='{_anchor(s.title)}'>{html.escape(s.title)}</h2>")
        md += [f"## {s.title}", ""]
        if s.text:
            h.append(f"<p>{html.escape(s.text).replace('`', '')}</p>")
            md += [s.text, ""]
        if s.pre is not None:
            h.append(f"<pre>{html.escape(s.pre)}</pre>")
            md += ["```toml", s.pre.rstrip(), "```", ""]
        for cap, t in s.tables:
            if cap:
                h.append(f"<h3>{html.escape(cap)}</h3>")
                md += [f"**{cap}**", ""]
            h.append(t.to_html(index=False, escape=True, border=0))
            md += [_md_table(t), ""]
        for cap, png, _svg in s.figures:
            b64 = base64.b64encode(Path(png).read_bytes()).decode()
            h.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{html.escape(cap)}</figcaption></figure>")
            md += [f"![{cap}](figures/{Path(png).name})", f"_{cap}_ ([SVG](figures/{Path(_svg).name}))", ""]
    h.append("</body></html>")
    html_path, md_path = out / "report.html", out / "report.md"
    Store._atomic_write(html_path, "\n".join(h))
    Store._atomic_write(md_path, "\n".join(md))
    return [html_path, md_path]


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(empty)_"
    cols = [str(c) for c in df.columns]
    esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)

