"""Time to target, the AlgoPerf way (Dahl et al. 2023, "Benchmarking Neural Network Training
Algorithms", arXiv:2306.07179): how soon a trial's validation metric reaches a target.

**One trial.** A trial records an evaluation every N steps (:class:`Evaluation`: step, epoch,
wall-clock seconds, Hessian-vector products so far, the validation metric). Its time to target
is the *first* evaluation at which the metric reaches the target (``>=`` for accuracies,
``<=`` for losses), in four units:

* ``step`` -- optimizer steps (the primary unit: on a shared machine, seconds depend on load);
* ``epoch`` -- passes over the training data (fractional between epoch ends);
* ``seconds`` -- wall-clock training time, comparable only between trials of one machine;
* ``cost`` -- *gradient-equivalents*: ``step + hvp_cost * hvps``, one per mini-batch gradient
  (forward + backward) plus ``hvp_cost`` per Hessian-vector product. A forward-over-reverse
  HVP differentiates the backward pass once more; its cost is a small multiple of one gradient
  (Pearlmutter 1994; Griewank & Walther 2008, ch. 5): :data:`HVP_COST` = 2 by default (optlab
  measured 1.4-1.6 on CPU for its block-Rademacher refresh, docs/performance.md).

A trial that never reaches the target is **censored**: its times are ``inf``, it is kept and
counted (never dropped), and ``horizon_step`` says how far it was observed.

**One arm on one workload.** With n evaluation seeds, the arm *reaches* the workload when at
least k of them reach the target; by default k = floor(n/2) + 1, a strict majority, so the
arm's workload time -- the k-th smallest seed time (:func:`workload_time`) -- is finite exactly
when it reaches (for odd n it is the median over seeds with unreached = ``inf``, AlgoPerf's
median over studies).

**Two arms on one workload** (:func:`paired_censored_test`): the Wilcoxon signed-rank test on
seed-paired differences with unreached = ``+inf``. The test reads the differences only through
their signs and the ranks of their magnitudes, so ``inf`` is handled exactly: a seed where one
arm reached and the other did not is a difference larger than every finite one (its sign says
who reached); a seed where neither reached is a zero difference (dropped, Wilcoxon's
convention). No imputation of a censored time is needed.

**Across workloads** (:func:`performance_profile`, :func:`profile_score`): per workload w the
ratio r(a, w) = t(a, w) / min over arms of t(., w) (``inf`` when arm a did not reach it);
rho_a(tau) = share of workloads with r(a, w) <= tau (Dolan & Moré 2002); the score
B_a = (1 / (tau_max - 1)) * integral from 1 to tau_max of rho_a(tau) dtau, computed exactly
(rho is a step function): each workload with r <= tau_max adds (tau_max - r) / (tau_max - 1)
/ |W|. AlgoPerf uses tau_max = 4 (:data:`TAU_MAX`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from optlab.grid.targets import TargetSpec

__all__ = [
    "Evaluation",
    "TrialTime",
    "HVP_COST",
    "TAU_MAX",
    "UNITS",
    "evaluations_of",
    "time_to_target",
    "target_from_reference",
    "default_k",
    "workload_time",
    "paired_censored_test",
    "reach_curve",
    "performance_profile",
    "profile_score",
]

#: gradient-equivalents of one Hessian-vector product in the ``cost`` unit
HVP_COST = 2.0
#: AlgoPerf's upper limit of the performance profile's integral
TAU_MAX = 4.0
#: the units of a time to target, primary first
UNITS = ("step", "epoch", "seconds", "cost")
#: columns of :func:`trial_times` rows (and of ``time_to_target.csv``)
TTT_COLUMNS = (
    "workload",
    "arm",
    "seed",
    "stage",
    "trial_id",
    "metric",
    "target",
    "reached",
    *UNITS,
    "evaluations",
    "horizon_step",
)
INF = math.inf


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a trial: after ``step`` optimizer steps (``epoch`` passes, ``seconds`` of
    training, ``hvp_count`` Hessian-vector products so far), the validation metric was ``value``."""

    step: int
    epoch: float
    seconds: float
    hvp_count: int
    value: float


@dataclass(frozen=True)
class TrialTime:
    """A trial's time to target in every unit (``inf`` when censored: ``reached`` False);
    ``evaluations``: how many evaluations it had; ``horizon_step``: the last evaluated step."""

    reached: bool
    step: float
    epoch: float
    seconds: float
    cost: float
    evaluations: int
    horizon_step: float

    def get(self, unit: str) -> float:
        if unit not in UNITS:
            raise ValueError(f"invalid unit={unit!r}; expected one of {', '.join(UNITS)}")
        return float(getattr(self, unit))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"invalid mode={mode!r}; expected 'max' (accuracies) or 'min' (losses)")


