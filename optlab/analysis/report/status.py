"""The report's sections on what ran and where: the overview with the selected configurations and
the selection table, the grid spec, the environment, and the trials that are missing, failed or
diverged."""

from __future__ import annotations

import warnings

import pandas as pd

from optlab.grid.protocol import SELECTION_COLUMNS

from ..data import SelectionBiasWarning, best_configs, config_description, selection_table
from .format import Section, format_table
from .inputs import ReportInputs

__all__ = [
    "overview_section",
    "spec_section",
    "environment_section",
    "environment_rows",
    "environment_note",
    "problems_section",
    "SELECTION_CSV",
]

#: columns of ``selection.csv`` after task, model, arm
SELECTION_CSV = (*SELECTION_COLUMNS, "stability")


def overview_section(
    inp: ReportInputs, expected: list[dict] | None, missing: list[dict], live: set
) -> tuple[Section, pd.DataFrame]:
    """Trials with results by status and stage, legacy trials, the selected configuration per arm and
    the selection table (edges, stability), which is also returned (``selection.csv``)."""
    trials, axes, sel_lab = inp.trials, inp.axes, inp.select_label
    counts = trials["status"].astype(str).value_counts().to_dict()
    stages = trials["stage"].astype(str).value_counts().to_dict()
    total = len(expected) if expected is not None else len(trials)
    sec = Section(
        "Overview",
        f"{len(trials)} of {total} trials have results: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + (
            f"; {len(missing)} missing ({len([m for m in missing if m['trial_id'] in live])} running now)"
            if expected is not None
            else ""
        )
        + ". Stages: "
        + ", ".join(f"{k} {v}" for k, v in sorted(stages.items()))
        + ".",
    )
    n_legacy = int(trials["legacy"].sum())
    if n_legacy:
        sec.warnings.append(
            f"{n_legacy} legacy trial(s) (no schema version 2 / no resolved hyperparameters): "
            "the hyperparameters they left unset are shown with today's preset defaults, which "
            "may differ from what they ran with (column `legacy`)."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelectionBiasWarning)
        best = best_configs(trials, metric=inp.select, report=inp.metric, domains=inp.domains)
        seltab = selection_table(trials, metric=inp.select, domains=inp.domains)
    if len(best):
        sec.tables.append(_selected_table(best, axes, sel_lab))
        sec.text += (
            " `val mean`: the selection score; `eligible`: every tuning seed finished ok (otherwise the "
            "best mean over finished seeds won); `n_tied`: configurations whose score tied with the winner "
            "(this replaces the old `tie` column: the first configuration label in sorted order wins, "
            "as in the grid runner); `at_edge`: a selected value is the smallest or largest tried on its axis "
            "(next table); `test mean`: reported, never selected on."
        )
    if len(seltab):
        sec.tables.append(
            (
                "Selection table: per tuned numeric axis, is the selected value on an edge of what was tried? "
                "(stability: share of 1000 bootstrap resamples of the tuning seeds selecting the same configuration)",
                format_table(
                    seltab,
                    ["task", "model", "arm", "axis", "value", "tried", "at_edge", "side", "next_values", "stability"],
                    rename={"next_values": "next beyond the edge"},
                ),
            )
        )
        on_edge = seltab[seltab["at_edge"].astype(bool)]
        if len(on_edge):
            sec.warnings.append(
                "On an edge of the tuning grid: "
                + "; ".join(f"{r.task}/{r.model} {r.arm}: {r.edge_text}" for r in on_edge.itertuples())
                + "."
            )
    return sec, seltab[[c for c in ["task", "model", "arm", *SELECTION_CSV] if c in seltab]]


