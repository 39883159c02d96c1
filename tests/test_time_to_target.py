"""Time to target on hand-made trial records: first reach, censoring, k of n, the paired test, profiles."""

import math

import pytest
from scipy import stats

from optlab.analysis.time_to_target import (
    Evaluation,
    arm_summary,
    comparison_records,
    default_k,
    evaluations_of,
    paired_against,
    paired_censored_test,
    performance_profile,
    profile_from_summary,
    profile_score,
    reach_curve,
    resolve_targets,
    target_from_reference,
    time_to_target,
    trial_times,
    workload_time,
)
from optlab.grid.targets import TargetSpec, parse_targets

INF = math.inf


def evals(values, every=10, per_epoch=20, hvps_per_step=0, secs_per_step=0.01):
    return [
        Evaluation(
            step=(i + 1) * every,
            epoch=(i + 1) * every / per_epoch,
            seconds=(i + 1) * every * secs_per_step,
            hvp_count=(i + 1) * every * hvps_per_step,
            value=v,
        )
        for i, v in enumerate(values)
    ]


def test_reached_at_the_first_evaluation():
    t = time_to_target(evals([0.95, 0.5, 0.97]), 0.9)
    assert t.reached and (t.step, t.epoch, t.seconds, t.cost) == (10, 0.5, pytest.approx(0.1), 10)


def test_reached_at_the_last_evaluation_counts_as_reached():
    t = time_to_target(evals([0.1, 0.5, 0.89, 0.9]), 0.9)
    assert t.reached and t.step == 40 and t.evaluations == 4 and t.horizon_step == 40


def test_never_reached_is_censored_not_dropped():
    t = time_to_target(evals([0.1, 0.5, 0.899]), 0.9)
    assert not t.reached and t.step == t.epoch == t.seconds == t.cost == INF
    assert t.horizon_step == 30 and t.evaluations == 3
    # a diverged trial (NaN values) never reaches, even where NaN >= target would be "unknown"
    t = time_to_target(evals([0.5, math.nan, math.nan]), 0.4)
    assert t.reached and t.step == 10
    assert not time_to_target(evals([math.nan, math.nan]), 0.4).reached
    # losses: reached when the value falls to the target
    assert time_to_target(evals([2.0, 1.0, 0.5]), 1.0, mode="min").step == 20


def test_first_reach_not_the_best_and_evaluations_sorted_by_step():
    e = evals([0.5, 0.91, 0.6, 0.99])
    assert time_to_target(list(reversed(e)), 0.9).step == 20  # dips after reaching do not matter


def test_cost_counts_hessian_vector_products_as_gradient_equivalents():
    t = time_to_target(evals([0.1, 0.95], hvps_per_step=1), 0.9)  # one HVP per step
    assert t.step == 20 and t.cost == 20 + 2.0 * 20
    assert time_to_target(evals([0.1, 0.95], hvps_per_step=1), 0.9, hvp_cost=1.5).cost == 50
    with pytest.raises(ValueError, match="invalid hvp_cost=-1"):
        time_to_target(evals([0.1]), 0.9, hvp_cost=-1)
    with pytest.raises(ValueError, match="invalid target=nan"):
        time_to_target(evals([0.1]), math.nan)


def test_evaluations_of_a_record_with_and_without_step_evaluations():
    rec = {
        "evaluations": [
            {"step": 5, "epoch": 0.25, "seconds": 0.3, "hvp_count": 1, "val_acc": 0.4},
            {"step": 10, "epoch": 0.5, "seconds": 0.6, "hvp_count": 1, "val_acc": 0.8},
        ]
    }
    assert time_to_target(evaluations_of(rec), 0.8).step == 10
    legacy = {
        "steps_per_epoch": 20,
        "metrics": [
            {"epoch": 1, "wall_time": 1.0, "hvp_count": 3, "val_acc": 0.5},
            {"epoch": 2, "wall_time": 2.0, "hvp_count": 3, "val_acc": 0.9},
        ],
    }
    t = time_to_target(evaluations_of(legacy), 0.9)
    assert (t.step, t.epoch, t.seconds, t.cost) == (40, 2, 2.0, 40 + 2 * 6)  # HVPs accumulated over epochs