def evaluations_of(record: Mapping, metric: str = "val_acc") -> list[Evaluation]:
    """The evaluations of a trial record: its ``evaluations`` list (written by the training loop when
    ``eval_every_steps`` is set), else one per epoch from ``metrics`` (step = epoch x the record's
    ``steps_per_epoch``, NaN when unknown; HVPs accumulated over the epochs)."""
    evs = record.get("evaluations")
    if evs:
        return [
            Evaluation(
                int(e["step"]),
                float(e["epoch"]),
                float(e.get("seconds", math.nan)),
                int(e.get("hvp_count") or 0),
                float(e[metric]) if _finite(e.get(metric)) else math.nan,
            )
            for e in evs
        ]
    per_epoch = record.get("steps_per_epoch")
    out, hvps = [], 0
    for m in record.get("metrics") or []:
        hvps += int(m.get("hvp_count") or 0)
        ep = m.get("epoch")
        step = ep * per_epoch if _finite(per_epoch) and _finite(ep) else math.nan
        out.append(
            Evaluation(
                step,  # type: ignore[arg-type]
                float(ep) if _finite(ep) else math.nan,
                float(m.get("wall_time", math.nan)),
                hvps,
                float(m[metric]) if _finite(m.get(metric)) else math.nan,
            )
        )
    return out


def time_to_target(
    evaluations: Sequence[Evaluation], target: float, mode: str = "max", hvp_cost: float = HVP_COST
) -> TrialTime:
    """The first evaluation (in step order) whose value reaches ``target``; censored (``inf``) when none
    does. A non-finite value (a diverged trial) never reaches."""
    _check_mode(mode)
    if not _finite(target):
        raise ValueError(f"invalid target={target!r}; expected a finite number")
    if not (_finite(hvp_cost) and hvp_cost >= 0):
        raise ValueError(f"invalid hvp_cost={hvp_cost!r}; expected a finite number >= 0")
    evs = sorted(evaluations, key=lambda e: (e.step if _finite(e.step) else INF, e.epoch))
    horizon = max((float(e.step) for e in evs if _finite(e.step)), default=math.nan)
    for e in evs:
        if _finite(e.value) and (e.value >= target if mode == "max" else e.value <= target):
            return TrialTime(
                True,
                float(e.step),
                float(e.epoch),
                float(e.seconds),
                float(e.step) + hvp_cost * e.hvp_count,
                len(evs),
                horizon,
            )
    return TrialTime(False, INF, INF, INF, INF, len(evs), horizon)


def target_from_reference(final_values: Iterable[float], mode: str = "max") -> float:
    """A target derived from a reference arm: the median of its seeds' final validation values
    (non-finite ones -- diverged seeds -- count as the worst value: -inf for ``max``, +inf for ``min``)."""
    _check_mode(mode)
    worst = -INF if mode == "max" else INF
    vals = sorted(float(v) if _finite(v) else worst for v in final_values)
    if not vals:
        raise ValueError("no reference values to derive a target from")
    n = len(vals)
    med = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
    if not _finite(med):
        raise ValueError(f"the reference arm's median final value is {med} (most of its seeds diverged)")
    return med


