"""Training runs and ablation grids: determinism, resume, divergence, spec errors, concurrency."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from optlab.grid.run import grid_status, run_grid
from optlab.grid.spec import SpecError, expand, load_spec
from optlab.store import Store
from optlab.training.config import RunConfig, lr_factor
from optlab.training.loop import train

TIMING = {"time_forward_backward", "time_curvature", "time_update", "time_epoch", "wall_time"}

SMALL = dict(task="digits", model="mlp-bn", epochs=3, batch_size=128, model_options={"width": 32})


def _strip(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


@pytest.mark.parametrize("opt", ["sgd-ph", "sgd"])
def test_same_seed_same_numbers(opt):
    a = train(RunConfig(optimizer=opt, seed=3, **SMALL), progress=False)
    b = train(RunConfig(optimizer=opt, seed=3, **SMALL), progress=False)
    c = train(RunConfig(optimizer=opt, seed=4, **SMALL), progress=False)
    assert a["status"] == "ok", a["error"]
    assert _strip(a["metrics"]) == _strip(b["metrics"])
    assert _strip(a["metrics"]) != _strip(c["metrics"])
    m = a["metrics"][-1]
    assert set(m) >= {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "hvp_count"} | TIMING
    if opt == "sgd-ph":  # default: one block-Rademacher HVP every 50 steps (10 steps per epoch here)
        assert [r["hvp_count"] for r in a["metrics"]] == [1, 0, 0] and a["metrics"][0]["time_curvature"] > 0


def _plain_torch_losses(cfg: RunConfig) -> list[float]:
    """An independent reference: the baseline's optimizer class built directly (torch.optim.SGD /
    pytorch_optimizer.AdaHessian with the documented default hyperparameters), a textbook loop --
    zero_grad, forward, backward (``create_graph`` for AdaHessian, which reads a double-backward
    graph from ``p.grad``), step, cosine lr ``0.5 (1 + cos(pi t / T))`` per step -- over shuffled
    batches (``randperm`` from a generator seeded with the run seed, last incomplete batch dropped).
    Only the data and the model's initial weights come from optlab; no optlab training code runs."""
    import math

    import torch
    import torch.nn.functional as F

    from optlab.training.tasks import make_model, make_task

    torch.manual_seed(cfg.seed)  # the runner's seeding: task, then model initialization
    task = make_task(cfg.task, seed=cfg.seed)
    model = make_model(cfg.model, task.info, **cfg.model_options)
    if cfg.optimizer == "torch-sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0)
        graph = False
    else:
        from pytorch_optimizer import AdaHessian

        opt = AdaHessian(model.parameters(), lr=0.15, betas=(0.9, 0.999), hessian_power=1.0, eps=1e-4)
        graph = True
    n, bs = task.x_train.shape[0], cfg.batch_size
    total_steps = (n // bs) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(1.0, t / total_steps))))
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        for s in range(0, n - bs + 1, bs):
            x, y = task.x_train[perm[s : s + bs]], task.y_train[perm[s : s + bs]]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward(create_graph=graph)
            opt.step()
            sched.step()
            total, seen = total + float(loss) * y.shape[0], seen + y.shape[0]
        losses.append(total / seen)
    return losses


@pytest.mark.parametrize("opt", ["torch-sgd", "pto-adahessian"])
@pytest.mark.filterwarnings("ignore:Using backward:UserWarning")
def test_baselines_take_the_one_step_path_with_the_same_numbers_and_accounting(opt):
    pytest.importorskip("pytorch_optimizer")
    cfg = RunConfig(optimizer=opt, seed=2, lr_schedule="cosine", **{**SMALL, "epochs": 2})
    res = train(cfg, progress=False)
    assert res["status"] == "ok", res["error"]
    assert [m["train_loss"] for m in res["metrics"]] == _plain_torch_losses(cfg)
    for m in res["metrics"]:  # the same accounting as presets: forward+backward and update timed, no HVPs
        assert m["time_forward_backward"] > 0 and m["time_update"] > 0 and m["time_curvature"] == 0
        assert m["hvp_count"] == 0 and m["vjp_count"] == 0


def test_interrupted_run_resumes_to_the_same_final_metrics(tmp_path):
    cfg = RunConfig(optimizer="sgd-ph", seed=1, lr_schedule="cosine", **{**SMALL, "epochs": 4})
    full = train(cfg, progress=False)

    def interrupt(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    ck = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, checkpoint=ck, progress=False, on_epoch=interrupt)
    assert ck.exists()
    resumed = train(cfg, checkpoint=ck, progress=False)
    assert resumed["resumed_from_epoch"] == 1  # checkpoint of epoch 1 (epoch 2 was interrupted before saving)
    assert _strip(resumed["metrics"]) == _strip(full["metrics"])


def test_diverged_run_is_recorded_with_its_config():
    res = train(RunConfig(optimizer="sgd", hparams={"lr": 1e8}, **SMALL), progress=False)
    assert res["status"] == "diverged"
    assert "non-finite" in res["error"]
    assert res["config"]["hparams"]["lr"] == 1e8
    assert len(res["metrics"]) >= 1


def test_unknown_names_fail_with_valid_names():
    res = train(RunConfig(optimizer="sgd-ph", task="digitz", **{k: v for k, v in SMALL.items() if k != "task"}))
    assert res["status"] == "failed" and "Did you mean 'digits'" in res["error"] and "mnist1d" in res["error"]
    res = train(RunConfig(optimizer="sgdph", **SMALL))
    assert res["status"] == "failed" and "Did you mean 'sgd-ph'" in res["error"]
    res = train(RunConfig(optimizer="sgd", model="resnet-20", **{k: v for k, v in SMALL.items() if k != "model"}))
    assert res["status"] == "failed" and "resnet20" in res["error"]


def test_lr_schedules_and_warmup():
    cfg = RunConfig(epochs=10, lr_schedule="multistep", milestones=[5, 8], gamma=0.1, warmup_epochs=1)
    assert lr_factor(cfg, 0.5) == pytest.approx(0.5)
    assert lr_factor(cfg, 4.9) == 1.0 and lr_factor(cfg, 5.0) == pytest.approx(0.1)
    assert lr_factor(cfg, 9.0) == pytest.approx(0.01)
    cos = RunConfig(epochs=10, lr_schedule="cosine")
    assert lr_factor(cos, 0) == 1.0 and lr_factor(cos, 5) == pytest.approx(0.5) and lr_factor(cos, 10) < 1e-12


def test_cifar_without_data_is_a_clear_error_and_never_downloads(monkeypatch):
    monkeypatch.delenv("OPTLAB_DATA", raising=False)
    res = train(RunConfig(task="cifar10", model="resnet20", optimizer="sgd", epochs=1))
    assert res["status"] == "failed" and "never downloads" in res["error"]


# ------------------------------------------------------------------ grid specs
SPEC = """
name = "t"
seeds = [0, 1]
[run]
epochs = 2
batch_size = 128
model_options = {width = 16}
[[setting]]
task = "digits"
model = "mlp-bn"
[[optimizer]]
name = "sgd-ph"
lr = [0.05, 0.1]
hessian_momentum = [0.0, 0.9]
[[optimizer]]
name = "sgd"
lr = [0.05, 0.1]
"""


def test_grid_expansion_is_the_cartesian_product():
    trials = expand(load_spec(SPEC, is_text=True))
    assert len(trials) == 2 * (2 * 2 + 2)
    assert len({t.id for t in trials}) == len(trials)
    hps = sorted(
        (
            t.config["optimizer"],
            t.config["hparams"].get("hessian_momentum", -1),
            t.config["hparams"]["lr"],
            t.config["seed"],
        )
        for t in trials
    )
    assert hps[0] == ("sgd", -1, 0.05, 0) and hps[-1] == ("sgd-ph", 0.9, 0.1, 1)
    assert expand(load_spec(SPEC, is_text=True))[0].id == trials[0].id  # stable ids


@pytest.mark.parametrize(
    "text,match",
    [
        ("name = 'x'\n[[optimizer]\nname='sgd'", r"invalid TOML: .*line 2"),
        (
            SPEC.replace("hessian_momentum", "hesian_momentum"),
            r"optimizer\[0\]\.hesian_momentum: .*unknown hyperparameter 'hesian_momentum'.*Did you mean 'hessian_momentum'",  # noqa: E501
        ),
        (SPEC.replace("lr = [0.05, 0.1]\nhessian", "lr = []\nhessian"), r"optimizer\[0\]\.lr: empty axis"),
        (
            SPEC.replace("lr = [0.05, 0.1]\n[[", "lr = [-0.1]\n[[").replace(
                'name = "sgd"\nlr = [0.05, 0.1]', 'name = "sgd"\nlr = [-0.1]'
            ),
            r"optimizer\[1\].*invalid lr=-0.1",
        ),
        (SPEC.replace('name = "sgd"', 'name = "sgdm"'), r"optimizer\[1\]\.name: unknown optimizer 'sgdm'.*Valid:"),
        (SPEC.replace("[run]", "[runn]"), r"unknown key 'runn'.*Did you mean 'run'"),
        (SPEC.replace("epochs = 2", "epoch = 2"), r"run\.epoch: unknown run setting.*Did you mean 'epochs'"),
        (
            SPEC.replace("hessian_momentum = [0.0, 0.9]", "hessian_momentum = [0.0, 1.0]"),
            r"invalid hessian_momentum=1.0",
        ),
        (SPEC.replace('task = "digits"', 'task = "digitz"'), r"unknown task 'digitz'"),
        ("name = 'x'\n", r"no \[\[optimizer\]\] block"),
    ],
)
def test_malformed_specs_name_the_line_or_key(text, match):
    with pytest.raises(SpecError, match=match):
        expand(load_spec(text, is_text=True))


def test_shipped_specs_expand():
    root = Path(__file__).resolve().parent.parent / "experiments"
    sizes = {p.name: len(expand(load_spec(p))) for p in root.glob("*.toml")}
    assert {"quickstart.toml", "paper-ablation.toml", "cifar.toml"} <= set(sizes)
    assert all(n > 0 for n in sizes.values())


def _spec_file(tmp_path, epochs=2, lrs="[0.05, 0.1]"):
    p = tmp_path / "g.toml"
    p.write_text(SPEC.replace("epochs = 2", f"epochs = {epochs}").replace("lr = [0.05, 0.1]", f"lr = {lrs}"))
    return p


def _trial_files(root):
    return sorted(p.name for p in (Path(root) / "trials").iterdir())


def test_two_workers_store_every_trial_once(tmp_path):
    spec = _spec_file(tmp_path)
    res = tmp_path / "res"
    counts = run_grid(spec, workers=2, results=res, progress=False)
    trials = expand(load_spec(spec))
    assert counts.get("ok") == len(trials)
    assert _trial_files(res) == sorted(f"{t.id}.json" for t in trials)
    rec = json.loads((res / "trials" / f"{trials[0].id}.json").read_text())
    assert rec["config"] == trials[0].config and rec["status"] == "ok" and rec["env"]["versions"]["torch"]
    assert {"git_revision", "host", "torch_threads"} <= set(rec["env"])
    again = run_grid(spec, workers=2, results=res, progress=False)
    assert again["skipped_complete"] == len(trials) and "ok" not in again
    st = grid_status(spec, results=res)
    assert st["ok"] == len(trials) and st["missing"] == 0


def test_concurrent_grid_processes_do_not_duplicate(tmp_path, gate, blocking_site):
    """Two ``grid run`` processes on one store: each first stops mid-way through a trial of its own
    (so both are running at once, by construction), then both race through the rest."""
    import plugin_site

    spec = _spec_file(tmp_path)
    spec.write_text(
        spec.read_text().replace('task = "digits"', f'task = "gated"\ntask_options = {gate.toml("digits", 1)}')
    )
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "optlab.cli", "grid", "run", str(spec), "--results", str(res), "--workers", "1"]
    env = plugin_site.env(blocking_site)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        stopped = gate.wait_reached(2, alive=lambda: all(p.poll() is None for p in procs))
        assert {r["pid"] for r in stopped} == {p.pid for p in procs}  # one trial each, at the same time
        assert len(list((res / "running").glob("*.lock"))) == 2
    finally:
        gate.release()
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
    trials = expand(load_spec(spec))
    assert _trial_files(res) == sorted(f"{t.id}.json" for t in trials)
    records = [json.loads((res / "trials" / f).read_text()) for f in _trial_files(res)]
    assert all(r["status"] == "ok" and len(r["metrics"]) == 2 for r in records)
    assert not list((res / "running").iterdir())


