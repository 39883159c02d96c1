"""The one selection rule (optlab.grid.protocol): scores, eligibility, ties, edges and extension proposals."""

import math

import pytest

from optlab.grid.protocol import (
    AxisRange,
    Observation,
    extension_configs,
    next_values,
    progression,
    select,
    selection_rows,
    stability,
)

KEY = ("digits", "cnn-bn", "sgd")


def obs(lr, vals, key=KEY, **axes):
    """One configuration's observations: ``vals`` per seed (None = not ok)."""
    label = f"lr={lr}" + "".join(f",{k}={v}" for k, v in sorted(axes.items()))
    return [Observation(key, label, s, v, {"lr": lr, **axes}) for s, v in enumerate(vals)]


def test_score_is_the_seed_mean_and_the_best_wins():
    sel = select(obs(0.1, [0.90, 0.92, 0.94]) + obs(0.3, [0.95, 0.91, 0.89]) + obs(0.03, [0.5, 0.5, 0.5]))[KEY]
    assert sel.config == "lr=0.1" and sel.score == pytest.approx(0.92) and sel.eligible
    assert (sel.n_configs, sel.n_tied, sel.seeds, sel.full_seeds, sel.n_ok) == (3, 1, (0, 1, 2), 3, 3)
    assert select(obs(0.1, [0.3, 0.3]) + obs(0.3, [0.2, 0.2]), mode="min")[KEY].config == "lr=0.3"


def test_eligibility_requires_every_seed_ok_and_equal_seed_counts():
    # lr=0.3 has the best mean over its finished seeds but a diverged seed: not eligible
    sel = select(obs(0.1, [0.9, 0.9, 0.9]) + obs(0.3, [0.99, 0.99, None]))[KEY]
    assert sel.config == "lr=0.1" and sel.eligible
    # lr=0.3 finished all of its seeds, but has fewer than the cell's most complete configuration
    sel = select(obs(0.1, [0.9, 0.9, 0.9]) + obs(0.3, [0.99, 0.99]))[KEY]
    assert sel.config == "lr=0.1"
    # none eligible: the best mean over finished seeds, marked
    sel = select(obs(0.1, [0.9, None]) + obs(0.3, [0.95, math.nan]))[KEY]
    assert sel.config == "lr=0.3" and not sel.eligible and sel.n_ok == 1
    # nothing finished
    sel = select(obs(0.1, [None, None]))[KEY]
    assert sel.config is None and sel.score is None and sel.n_configs == 1 and sel.edges == ()


def test_ties_go_to_the_smallest_label_and_the_tolerance_widens_them():
    sel = select(obs(0.3, [0.9, 0.9]) + obs(0.1, [0.9, 0.9]) + obs(0.03, [0.8, 0.8]))[KEY]
    assert sel.config == "lr=0.1" and sel.n_tied == 2  # "lr=0.1" < "lr=0.3"
    sel = select(obs(0.3, [0.901, 0.901]) + obs(0.1, [0.9, 0.9]))[KEY]
    assert sel.config == "lr=0.3" and sel.n_tied == 1
    sel = select(obs(0.3, [0.901, 0.901]) + obs(0.1, [0.9, 0.9]), tol=0.002)[KEY]
    assert sel.config == "lr=0.1" and sel.n_tied == 2
    with pytest.raises(ValueError, match=r"invalid tol=-1; expected a finite number >= 0"):
        select([], tol=-1)
    with pytest.raises(ValueError, match=r"invalid mode='up'"):
        select([], mode="up")


def test_the_order_of_observations_does_not_matter():
    o = obs(0.3, [0.9, 0.91]) + obs(0.1, [0.91, 0.9]) + obs(0.03, [0.905, 0.905])
    a = select(o)[KEY]
    b = select(list(reversed(o)))[KEY]
    assert (a.config, a.score, a.n_tied) == (b.config, b.score, b.n_tied)


def test_cells_are_selected_separately():
    other = ("digits", "cnn-bn", "sgd-ph")
    sel = select(obs(0.1, [0.9]) + obs(0.3, [0.8]) + obs(0.1, [0.7], key=other) + obs(0.3, [0.8], key=other))
    assert sel[KEY].config == "lr=0.1" and sel[other].config == "lr=0.3"


def test_edges_of_a_grid_and_the_extension_proposal():
    sel = select(obs(0.03, [0.8]) + obs(0.1, [0.85]) + obs(0.3, [0.9]))[KEY]
    (e,) = sel.edges
    assert (e.axis, e.value, e.at_edge, e.side, e.kind, e.progression) == ("lr", 0.3, True, "high", "grid", "geometric")
    assert e.tried == (0.03, 0.1, 0.3) and e.next_values == (0.9,)
    assert e.describe() == "lr = 0.3 is the largest tried: the optimum may lie beyond"
    assert sel.at_edge and sel.edge_text() == e.describe()
    low = select(obs(0.03, [0.9]) + obs(0.1, [0.85]) + obs(0.3, [0.8]), extend=2)[KEY].edges[0]
    assert (low.side, low.next_values) == ("low", (0.009, 0.0027))  # ratio 0.1/0.03 ~ 3.33 on that side
    inside = select(obs(0.03, [0.8]) + obs(0.1, [0.95]) + obs(0.3, [0.9]))[KEY]
    assert not inside.at_edge and inside.edges[0].side is None and inside.edges[0].next_values == ()


