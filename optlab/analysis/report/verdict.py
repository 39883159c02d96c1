"""The report's first section: each arm against the baseline and the controls (paired comparisons,
verdicts, budgets, edges), and the columns of ``verdicts.csv``."""

from __future__ import annotations

import math
import warnings

import pandas as pd

from ..compare import BudgetWarning, comparisons
from ..plots import metric_label
from ..stats import DEFAULT_RESAMPLES
from .format import Section, difference_units, format_value

__all__ = ["verdict_table", "verdict_section", "comparison_warnings", "VERDICT_COLUMNS"]

#: columns of ``verdicts.csv`` (docs/analysis.md, "CSV files")
VERDICT_COLUMNS = (
    "task",
    "model",
    "arm",
    "reference",
    "kind",
    "stage",
    "metric",
    "n_pairs",
    "mean",
    "reference_mean",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_wilcoxon",
    "p_holm",
    "p_tost",
    "p_tost_holm",
    "margin",
    "mde",
    "verdict",
    "budget",
    "reference_budget",
    "config",
    "reference_config",
    "arm_at_edge",
    "reference_at_edge",
    "edges",
)


def verdict_table(cmp: pd.DataFrame) -> pd.DataFrame:
    """The report's first table from :func:`optlab.analysis.compare.comparisons` (accuracy differences
    in percentage points)."""
    if cmp.empty:
        return pd.DataFrame()
    k, unit = difference_units(cmp.attrs.get("metric", "final_test_acc"))

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
            "p (Holm)": cmp["p_holm"].map(format_value),
            "p TOST (Holm)": cmp["p_tost_holm"].map(format_value),
            f"MDE{unit}": cmp["mde"].map(lambda x: num(x, "")),
            f"margin{unit}": cmp["margin"].map(lambda x: "±" + num(x, "")),
            "stage": [
                st + (" (selection-biased)" if b else "") for st, b in zip(cmp["stage"], cmp["selection_biased"])
            ],
            **(
                {"on an edge": [e or "–" for e in cmp["edges"]]}
                if "edges" in cmp and (cmp["arm_at_edge"] | cmp["reference_at_edge"]).any()
                else {}
            ),
        }
    )


def verdict_section(
    trials: pd.DataFrame,
    baseline: str,
    controls,
    margin: float,
    alpha: float,
    select: str,
    metric: str,
    domains: dict | None = None,
) -> tuple[Section, pd.DataFrame]:
    """The verdict section and the comparisons behind it (:func:`optlab.analysis.compare.comparisons`):
    each arm against ``baseline`` and the ``controls`` present, per task/model."""
    opts = sorted(trials["arm"].astype(str).unique())
    present = [c for c in controls if c in opts]
    sec = Section("Verdict", _verdict_text(baseline, present, margin, alpha, select, metric))
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
            trials,
            baseline=baseline,
            controls=controls,
            margin=margin,
            alpha=alpha,
            select=select,
            metric=metric,
            domains=domains,
        )
    if cmp.empty:
        sec.warnings.append(f"No comparison: no task/model has both `{baseline}` and another optimizer.")
        return sec, cmp
    sec.warnings += [str(w.message) for w in caught if issubclass(w.category, BudgetWarning)]
    sec.warnings += comparison_warnings(cmp)
    if missing:
        sec.text += f" Controls not in these results: {', '.join(missing)}."
    sec.tables.append(("", verdict_table(cmp)))
    return sec, cmp


def _verdict_text(baseline: str, present: list, margin: float, alpha: float, select: str, metric: str) -> str:
    """How the verdict table was computed: what is compared, the CI, the tests and the verdict words."""
    scale = difference_units(metric)[0]
    return (
        f"Each optimizer against the baseline `{baseline}`"
        + (f" and the controls {', '.join(f'`{c}`' for c in present)}" if present else "")
        + f", per task/model. Δ = optimizer − reference of {metric_label(metric)}"
        + (" in percentage points (pp)" if scale == 100 else "")
        + ", "
        f"paired by seed; each optimizer at the one configuration selected on {metric_label(select)} over its "
        f"tuning seeds. 95 % CI: BCa bootstrap over seeds ({DEFAULT_RESAMPLES} resamples, fixed seed). "
        f"Verdict: **better**/**worse** = paired t-test significant at α = {alpha} after Holm correction across "
        f"all comparisons of this table AND the CI excludes 0; **equivalent** = the equivalence test (TOST, "
        f"Holm-adjusted) puts the difference within ±{scale * margin:g}"
        + (" pp" if scale == 100 else "")
        + " (the margin, `--margin`); "
        "**inconclusive** = neither: the seeds cannot tell -- MDE is the smallest true difference this many "
        "seeds detect with 80 % power. Budgets: configurations each side tried while tuning."
    )


def comparison_warnings(cmp: pd.DataFrame) -> list[str]:
    """What may bias the comparisons ``cmp``: selections on a grid edge, tuning-stage (selection-biased)
    comparisons, selection on the test metric (legacy records)."""
    out = []
    edged = cmp[cmp["arm_at_edge"] | cmp["reference_at_edge"]]
    if len(edged):
        out.append(
            "Selected on the edge of the tuning grid -- these verdicts may say more about the grid than about "
            "the optimizers (Choi et al. 2019): "
            + "; ".join(
                f"{r.task}/{r.model} {r.arm} vs {r.reference} ({r.verdict}): {r.edges}" for r in edged.itertuples()
            )
            + ". Widen the grid, or set `[protocol] extend_edges` to extend it automatically."
        )
    tuning = cmp["stage"] == "tuning"
    if tuning.any():
        out.append(
            "Selection-biased comparison: these results have no evaluation-stage trials (yet) for "
            + ", ".join(sorted(set(cmp.loc[tuning, "arm"].astype(str)) | set(cmp.loc[tuning, "reference"].astype(str))))
            + ", so the differences are measured on the same tuning seeds that selected each configuration "
            "(a winner's curse that favours the optimizer with the larger search). Add evaluation seeds to the "
            "grid spec for an unbiased comparison."
        )
    if cmp["selected_on"].str.contains("test").any():
        out.append(
            "Selected on test: biased. Some results have no validation metric (legacy records); "
            "their configurations were selected on the test metric they are compared on."
        )
    return out
