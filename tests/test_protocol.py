"""Honest comparisons, runner side (issue 10): validation splits, the two-stage tuning/evaluation
protocol, selection that never reads test metrics, self-describing trial records, controls."""

import json
import random

import pytest
import torch
from torch import nn

import optlab
from optlab.grid.run import grid_status, run_grid
from optlab.grid.spec import EVAL_SEED_BASE, SpecError, expand, load_spec
from optlab.grid.stages import evaluation_trials, select_configs
from optlab.grid.trial import trial_id
from optlab.store import Store
from optlab.training.tasks import Task, make_task, split_validation


# ------------------------------------------------------------------ validation splits
def test_split_validation_is_stratified_disjoint_and_fixed():
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 4, (403,), generator=g)
    x = torch.arange(403).float().unsqueeze(1)
    xtr, ytr, xva, yva = split_validation(x, y, 0.25)
    assert len(xtr) + len(xva) == 403
    assert not set(xtr.flatten().tolist()) & set(xva.flatten().tolist())
    for c in range(4):
        n = int((y == c).sum())
        assert int((yva == c).sum()) == round(0.25 * n)
    again = split_validation(x, y, 0.25)
    assert torch.equal(again[2], xva)
    with pytest.raises(ValueError, match=r"invalid val_fraction=1.5; expected a number in \(0, 1\)"):
        split_validation(x, y, 1.5)


@pytest.mark.parametrize("name,sizes", [("digits", (1078, 269, 450)), ("mnist1d", (3200, 800, 1000))])
def test_builtin_tasks_have_train_val_test(name, sizes):
    t = make_task(name)
    assert (len(t.y_train), len(t.y_val), len(t.y_test)) == sizes
    # statistics from train only: train is standardized, validation only approximately
    assert t.x_train.mean().abs() < 1e-4
    t2 = make_task(name, seed=7)
    assert torch.equal(t.x_val, t2.x_val)  # the run seed does not move the split
    assert len(make_task(name, val_fraction=0.1).y_val) < len(t.y_val)


def test_a_task_without_validation_gets_one_carved():
    def plain(seed=0):
        x, y = torch.randn(100, 3), torch.arange(100) % 2
        return Task("plain", x[:80], y[:80], x[80:], y[80:], num_classes=2)

    optlab.plugin.registry.register_plugin(
        type(
            "P",
            (),
            {
                "optlab_register_tasks": staticmethod(
                    optlab.plugin.hookspecs.hookimpl(lambda register: register("plain-task", plain))
                )
            },
        ),
        name="plain-task-plugin",
    )
    try:
        t = make_task("plain-task", val_fraction=0.25)
        assert (len(t.y_train), len(t.y_val)) == (60, 20)
    finally:
        optlab.plugin.registry.reset()


# ------------------------------------------------------------------ selection on validation
def _fake_records(tuning, rng, scramble_test=False):
    recs = {}
    for t in tuning:
        lr = t.config["hparams"]["lr"]
        val = {0.05: 0.80, 0.1: 0.90, 0.3: 0.85}[lr] + 0.01 * rng.random()
        test = rng.random() if scramble_test else val
        recs[t.id] = {
            "id": t.id,
            "status": "ok",
            "config": t.config,
            "metrics": [{"epoch": 1, "val_acc": val, "val_loss": 1 - val, "test_acc": test}],
        }
    return recs


SPEC = """
name = "proto"
seeds = [0, 1]
[protocol]
evaluation_seeds = 3
[run]
epochs = 1
batch_size = 256
model_options = {width = 8}
[[setting]]
task = "digits"
model = "mlp-bn"
[[optimizer]]
name = "sgd"
lr = [0.05, 0.1, 0.3]
[[optimizer]]
name = "sgd-scaled"
lr = [0.05, 0.1]
channelwise_lr_scale = 0.1
"""


def test_selection_reads_validation_only():
    spec = load_spec(SPEC, is_text=True)
    tuning = expand(spec)
    a = select_configs(tuning, _fake_records(tuning, random.Random(0)))
    for _seed in range(5):  # test metrics scrambled: every selection unchanged
        b = select_configs(tuning, _fake_records(tuning, random.Random(0), scramble_test=True))
        assert {k: v["config"] for k, v in a.items()} == {k: v["config"] for k, v in b.items()}
    assert a[("digits", "mlp-bn", "sgd")]["config"]["hparams"]["lr"] == 0.1
    assert a[("digits", "mlp-bn", "sgd")]["configs_tried"] == 3
    assert a[("digits", "mlp-bn", "sgd-scaled")]["configs_tried"] == 2
    # ... while validation metrics do move it
    recs = _fake_records(tuning, random.Random(0))
    for t in tuning:
        if t.config["optimizer"] == "sgd" and t.config["hparams"]["lr"] == 0.3:
            recs[t.id]["metrics"][0]["val_acc"] = 0.99
    assert select_configs(tuning, recs)[("digits", "mlp-bn", "sgd")]["config"]["hparams"]["lr"] == 0.3
    # a configuration with a diverged tuning seed is not eligible while a complete one exists
    for t in tuning:
        if t.config["optimizer"] == "sgd" and t.config["hparams"]["lr"] == 0.3 and t.config["seed"] == 1:
            recs[t.id]["status"] = "diverged"
    assert select_configs(tuning, recs)[("digits", "mlp-bn", "sgd")]["config"]["hparams"]["lr"] == 0.1
    # val_loss is minimised
    loss = select_configs(tuning, _fake_records(tuning, random.Random(0)), metric="val_loss")
    assert loss[("digits", "mlp-bn", "sgd")]["config"]["hparams"]["lr"] == 0.1


