"""Honest comparisons, runner side (issue 10): validation splits, the two-stage tuning/evaluation
protocol, selection that never reads test metrics, self-describing trial records, controls."""

import json
import random

import pytest
import torch
from torch import nn

import optlab
from optlab.grid.protocol import evaluation_trials, select_configs
from optlab.grid.run import grid_status, run_grid
from optlab.grid.spec import EVAL_SEED_BASE, SpecError, expand, load_spec
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
