"""Multi-process trials (``nproc``): real torchrun processes, gloo on loopback, no mocks.

The float64 task/model come from ``nproc_plugin.py``, installed for the subprocesses as a
real plugin (an entry point on ``PYTHONPATH``). Every launch runs with ``TMPDIR`` inside the
test's folder, so a process left behind would show that folder in ``ps`` (checked).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fixtures_blocking
import nproc_plugin
import plugin_site
import pytest
import torch

from optlab.grid.run import grid_status
from optlab.grid.spec import SpecError, expand, load_spec
from optlab.grid.trial import trial_id
from optlab.plugin import registry
from optlab.store import pid_alive
from optlab.store import record_problem as validate_record
from optlab.training.config import RunConfig
from optlab.training.loop import train

TIMING = {"time_forward_backward", "time_curvature", "time_update", "time_epoch", "wall_time"}
TOL = 1e-10  # float64, 2 processes vs 1 on the same global batches (measured: <= 4e-15)
CASES = {  # (a) BN-free, weight-normalized (curvature on the scales); (b) BatchNorm -> SyncBatchNorm
    "bnfree": dict(model="mlp64", decouple=True, optimizer="sgd-ph", hparams={"lr": 0.1, "every": 2}),
    "syncbn": dict(model="mlp64", model_options={"bn": True}, optimizer="sgd-ph", hparams={"lr": 0.1, "every": 2}),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``nproc_plugin`` (and ``fixtures_blocking``, for the kill test) installed as plugin distributions
    into a folder for ``PYTHONPATH``."""
    plugins = {"nproc_test": nproc_plugin, "blocking_test": fixtures_blocking}
    return plugin_site.install(tmp_path_factory.mktemp("site"), plugins)


@pytest.fixture
def plugin():
    """The same plugin in this process (for in-process references and spec expansion)."""
    registry.register_plugin(nproc_plugin, "nproc_test")
    yield
    registry.reset()


def env_for(site: Path, tmp: Path) -> dict:
    return plugin_site.env(site, tmp)


def optlab_cli(args, site, tmp, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "optlab.cli", *args],
        env=env_for(site, tmp),
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


def leftovers(tmp: Path) -> list[str]:
    """Processes whose command line names the test folder (job files live in its TMPDIR)."""
    out = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    return [
        line for line in out.splitlines()[1:] if str(tmp) in line and line.split()[1][0] != "Z" and "ps -eo" not in line
    ]


def assert_no_leftovers(tmp: Path, wait: float = 60.0) -> None:
    deadline = time.time() + wait
    while leftovers(tmp) and time.time() < deadline:
        time.sleep(0.2)
    assert not leftovers(tmp), leftovers(tmp)


def strip(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def assert_metrics_close(a, b, tol=TOL):
    assert len(a) == len(b)
    for ra, rb in zip(strip(a), strip(b)):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert abs(ra[k] - rb[k]) < tol, (k, ra[k], rb[k])
            else:
                assert ra[k] == rb[k], (k, ra[k], rb[k])


def max_state_diff(a: dict, b: dict) -> float:
    """Max |a - b| over the model and optimizer tensors of two checkpoints (same keys)."""
    worst = 0.0

    def walk(x, y):
        nonlocal worst
        if isinstance(x, torch.Tensor):
            assert x.shape == y.shape
            if x.is_floating_point():
                worst = max(worst, float((x.double() - y.double()).abs().max()) if x.numel() else 0.0)
            else:
                assert torch.equal(x, y)
        elif isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                walk(x[k], y[k])
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y)
            for u, v in zip(x, y):
                walk(u, v)

    walk(a["model"], b["model"])
    walk(a["optimizer"]["state"], b["optimizer"]["state"])
    return worst


def cli_args(case: dict, epochs: int, batch: int, nproc: int) -> list[str]:
    args = ["train", "--task", "blobs64", "--model", case["model"], "--optimizer", case["optimizer"]]
    args += ["--epochs", str(epochs), "--batch-size", str(batch), "--nproc", str(nproc), "--threads", "1"]
    args += [f"--hp={k}={v}" for k, v in case["hparams"].items()]
    args += [f"--model-option={k}={json.dumps(v)}" for k, v in case.get("model_options", {}).items()]
    return args + (["--decouple"] if case.get("decouple") else [])