def test_evaluation_waits_for_tuning():
    spec = load_spec(SPEC, is_text=True)
    tuning = expand(spec)
    recs = _fake_records(tuning, random.Random(0))
    recs.pop(tuning[0].id)
    ev, waiting = evaluation_trials(spec, tuning, recs)
    assert waiting == ["digits/mlp-bn/sgd"] and {t.arm for t in ev} == {"sgd-scaled"}
    assert sorted(t.config["seed"] for t in ev) == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1, EVAL_SEED_BASE + 2]


def test_two_stage_grid_runs_selected_configs_on_fresh_seeds(tmp_path):
    spec = load_spec(SPEC, is_text=True)
    res = tmp_path / "res"
    st0 = grid_status(spec, results=res)
    assert st0["evaluation"]["total"] == 6 and st0["evaluation"]["waiting"]
    counts = run_grid(spec, results=res, progress=False, workers=2)
    assert counts["ok"] == 10 + 6
    store = Store(res)
    good, _ = store.scan()
    ev = [r for r in good.values() if r["stage"] == "evaluation"]
    tune = [r for r in good.values() if r["stage"] == "tuning"]
    assert len(ev) == 6 and len(tune) == 10
    sel = select_configs(expand(spec), good)
    for r in ev:
        key = (r["config"]["task"], r["config"]["model"], r["arm"])
        assert r["config"]["hparams"] == sel[key]["config"]["hparams"]
        assert r["config"]["seed"] >= EVAL_SEED_BASE and r["selection"]["tuning_seeds"] == [0, 1]
        assert r["selection"]["metric"] == "final_val_acc" and r["selection"]["configs_tried"] in (2, 3)
    st = grid_status(spec, results=res)
    assert st["ok"] == 10 and st["evaluation"]["ok"] == 6 and not st["evaluation"]["waiting"]
    again = run_grid(spec, results=res, progress=False)
    assert again["skipped_complete"] == 16 and "ok" not in again


def test_evaluation_seeds_must_be_fresh():
    with pytest.raises(SpecError, match=r"seeds \[1\] are also tuning seeds"):
        load_spec(SPEC.replace("evaluation_seeds = 3", "evaluation_seeds = [1, 5]"), is_text=True)


@pytest.mark.parametrize(
    "text,match",
    [
        ("evaluation_seeds = 1", r"invalid count 1; expected >= 2"),
        ("evaluation_seeds = 'x'", r"expected a count >= 2 or a list"),
        ("evaluation_seeds = 3\nselect = 'test_acc'", r"protocol.select: invalid 'test_acc'"),
        ("evaluation_seed = 3", r"protocol.evaluation_seed: unknown key. Did you mean 'evaluation_seeds'"),
    ],
)
def test_protocol_errors(text, match):
    with pytest.raises(SpecError, match=match):
        load_spec(SPEC.replace("evaluation_seeds = 3", text), is_text=True)


def test_arms_label_blocks_and_may_not_share_configs():
    text = SPEC.replace('name = "sgd-scaled"', 'name = "sgd"\nlabel = "sgd-again"').replace(
        "channelwise_lr_scale = 0.1\n", ""
    )
    with pytest.raises(SpecError, match="arm 'sgd-again' repeats a configuration of arm 'sgd'"):
        expand(load_spec(text, is_text=True))
    ok = SPEC.replace('name = "sgd-scaled"', 'name = "sgd"\nlabel = "sgd-nesterov"').replace(
        "channelwise_lr_scale = 0.1", "nesterov = true"
    )
    arms = {t.arm for t in expand(load_spec(ok, is_text=True))}
    assert arms == {"sgd", "sgd-nesterov"}


def test_trial_ids_include_the_data_version():
    cfg = expand(load_spec(SPEC, is_text=True))[0].config
    import hashlib

    legacy = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert trial_id(cfg) != legacy  # results from before validation splits are not taken as done


