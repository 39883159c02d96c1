"""``build_sections(results, fig_dir)``: read the results once, then the report's sections in order."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ..compare import DEFAULT_CONTROLS, DEFAULT_MARGIN
from ..data import (
    REPORT_METRIC,
    SELECT_METRIC,
    SelectionBiasWarning,
    best_configs,
    expected_trials,
    selected_trials,
)
from .format import Section
from .inputs import read_inputs
from .sections import (
    budgets_section,
    comparison_details_section,
    cost_section,
    curves_section,
    heatmap_section,
    profile_section,
    sensitivity_section,
    summary_section,
)
from .status import environment_section, overview_section, problems_section, spec_section
from .targets import time_to_target_section
from .verdict import VERDICT_COLUMNS, verdict_section

__all__ = ["build_sections", "CSV_FILES"]

#: the CSV files written next to the report (``<name>.csv``)
CSV_FILES = ("verdicts", "selection", "time_to_target")


def build_sections(
    results: str | Path,
    fig_dir: Path,
    baseline: str = "sgd",
    controls=DEFAULT_CONTROLS,
    margin: float = DEFAULT_MARGIN,
    alpha: float = 0.05,
    select: str = SELECT_METRIC,
    metric: str = REPORT_METRIC,
    exports: dict | None = None,
) -> tuple[str, list[Section]]:
    """The report's title and sections; ``exports`` (a dict), when given, receives the tables written
    as CSV: ``verdicts``, ``selection`` and ``time_to_target`` (DataFrames)."""
    results = Path(results)
    exports = {} if exports is None else exports
    inp = read_inputs(results, fig_dir, select, metric)
    fig_dir.mkdir(parents=True, exist_ok=True)
    trials = inp.trials
    sections: list[Section | None] = []

    sec, cmp = verdict_section(trials, baseline, controls, margin, alpha, select, metric, inp.domains)
    sections.append(sec)
    exports["verdicts"] = (
        cmp[[c for c in VERDICT_COLUMNS if c in cmp]] if len(cmp) else pd.DataFrame(columns=list(VERDICT_COLUMNS))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelectionBiasWarning)
        chosen = selected_trials(trials, best_configs(trials, metric=select, report=metric))
    sec, exports["time_to_target"] = time_to_target_section(
        inp.records, set(chosen["trial_id"]), inp.spec, baseline, inp.figure
    )
    sections.append(sec)
    sections.append(budgets_section(inp))

    expected = expected_trials(results)
    done = set(trials["trial_id"])
    missing = [t for t in (expected or []) if t["trial_id"] not in done]
    live = inp.store.live_claims()
    sec, exports["selection"] = overview_section(inp, expected, missing, live)
    sections += [sec, spec_section(inp), environment_section(inp), summary_section(inp)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelectionBiasWarning)
        sections += [heatmap_section(inp), sensitivity_section(inp), comparison_details_section(cmp)]
        sections += [curves_section(inp), cost_section(inp), profile_section(inp)]
    sections.append(problems_section(inp, missing, live))
    return f"optlab report: {results.name}", [s for s in sections if s is not None]