def default_k(n: int) -> int:
    """Seeds that must reach for an arm to reach a workload: a strict majority, floor(n/2) + 1."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"invalid n={n!r}; expected the number of seeds (an integer >= 1)")
    return n // 2 + 1


def workload_time(times: Sequence[float], k: int | None = None) -> tuple[float, int, int]:
    """``(time, n_reached, k)``: an arm's time on a workload, the k-th smallest of its seeds' times
    (``inf`` for unreached seeds), finite exactly when at least ``k`` seeds reached."""
    n = len(times)
    k = default_k(n) if k is None else k
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"invalid k={k!r}; expected an integer in [1, n={n}]")
    ts = sorted(float(t) if _finite(t) else INF for t in times)
    return ts[k - 1], sum(1 for t in ts if _finite(t)), k


def paired_censored_test(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
    """Wilcoxon signed-rank test of seed-paired times ``a`` vs ``b`` (``{seed: time}``, ``inf`` = not
    reached) over their common seeds; two-sided, exact for n <= 50 without ties (scipy).

    Returns ``n`` (paired seeds), ``n_both``, ``n_only_a``, ``n_only_b``, ``n_neither`` (who
    reached), ``median_diff`` (median of a - b over seeds both reached; NaN if none),
    ``statistic`` and ``p_value`` (NaN when every difference is 0). Lower times are better:
    a negative ``direction`` (the sign of the rank sum) means ``a`` is faster."""
    seeds = sorted(set(a) & set(b))
    diffs, both = [], []
    counts = {"n_both": 0, "n_only_a": 0, "n_only_b": 0, "n_neither": 0}
    for s in seeds:
        x, y = float(a[s]), float(b[s])
        fa, fb = _finite(x), _finite(y)
        if fa and fb:
            counts["n_both"] += 1
            both.append(x - y)
            diffs.append(x - y)
        elif fa:
            counts["n_only_a"] += 1
            diffs.append(-INF)
        elif fb:
            counts["n_only_b"] += 1
            diffs.append(INF)
        else:
            counts["n_neither"] += 1
            diffs.append(0.0)
    out: dict = {"n": len(seeds), **counts, "median_diff": statistics.median(both) if both else math.nan}
    nonzero = [d for d in diffs if d != 0]
    if not nonzero:
        return {**out, "statistic": math.nan, "p_value": math.nan, "direction": 0}
    # ranks of |d| only: any finite stand-in above every finite |d| gives the same test
    big = 2 * max([abs(d) for d in nonzero if _finite(d)], default=1.0) + 1.0
    ranked = [d if _finite(d) else math.copysign(big, d) for d in nonzero]
    from scipy import stats

    res = stats.wilcoxon(ranked, zero_method="wilcox", alternative="two-sided")
    ranks = stats.rankdata([abs(x) for x in ranked])
    pos = sum(r for r, d in zip(ranks, ranked) if d > 0)
    neg = sum(r for r, d in zip(ranks, ranked) if d < 0)
    return {
        **out,
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "direction": int(math.copysign(1, pos - neg)) if pos != neg else 0,
    }


def reach_curve(times: Sequence[float], grid: Sequence[float]) -> list[float]:
    """Share of seeds that reached the target by each time in ``grid`` (unreached seeds stay in
    the denominator). Every trial is observed to the same horizon, so this is the Kaplan-Meier
    estimate of P(time <= t) with censoring only at the horizon: 1 - KM survival."""
    n = len(times)
    if not n:
        return [math.nan for _ in grid]
    return [sum(1 for t in times if _finite(t) and t <= g) / n for g in grid]


def performance_profile(times: Mapping[str, Mapping[str, float]], taus: Sequence[float]) -> dict[str, list[float]]:
    """rho_a(tau) for every arm: ``times[workload][arm]`` (``inf`` = not reached) -> ``{arm: [rho(tau)
    for tau in taus]}``. A workload no arm reached has ratio ``inf`` for every arm."""
    ratios = profile_ratios(times)
    arms = sorted({a for per in times.values() for a in per})
    nw = len(times)
    return {a: [sum(1 for w in ratios if ratios[w].get(a, INF) <= t) / nw for t in taus] for a in arms}


def profile_ratios(times: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{workload: {arm: t / best t}}`` (``inf`` when the arm, or every arm, did not reach)."""
    out = {}
    for w, per in times.items():
        best = min((float(t) for t in per.values() if _finite(t) and t >= 0), default=INF)
        out[w] = {
            a: (float(t) / best if best > 0 else (1.0 if float(t) == best else INF))
            if _finite(t) and _finite(best)
            else INF
            for a, t in per.items()
        }
    return out


def profile_score(times: Mapping[str, Mapping[str, float]], tau_max: float = TAU_MAX) -> dict[str, float]:
    """AlgoPerf's score per arm: the area under rho_a on [1, tau_max] divided by (tau_max - 1), in [0, 1]:
    1 = fastest on every workload, 0 = no workload reached within tau_max times the fastest."""
    if not (_finite(tau_max) and tau_max > 1):
        raise ValueError(f"invalid tau_max={tau_max!r}; expected a number > 1")
    ratios = profile_ratios(times)
    arms = sorted({a for per in times.values() for a in per})
    nw = len(times)
    return {
        a: sum((tau_max - max(1.0, r)) / (tau_max - 1) for w in ratios if (r := ratios[w].get(a, INF)) <= tau_max) / nw
        for a in arms
    }


# ------------------------------------------------------------------ tables over trial records
def _workload(rec: Mapping) -> str:
    c = rec["config"]
    return f"{c['task']}/{c['model']}"


def _arm(rec: Mapping) -> str:
    return rec.get("arm") or rec["config"]["optimizer"]


def comparison_records(records: Iterable[Mapping], selected: Iterable[str] | None = None) -> list[Mapping]:
    """The trials time to target reads: per workload and arm, its evaluation-stage trials when it
    has any, else its tuning trials (selection-biased: the report says so); ``selected``: the ids of
    the trials that stand for each arm's selected configuration
    (:func:`optlab.analysis.data.selected_trials`), when only those may be read. Failed trials
    (no metrics) are left out; diverged ones are kept (censored)."""
    keep = set(selected) if selected is not None else None
    recs = [r for r in records if r.get("status") in ("ok", "diverged") and (keep is None or r.get("id") in keep)]
    has_eval = {(_workload(r), _arm(r)) for r in recs if r.get("stage") == "evaluation"}
    return [r for r in recs if (r.get("stage") == "evaluation") == ((_workload(r), _arm(r)) in has_eval)]