def test_half_written_result_is_not_complete(tmp_path):
    store = Store(tmp_path).init()
    (store.trials / ".abc.json.tmp123").write_text('{"config": ')
    assert store.ids() == set()
    store.write("abc", {"config": {}, "status": "ok"})
    assert store.ids() == {"abc"}


KILL_SPEC = """
name = "kill"
seeds = [0, 1]
[run]
epochs = 4
batch_size = 128
model_options = {{width = 16}}
[[setting]]
task = "gated"
model = "mlp-bn"
task_options = {options}
[[optimizer]]
name = "sgd-ph"
lr = 0.05
[[optimizer]]
name = "sgd"
lr = 0.05
"""


@pytest.mark.slow
def test_grid_survives_kill_9_mid_trial(tmp_path, gate, blocking_site):
    """kill -9 of ``grid run`` (trials run in its process) while one trial is complete and the next is
    stopped after epoch 2 with that epoch's checkpoint on disk (``fixtures_blocking``: the first trial
    passes the gate, the second waits there); a rerun keeps the complete one and resumes the other."""
    import plugin_site
    import torch

    spec = tmp_path / "g.toml"
    spec.write_text(KILL_SPEC.format(options=gate.toml("digits", block_after=2, pass_first=1)))
    res = tmp_path / "res"
    trials = expand(load_spec(spec))
    cmd = [sys.executable, "-m", "optlab.cli", "grid", "run", str(spec), "--results", str(res), "--workers", "1"]
    log = tmp_path / "grid.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=plugin_site.env(blocking_site), stdout=out, stderr=subprocess.STDOUT)
    try:
        (stopped,) = gate.wait_reached(1, alive=lambda: proc.poll() is None, log=log)
        assert stopped["pid"] == proc.pid and stopped["epoch"] == 2
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    before = {f: (res / "trials" / f).read_text() for f in _trial_files(res)}
    assert len(before) == 1  # the trial that passed the gate; the next one was killed mid-way
    (ck,) = (res / "checkpoints").glob("*.pt")
    killed = ck.stem
    assert f"{killed}.json" not in before
    assert torch.load(ck, weights_only=True)["epoch"] == 2  # the checkpoint of the epoch before the stop
    st = grid_status(spec, results=res)
    assert st["running"] == 0 and st["missing"] == len(trials) - 1  # a dead claim is not 'running'
    gate.release()
    counts = run_grid(spec, workers=1, results=res, progress=False)
    assert counts["skipped_complete"] == 1 and counts["ok"] == len(trials) - 1
    after = _trial_files(res)
    assert after == sorted(f"{t.id}.json" for t in trials)
    for f, text in before.items():
        assert (res / "trials" / f).read_text() == text  # completed trials untouched
    records = {f[: -len(".json")]: json.loads((res / "trials" / f).read_text()) for f in after if f not in before}
    assert {k: r["resumed_from_epoch"] for k, r in records.items()} == {
        k: (2 if k == killed else None) for k in records
    }  # the killed trial continued from its checkpoint, the others started fresh
    uninterrupted = train(RunConfig.from_dict(records[killed]["config"]), progress=False)
    assert _strip(records[killed]["metrics"]) == _strip(uninterrupted["metrics"])
    assert not list((res / "running").iterdir()) and not list((res / "checkpoints").glob("*.pt"))


