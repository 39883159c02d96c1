"""The report's time-to-target section (AlgoPerf; docs/analysis.md 2b): per trial the first evaluation
reaching the workload's target; censored trials counted; k of n; paired censoring-aware test; profile
and score."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from ..plots import time_to_target_plot
from ..time_to_target import (
    TAU_MAX,
    TTT_COLUMNS,
    arm_summary,
    comparison_records,
    paired_against,
    performance_profile,
    profile_from_summary,
    profile_score,
    resolve_targets,
    trial_times,
)
from .format import Section, format_table

__all__ = ["time_to_target_section"]

#: ``figure(section, matplotlib figure, file stem, caption)``: saves a figure into the report
AddFigure = Callable[[Section, object, str, str], None]


def time_to_target_section(
    records: list[dict], selected: set, spec, baseline: str, figure: AddFigure
) -> tuple[Section, pd.DataFrame]:
    """Time to target of each arm's selected configuration (the ``selected`` trial ids: evaluation
    seeds where present), and the per-trial times written as ``time_to_target.csv``."""
    sec = Section(
        "Time to target",
        "How soon each arm's selected configuration reaches the workload's target on the validation metric "
        "(AlgoPerf; docs/analysis.md 2b; evaluation seeds where present): per trial the first evaluation at or "
        "beyond the target, in optimizer **steps** (the primary unit), epochs, "
        "seconds and gradient-equivalents (`cost` = steps + 2 x HVPs). A trial that never reaches it is "
        "**censored** (`inf`): counted, never dropped. An arm reaches a workload when at least k of its n seeds "
        "do (default k = floor(n/2) + 1); its time there is the k-th smallest seed time. Paired test: Wilcoxon "
        "signed-rank on seed-paired step differences with unreached = +inf (ranks handle censoring exactly), Holm "
        "across rows. Profile: share of workloads within tau x the fastest arm's time; score = area under it on "
        f"[1, {TAU_MAX:g}] / {TAU_MAX - 1:g}.",
    )
    empty = pd.DataFrame(columns=list(TTT_COLUMNS))
    targets = spec.targets if spec is not None else {}
    if not targets:
        sec.warnings.append(
            'No targets: the spec has no `[targets]` table (e.g. `default = {from_arm = "sgd"}` or '
            '`"task/model" = {metric = "val_acc", value = 0.9}`), so nothing is timed.'
        )
        return sec, empty
    used = comparison_records(records, selected)
    resolved = resolve_targets(used, targets)
    if not resolved:
        sec.warnings.append("No workload of these results has a target it can use (a `from_arm` arm is missing).")
        return sec, empty
    rows = pd.DataFrame(trial_times(used, resolved))
    summ = pd.DataFrame(arm_summary(rows.to_dict("records"), {w: t.k for w, (t, _) in resolved.items()}))
    sec.text += _machines_note(used) + _targets_note(resolved)
    if (summ["stage"] != "evaluation").any():
        sec.warnings.append(
            "Selection-biased: some arms have no evaluation-stage trials, so their times come from the tuning seeds "
            "that selected them: " + ", ".join(sorted(set(summ.loc[summ["stage"] != "evaluation", "arm"]))) + "."
        )
    sec.tables.append(_arm_table(summ))
    paired = pd.DataFrame(paired_against(rows.to_dict("records"), baseline, "step"))
    if len(paired):
        sec.tables.append(_paired_table(paired, baseline))
    _add_profile(sec, rows, summ, figure)
    return sec, rows[list(TTT_COLUMNS)]


def _machines_note(used: Sequence[Mapping]) -> str:
    """Whether seconds are comparable: one machine, or several."""
    hosts = {str((r.get("env") or {}).get("host")) for r in used}
    return " Seconds: " + (
        f"every trial ran on one machine ({next(iter(hosts))}), under whatever load it had: compare steps first."
        if len(hosts) == 1
        else f"trials ran on {len(hosts)} machines ({', '.join(sorted(hosts))}): seconds are not comparable."
    )


def _targets_note(resolved: dict) -> str:
    """Each workload's target, and where a target derived from an arm came from."""
    targets_txt = "; ".join(
        f"{w}: {t.metric} {'>=' if t.mode == 'max' else '<='} {v:.4g}"
        + (f" (median final {t.metric} of `{t.from_arm}`)" if t.from_arm else "")
        for w, (t, v) in resolved.items()
    )
    return f" Targets: {targets_txt}."


def _arm_table(summ: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Per arm: seeds reached (k of n), censored, and the times."""
    summ_show = summ.assign(
        reached=[
            f"{'yes' if r else 'no'} ({a}/{n}, k={k})"
            for r, a, n, k in zip(summ["reached"], summ["n_reached"], summ["n"], summ["k"])
        ]
    )
    cols = ["workload", "arm", "stage", "reached", "n_censored", "time_step", "median_step"]
    cols += ["median_epoch", "median_seconds", "median_cost"]
    return (
        "Per arm: seeds reached, censored, and times (inf = not reached)",
        format_table(summ_show, cols, rename={"time_step": "time (k-th seed, steps)", "median_step": "median steps"}),
    )


def _paired_table(paired: pd.DataFrame, baseline: str) -> tuple[str, pd.DataFrame]:
    """Seed-paired step differences against the baseline (censoring-aware Wilcoxon, Holm)."""
    cols = ["workload", "arm", "reference", "n", "n_both", "n_only_a", "n_only_b", "n_neither"]
    cols += ["median_diff", "p_value", "p_holm", "faster"]
    return (
        f"Against the baseline `{baseline}` (steps; n_only_a: only the arm reached, n_only_b: only the baseline)",
        format_table(paired, cols),
    )


def _add_profile(sec: Section, rows: pd.DataFrame, summ: pd.DataFrame, figure: AddFigure) -> None:
    """The performance profile over time to target (steps): its score table and the figure."""
    times = profile_from_summary(summ.to_dict("records"), "step")
    taus = [1 + (TAU_MAX - 1) * i / 300 for i in range(301)]
    rho = performance_profile(times, taus)
    prof = pd.DataFrame([{"arm": a, "tau": t, "rho": v} for a, vs in rho.items() for t, v in zip(taus, vs)])
    score = profile_score(times)
    scores = pd.DataFrame(
        [
            {"arm": a, "score": v, "workloads reached": int(summ.loc[summ["arm"] == a, "reached"].sum())}
            for a, v in sorted(score.items(), key=lambda kv: -kv[1])
        ]
    )
    sec.tables.append(
        (
            f"Performance profile score over {len(times)} workload(s) (area under rho on [1, {TAU_MAX:g}], steps)",
            format_table(scores),
        )
    )
    figure(
        sec,
        time_to_target_plot(rows, prof),
        "time_to_target",
        "Share of an arm's seeds at the target by each step (censored seeds stay in the denominator; legend: "
        "reached/n), and the performance profile over time to target.",
    )
