"""Analysis layer on synthetic results with known statistics; figures; the report.

``_trial`` builds legacy records (no schema version, no validation metrics: selection falls back to
test, with a warning that the legacy tests silence); ``_v2`` builds schema-2 records with validation
metrics, stages and resolved hyperparameters.
"""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from optlab.analysis import (
    best_configs,
    budgets,
    comparisons,
    expected_max_curve,
    load,
    paired_comparison,
    performance_profile,
    selected_trials,
    sensitivity,
    summarize,
)
from optlab.analysis import plots as P
from optlab.analysis import stats as S
from optlab.analysis.compare import BudgetWarning
from optlab.analysis.data import SelectionBiasWarning, selection_table
from optlab.analysis.report import write_report
from optlab.store import Store, StoreError

pytestmark = pytest.mark.filterwarnings("ignore::optlab.analysis.data.SelectionBiasWarning")


def _trial(opt, seed, acc, hp=None, status="ok", task="digits", model="cnn-bn", epochs=3):
    hp = dict(hp or {})
    metrics = [
        {
            "epoch": e + 1,
            "train_loss": 1.0 / (e + 1),
            "train_acc": acc - 0.1 + 0.05 * e,
            "test_loss": 1.0 - acc,
            "test_acc": acc - 0.02 * (epochs - 1 - e),
            "lr": 0.1,
            "time_forward_backward": 0.5,
            "time_curvature": 0.2 if opt == "sgd-ph" else 0.0,
            "time_update": 0.1,
            "time_epoch": 0.9,
            "wall_time": 0.9 * (e + 1),
            "hvp_count": 10,
            "vjp_count": 0,
        }
        for e in range(epochs)
    ]
    if status == "diverged":
        metrics[-1].update(train_loss=float("nan"), test_acc=float("nan"), test_loss=float("nan"))
    cfg = {
        "task": task,
        "model": model,
        "optimizer": opt,
        "hparams": hp,
        "seed": seed,
        "epochs": epochs,
        "batch_size": 64,
        "lr_schedule": "cosine",
        "warmup_epochs": 0.0,
        "decouple": False,
        "engine": "autograd",
    }
    tid = f"{opt}-{task}-{json.dumps(hp, sort_keys=True)}-{seed}"
    return {
        "id": tid,
        "config": cfg,
        "status": status,
        "error": None if status == "ok" else "non-finite loss",
        "metrics": metrics,
        "env": {"host": "h", "git_revision": "abc", "versions": {"torch": "2.13.0"}},
    }


# known values: sgd-ph lr=0.1 -> seeds 0.90, 0.92, 0.94 ; lr=0.3 -> 0.80, 0.84, 0.88 ; sgd lr=0.1 -> 0.89, 0.90, 0.91
ACC = {
    ("sgd-ph", 0.1): [0.90, 0.92, 0.94],
    ("sgd-ph", 0.3): [0.80, 0.84, 0.88],
    ("sgd", 0.1): [0.89, 0.90, 0.91],
    ("sgd", 0.3): [0.70, 0.75, 0.80],
}


def _records(drop=None, diverge=None):
    recs = []
    for (opt, lr), accs in ACC.items():
        for seed, a in enumerate(accs):
            if drop == (opt, lr, seed):
                continue
            st = "diverged" if diverge == (opt, lr, seed) else "ok"
            recs.append(_trial(opt, seed, a, {"lr": lr}, status=st))
    return recs


def test_load_is_tidy_with_consistent_hparam_columns():
    epochs, trials = load(_records())
    assert len(trials) == 12 and len(epochs) == 36
    assert str(trials["optimizer"].dtype) == "category" and trials["lr"].dtype == float
    # defaults of the preset filled in; NaN where a hyperparameter does not apply
    assert (trials.loc[trials["optimizer"] == "sgd-ph", "tau"] == 1e-3).all()
    assert trials.loc[trials["optimizer"] == "sgd", "tau"].isna().all()
    assert {"trial_id", "task", "model", "optimizer", "seed", "status", "epoch", "test_acc", "wall_time"} <= set(epochs)
    assert trials.attrs["hparams"] and "lr" in trials.attrs["hparams"]