def test_task_features_stay_bounded_after_standardization():
    """digits has border pixels that are constant in the training split: they must not explode."""
    from optlab.training.tasks import make_task

    for name in ("digits", "mnist1d"):
        t = make_task(name)
        assert t.x_train.abs().max() < 100 and t.x_test.abs().max() < 100, name


def test_test_loss_is_a_per_sample_mean_of_sane_size():
    res = train(RunConfig(optimizer="sgd", **SMALL), progress=False)
    assert res["metrics"][-1]["test_loss"] < 5


def test_gauss_newton_estimators_follow_the_task_loss():
    import torch

    import optlab
    from optlab.testing import make_problem
    from optlab.training.loop import use_task_loss
    from optlab.training.tasks import Task

    def task(loss):
        z = torch.zeros(4, 5)
        return Task("t", z, torch.zeros(4), z, torch.zeros(4), num_classes=3, loss=loss)

    m = make_problem("mlp_bn1d").model
    opt = optlab.optimizer("sophia", m)  # ggn_mc, declared loss default cross_entropy
    assert opt.param_groups[0]["loss"] == "cross_entropy"
    use_task_loss(opt, task("mse"))
    assert opt.param_groups[0]["loss"] == "mse"
    with pytest.raises(ValueError, match=r"invalid loss='nll'; expected one of 'cross_entropy', 'mse'"):
        use_task_loss(optlab.optimizer("sophia", m), task("nll"))
    explicit = optlab.optimizer("sgd-ph", m, estimator="ggn_exact_diag", loss="cross_entropy")
    with pytest.raises(ValueError, match=r"loss='cross_entropy', but task 't' computes loss 'mse'"):
        use_task_loss(explicit, task("mse"))
    plain = optlab.optimizer("sgd-ph", m)  # no estimator with a loss: nothing to do
    use_task_loss(plain, task("mse"))
    assert "loss" not in plain.param_groups[0]