def test_target_from_a_reference_arm():
    assert target_from_reference([0.9, 0.8, 0.95]) == 0.9
    assert target_from_reference([0.9, 0.8, 0.95, 0.85]) == pytest.approx(0.875)
    assert target_from_reference([0.9, math.nan, 0.95]) == 0.9  # a diverged seed counts as the worst
    assert target_from_reference([1.0, 2.0, math.nan], mode="min") == 2.0
    with pytest.raises(ValueError, match="most of its seeds diverged"):
        target_from_reference([0.9, math.nan, math.nan])


def test_an_arm_reaches_a_workload_when_k_of_n_seeds_do():
    assert [default_k(n) for n in (1, 2, 3, 4, 5, 10)] == [1, 2, 2, 3, 3, 6]
    assert workload_time([30, INF, 10, 20, INF]) == (30, 3, 3)  # median of 10, 20, 30, inf, inf
    assert workload_time([30, INF, 10, INF, INF]) == (INF, 2, 3)  # 2 of 5: not reached
    assert workload_time([30, INF, 10, INF, INF], k=2) == (30, 2, 2)
    with pytest.raises(ValueError, match=r"invalid k=6; expected an integer in \[1, n=5\]"):
        workload_time([1, 2, 3, 4, 5], k=6)


def test_paired_test_handles_censoring_by_ranks():
    # arm a reaches on every seed; b misses seeds 3 and 4: those differences outrank every finite one
    a = {0: 100, 1: 120, 2: 90, 3: 110, 4: 100, 5: 200}
    b = {0: 130, 1: 100, 2: 150, 3: INF, 4: INF, 5: INF, 9: 50}  # seed 9 unpaired
    r = paired_censored_test(a, b)
    assert (r["n"], r["n_both"], r["n_only_a"], r["n_only_b"], r["n_neither"]) == (6, 3, 3, 0, 0)
    assert r["median_diff"] == -30 and r["direction"] == -1
    # hand: d = -30, +20, -60, -inf, -inf, -inf; |d| ranks 2, 1, 3, 5, 5, 5 (ties share 5); W+ = 1
    ref = stats.wilcoxon([-30, 20, -60, -1000, -1000, -1000])
    assert r["statistic"] == pytest.approx(ref.statistic) == 1.0
    assert r["p_value"] == pytest.approx(ref.pvalue)
    # a seed neither reached is a zero difference: dropped, but counted
    r2 = paired_censored_test({**a, 7: INF}, {**b, 7: INF})
    assert r2["n_neither"] == 1 and r2["p_value"] == pytest.approx(r["p_value"])
    # nothing to tell apart
    r3 = paired_censored_test({0: INF, 1: 5}, {0: INF, 1: 5})
    assert math.isnan(r3["p_value"]) and r3["direction"] == 0


def test_reach_curve_keeps_unreached_seeds_in_the_denominator():
    assert reach_curve([10, 30, INF, INF], [5, 10, 20, 30, 100]) == [0, 0.25, 0.25, 0.5, 0.5]


def test_performance_profile_and_score_against_a_hand_computation():
    times = {
        "w1": {"A": 100, "B": 200, "C": INF},
        "w2": {"A": 300, "B": 100, "C": 150},
        "w3": {"A": INF, "B": INF, "C": INF},  # nobody reached: ratio inf for all
    }
    # ratios: w1 A 1, B 2, C inf; w2 A 3, B 1, C 1.5; w3 all inf
    rho = performance_profile(times, [1.0, 1.5, 2.0, 3.0, 4.0])
    assert rho["A"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert rho["B"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert rho["C"] == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 1 / 3])
    # score = (1/(4-1)) * integral_1^4 rho: each workload with ratio r <= 4 adds (4 - r) / 3 / 3
    s = profile_score(times)
    assert s["A"] == pytest.approx(((4 - 1) + (4 - 3)) / 3 / 3)
    assert s["B"] == pytest.approx(((4 - 2) + (4 - 1)) / 3 / 3)
    assert s["C"] == pytest.approx((4 - 1.5) / 3 / 3)
    # the same by numerical integration of rho on a fine grid
    taus = [1 + 3 * i / 30000 for i in range(30001)]
    fine = performance_profile(times, taus)
    for arm in "ABC":
        area = sum((fine[arm][i] + fine[arm][i + 1]) / 2 * (taus[i + 1] - taus[i]) for i in range(30000)) / 3
        assert area == pytest.approx(s[arm], abs=1e-3)
    # ties: two arms equally fast both get ratio 1
    assert profile_score({"w": {"A": 50, "B": 50}}) == {"A": 1.0, "B": 1.0}
    with pytest.raises(ValueError, match="invalid tau_max=1"):
        profile_score(times, tau_max=1)


