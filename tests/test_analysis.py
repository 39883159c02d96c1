"""Analysis layer on synthetic results with known statistics; figures; the report."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from optlab.analysis import best_configs, load, paired_comparison, performance_profile, sensitivity, summarize
from optlab.analysis import plots as P
from optlab.analysis.report import write_report
from optlab.store import Store, StoreError


def _trial(opt, seed, acc, hp=None, status="ok", task="digits", model="cnn-bn", epochs=3):
    hp = dict(hp or {})
    metrics = [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "train_acc": acc - 0.1 + 0.05 * e,
                "test_loss": 1.0 - acc, "test_acc": acc - 0.02 * (epochs - 1 - e), "lr": 0.1,
                "time_forward_backward": 0.5, "time_curvature": 0.2 if opt == "sgd-ph" else 0.0,
                "time_update": 0.1, "time_epoch": 0.9, "wall_time": 0.9 * (e + 1), "hvp_count": 10, "vjp_count": 0}
               for e in range(epochs)]
    if status == "diverged":
        metrics[-1].update(train_loss=float("nan"), test_acc=float("nan"), test_loss=float("nan"))
    cfg = {"task": task, "model": model, "optimizer": opt, "hparams": hp, "seed": seed, "epochs": epochs,
           "batch_size": 64, "lr_schedule": "cosine", "warmup_epochs": 0.0, "decouple": False, "engine": "autograd"}
    tid = f"{opt}-{task}-{json.dumps(hp, sort_keys=True)}-{seed}"
    return {"id": tid, "config": cfg, "status": status, "error": None if status == "ok" else "non-finite loss",
            "metrics": metrics, "env": {"host": "h", "git_revision": "abc", "versions": {"torch": "2.13.0"}}}


# known values: sgd-ph lr=0.1 -> seeds 0.90, 0.92, 0.94 ; lr=0.3 -> 0.80, 0.84, 0.88 ; sgd lr=0.1 -> 0.89, 0.90, 0.91
ACC = {("sgd-ph", 0.1): [0.90, 0.92, 0.94], ("sgd-ph", 0.3): [0.80, 0.84, 0.88], ("sgd", 0.1): [0.89, 0.90, 0.91],
       ("sgd", 0.3): [0.70, 0.75, 0.80]}


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
    tied = b[b["optimizer"] == "sgd"]
    assert len(tied) == 2 and tied["tie"].all()
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
    recs = [_trial("sgd-ph", s, a + (0.01 if est == "hutchinson" else 0.0), {"lr": 0.1, "estimator": est})
            for est in ("rowsum_hvp", "hutchinson") for s, a in enumerate(ACC[("sgd-ph", 0.1)])]
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
    recs = _records() + [_trial(o, s, a - (0.3 if o == "sgd-ph" else 0.0), {"lr": lr}, task="mnist1d", model="cnn1d")
                         for (o, lr), accs in ACC.items() for s, a in enumerate(accs)]
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
    assert len(fig.axes) == 2 and fig.axes[0].get_ylabel() == "test accuracy" and fig.axes[1].get_ylabel() == "train loss"
    fig = P.training_curves(epochs, trials, x="wall_time")
    assert fig.axes[0].get_xlabel() == "wall-clock time (s)"
    fig = P.cost_bars(trials)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["forward-backward", "curvature", "update"]


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
            recs += [_trial(opt, s, a, {"lr": lr, "weight_decay": wd}, status="diverged" if (s, lr, wd) == (0, 0.3, 0.0) else "ok")
                     for s, a in enumerate(accs)]
    root = _store(tmp_path, recs)
    html_path, md_path = write_report(root, tmp_path / "rep")
    html, md = html_path.read_text(), md_path.read_text()
    for section in ("Overview", "Grid specification", "Environment", "Summary over seeds", "Learning rate x weight decay",
                    "Sensitivity", "Paired comparison", "Training curves", "Cost", "Missing, failed and diverged trials"):
        assert f"## {section}" in md and f">{section}</h2>" in html
    pngs = sorted((tmp_path / "rep" / "figures").glob("*.png"))
    assert len(pngs) >= 5 and len(list((tmp_path / "rep" / "figures").glob("*.svg"))) == len(pngs)
    assert html.count("<img ") == len(pngs) and "data:image/png;base64," in html
    assert all(f"figures/{p.name}" in md for p in pngs)
    assert "diverged" in md and "http" not in html.replace("http-equiv", "")  # offline: nothing fetched


def test_report_on_an_incomplete_grid_lists_missing_trials(tmp_path):
    from optlab.grid import expand, load_spec
    from optlab.train import train
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