def _selected_table(best: pd.DataFrame, axes: list[str], sel_lab: str) -> tuple[str, pd.DataFrame]:
    """The selected configuration per arm: its tuned values, validation score and reported test score."""
    cols = ["task", "model", "arm", "optimizer", *axes, "selected_on", "mean", "std", "n", "n_missing"]
    cols += ["n_diverged", "eligible", "n_configs", "n_tied", "at_edge", "report_mean", "report_std"]
    return (
        f"Selected configuration per optimizer (on {sel_lab}, tuning seeds; test reported for it)",
        format_table(
            best,
            cols,
            rename={"mean": "val mean", "std": "val std", "report_mean": "test mean", "report_std": "test std"},
        ),
    )


def spec_section(inp: ReportInputs) -> Section:
    """The grid spec stored with the results, verbatim."""
    results = inp.results
    spec = results / "spec.toml"
    sec = Section("Grid specification")
    sec.pre = spec.read_text() if spec.exists() else "(no spec.toml in the results directory)"
    return sec


def environment_section(inp: ReportInputs) -> Section:
    """Every recorded environment field and whether all trials agree on it."""
    records = inp.records
    env_rows = environment_rows(records)
    sec = Section("Environment", environment_note(env_rows))
    sec.tables.append(
        (
            "",
            pd.DataFrame(
                [
                    {"item": k, "value": ", ".join(sorted(v)), "same in all trials": "yes" if len(v) == 1 else "NO"}
                    for k, v in env_rows.items()
                ]
            ),
        )
    )
    return sec


def environment_rows(records: list[dict]) -> dict[str, set]:
    """Every environment field recorded with the trials -> the set of its values."""
    env_rows: dict[str, set] = {}
    for r in records:
        env = r.get("env") or {}
        for k in ("git_revision", "git_dirty", "host", "platform", "python", "torch_threads", "device"):
            env_rows.setdefault(k, set()).add(str(env.get(k)))
        for pkg, v in (env.get("versions") or {}).items():
            env_rows.setdefault(pkg, set()).add(v)
        env_rows.setdefault("schema_version", set()).add(str(r.get("schema_version", "1 (legacy)")))
        for pkg, v in (r.get("plugins") or {}).items():
            env_rows.setdefault(f"plugin {pkg}", set()).add(str(v))
    return env_rows


def environment_note(env_rows: dict[str, set]) -> str:
    """What the environment table says: one environment, or which recorded fields differ."""
    differ = sorted(k for k, v in env_rows.items() if len(v) > 1)
    if not differ:
        return "Values recorded with the trials; every trial ran in the same environment."
    return (
        "Values recorded with the trials. Trials ran in different environments: "
        + ", ".join(f"`{k}`" for k in differ)
        + (" differs" if len(differ) == 1 else " differ")
        + " (several values in a row; column `same in all trials`)."
    )


def problems_section(inp: ReportInputs, missing: list[dict], live: set) -> Section:
    """Trials that did not finish ok, expected trials without results (running or missing) and
    result files that do not validate."""
    trials, invalid = inp.trials, inp.invalid
    bad = trials[trials["status"] != "ok"]
    sec = Section("Missing, failed and diverged trials")
    rows = [
        {
            "trial": r["trial_id"],
            "status": r["status"],
            "stage": r["stage"],
            "config": r["config"],
            "seed": r["seed"],
            "error": (r["error"] or "")[:200],
        }
        for _, r in bad.iterrows()
    ]
    rows += [
        {
            "trial": m["trial_id"],
            "status": "running" if m["trial_id"] in live else "missing",
            "stage": m.get("stage", "tuning"),
            "config": config_description(m.get("arm") or m["optimizer"], m["hparams"], m),
            "seed": m["seed"],
            "error": "",
        }
        for m in missing
    ]
    rows += [
        {
            "trial": exc.path.stem,
            "status": "invalid file",
            "stage": "",
            "config": exc.path.name,
            "seed": "",
            "error": exc.problem[:200] + " (the next `optlab grid run` quarantines it and reruns the trial)",
        }
        for exc in invalid
    ]
    if rows:
        sec.tables.append(("", pd.DataFrame(rows)))
    else:
        sec.text = "None: every trial of the grid finished ok."
    return sec