# ------------------------------------------------------------------ over trial records
def _rec(arm, seed, vals, stage="evaluation", status="ok", task="t", every=10):
    return {
        "id": f"{arm}-{seed}-{stage}",
        "arm": arm,
        "stage": stage,
        "status": status,
        "config": {"task": task, "model": "m", "optimizer": arm, "seed": seed},
        "metrics": [{"epoch": 1, "val_acc": vals[-1]}],
        "evaluations": [
            {
                "step": (i + 1) * every,
                "epoch": (i + 1) / len(vals),
                "seconds": float(i + 1),
                "hvp_count": 0,
                "val_acc": v,
            }
            for i, v in enumerate(vals)
        ],
    }


def test_targets_table_is_validated_with_named_errors():
    t = parse_targets("s", {"default": {"from_arm": "sgd"}, "a/b": {"metric": "val_loss", "value": 0.5, "k": 2}})
    assert t["default"] == TargetSpec("val_acc", None, "sgd", None) and t["a/b"].mode == "min" and t["a/b"].k == 2
    for table, match in [
        ({"a": {"value": 1}}, r"s.targets.a: invalid workload 'a'; expected 'task/model' or 'default'"),
        ({"default": {"value": 1, "from_arm": "x"}}, "give exactly one of value"),
        ({"default": {}}, "give exactly one of value"),
        ({"default": {"value": 0.9, "metric": "test_acc"}}, r"invalid 'test_acc'; expected one of val_acc, val_loss"),
        ({"default": {"value": 0.9, "k": 0}}, r"s.targets.default.k: invalid 0"),
        ({"default": {"value": 0.9, "when": 1}}, r"s.targets.default.when: unknown key"),
        ({"default": 0.9}, "expected a table"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_targets("s", table)


def test_tables_count_censored_trials_and_derive_targets_from_an_arm():
    recs = [
        _rec("sgd", 0, [0.5, 0.8, 0.9]),
        _rec("sgd", 1, [0.5, 0.85, 0.86]),
        _rec("sgd", 2, [0.3, 0.4, 0.95]),
        _rec("adamw", 0, [0.9, 0.95, 0.99]),
        _rec("adamw", 1, [0.2, 0.3, 0.4]),  # never reaches: censored, counted
        _rec("adamw", 2, [0.89, 0.9, 0.91]),
        _rec("adamw", 3, [0.99], stage="tuning"),  # tuning trials are not read when evaluation ones exist
        _rec("sgd", 3, [0.1, math.nan], status="diverged"),  # diverged: censored, counted
    ]
    used = comparison_records(recs)
    assert len(used) == 7 and all(r["stage"] == "evaluation" for r in used)
    targets = resolve_targets(used, {"default": TargetSpec(from_arm="sgd")})
    # sgd's final val_acc over its seeds: 0.9, 0.86, 0.95 and a diverged seed (the worst): median 0.88
    assert targets["t/m"][1] == pytest.approx(0.88)
    rows = trial_times(used, targets)
    assert len(rows) == 7 and sum(not r["reached"] for r in rows) == 3  # sgd 1 (0.86 < 0.88), sgd 3, adamw 1
    summ = {r["arm"]: r for r in arm_summary(rows)}
    assert (summ["sgd"]["n"], summ["sgd"]["n_reached"], summ["sgd"]["n_censored"], summ["sgd"]["k"]) == (4, 2, 2, 3)
    assert not summ["sgd"]["reached"] and summ["sgd"]["time_step"] == INF
    assert summ["adamw"]["reached"] and summ["adamw"]["time_step"] == 10 and summ["adamw"]["median_step"] == 10
    # k from the spec
    assert {r["arm"]: r["reached"] for r in arm_summary(rows, {"t/m": 2})} == {"adamw": True, "sgd": True}
    paired = paired_against(rows, "sgd")
    assert len(paired) == 1 and (paired[0]["n"], paired[0]["n_both"], paired[0]["n_neither"]) == (3, 2, 1)
    prof = profile_from_summary(arm_summary(rows))
    assert prof == {"t/m": {"adamw": 10, "sgd": INF}} and profile_score(prof) == {"adamw": 1.0, "sgd": 0.0}