def test_summarize_known_means_and_intervals():
    _, trials = load(_records())
    s = summarize(trials)
    row = s[(s["optimizer"] == "sgd-ph") & (s["lr"] == 0.3)].iloc[0]
    x = np.array([0.80, 0.84, 0.88])
    assert row["mean"] == pytest.approx(x.mean()) and row["std"] == pytest.approx(x.std(ddof=1))
    assert row["sem"] == pytest.approx(x.std(ddof=1) / math.sqrt(3))
    assert row["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3))
    assert row["n"] == 3 and row["complete"]


def test_missing_seed_is_visible_and_diverged_is_flagged_not_dropped():
    _, trials = load(_records(drop=("sgd", 0.1, 2), diverge=("sgd-ph", 0.3, 1)))
    s = summarize(trials)
    miss = s[(s["optimizer"] == "sgd") & (s["lr"] == 0.1)].iloc[0]
    assert miss["n"] == 2 and miss["n_missing"] == 1 and not miss["complete"]
    assert miss["mean"] == pytest.approx(0.895)
    div = s[(s["optimizer"] == "sgd-ph") & (s["lr"] == 0.3)].iloc[0]
    assert div["n"] == 2 and div["n_diverged"] == 1 and not div["complete"]
    assert trials["diverged"].sum() == 1 and len(trials) == 11


def test_best_configs_and_ties():
    _, trials = load(_records())
    b = best_configs(trials)
    got = {r["optimizer"]: r["lr"] for _, r in b.iterrows()}
    assert got == {"sgd": 0.1, "sgd-ph": 0.1}
    recs = _records() + [_trial("sgd", s, a, {"lr": 0.2}) for s, a in enumerate(ACC[("sgd", 0.1)])]
    _, trials = load(recs)
    b = best_configs(trials)
    # one winner per optimizer (the runner's rule): the tie goes to the first config label in sorted order
    tied = b[b["optimizer"] == "sgd"]
    assert len(tied) == 1 and tied["n_tied"].iloc[0] == 2 and tied["lr"].iloc[0] == 0.1
    bmin = best_configs(trials, metric="final_test_loss", mode="min")
    assert set(bmin["optimizer"]) == {"sgd", "sgd-ph"}
    with pytest.raises(ValueError, match="mode"):
        best_configs(trials, mode="up")


def test_sensitivity_best_and_mean():
    recs = []
    for wd, shift in [(0.0, 0.0), (5e-4, 0.05)]:
        for (opt, lr), accs in ACC.items():
            recs += [_trial(opt, s, a + shift, {"lr": lr, "weight_decay": wd}) for s, a in enumerate(accs)]
    _, trials = load(recs)
    s = sensitivity(trials, "lr")
    row = s[(s["optimizer"] == "sgd-ph") & (s["lr"] == 0.3)].iloc[0]
    assert row["mean"] == pytest.approx(0.84 + 0.05) and row["weight_decay"] == 5e-4
    m = sensitivity(trials, "lr", aggregate="mean")
    row = m[(m["optimizer"] == "sgd-ph") & (m["lr"] == 0.3)].iloc[0]
    assert row["mean"] == pytest.approx(0.84 + 0.025)
    with pytest.raises(KeyError, match="unknown axis 'lrr'"):
        sensitivity(trials, "lrr")


def test_sensitivity_plot_on_a_categorical_axis():
    recs = [
        _trial("sgd-ph", s, a + (0.01 if est == "hutchinson" else 0.0), {"lr": 0.1, "estimator": est})
        for est in ("rowsum_hvp", "hutchinson")
        for s, a in enumerate(ACC[("sgd-ph", 0.1)])
    ]
    _, trials = load(recs)
    fig = P.sensitivity_plot(trials, "estimator")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "estimator" and ax.get_xscale() == "linear"
    assert sorted(t.get_text() for t in ax.get_xticklabels()) == ["hutchinson", "rowsum_hvp"]


def test_paired_comparison_matches_scipy():
    _, trials = load(_records())
    pc = paired_comparison(trials, baseline="sgd")
    row = pc.iloc[0]
    a, b = np.array(ACC[("sgd-ph", 0.1)]), np.array(ACC[("sgd", 0.1)])
    assert row["optimizer"] == "sgd-ph" and row["n_pairs"] == 3
    assert row["mean_diff"] == pytest.approx((a - b).mean())
    assert row["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    with pytest.raises(KeyError, match="baseline 'adam' not in results"):
        paired_comparison(trials, baseline="adam")


def test_performance_profile():
    recs = _records() + [
        _trial(o, s, a - (0.3 if o == "sgd-ph" else 0.0), {"lr": lr}, task="mnist1d", model="cnn1d")
        for (o, lr), accs in ACC.items()
        for s, a in enumerate(accs)
    ]
    _, trials = load(recs)
    prof = performance_profile(trials, taus=[1.0, 100.0])
    at1 = prof[prof["tau"] == 1.0].set_index("optimizer")["rho"]
    assert at1["sgd-ph"] == 0.5 and at1["sgd"] == 0.5
    assert (prof[prof["tau"] == 100.0]["rho"] == 1.0).all()


def test_figures_have_expected_axes_and_panels():
    recs = []
    for wd in (0.0, 5e-4):
        for (opt, lr), accs in ACC.items():
            recs += [_trial(opt, s, a - wd * 10, {"lr": lr, "weight_decay": wd}) for s, a in enumerate(accs)]
    epochs, trials = load(recs)
    fig = P.heatmaps(trials)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 2 and {ax.get_xlabel() for ax in panels} == {"lr"}
    assert {ax.get_ylabel() for ax in panels} == {"weight_decay"}
    fig = P.sensitivity_plot(trials, "lr")
    assert fig.axes[0].get_xlabel() == "lr" and "accuracy" in fig.axes[0].get_ylabel()
    assert len(fig.axes[0].get_legend().get_texts()) == 2
    fig = P.training_curves(epochs, trials)
    assert (
        len(fig.axes) == 2 and fig.axes[0].get_ylabel() == "test accuracy" and fig.axes[1].get_ylabel() == "train loss"
    )
    fig = P.training_curves(epochs, trials, x="wall_time")
    assert fig.axes[0].get_xlabel() == "wall-clock time (s)"
    fig = P.cost_bars(trials)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "forward-backward",
        "curvature",
        "update",
        "other (evaluation, data)",
    ]


def _store(tmp_path, records, spec=None):
    st = Store(tmp_path / "res").init(spec)
    for r in records:
        safe = r["id"].replace("/", "_").replace(" ", "")
        st.write(safe, {**r, "id": safe})
    return st.root


def test_report_has_every_section_and_figure(tmp_path):
    recs = []
    for wd in (0.0, 5e-4):
        for (opt, lr), accs in ACC.items():
            recs += [
                _trial(
                    opt,
                    s,
                    a,
                    {"lr": lr, "weight_decay": wd},
                    status="diverged" if (s, lr, wd) == (0, 0.3, 0.0) else "ok",
                )
                for s, a in enumerate(accs)
            ]
    root = _store(tmp_path, recs)
    html_path, md_path = write_report(root, tmp_path / "rep")
    html, md = html_path.read_text(), md_path.read_text()
    for section in (
        "Verdict",
        "Budgets and expected maximum",
        "Overview",
        "Grid specification",
        "Environment",
        "Summary over seeds",
        "Learning rate x weight decay",
        "Sensitivity",
        "Comparison details",
        "Training curves",
        "Cost",
        "Missing, failed and diverged trials",
    ):
        assert f"## {section}" in md and f">{section}</h2>" in html
    pngs = sorted((tmp_path / "rep" / "figures").glob("*.png"))
    assert len(pngs) >= 5 and len(list((tmp_path / "rep" / "figures").glob("*.svg"))) == len(pngs)
    assert html.count("<img ") == len(pngs) and "data:image/png;base64," in html
    assert all(f"figures/{p.name}" in md for p in pngs)
    assert "diverged" in md and "http" not in html.replace("http-equiv", "")  # offline: nothing fetched
    # legacy records: no validation metric, no evaluation seeds -- the verdict says both loudly
    verdict = md.split("## Verdict")[1].split("## ")[0]
    assert "Selected on test: biased" in verdict and "Selection-biased comparison" in verdict
    assert "tuning (selection-biased)" in verdict and "±0.50" in verdict
    assert "legacy trial(s)" in md
    assert "| tie |" not in md and "n_tied" in md  # the old `tie` column read as a verdict
    assert "every trial ran in the same environment" in md


def test_report_on_an_incomplete_grid_lists_missing_trials(tmp_path):
    from optlab.grid.spec import expand, load_spec
    from optlab.training.loop import train

    spec = """name = "inc"\nseeds = [0, 1]\n[run]\nepochs = 1\nbatch_size = 256\nmodel_options = {width = 8}\n
[[setting]]\ntask = "digits"\nmodel = "mlp-bn"\n[[optimizer]]\nname = "sgd"\nlr = [0.1]\n"""
    trials = expand(load_spec(spec, is_text=True))
    st = Store(tmp_path / "res").init(spec)
    t = trials[0]
    st.write(t.id, {**train(t.config, progress=False), "id": t.id})
    html_path, md_path = write_report(st.root, tmp_path / "rep")
    md = md_path.read_text()
    assert "1 of 2 trials have results" in md and "missing" in md and trials[1].id in md


def test_empty_and_corrupt_results_are_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not an optlab results directory"):
        load(tmp_path / "plain")
    root = Store(tmp_path / "empty").init().root
    with pytest.raises(StoreError, match="no completed trials"):
        load(root)
    (root / "trials" / "bad.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"invalid trial file .*bad.json: not valid JSON"):
        load(root)
    with pytest.raises(StoreError, match="no completed trials"):
        write_report(root, tmp_path / "rep")


# ----------------------------------------------------------------- schema 2: validation, stages, budgets, verdicts
def _v2(
    opt,
    seed,
    val,
    test,
    hp=None,
    stage="tuning",
    status="ok",
    task="digits",
    model="cnn-bn",
    epochs=3,
    resolved=None,
    error=None,
    arm=None,
):
    hp = dict(hp or {})
    metrics = [
        {
            "epoch": e + 1,
            "train_loss": 1.0 / (e + 1),
            "train_acc": 0.95,
            "val_loss": 1.0 - val,
            "val_acc": val - 0.01 * (epochs - 1 - e),
            "test_loss": 1.0 - test,
            "test_acc": test - 0.01 * (epochs - 1 - e),
            "lr": 0.1,
            "lrs": {"rest": 0.1},
            "time_forward_backward": 0.5,
            "time_curvature": 0.0,
            "time_update": 0.1,
            "time_epoch": 0.7,
            "wall_time": 0.7 * (e + 1),
            "hvp_count": 0,
            "vjp_count": 0,
        }
        for e in range(epochs)
    ]
    if status == "diverged":
        metrics[-1].update(train_loss=float("nan"), val_acc=float("nan"), test_acc=float("nan"))
    cfg = {
        "task": task,
        "model": model,
        "optimizer": opt,
        "hparams": hp,
        "seed": seed,
        "epochs": epochs,
        "batch_size": 64,
        "lr_schedule": "cosine",
        "warmup_epochs": 0.0,
        "decouple": False,
        "engine": "autograd",
    }
    rec = {
        "schema_version": 2,
        "id": f"{stage}-{arm or opt}-{task}-{json.dumps(hp, sort_keys=True)}-{seed}",
        "arm": arm or opt,
        "status": status,
        "error": error if error is not None else (None if status == "ok" else "non-finite loss"),
        "config": cfg,
        "stage": stage,
        "hparams_resolved": {"momentum": 0.9, "weight_decay": 0.0, **(resolved or {}), **hp},
        "plugins": {"optlab": "0.1.0"},
        "metrics": metrics,
        "env": {"host": "h", "git_revision": "abc", "versions": {"torch": "2.13.0"}},
    }
    if stage == "evaluation":
        rec["selection"] = {
            "metric": "final_val_acc",
            "tuning_seeds": [0, 1, 2],
            "score": val,
            "configs_tried": 2,
            "config": f"{opt}{hp}",
        }
    return rec


def _final(recs, opt, key, **hp):
    return [
        r
        for r in recs
        if r["config"]["optimizer"] == opt and all(r["config"]["hparams"].get(k) == v for k, v in hp.items())
    ]


def test_load_v2_fills_hparams_from_the_record_not_todays_presets():
    recs = [_v2("sgd-ph", s, 0.9, 0.9, {"lr": 0.1}, resolved={"tau": 0.05, "hessian_momentum": 0.5}) for s in range(2)]
    recs += [_trial("sgd-ph", 0, 0.9, {"lr": 0.1})]  # legacy: today's defaults, flagged
    epochs, trials = load(recs)
    new, old = trials[~trials["legacy"]], trials[trials["legacy"]]
    assert (new["tau"] == 0.05).all() and (new["hessian_momentum"] == 0.5).all()
    assert (new["schema_version"] == 2).all() and (new["stage"] == "tuning").all()
    assert len(old) == 1 and old["tau"].iloc[0] == 1e-3 and old["schema_version"].iloc[0] == 1
    assert new["final_val_acc"].iloc[0] == pytest.approx(0.9) and math.isnan(old["final_val_acc"].iloc[0])
    assert new["test_acc_at_best_val"].iloc[0] == pytest.approx(0.9) and new["plugins"].iloc[0] == "optlab=0.1.0"
    assert {"val_acc", "val_loss", "stage"} <= set(epochs.columns)


def _random_results(rng, test_rng, eval_seeds=()):
    """Tuning grid (3 seeds) of three optimizers with random validation and (independently) random test
    metrics; evaluation seeds for the configurations validation selects when ``eval_seeds``."""
    grid = {
        "sgd": [{"lr": lr, "weight_decay": wd} for lr in (0.03, 0.1, 0.3) for wd in (0.0, 5e-4)],
        "sgd-ph": [
            {"lr": lr, "weight_decay": wd, "hessian_momentum": hm}
            for lr in (0.03, 0.1, 0.3)
            for wd in (0.0, 5e-4)
            for hm in (0.0, 0.9)
        ],
        "sgd-scaled": [{"lr": lr, "weight_decay": wd} for lr in (0.1, 0.3) for wd in (0.0, 5e-4)],
    }
    recs = []
    for opt, configs in grid.items():
        for hp in configs:
            effect = rng.uniform(0.85, 0.95)
            for seed in range(3):
                recs.append(_v2(opt, seed, effect + rng.normal(0, 0.005), test_rng.uniform(0.8, 1.0), hp))
    if eval_seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, trials = load(recs)
            chosen = best_configs(trials)
        for _, row in chosen.iterrows():
            hp = next(h for h in grid[row["optimizer"]] if all(row[k] == v for k, v in h.items()))
            recs += [
                _v2(row["optimizer"], s, 0.9, test_rng.uniform(0.8, 1.0), hp, stage="evaluation") for s in eval_seeds
            ]
    return recs


def _selections(recs):
    """Every selection the analysis layer makes, as comparable plain values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        epochs, trials = load(recs)
        best = best_configs(trials)
        out = {"best": best[["task", "model", "optimizer", "config"]].astype(str).values.tolist()}
        for axis in ("lr", "weight_decay", "hessian_momentum"):
            s = sensitivity(trials, axis)
            out[f"sens_{axis}"] = s[["optimizer", axis, "config"]].astype(str).values.tolist()
            out[f"sens_mean_{axis}"] = sensitivity(trials, axis, aggregate="mean")["mean"].round(12).tolist()
        cells = best_configs(trials, within=["task", "model", "optimizer", "lr", "weight_decay"])
        out["heatmap_cells"] = cells[["optimizer", "lr", "weight_decay", "config"]].astype(str).values.tolist()
        out["curves_and_profile_trials"] = sorted(selected_trials(trials, best)["trial_id"])
        cmp = comparisons(trials, baseline="sgd", controls=("sgd-scaled",))
        out["compared"] = cmp[["optimizer", "reference", "config", "reference_config", "seeds"]].values.tolist()
        out["expected_max"] = expected_max_curve(trials)["expected_max"].round(12).tolist()
    return out


@pytest.mark.parametrize("eval_seeds", [(), (10, 11, 12, 13)])
def test_selection_never_reads_test_metrics(eval_seeds):
    recs = _random_results(np.random.default_rng(0), np.random.default_rng(1), eval_seeds)
    base = _selections(recs)
    for scramble in range(3):  # test metrics scrambled: permuted across trials, or redrawn at random
        rng = np.random.default_rng(100 + scramble)
        scrambled = json.loads(json.dumps(recs))
        tests = [m["test_acc"] for r in scrambled for m in r["metrics"]]
        perm = rng.permutation(tests) if scramble == 0 else rng.uniform(0.0, 1.0, len(tests))
        it = iter(perm)
        for r in scrambled:
            for m in r["metrics"]:
                m["test_acc"], m["test_loss"] = float(next(it)), float(rng.uniform(0, 3))
        assert _selections(scrambled) == base
    # ... while changing the validation metric of one configuration does change the selection
    _, trials = load(recs)
    chosen = best_configs(trials)
    loser = trials[(trials["optimizer"] == "sgd") & ~trials["config"].isin(chosen["config"])]["config"].iloc[0]
    changed = json.loads(json.dumps(recs))
    for r, (_, row) in zip(changed, trials.iterrows()):
        if row["config"] == loser and r["stage"] == "tuning":
            for m in r["metrics"]:
                m["val_acc"] = 0.999
    moved = _selections(changed)
    assert moved["best"] != base["best"] and [loser] == [c for *_, c in moved["best"] if c.startswith("sgd(")]
    assert moved["expected_max"] != base["expected_max"] and moved["compared"] != base["compared"]


def test_selection_rule_eligibility_fallback_and_ties():
    def trials_of(spec):
        recs = [
            _v2("sgd", seed, val, 0.5, {"lr": lr}, status=st)
            for lr, rows in spec.items()
            for seed, (val, st) in enumerate(rows)
        ]
        return load(recs)[1]

    ok3 = [(0.90, "ok")] * 3
    # lr=0.2 has the higher mean over its finished seeds, but a diverged seed: not eligible
    best = best_configs(trials_of({0.1: ok3, 0.2: [(0.95, "ok"), (0.95, "ok"), (0.95, "diverged")]}))
    assert best["lr"].iloc[0] == 0.1 and best["eligible"].iloc[0] and best["n_configs"].iloc[0] == 2
    # none eligible: the best mean over ok seeds
    best = best_configs(trials_of({0.1: [(0.90, "ok"), (0.9, "diverged")], 0.2: [(0.95, "ok"), (0.9, "failed")]}))
    assert best["lr"].iloc[0] == 0.2 and not best["eligible"].iloc[0]
    # a configuration missing a seed is not eligible either
    best = best_configs(trials_of({0.1: ok3, 0.2: [(0.95, "ok")] * 2}))
    assert best["lr"].iloc[0] == 0.1
    # ties: the first config label in sorted order ("sgd(lr=0.05, ..." < "sgd(lr=0.1, ...")
    best = best_configs(trials_of({0.1: ok3, 0.05: ok3, 0.3: [(0.8, "ok")] * 3}))
    assert best["lr"].iloc[0] == 0.05 and best["n_tied"].iloc[0] == 2 and best["selected_on"].iloc[0] == "final_val_acc"


def test_selection_is_the_grid_runners_per_arm_with_its_tie_break():
    from optlab.grid.protocol import config_key
    from optlab.grid.stages import select_configs
    from optlab.grid.trial import Trial

    rng = np.random.default_rng(3)
    recs = []
    for arm, fixed in (("sgd-ph-a", {"every": 1}), ("sgd-ph-b", {"every": 50})):
        for lr in (0.03, 0.1, 0.3):
            for seed in range(3):  # discrete accuracies
                st = "diverged" if rng.uniform() < 0.15 else "ok"
                recs.append(
                    _v2("sgd-ph", seed, float(rng.integers(90, 93)) / 100, 0.9, {"lr": lr, **fixed}, arm=arm, status=st)
                )
    for lr, vals in ((0.03, [0.95] * 3), (0.1, [0.95] * 3), (0.3, [0.9] * 3)):  # a tie
        recs += [_v2("sgd", seed, v, 0.9, {"lr": lr}) for seed, v in enumerate(vals)]
    _, trials = load(recs)
    best = best_configs(trials)
    assert sorted(best["arm"]) == ["sgd", "sgd-ph-a", "sgd-ph-b"]  # one selection per arm, not per optimizer
    assert (best[best["arm"] != "sgd"]["optimizer"] == "sgd-ph").all() and (best["n_configs"] == 3).all()
    runner = select_configs([Trial(r["id"], r["config"], arm=r["arm"]) for r in recs], {r["id"]: r for r in recs})
    for _, row in best.iterrows():
        chosen = runner[(row["task"], row["model"], row["arm"])]["config"]
        assert row["config_key"] == config_key(chosen)
    sgd = best[best["arm"] == "sgd"].iloc[0]
    assert sgd["n_tied"] == 2 and sgd["lr"] == 0.03  # the tie-break was exercised


def test_legacy_results_select_on_test_with_a_warning():
    _, trials = load(_records())
    with pytest.warns(SelectionBiasWarning, match="selected on test: biased"):
        best = best_configs(trials)
    assert (best["selected_on"] == "final_test_acc").all() and best["selection_biased"].all()


def _protocol_records(eval_=True, scaled=True, mismatch=False):
    """sgd and sgd-ph: 2 configurations, 3 tuning seeds; validation prefers sgd lr=0.1 and sgd-ph lr=0.3
    while test would prefer the others; evaluation seeds 100..104 with known test accuracies."""
    recs = []
    for opt, good in (("sgd", 0.1), ("sgd-ph", 0.3)):
        for lr in (0.1, 0.3):
            recs += [
                _v2(opt, s, 0.95 if lr == good else 0.90, 0.80 if lr == good else 0.99, {"lr": lr}) for s in range(3)
            ]
    if scaled:
        recs += [_v2("sgd-scaled", s, 0.93, 0.9, {"lr": 0.1}) for s in range(3)]
    if eval_:
        for s, (a, d, e) in enumerate(zip(EVAL["sgd"], EVAL["sgd-ph"], EVAL["sgd-scaled"])):
            recs.append(_v2("sgd", 100 + s, 0.95, a, {"lr": 0.3 if mismatch else 0.1}, stage="evaluation"))
            recs.append(_v2("sgd-ph", 100 + s, 0.95, d, {"lr": 0.3}, stage="evaluation"))
            if scaled:
                recs.append(_v2("sgd-scaled", 100 + s, 0.93, e, {"lr": 0.1}, stage="evaluation"))
    return recs


EVAL = {
    "sgd": [0.90, 0.91, 0.92, 0.93, 0.94],
    "sgd-ph": [0.911, 0.921, 0.929, 0.941, 0.951],
    "sgd-scaled": [0.9004, 0.9097, 0.9203, 0.9298, 0.9401],
}


def test_comparisons_on_evaluation_seeds_match_scipy_with_holm_and_verdicts():
    _, trials = load(_protocol_records())
    with pytest.warns(BudgetWarning, match="sgd-scaled 1 vs sgd 2"):
        cmp = comparisons(trials, baseline="sgd", controls=("sgd-scaled", "sgd-frozen"), margin=0.005)
    pairs = {(r.optimizer, r.reference): r for r in cmp.itertuples()}
    assert set(pairs) == {("sgd-ph", "sgd"), ("sgd-ph", "sgd-scaled"), ("sgd-scaled", "sgd")}
    r = pairs[("sgd-ph", "sgd")]
    a, b = np.array(EVAL["sgd-ph"]), np.array(EVAL["sgd"])
    assert r.stage == "evaluation" and not r.selection_biased and r.n_pairs == 5 and r.seeds == "100,101,102,103,104"
    assert r.mean_diff == pytest.approx((a - b).mean()) and r.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert r.p_wilcoxon == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert (r.ci_low, r.ci_high) == pytest.approx(S.bootstrap_ci(a - b))
    assert r.config.startswith("sgd-ph(lr=0.3") and r.reference_config.startswith("sgd(lr=0.1")
    assert r.budget == 2 and r.reference_budget == 2 and r.budget_equal
    assert r.mde == pytest.approx(S.min_detectable_effect((a - b).std(ddof=1), 5))
    assert cmp["p_holm"].tolist() == pytest.approx(S.holm(cmp["p_value"]).tolist())
    assert r.verdict == "better"
    eq = pairs[("sgd-scaled", "sgd")]
    assert eq.verdict == "equivalent" and eq.p_tost_holm < 0.05 and not eq.budget_equal
    assert "sgd-frozen" not in set(cmp["reference"])  # absent control: skipped
    # losses: selected on the lowest validation loss, "better" is a lower test loss
    with pytest.warns(BudgetWarning):
        loss = comparisons(trials, controls=(), metric="final_test_loss", select="final_val_loss")
    loss = loss[loss["arm"] == "sgd-ph"]
    assert loss["config"].tolist() == [r.config] and loss["mean_diff"].iloc[0] == pytest.approx(-(a - b).mean())
    assert loss["verdict"].tolist() == ["better"]


def test_comparisons_without_evaluation_seeds_are_marked_selection_biased():
    _, trials = load(_protocol_records(eval_=False, scaled=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal budgets: no warning
        cmp = comparisons(trials)
    r = cmp.iloc[0]
    assert r["stage"] == "tuning" and r["selection_biased"] and r["n_pairs"] == 3
    assert r["mean_diff"] == pytest.approx(0.0)  # both selected configs have test 0.80 on the tuning seeds
    with pytest.raises(KeyError, match="baseline 'adam' not in results"):
        comparisons(trials, baseline="adam")
    with pytest.raises(ValueError, match="invalid margin=-0.1"):
        comparisons(trials, margin=-0.1)


def test_selection_mismatch_warning_is_deprecated_and_never_raised():
    import optlab.analysis.data as D

    with pytest.warns(DeprecationWarning, match="never raised: the grid runner and the analysis select through one"):
        cls = D.SelectionMismatchWarning
    assert issubclass(cls, UserWarning)
    _, trials = load(_protocol_records(scaled=False, mismatch=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comparisons(trials)
    assert not [w for w in caught if "selects" in str(w.message)]


def test_budgets_and_expected_max_curve():
    _, trials = load(_protocol_records())
    bud = budgets(trials).set_index("arm")
    assert bud.loc["sgd", "configs"] == 2 and bud.loc["sgd-scaled", "configs"] == 1 and not bud["equal"].any()
    curve = expected_max_curve(trials)
    sgd = curve[curve["arm"] == "sgd"]
    assert sgd["expected_max"].tolist() == pytest.approx(S.expected_max([0.95, 0.90], [1, 2]).tolist())
    assert sgd["expected_max"].iloc[1] == pytest.approx(0.95 * 0.75 + 0.90 * 0.25)
    assert curve.loc[curve["budget_matched"], "n"].unique().tolist() == [1]
    fig = P.expected_max_plot(curve)
    assert fig.axes[0].get_xlabel() == "configurations tried (n)" and "validation" in fig.axes[0].get_ylabel()


def test_report_leads_with_the_verdict_and_escapes_html(tmp_path):
    recs = _protocol_records()
    recs.append(_v2("sgd", 2, 0.5, 0.5, {"lr": 0.03}, status="failed", error="<script>alert(1)</script> & more"))
    root = _store(tmp_path, recs)
    html_path, md_path = write_report(root, tmp_path / "rep")
    html, md = html_path.read_text(), md_path.read_text()
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["## Verdict", "## Time to target", "## Budgets and expected maximum"]
    verdict = md.split("## Verdict")[1].split("## ")[0]
    assert "| digits/cnn-bn | sgd-ph | sgd |" in verdict and "better" in verdict and "equivalent" in verdict
    assert "±0.50" in verdict and "WARNING" in verdict and "unequal tuning budgets" in verdict
    assert "selection-biased" not in verdict.split("**WARNING**")[-1].split("\n|")[0]
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in md
    assert "<script>" not in html
    assert "selected on final validation accuracy" in md  # captions say what was selected on what


def test_cli_report_prints_the_verdict_table(tmp_path, capsys):
    from optlab.cli import main

    root = _store(tmp_path, _protocol_records())
    assert (
        main(["report", str(root), "-o", str(tmp_path / "rep"), "--margin", "0.01", "--controls", "sgd-scaled,nope"])
        == 0
    )
    out = capsys.readouterr().out
    assert "verdict (final_test_acc, configurations selected on final_val_acc; margin +-1 pp" in out
    assert "better" in out and "equivalent" in out and "WARNING: unequal tuning budgets" in out
    assert (tmp_path / "rep" / "report.md").exists()


def test_cli_report_baseline_is_an_arm_label(tmp_path, capsys):
    """`--baseline` names an arm: a labelled [[optimizer]] block is found by its label, and the
    printed table compares against it (not 'no comparison' because the preset is called sgd-ph)."""
    from optlab.cli import main

    recs = _protocol_records(scaled=False)
    for r in recs:
        if r["config"]["optimizer"] == "sgd-ph":
            r["arm"] = "sgd-ph-every50"
    root = _store(tmp_path, recs)
    assert main(["report", str(root), "-o", str(tmp_path / "rep"), "--baseline", "sgd-ph-every50"]) == 0
    out = capsys.readouterr().out
    assert "no comparison" not in out and "sgd-ph-every50" in out and "worse" in out
    assert main(["report", str(root), "-o", str(tmp_path / "rep2"), "--baseline", "sgd-ph"]) == 0
    out = capsys.readouterr().out
    assert "no comparison: baseline 'sgd-ph' is not in the results (arms: sgd, sgd-ph-every50)" in out


def test_report_without_the_baseline_says_so():
    from optlab.analysis.report import verdict_section as _verdict_section

    _, trials = load(_protocol_records(scaled=False))
    sec, cmp = _verdict_section(trials, "adam", ("sgd-scaled",), 0.005, 0.05, "final_val_acc", "final_test_acc")
    assert cmp.empty and "baseline `adam` is not in these results (optimizers: sgd, sgd-ph)" in sec.warnings[0]


@pytest.mark.slow
def test_real_two_stage_grid_analysis_agrees_with_the_runner(tmp_path):
    """The runner's records (real training, tiny): the analysis selects what the runner evaluated,
    compares on the evaluation seeds, and reads the resolved hyperparameters the trials recorded."""
    from optlab.grid.run import run_grid
    from optlab.grid.spec import load_spec

    spec = load_spec(
        'name = "two-stage"\nseeds = [0, 1]\n[protocol]\nevaluation_seeds = [100, 101, 102]\n'
        "[run]\nepochs = 1\nbatch_size = 256\nmodel_options = {width = 8}\n"
        '[[setting]]\ntask = "digits"\nmodel = "mlp-bn"\n'
        '[[optimizer]]\nname = "sgd"\nlr = [0.05, 0.2]\n'
        '[[optimizer]]\nname = "sgd"\nlabel = "sgd-slow"\nlr = [0.01, 0.02]\n',
        is_text=True,
    )
    run_grid(spec, results=tmp_path / "res", progress=False)
    records = list(Store(tmp_path / "res").iter_results())
    _, trials = load(records)
    assert not trials["legacy"].any() and (trials["schema_version"] == 2).all()
    assert trials["momentum"].notna().all() and trials["final_val_acc"].notna().all()
    best = best_configs(trials)
    ev = trials[trials["stage"] == "evaluation"]
    assert sorted(ev["seed"].unique()) == [100, 101, 102] and sorted(best["arm"]) == ["sgd", "sgd-slow"]
    for _, row in best.iterrows():  # the configuration the runner evaluated is the one validation selects here
        assert set(ev.loc[ev["arm"] == row["arm"], "selection_config"]) == {row["config_key"]}
    cmp = comparisons(trials)
    assert cmp["stage"].tolist() == ["evaluation"] and cmp["n_pairs"].tolist() == [3]
    assert cmp["arm"].tolist() == ["sgd-slow"] and cmp["optimizer"].tolist() == ["sgd"]


# ----------------------------------------------------------------------------- report polish (issue 15 item 6)
def _arm_records(arms=("sgd", "sgd-ph", "sgd-ph-every50"), lrs=(0.03, 0.1, 0.3), accs=(0.95, 0.99, 0.999), **kw):
    """Tuning trials of several arms (custom labels included) on two problems, accuracies near 1
    with a large seed spread (CI bands that would pass 1)."""
    recs = []
    for task in ("digits", "mnist1d"):
        for arm in arms:
            opt = "sgd-ph" if arm.startswith("sgd-ph") else arm
            for lr in lrs:
                for seed, a in enumerate(accs):
                    r = _trial(opt, seed, a - 0.01 * (lr == lrs[0]), {"lr": lr}, task=task, **kw)
                    r["arm"] = arm
                    r["id"] = f"{arm}-{task}-{lr}-{seed}"
                    recs.append(r)
    return recs


def _line_colors(fig) -> dict[str, tuple]:
    """label -> RGB of every labelled line of every axes."""
    import matplotlib.colors as mcolors

    out = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            lab = line.get_label()
            if not lab.startswith("_"):
                out.setdefault(lab, set()).add(mcolors.to_rgb(line.get_color()))
    return out


def test_one_colour_per_optimizer_across_figures():
    epochs, trials = load(_arm_records())
    expect = P.arm_palette(trials["arm"].cat.categories)
    assert expect["sgd"] == P.FIXED_COLORS["sgd"] and expect["sgd-ph"] == P.FIXED_COLORS["sgd-ph"]
    assert len({expect[a] for a in expect}) == len(expect)  # distinct
    figs = {
        "sensitivity": P.sensitivity_plot(trials, "lr"),
        "curves": P.training_curves(epochs, trials),
        "profile": P.profile_plot(performance_profile(trials)),
        "expected_max": P.expected_max_plot(expected_max_curve(trials)),
    }
    import matplotlib.colors as mcolors

    for name, fig in figs.items():
        seen = _line_colors(fig)
        arms = {a: c for a, c in seen.items() if a in expect}
        assert set(arms) == set(expect), (name, set(seen))
        for arm, colors in arms.items():
            assert colors == {mcolors.to_rgb(expect[arm])}, (name, arm, colors)
    # a figure of a subset of the arms (sgd only) keeps sgd's colour; so does another report
    sub = trials[trials["arm"] == "sgd"]
    assert _line_colors(P.sensitivity_plot(sub, "lr"))["sgd"] == {mcolors.to_rgb(P.FIXED_COLORS["sgd"])}
    assert P.arm_palette(["sgd", "zzz"])["sgd"] == expect["sgd"]


def test_log_x_axis_for_log_spaced_hyperparameters():
    assert P.log_spaced([0.03, 0.1, 0.3]) and P.log_spaced([1e-4, 1e-3, 1e-2, 1e-1]) and P.log_spaced([1, 2, 4, 8])
    assert not P.log_spaced([0.1, 0.2, 0.3]) and not P.log_spaced([0.0, 0.1, 1.0]) and not P.log_spaced([-1, 1, 3])
    assert P.log_spaced([0.01, 0.1]) and not P.log_spaced([0.1, 0.2]) and not P.log_spaced([0.5])
    _, trials = load(_arm_records())
    ax = P.sensitivity_plot(trials, "lr").axes[0]
    assert ax.get_xscale() == "log" and "log" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.03", "0.1", "0.3"]
    _, lin = load(_arm_records(lrs=(0.1, 0.2, 0.3)))
    assert P.sensitivity_plot(lin, "lr").axes[0].get_xscale() == "linear"


def _band_limits(fig):
    """(min, max) of the y of every filled band (PolyCollection) of every axes, by y label."""
    from matplotlib.collections import PolyCollection

    out = {}
    for ax in fig.axes:
        for coll in ax.collections:
            if isinstance(coll, PolyCollection):
                for path in coll.get_paths():
                    ys = path.vertices[:, 1]
                    lo, hi = out.get(ax.get_ylabel(), (np.inf, -np.inf))
                    out[ax.get_ylabel()] = (min(lo, ys.min()), max(hi, ys.max()))
    return out


def test_ci_bands_are_clipped_to_the_metric_range():
    recs = _arm_records(accs=(0.9, 0.999, 1.0))
    for r in recs:  # losses near 0 with a large spread: a normal band would go below 0
        for m in r["metrics"]:
            m["train_loss"] = 0.001 if r["config"]["seed"] != 2 else 0.5
    epochs, trials = load(recs)
    from optlab.analysis.data import sensitivity as sens

    s = sens(trials, "lr")
    assert ((s["mean"] + s["ci95"]) > 1).any()  # the unclipped band would pass 1
    lim = _band_limits(P.sensitivity_plot(trials, "lr"))
    lo, hi = lim["final validation accuracy"]
    assert hi <= 1.0 and lo >= 0.0 and hi == pytest.approx(1.0)
    lim = _band_limits(P.training_curves(epochs, trials))
    assert lim["test accuracy"][1] <= 1.0 and lim["train loss"][0] >= 0.0
    assert P.metric_range("final_val_loss") == (0.0, math.inf) and P.metric_range("val_acc") == (0.0, 1.0)


def _overlaps(fig, legend, patches) -> list:
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    return [p for p in patches if p.get_height() > 0 and box.overlaps(p.get_window_extent(renderer))]


def test_cost_figure_legend_clear_of_bars_totals_match_table_hvp_per_epoch():
    from optlab.analysis.data import cost_per_epoch

    _, trials = load(_arm_records())
    fig = P.cost_bars(trials)
    fig.canvas.draw()
    legend = fig.axes[-1].get_legend()
    bars = [p for ax in fig.axes for p in ax.patches]
    assert len(fig.axes) == 2 and legend is not None and not _overlaps(fig, legend, bars)
    table = cost_per_epoch(trials)
    labels = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert [float(t.split("s")[0]) for t in labels] == [round(v, 2) for v in table["time_epoch"]]
    assert table["time_epoch"].tolist() == pytest.approx(
        table[["time_forward_backward", "time_curvature", "time_update", "time_other"]].sum(axis=1).tolist()
    )
    heights = {}
    for i, ax in enumerate(fig.axes):
        for p in ax.patches:
            heights[(i, p.get_x())] = heights.get((i, p.get_x()), 0) + p.get_height()
    assert sorted(heights.values()) == pytest.approx(sorted(table["time_epoch"]))
    # _trial: 10 HVPs in each of 3 epochs -> 10 per epoch (the caption's unit), not the trial's 30
    assert (table["hvp_per_epoch"] == 10).all() and (trials["hvp_count"] == 30).all()
    assert all(t.endswith("10 HVP") for t in labels)


def test_environment_note_only_when_environments_differ():
    from optlab.analysis.report import environment_note, environment_rows

    recs = _records()
    note = environment_note(environment_rows(recs))
    assert "same environment" in note and "different" not in note
    recs[0]["env"] = {**recs[0]["env"], "host": "other-host"}
    recs[1]["env"] = {**recs[1]["env"], "versions": {"torch": "2.12.0"}}
    note = environment_note(environment_rows(recs))
    assert "Trials ran in different environments: `host`, `torch` differ" in note
    recs[1]["env"] = recs[0]["env"]
    assert "environments: `host` differs" in environment_note(environment_rows(recs))


def test_diagnose_prints_how_to_read_it_and_its_legend_clears_the_bars(tmp_path, capsys):
    import optlab
    from optlab.cli import main
    from optlab.diagnostics import READING_GUIDE, plot_diagnostics
    from optlab.testing import make_problem

    pb = make_problem("mlp_bn1d")
    df = optlab.diagnose(pb.model, (pb.x, pb.y))
    fig = plot_diagnostics(df)
    fig.canvas.draw()
    ax = fig.axes[1]
    assert not _overlaps(fig, ax.get_legend(), ax.patches)
    assert main(["diagnose", "--model", "mlp-bn", "--batch-size", "16", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert READING_GUIDE in out and "offdiag_frob_mass" in READING_GUIDE and "_relerr" in READING_GUIDE


def test_runner_and_report_select_through_one_function(monkeypatch):
    """Both paths call optlab.grid.protocol.select; and they agree where the two old rules did not
    (a configuration with fewer seeds: eligible for the old runner, not for the old analysis)."""
    import optlab.analysis.data.selection as D
    import optlab.grid as G
    import optlab.grid.protocol as SEL
    from optlab.grid import Trial, config_key, select_configs

    assert G.select is SEL.select and D.select is SEL.select
    recs = [_v2("sgd", s, 0.90, 0.5, {"lr": 0.1}) for s in range(3)]
    recs += [_v2("sgd", s, 0.95, 0.5, {"lr": 0.3}) for s in range(2)]  # one seed short
    calls = []
    original = SEL.select

    def spy(*a, **k):
        calls.append(1)
        return original(*a, **k)

    monkeypatch.setattr(SEL, "select", spy)  # what the runner's select_configs calls
    monkeypatch.setattr(D, "select", spy)  # what the analysis calls
    runner = select_configs([Trial(r["id"], r["config"], arm="sgd") for r in recs], {r["id"]: r for r in recs})
    _, trials = load(recs)
    best = best_configs(trials)
    assert len(calls) == 2  # one call from each side
    chosen = runner[("digits", "cnn-bn", "sgd")]["config"]
    assert chosen["hparams"]["lr"] == 0.1 and best["config_key"].iloc[0] == config_key(chosen)


def _edge_records():
    """sgd and sgd-ph over lr 0.03/0.1/0.3: validation is best at sgd-ph's largest lr and inside sgd's grid."""
    recs = []
    for opt, val in (("sgd", {0.03: 0.90, 0.1: 0.95, 0.3: 0.92}), ("sgd-ph", {0.03: 0.90, 0.1: 0.93, 0.3: 0.96})):
        for lr, v in val.items():
            recs += [_v2(opt, s, v, 0.9, {"lr": lr}) for s in range(3)]
        best_lr = max(val, key=val.get)
        recs += [_v2(opt, 100 + s, 0.95, 0.90 + 0.001 * s, {"lr": best_lr}, stage="evaluation") for s in range(4)]
    return recs


def test_edges_in_the_selection_table_the_csv_and_the_report_text(tmp_path):
    _, trials = load(_edge_records())
    best = best_configs(trials).set_index("arm")
    assert bool(best.loc["sgd-ph", "at_edge"]) and not bool(best.loc["sgd", "at_edge"])
    assert best.loc["sgd-ph", "edges"] == "lr = 0.3 is the largest tried: the optimum may lie beyond"
    tab = selection_table(trials, n_boot=100).set_index("arm")
    assert tab.loc["sgd-ph", "axis"] == "lr" and tab.loc["sgd-ph", "side"] == "high"
    assert tab.loc["sgd-ph", "tried"] == "0.03 0.1 0.3" and tab.loc["sgd-ph", "next_values"] == "0.9"
    assert tab.loc["sgd-ph", "stability"] == 1.0 and not tab.loc["sgd", "at_edge"]
    cmp = comparisons(trials, baseline="sgd", controls=())
    assert cmp["arm_at_edge"].tolist() == [True] and cmp["reference_at_edge"].tolist() == [False]
    root = _store(tmp_path, _edge_records())
    html_path, md_path = write_report(root, tmp_path / "rep")
    md = md_path.read_text()
    verdict = md.split("## Verdict")[1].split("\n## ")[0]
    assert "sgd-ph vs sgd" in verdict and "sgd-ph: lr = 0.3 is the largest tried: the optimum may lie beyond" in verdict
    assert "| on an edge |" in verdict  # the verdict table's column
    csv = {name: pd.read_csv(tmp_path / "rep" / f"{name}.csv") for name in ("verdicts", "selection", "time_to_target")}
    from optlab.analysis.report import SELECTION_CSV, VERDICT_COLUMNS

    assert list(csv["verdicts"].columns) == list(VERDICT_COLUMNS)
    assert list(csv["selection"].columns) == ["task", "model", "arm", *SELECTION_CSV]
    sel = csv["selection"].set_index("arm")
    assert bool(sel.loc["sgd-ph", "at_edge"]) and sel.loc["sgd-ph", "side"] == "high" and not sel.loc["sgd", "at_edge"]
    assert csv["verdicts"]["arm_at_edge"].tolist() == [True] and "largest tried" in csv["verdicts"]["edges"].iloc[0]
    assert "## Time to target" in md and "No targets" in md  # no [targets] in a spec-less store