def resolve_targets(
    records: Sequence[Mapping], targets: Mapping[str, TargetSpec]
) -> dict[str, tuple[TargetSpec, float]]:
    """``{workload: (spec, target value)}`` for every workload of ``records`` that ``targets`` covers;
    a ``from_arm`` target is the median final metric of that arm's trials (:func:`comparison_records`).
    A workload whose reference arm is absent is left out (the report says so)."""
    out = {}
    for w in sorted({_workload(r) for r in records}):
        spec = targets.get(w) or targets.get("default")
        if spec is None:
            continue
        if spec.value is not None:
            out[w] = (spec, spec.value)
            continue
        finals = [
            (r["metrics"][-1].get(spec.metric) if r["metrics"] and r["status"] == "ok" else math.nan)
            for r in records
            if _workload(r) == w and _arm(r) == spec.from_arm
        ]
        if finals:
            try:
                out[w] = (spec, target_from_reference(finals, spec.mode))
            except ValueError:
                continue
    return out


def trial_times(
    records: Sequence[Mapping], targets: Mapping[str, tuple[TargetSpec, float]], hvp_cost: float = HVP_COST
) -> list[dict]:
    """One row per trial of a targeted workload: identity, the target, ``reached``, the time in every
    unit (``inf`` = censored), ``evaluations`` and ``horizon_step``."""
    rows = []
    for r in records:
        w = _workload(r)
        if w not in targets:
            continue
        spec, value = targets[w]
        t = time_to_target(evaluations_of(r, spec.metric), value, spec.mode, hvp_cost)
        rows.append(
            {
                "workload": w,
                "arm": _arm(r),
                "seed": r["config"].get("seed", 0),
                "stage": r.get("stage", "tuning"),
                "trial_id": r.get("id"),
                "metric": spec.metric,
                "target": value,
                "reached": t.reached,
                **{u: t.get(u) for u in UNITS},
                "evaluations": t.evaluations,
                "horizon_step": t.horizon_step,
            }
        )
    return rows


def arm_summary(rows: Sequence[Mapping], ks: Mapping[str, int | None] | None = None) -> list[dict]:
    """Per workload and arm: ``n`` seeds, ``n_reached``, ``n_censored``, ``k`` and ``reached`` (>= k
    of n), and per unit the workload time (k-th smallest seed time) and the median over seeds
    (both ``inf`` when not reached)."""
    groups: dict[tuple, list[Mapping]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["arm"]), []).append(r)
    out = []
    for (w, arm), g in sorted(groups.items()):
        k = (ks or {}).get(w)
        k = min(k, len(g)) if k else None
        row: dict = {"workload": w, "arm": arm, "stage": ",".join(sorted({x["stage"] for x in g}))}
        for u in UNITS:
            t, n_reached, kk = workload_time([x[u] for x in g], k)
            row[f"time_{u}"] = t
            row[f"median_{u}"] = statistics.median([x[u] if _finite(x[u]) else INF for x in g])
        row.update(
            n=len(g),
            n_reached=n_reached,
            n_censored=len(g) - n_reached,
            k=kk,
            reached=n_reached >= kk,
            target=g[0]["target"],
            metric=g[0]["metric"],
        )
        out.append(row)
    return out


def paired_against(rows: Sequence[Mapping], reference: str, unit: str = "step") -> list[dict]:
    """Every arm against ``reference`` per workload (:func:`paired_censored_test` on ``unit``), with
    Holm-adjusted p-values over all rows; ``faster``: which side is faster where significant (alpha 0.05)."""
    from .stats import holm

    by: dict[tuple, dict[int, float]] = {}
    for r in rows:
        by.setdefault((r["workload"], r["arm"]), {})[r["seed"]] = r[unit]
    out = []
    for (w, arm), times in sorted(by.items()):
        if arm == reference or (w, reference) not in by:
            continue
        res = paired_censored_test(times, by[(w, reference)])
        out.append({"workload": w, "arm": arm, "reference": reference, "unit": unit, **res})
    for r, p in zip(out, holm([r["p_value"] for r in out]) if out else []):
        r["p_holm"] = float(p)
        r["faster"] = (
            (r["arm"] if r["direction"] < 0 else r["reference"]) if _finite(p) and p < 0.05 and r["direction"] else "-"
        )
    return out


def profile_from_summary(summary: Sequence[Mapping], unit: str = "step") -> dict[str, dict[str, float]]:
    """``{workload: {arm: workload time in unit}}`` for :func:`performance_profile` / :func:`profile_score`."""
    out: dict[str, dict[str, float]] = {}
    for r in summary:
        out.setdefault(r["workload"], {})[r["arm"]] = r[f"time_{unit}"]
    return out