def test_edges_per_axis_on_a_two_axis_grid():
    o = []
    for lr in (0.1, 0.3):
        for wd in (0.0, 5e-4, 5e-3):
            o += obs(lr, [0.9 if (lr, wd) == (0.1, 5e-4) else 0.8], weight_decay=wd)
    sel = select(o)[KEY]
    by_axis = {e.axis: e for e in sel.edges}
    assert by_axis["lr"].at_edge and by_axis["lr"].side == "low" and by_axis["lr"].progression == "geometric"
    assert not by_axis["weight_decay"].at_edge
    rows = selection_rows({KEY: sel}, ["task", "model", "arm"])
    assert [(r["axis"], r["at_edge"]) for r in rows] == [("lr", True), ("weight_decay", False)]
    assert rows[0]["arm"] == "sgd" and rows[0]["tried"] == "0.1 0.3" and rows[0]["next_values"] == "0.0333333"


def test_a_fixed_or_non_numeric_axis_is_not_tuned():
    o = [Observation(KEY, c, 0, v, {"lr": 0.1, "schedule": c, "nesterov": True}) for c, v in (("a", 0.9), ("b", 0.8))]
    sel = select(o)[KEY]
    assert sel.edges == () and not sel.at_edge
    assert selection_rows({KEY: sel}, ["task", "model", "arm"])[0]["axis"] is None


def test_progressions_and_their_next_values():
    assert progression([0.03, 0.1, 0.3]) == "geometric" and progression([1e-4, 1e-3, 1e-2]) == "geometric"
    assert progression([0.0, 0.5, 0.9]) == "linear" and progression([0.1, 0.2, 0.3]) == "linear"
    assert progression([0.1, 0.3]) == "geometric" and progression([0.1, 0.2]) == "linear"
    assert next_values([0.1, 0.2, 0.3], "high", 2) == (0.4, 0.5)
    assert next_values([1e-4, 1e-3, 1e-2], "high") == (0.1,)
    assert next_values([0.0, 5e-4, 1e-3], "low") == ()  # nothing below 0 on a non-negative axis
    assert next_values([1, 10, 100], "high") == (1000,) and isinstance(next_values([1, 10, 100], "high")[0], int)
    assert next_values([1, 2], "low") == (0,)  # the runner drops a proposal its optimizer rejects
    assert next_values([2, 3], "low") == (1,)
    assert next_values([0.3], "high") == ()


def test_sampled_ranges_use_the_outer_tenth_in_their_own_scale():
    rng = {KEY: {"lr": AxisRange(1e-3, 1.0, log=True)}}
    # log scale: 0.6 is at position log(600)/log(1000) = 0.926 -> within the outer tenth
    o = obs(0.6, [0.9]) + obs(0.01, [0.8])
    (e,) = select(o, domains=rng)[KEY].edges
    assert e.kind == "range" and e.at_edge and e.side == "high" and (e.low, e.high) == (1e-3, 1.0)
    assert "outer tenth of the sampled range (bound 1)" in e.describe()
    # in linear scale 0.5 would be in the middle; in log scale 0.05 (position 0.57) is inside
    (e,) = select(obs(0.05, [0.9]) + obs(0.01, [0.8]), domains=rng)[KEY].edges
    assert not e.at_edge
    lin = {KEY: {"lr": AxisRange(0.0, 1.0)}}
    assert not select(obs(0.5, [0.9]) + obs(0.01, [0.8]), domains=lin)[KEY].edges[0].at_edge
    (e,) = select(obs(0.05, [0.9]) + obs(0.5, [0.8]), domains=lin)[KEY].edges
    assert e.at_edge and e.side == "low"
    # the selected value itself is the largest value drawn, but far from the range bound: not an edge
    assert not select(obs(0.05, [0.9]) + obs(0.02, [0.8]), domains=rng)[KEY].at_edge


def test_extension_moves_the_edge_axis_from_the_winner():
    o = []
    for lr in (0.1, 0.3):
        for wd in (0.0, 1e-3):
            o += obs(lr, [0.9 if (lr, wd) == (0.3, 1e-3) else 0.8], weight_decay=wd)
    (e_lr, hp_lr), (e_wd, hp_wd) = extension_configs(select(o)[KEY])
    assert (e_lr.axis, hp_lr) == ("lr", {"lr": 0.9, "weight_decay": 1e-3})  # ratio 3 beyond 0.3
    assert (e_wd.axis, e_wd.progression, hp_wd) == ("weight_decay", "linear", {"lr": 0.3, "weight_decay": 2e-3})
    assert extension_configs(select(obs(0.1, [0.8]) + obs(0.2, [0.9]) + obs(0.3, [0.8]))[KEY]) == []


def test_stability_is_the_share_of_seed_resamples_that_agree():
    clear = obs(0.1, [0.9, 0.91, 0.92]) + obs(0.3, [0.5, 0.5, 0.5])
    assert stability(clear, n_boot=200)[KEY] == 1.0
    # lr=0.3 wins on mean only through seed 2: resamples without seed 2 pick lr=0.1
    close = obs(0.1, [0.9, 0.9, 0.9]) + obs(0.3, [0.89, 0.89, 0.95])
    share = stability(close, n_boot=2000, seed=1)[KEY]
    assert select(close)[KEY].config == "lr=0.3"
    # with k copies of seed 2 among the 3 draws, lr=0.3's mean is (0.89 (3 - k) + 0.95 k) / 3 > 0.9 <=> k >= 1
    assert share == pytest.approx(1 - (2 / 3) ** 3, abs=0.03)
    assert stability(close, n_boot=50, seed=3) == stability(close, n_boot=50, seed=3)  # deterministic
