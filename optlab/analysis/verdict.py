"""The verdict section (each arm against the baseline and the controls) and the table of
every statistic behind it."""

from __future__ import annotations

import math
import warnings

import pandas as pd

from .compare import BudgetWarning, comparisons
from .data import SelectionMismatchWarning
from .plots import metric_label
from .sections import Section, fmt_value, frame_table
from .stats import DEFAULT_RESAMPLES

__all__ = ["verdict_table", "verdict_section", "comparison_details_section", "DETAIL_COLUMNS"]


def _units(metric: str) -> tuple[float, str]:
    """Scale and unit of differences of ``metric``: percentage points for accuracies, else as is."""
    return (100.0, " (pp)") if metric.endswith("_acc") else (1.0, "")


def verdict_table(cmp: pd.DataFrame) -> pd.DataFrame:
    """The report's first table from :func:`compare.comparisons` (accuracy differences in percentage points)."""
    if cmp.empty:
        return pd.DataFrame()
    k, unit = _units(cmp.attrs.get("metric", "final_test_acc"))

    def num(x: float, sign: str = "+") -> str:
        return "–" if not math.isfinite(x) else f"{k * x:{sign}.{2 if k == 100 else 4}f}"

    return pd.DataFrame(
        {
            "task": cmp["task"].astype(str) + "/" + cmp["model"].astype(str),
            "optimizer": cmp["arm"],
            "vs": cmp["reference"],
            f"Δ{unit}": cmp["mean_diff"].map(num),
            f"95 % CI{unit}": [f"[{num(lo)}, {num(hi)}]" for lo, hi in zip(cmp["ci_low"], cmp["ci_high"])],
            "verdict": cmp["verdict"],
            "seeds": cmp["n_pairs"],
            "budgets": [
                f"{a} vs {b}" + ("" if a == b else " (!)") for a, b in zip(cmp["budget"], cmp["reference_budget"])
            ],
            "p (Holm)": cmp["p_holm"].map(fmt_value),
            "p TOST (Holm)": cmp["p_tost_holm"].map(fmt_value),
            f"MDE{unit}": cmp["mde"].map(lambda x: num(x, "")),
            f"margin{unit}": cmp["margin"].map(lambda x: "±" + num(x, "")),
            "stage": [
                st + (" (selection-biased)" if b else "") for st, b in zip(cmp["stage"], cmp["selection_biased"])
            ],
        }
    )


def verdict_section(
    trials: pd.DataFrame, baseline: str, controls, margin: float, alpha: float, select: str, metric: str
) -> tuple[Section, pd.DataFrame]:
    opts = sorted(trials["arm"].astype(str).unique())
    present = [c for c in controls if c in opts]
    sec = Section(
        "Verdict",
        (
            f"Each optimizer against the baseline `{baseline}`"
            + (f" and the controls {', '.join(f'`{c}`' for c in present)}" if present else "")
            + f", per task/model. Δ = optimizer − reference of {metric_label(metric)}"
            + (" in percentage points (pp)" if _units(metric)[0] == 100 else "")
            + ", "
            f"paired by seed; each optimizer at the one configuration selected on {metric_label(select)} over its "
            f"tuning seeds. 95 % CI: BCa bootstrap over seeds ({DEFAULT_RESAMPLES} resamples, fixed seed). "
            f"Verdict: **better**/**worse** = paired t-test significant at α = {alpha} after Holm correction across "
            f"all comparisons of this table AND the CI excludes 0; **equivalent** = the equivalence test (TOST, "
            f"Holm-adjusted) puts the difference within ±{_units(metric)[0] * margin:g}"
            + (" pp" if _units(metric)[0] == 100 else "")
            + " (the margin, `--margin`); "
            "**inconclusive** = neither: the seeds cannot tell -- MDE is the smallest true difference this many "
            "seeds detect with 80 % power. Budgets: configurations each side tried while tuning."
        ),
    )
    if baseline not in opts:
        sec.warnings.append(
            f"No comparison: the baseline `{baseline}` is not in these results (optimizers: "
            f"{', '.join(opts)}); choose one with `--baseline`."
        )
        return sec, pd.DataFrame()
    missing = [c for c in controls if c not in opts]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cmp = comparisons(
            trials, baseline=baseline, controls=controls, margin=margin, alpha=alpha, select=select, metric=metric
        )
    if cmp.empty:
        sec.warnings.append(f"No comparison: no task/model has both `{baseline}` and another optimizer.")
        return sec, cmp
    for w in caught:
        if issubclass(w.category, (BudgetWarning, SelectionMismatchWarning)):
            sec.warnings.append(str(w.message))
    if (cmp["stage"] == "tuning").any():
        sec.warnings.append(
            "Selection-biased comparison: these results have no evaluation-stage trials (yet) for "
            + ", ".join(
                sorted(
                    set(cmp.loc[cmp["stage"] == "tuning", "arm"].astype(str))
                    | set(cmp.loc[cmp["stage"] == "tuning", "reference"].astype(str))
                )
            )
            + ", so the differences are measured on the same tuning seeds that selected each configuration "
            "(a winner's curse that favours the optimizer with the larger search). Add evaluation seeds to the "
            "grid spec for an unbiased comparison."
        )
    if cmp["selected_on"].str.contains("test").any():
        sec.warnings.append(
            "Selected on test: biased. Some results have no validation metric (legacy records); "
            "their configurations were selected on the test metric they are compared on."
        )
    if missing:
        sec.text += f" Controls not in these results: {', '.join(missing)}."
    sec.tables.append(("", verdict_table(cmp)))
    return sec, cmp


#: the columns of the comparison details table, in order
DETAIL_COLUMNS = [
    "task",
    "model",
    "arm",
    "reference",
    "stage",
    "n_pairs",
    "n_unpaired",
    "mean",
    "reference_mean",
    "mean_diff",
    "ci_low",
    "ci_high",
    "sd_diff",
    "p_value",
    "p_wilcoxon",
    "p_holm",
    "p_tost",
    "p_tost_holm",
    "mde",
    "verdict",
    "seeds",
    "config",
    "reference_config",
]


def comparison_details_section(cmp: pd.DataFrame) -> Section:
    sec = Section(
        "Comparison details",
        "Every statistic behind the verdict table: paired t and Wilcoxon "
        "signed-rank p-values (unadjusted), Holm-adjusted p, TOST p, SD of the seed differences, "
        "the seeds paired and the configurations compared.",
    )
    if len(cmp):
        sec.tables.append(("", frame_table(cmp, DETAIL_COLUMNS)))
    return sec