# ----------------------------------------------------------------------------- (a), (b)
@pytest.mark.parametrize("kind", ["syncbn", pytest.param("bnfree", marks=pytest.mark.slow)])
def test_train_nproc2_equals_one_process(kind, site, tmp_path, plugin):
    case = CASES[kind]
    ck = tmp_path / "two.pt"
    out = tmp_path / "two.json"
    proc = optlab_cli(cli_args(case, 2, 32, 2) + ["--checkpoint", str(ck), "--out", str(out)], site, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "epoch   1" in proc.stdout and "epoch   2" in proc.stdout  # rows streamed from rank 0
    two = json.loads(out.read_text())
    assert two["status"] == "ok" and two["config"]["nproc"] == 2
    assert two["distributed"] == {
        "nproc": 2,
        "backend": "gloo",
        "sync_batchnorm": kind == "syncbn",
        "launcher": "torch.distributed.run",
    }
    cfg = RunConfig(task="blobs64", epochs=2, batch_size=32, **case)
    ref_ck = tmp_path / "one.pt"
    one = train(cfg, checkpoint=ref_ck, progress=False)
    assert one["status"] == "ok", one["error"]
    assert "distributed" not in one and "nproc" not in one["config"]
    assert_metrics_close(two["metrics"], one["metrics"])
    assert sum(r["hvp_count"] for r in two["metrics"]) == sum(r["hvp_count"] for r in one["metrics"]) > 0
    a, b = torch.load(ck, weights_only=True), torch.load(ref_ck, weights_only=True)
    diff = max_state_diff(a, b)  # parameters, BatchNorm buffers, momentum and curvature state
    assert diff < TOL, diff
    moved = {k: v + 1e-3 if v.is_floating_point() else v for k, v in b["model"].items()}
    assert max_state_diff(a, {**b, "model": moved}) > 1e-4  # the comparison can fail
    assert_no_leftovers(tmp_path)


# ----------------------------------------------------------------------------- (c)
GRID = """
name = "nproc"
seeds = [0]
[run]
epochs = 2
batch_size = 32
nproc = 2
[[setting]]
task = "blobs64"
model = "mlp64"
model_options = {{ bn = true }}
task_options = {{ n = {n} }}
[[optimizer]]
name = "sgd-ph"
lr = 0.1
every = 2
{extra}
"""


@pytest.mark.slow  # the kill -9 test below runs a one-trial nproc grid in the default suite
def test_grid_spec_with_nproc_runs_and_its_records_validate(site, tmp_path, plugin):
    spec = tmp_path / "g.toml"
    spec.write_text(GRID.format(n=128, extra='[[optimizer]]\nname = "torch-sgd"\nlr = 0.1\n'))
    res = tmp_path / "res"
    proc = optlab_cli(["grid", "run", str(spec), "--results", str(res), "--workers", "1"], site, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = expand(load_spec(spec))
    assert len(trials) == 2 and all(t.config["nproc"] == 2 for t in trials)
    st = grid_status(spec, results=res)
    assert st["ok"] == 2 and st["invalid"] == 0, st
    for t in trials:
        rec = json.loads((res / "trials" / f"{t.id}.json").read_text())
        assert validate_record(rec, t.id) is None
        assert rec["distributed"]["nproc"] == 2 and rec["distributed"]["sync_batchnorm"] is True
        assert len(rec["metrics"]) == 2 and rec["env"]["versions"]["torch"] == torch.__version__
    assert not list((res / "checkpoints").glob("*.pt"))
    assert_no_leftovers(tmp_path)


# ----------------------------------------------------------------------------- (d)
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _torchrun(pids: list[int]) -> int | None:
    """The pid of torchrun among ``pids``."""
    for p in pids:
        try:
            if b"torch.distributed.run" in Path(f"/proc/{p}/cmdline").read_bytes():
                return p
        except OSError:
            continue
    return None


VICTIMS = ["launcher"] + [pytest.param(v, marks=pytest.mark.slow) for v in ("rank1", "torchrun")]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
@pytest.mark.parametrize("victim", VICTIMS)
def test_kill_9_mid_trial_then_rerun_resumes_to_the_uninterrupted_result(victim, site, tmp_path, plugin, gate):
    """kill -9 of the grid's process, of torchrun or of the process of rank 1 while both processes of the
    trial are stopped after epoch 1 (``fixtures_blocking``), the checkpoint of epoch 1 on disk."""
    epochs = 3
    spec = tmp_path / "g.toml"
    text = GRID.format(n=256, extra="").replace("epochs = 2", f"epochs = {epochs}")
    text = text.replace('task = "blobs64"', 'task = "gated"').replace(
        "task_options = { n = 256 }", f"task_options = {gate.toml('blobs64', 1, n=256)}"
    )
    spec.write_text(text)
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "optlab.cli", "grid", "run", str(spec), "--results", str(res), "--workers", "1"]
    log = tmp_path / "launcher.log"
    with open(log, "w") as out:
        launcher = subprocess.Popen(cmd, env=env_for(site, tmp_path), stdout=out, stderr=subprocess.STDOUT)
    (trial,) = expand(load_spec(spec))
    assert trial.config["task_options"]["gate"] == str(gate.path)
    ck = res / "checkpoints" / f"{trial.id}.pt"
    try:
        stopped = gate.wait_reached(2, alive=lambda: launcher.poll() is None, log=log)
        assert sorted(r["rank"] for r in stopped) == ["0", "1"]
        assert torch.load(ck, weights_only=True)["epoch"] == 1  # rank 0 saved it before it stopped
        tree = _descendants(launcher.pid)  # torchrun and its two processes
        assert {r["pid"] for r in stopped} <= set(tree) and len(tree) >= 3, tree
        if victim == "launcher":
            launcher.kill()
            launcher.wait()
        else:
            pid = _torchrun(tree) if victim == "torchrun" else next(r["pid"] for r in stopped if r["rank"] == "1")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            assert launcher.wait(timeout=300) == 0, log.read_text()[-3000:]
            out = log.read_text()
            assert "error: 1" in out and "lost" in out, out  # counted as lost, not as a result
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    deadline = time.monotonic() + 60
    while any(pid_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in tree if pid_alive(p)], "processes of the killed trial are still running"
    assert not (res / "trials" / f"{trial.id}.json").exists()  # killed mid-trial: nothing recorded
    assert grid_status(spec, results=res)["ok"] == 0
    assert torch.load(ck, weights_only=True)["epoch"] == 1
    gate.release()
    rerun = subprocess.run(cmd, env=env_for(site, tmp_path), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    rec = json.loads((res / "trials" / f"{trial.id}.json").read_text())
    assert validate_record(rec, trial.id) is None and rec["status"] == "ok"
    assert rec["resumed_from_epoch"] == 1
    ref = train(RunConfig.from_dict({**trial.config, "nproc": 1}), progress=False)  # uninterrupted, 1 process
    assert_metrics_close(rec["metrics"], ref["metrics"])
    assert_no_leftovers(tmp_path)


# ----------------------------------------------------------------------------- (e)
BASE = dict(task="digits", model="mlp-bn", epochs=1)


@pytest.mark.parametrize(
    "settings,needle",
    [
        (dict(nproc=0), "invalid nproc=0; expected an integer >= 1"),
        (dict(nproc=True), "invalid nproc=True"),
        (dict(nproc=2, batch_size=33), "invalid batch_size=33; expected a multiple of nproc=2"),
        (dict(nproc=3, batch_size=64), "batch_size=63"),
        (dict(nproc=2, device="cuda:1"), "invalid device='cuda:1'; expected 'cpu' or 'cuda' with nproc=2"),
        (dict(nproc=2, optimizer="pto-adahessian"), "'pto-adahessian' cannot run with nproc=2"),
        (dict(nproc=2, optimizer="sgd-ph", engine="func"), "invalid engine='func' with nproc=2"),
    ],
)
def test_bad_nproc_settings_fail_before_any_process_starts(settings, needle, tmp_path):
    cfg = {**BASE, **settings}
    t0 = time.perf_counter()
    res = train(RunConfig(**cfg), progress=False)
    assert res["status"] == "failed" and needle in res["error"], res["error"]
    assert time.perf_counter() - t0 < 10  # refused up front, not by the processes
    with pytest.raises(ValueError, match="nproc|batch_size|device|engine"):
        RunConfig(**cfg).validate()


def test_bad_nproc_in_a_spec_names_its_table(plugin):
    text = 'seeds = [0]\n[run]\nnproc = {}\nbatch_size = 30\n[[setting]]\ntask = "digits"\nmodel = "mlp-bn"\n'
    text += '[[optimizer]]\nname = "sgd"\n'
    with pytest.raises(SpecError, match=r"run: invalid nproc=0"):
        expand(load_spec(text.format(0), is_text=True))
    with pytest.raises(SpecError, match=r"run: invalid batch_size=30; expected a multiple of nproc=4"):
        expand(load_spec(text.format(4), is_text=True))


def test_cli_train_rejects_nproc_0(capsys):
    from optlab.cli import main

    assert main(["train", "--nproc", "0", "--epochs", "1"]) == 1
    assert "invalid nproc=0; expected an integer >= 1" in capsys.readouterr().out


# ----------------------------------------------------------------------------- trial ids
def test_nproc_at_its_default_keeps_existing_trial_ids():
    cfg = RunConfig(task="digits", model="cnn-bn", optimizer="sgd-ph", hparams={"lr": 0.1}, seed=3, epochs=2)
    cfg.batch_size = 32
    assert trial_id(cfg.to_dict()) == "4728d1b4d48348e2"  # computed before nproc existed
    assert trial_id(RunConfig().to_dict()) == "ae63f266ee047f51"
    assert "nproc" not in cfg.to_dict() and RunConfig.from_dict(cfg.to_dict()) == cfg
    two = RunConfig(**{**cfg.__dict__, "nproc": 2})
    assert two.to_dict()["nproc"] == 2 and trial_id(two.to_dict()) != "4728d1b4d48348e2"
    assert RunConfig.from_dict(two.to_dict()) == two


@pytest.mark.slow
def test_a_configuration_that_fails_on_every_process_is_recorded_failed(site, tmp_path, plugin, monkeypatch):
    """Sophia's default Gauss-Newton estimator under SyncBatchNorm: a failed result, not a lost trial."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the job folder: what leftovers() looks for
    cfg = RunConfig(task="blobs64", model="mlp64", model_options={"bn": True}, optimizer="sophia", nproc=2)
    cfg.hparams, cfg.epochs, cfg.batch_size = {"every": 2}, 1, 32
    monkeypatch.setenv("PYTHONPATH", env_for(site, tmp_path)["PYTHONPATH"])
    res = train(cfg, progress=False)
    assert res["status"] == "failed" and "NotImplementedError" in res["error"], res["error"]
    assert "estimator='hutchinson'" in res["error"] and res["wall_time"] > 0
    assert_no_leftovers(tmp_path)


# ----------------------------------------------------------------------------- the launcher's decisions
def _job(d: Path, **results) -> Path:
    """A job folder as the processes leave it: ``rank<r>.json`` for those that wrote a result."""
    d.mkdir()
    for name, (status, error) in results.items():
        (d / f"{name}.json").write_text(json.dumps({"status": status, "error": error, "metrics": []}))
    (d / "torchrun.log").write_text("... failed (exitcode: -9) local_rank: 1\n")
    return d


def test_launcher_tells_a_failing_configuration_from_a_killed_process(tmp_path):
    from optlab.training.launch import TrialLost, _collect

    def collect(name, rc, **results):
        d = _job(tmp_path / name, **results)
        return _collect(d, 2, rc, d / "torchrun.log")

    assert collect("ok", 0, rank0=("ok", None), rank1=("ok", None))["status"] == "ok"
    # rank 1 was stopped by torchrun after rank 0 failed
    assert collect("both", 1, rank0=("failed", "ValueError: bad"))["error"] == "ValueError: bad"
    # rank 0 waited in a collective for rank 1, which raised alone, and was stopped
    assert collect("one", 1, rank1=("failed", "ValueError: here"))["error"] == "process 1 of 2: ValueError: here"
    gloo = "RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"
    for i, files in enumerate(
        [{}, {"rank0": ("failed", gloo)}, {"rank0": ("failed", gloo), "rank1": ("failed", gloo)}]
    ):
        with pytest.raises(TrialLost, match=r"(?s)ended without a result .*rerun to resume.*exitcode: -9"):
            collect(f"lost{i}", 1, **files)


@pytest.mark.parametrize("n,world", [(64, 2), (30, 4), (3, 4), (1000, 3)])
def test_shards_cover_every_sample_once(n, world):
    from optlab.training.ranks import RankContext

    parts = [RankContext(r, world).shard(n) for r in range(world)]
    assert [i for p in parts for i in range(n)[p]] == list(range(n))
    if n % world == 0:
        assert {p.stop - p.start for p in parts} == {n // world}
    with pytest.raises(ValueError, match="invalid rank=2 for world=2"):
        RankContext(2, 2)