# ------------------------------------------------------------------ self-describing records
def test_records_carry_resolved_hparams_rules_and_plugins(tmp_path):
    from optlab.training.config import RunConfig
    from optlab.training.loop import train

    r = train(
        RunConfig(
            task="digits",
            model="mlp-bn",
            optimizer="sgd-ph",
            epochs=1,
            batch_size=256,
            hparams={"lr": 0.05},
            model_options={"width": 8},
        ),
        progress=False,
    )
    assert r["schema_version"] == 2 and r["plugins"]["optlab"]
    assert r["hparams_resolved"]["lr"] == 0.05 and r["hparams_resolved"]["every"] == 50  # default at run time
    assert r["rules"]["channelwise"]["estimator"] == "block_rademacher"
    assert r["rules"]["channelwise"]["hparams"]["rectify_at"] == "use"
    m = r["metrics"][0]
    assert 0 <= m["val_acc"] <= 1 and m["lrs"] == {"channelwise": 0.05, "rest": 0.05}


# ------------------------------------------------------------------ controls
def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))


def test_sgd_scaled_equals_torch_sgd_with_a_scaled_group():
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
    a, b = _bn_net().double(), _bn_net().double()
    opt = optlab.optimizer("sgd-scaled", a, lr=0.1, momentum=0.9, weight_decay=1e-3, channelwise_lr_scale=0.25)
    bn = [b[1].weight, b[1].bias]
    ref = torch.optim.SGD(
        [{"params": [p for p in b.parameters() if all(p is not q for q in bn)]}, {"params": bn, "lr": 0.025}],
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
    )
    for _ in range(5):
        opt.step(lambda: nn.functional.cross_entropy(a(x), y))
        ref.zero_grad()
        nn.functional.cross_entropy(b(x), y).backward()
        ref.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_sgd_frozen_leaves_channelwise_parameters_alone():
    m = _bn_net()
    before = [m[1].weight.clone(), m[1].bias.clone(), m[0].weight.clone()]
    opt = optlab.optimizer("sgd-frozen", m, lr=0.1, weight_decay=1e-2)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    for _ in range(3):
        opt.step(lambda: nn.functional.cross_entropy(m(x), y))
    assert torch.equal(m[1].weight, before[0]) and torch.equal(m[1].bias, before[1])
    assert not torch.equal(m[0].weight, before[2])
    with pytest.raises(ValueError, match="invalid channelwise_lr_scale=-1"):
        optlab.optimizer("sgd-scaled", m, channelwise_lr_scale=-1)


# ------------------------------------------------------------------ edges and the grid extension
EDGE_SPEC = """
name = "edge"
seeds = [0, 1]
[protocol]
evaluation_seeds = 2
select = "val_loss"
extend_edges = {rounds}
[run]
epochs = 3
batch_size = 4
[[setting]]
task = "edge-quadratic"
model = "linear1"
[[optimizer]]
name = "gated-sgd"
lr = [0.2222222222222222, 0.6666666666666666]
{gate}
"""


@pytest.fixture
def edge_plugin():
    import edge_plugin as plugin

    from optlab.plugin import registry

    registry.register_plugin(plugin, "edge_test")
    yield plugin
    registry.reset()


def _edge_spec(rounds, gate=""):
    return load_spec(EDGE_SPEC.format(rounds=rounds, gate=f'gate = "{gate}"' if gate else ""), is_text=True)


def _lrs(res, **match):
    good, _ = Store(res).scan()
    return sorted({r["config"]["hparams"]["lr"] for r in good.values() if all(r.get(k) == v for k, v in match.items())})


@pytest.mark.parametrize(
    "rounds,evaluated,extended", [(0, 0.6666666666666666, []), (1, 2.0, [2.0]), (2, 2.0, [2.0, 6.0])]
)
def test_extension_moves_the_selection_off_the_edge(tmp_path, edge_plugin, rounds, evaluated, extended):
    """The optimum (lr = 2: the quadratic solved in one step) lies beyond the grid [2/9, 2/3]: without
    extension the largest value tried is selected (on the edge); one round adds 2.0 (ratio 3), which wins
    and is again the largest tried; the second adds 6.0, which loses: the selection is off the edge."""
    from optlab.analysis import budgets, load, selection_table

    spec, res = _edge_spec(rounds), tmp_path / "res"
    counts = run_grid(spec, results=res, progress=False)
    assert _lrs(res, stage="evaluation") == [evaluated]
    good, _ = Store(res).scan()
    ext = [r for r in good.values() if r.get("extension")]
    assert sorted({r["config"]["hparams"]["lr"] for r in ext}) == extended and len(ext) == 2 * len(extended)
    assert [r["extension"]["round"] for r in sorted(ext, key=lambda r: r["config"]["hparams"]["lr"])] == [
        i // 2 + 1 for i in range(len(ext))
    ]
    assert all(r["stage"] == "tuning" and r["config"]["seed"] in (0, 1) for r in ext)  # the same tuning seeds
    assert counts.get("extension_trials", 0) == len(ext)
    _, trials = load(res)
    tab = selection_table(trials, metric="final_val_loss", n_boot=0).iloc[0]
    assert tab["value"] == evaluated and bool(tab["at_edge"]) == (rounds < 2)
    bud = budgets(trials).iloc[0]
    assert bud["configs"] == 2 + len(extended) and bud["extended"] == len(extended)  # extensions count
    ev = next(r for r in good.values() if r["stage"] == "evaluation")
    assert ev["selection"]["configs_tried"] == 2 + len(extended)
    assert ev["selection"]["configs_extended"] == len(extended)
    st = grid_status(spec, results=res)
    assert st["ok"] == 4 + len(ext) and st.get("extension", 0) == len(ext) and st["missing"] == 0
    assert run_grid(spec, results=res, progress=False)["skipped_complete"] == 4 + len(ext) + 2  # nothing to do


def test_extend_edges_must_be_a_count():
    for bad in ("-1", "true", "1.5"):
        with pytest.raises(SpecError, match=r"protocol.extend_edges: invalid .*; expected an integer >= 0"):
            load_spec(SPEC.replace("evaluation_seeds = 3", f"evaluation_seeds = 3\nextend_edges = {bad}"), is_text=True)


@pytest.fixture(scope="module")
def edge_site(tmp_path_factory):
    """``edge_plugin`` installed as a plugin distribution into a folder for ``PYTHONPATH``."""
    import shutil
    from pathlib import Path

    import edge_plugin as plugin

    d = tmp_path_factory.mktemp("edge-site")
    info = d / "optlab_edge_test-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: optlab-edge-test\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[optlab]\nedge_test = edge_plugin\n")
    shutil.copy(Path(plugin.__file__), d / "edge_plugin.py")
    return d


def test_extension_resumes_after_kill_9_mid_extension(tmp_path, edge_site, edge_plugin):
    """kill -9 of the driver while round 1's trials run (held at a gate the test opens itself: the kill
    follows the trial's own "started" file, not a timer); the rerun adds exactly the same extension
    trials, finishes both rounds and evaluates the configuration off the edge."""
    import os
    import signal
    import subprocess
    import sys
    import time

    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "hold-2").write_text("")  # lr = 2.0: the first extension's trials wait here
    spec_path = tmp_path / "edge.toml"
    spec_path.write_text(EDGE_SPEC.format(rounds=2, gate=f'gate = "{gate}"'))
    res = tmp_path / "res"
    env = {**os.environ, "OPTLAB_NO_PROGRESS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(edge_site), os.environ.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "optlab.cli", "grid", "run", str(spec_path), "--results", str(res)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (gate / "started-2").exists():  # the event: an extension trial is running
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the extension trial never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    spec = load_spec(spec_path)
    tuning = expand(spec)
    good, _ = Store(res).scan()
    assert all(t.id in good for t in tuning) and _lrs(res) == [0.2222222222222222, 0.6666666666666666]
    from optlab.grid import extension_trials

    pending, waiting = extension_trials(spec, tuning, good)
    assert {t.config["hparams"]["lr"] for t in pending} == {2.0} and waiting  # round 1 known, not run
    (gate / "hold-2").unlink()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    good, _ = Store(res).scan()
    ext = sorted(
        (r["extension"]["round"], r["config"]["hparams"]["lr"], r["id"]) for r in good.values() if r.get("extension")
    )
    assert [(rnd, lr) for rnd, lr, _ in ext] == [(1, 2.0), (1, 2.0), (2, 6.0), (2, 6.0)]
    assert {t.id for t in pending} == {i for _, lr, i in ext if lr == 2.0}  # the trials the kill interrupted
    assert _lrs(res, stage="evaluation") == [2.0]
    assert len(list((res / "trials").glob("*.json"))) == 4 + 4 + 2  # each trial once


def test_search_domains_give_sampled_ranges_their_own_edges():
    from optlab.grid import search_domains
    from optlab.grid.protocol import AxisRange

    text = SPEC.replace(
        "lr = [0.05, 0.1, 0.3]", "lr = {log_uniform = [0.001, 1.0]}\nmomentum = {uniform = [0.8, 0.99]}"
    )
    text = text.replace("[protocol]", '[search]\nsampler = "random"\ntrials = 3\n\n[protocol]')
    dom = search_domains(load_spec(text, is_text=True))
    assert dom["sgd"] == {"lr": AxisRange(0.001, 1.0, log=True), "momentum": AxisRange(0.8, 0.99)}
    assert dom["sgd-scaled"]["lr"] == [0.05, 0.1]  # a list under a sampler is a choice: its own values
    assert search_domains(load_spec(SPEC, is_text=True)) == {}  # grid: the values tried are the domain
