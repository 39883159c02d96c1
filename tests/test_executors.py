"""Executors: the local pool, a real local Ray instance and submitit's local/debug executors run
the same tiny grid into the store through the shared filesystem; claims keep every backend from
duplicating a trial; the driver can be killed (-9) mid-grid and a rerun completes the rest."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optlab.grid.executors import ExecutorError, LocalExecutor, make_executor
from optlab.grid.spec import expand, load_spec
from optlab.plugin import registry
from optlab.store import Store
from optlab.store import pid_alive as _pid_alive

SPEC = """
name = "ex"
seeds = [0]
[run]
epochs = 1
batch_size = 256
model_options = {width = 8}
[[setting]]
task = "digits"
model = "mlp-bn"
[[optimizer]]
name = "sgd"
lr = [0.05, 0.1]
"""


def _trials(text=SPEC):
    return expand(load_spec(text, is_text=True))


def _files(root):
    return sorted(p.name for p in (Path(root) / "trials").glob("*.json"))


def _check_store(root, trials, outcomes):
    """Every trial is one complete file written by the worker; the driver got only (id, status)."""
    assert all(isinstance(o, tuple) and len(o) == 2 and all(isinstance(x, str) for x in o) for o in outcomes)
    assert sorted(i for i, _ in outcomes) == sorted(t.id for t in trials)
    assert _files(root) == sorted(f"{t.id}.json" for t in trials)
    for t in trials:
        rec = json.loads((Path(root) / "trials" / f"{t.id}.json").read_text())
        assert rec["config"] == t.config and rec["status"] == "ok" and len(rec["metrics"]) == 1
    assert not list((Path(root) / "running").glob("*.lock"))  # every claim released


def test_registered_through_the_plugin_registry():
    assert {"local", "ray", "submitit"} <= set(registry.items("executor"))
    assert registry.items("executor")["local"].plugin == "builtins"


def test_bad_executor_names_and_options_are_named():
    with pytest.raises(registry.RegistryError, match=r"unknown executor 'rey'.*Did you mean 'ray'"):
        make_executor("rey")
    with pytest.raises(
        ExecutorError,
        match=r"executor\.worker: unknown option of executor 'local'.*"
        r"Did you mean 'workers'.*Valid: workers",
    ):
        make_executor("local", worker=2)
    with pytest.raises(ExecutorError, match=r"invalid workers=0; expected an integer >= 1"):
        make_executor("local", workers=0)


def test_local_pool_runs_every_trial_once(tmp_path):
    trials = _trials()
    root = str(Store(tmp_path / "res").init().root)
    out = list(LocalExecutor(workers=2).run(root, trials, threads=1))
    _check_store(root, trials, out)
    before = {f: (tmp_path / "res" / "trials" / f).read_text() for f in _files(root)}
    again = list(LocalExecutor(workers=1).run(root, trials, threads=1))
    assert sorted(s for _, s in again) == ["exists"] * len(trials)
    assert {f: (tmp_path / "res" / "trials" / f).read_text() for f in _files(root)} == before


# ---------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="optlab-ray-test-")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _temp_dir=tmp,
        object_store_memory=100 * 2**20,
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def test_ray_runs_trials_as_tasks_and_results_arrive_through_the_store(tmp_path, ray_instance):
    ray = ray_instance
    trials = _trials()
    store = Store(tmp_path / "res").init()
    # one trial is claimed by a live process (this one): Ray must leave it alone ("busy"), not run it twice
    held = trials[0]
    assert store.claim(held.id)
    ex = make_executor("ray", cpus_per_trial=1)
    out = dict(ex.run(str(store.root), trials, threads=1))
    assert out[held.id] == "busy" and not store.has(held.id)
    assert all(out[t.id] == "ok" for t in trials[1:])
    assert ray.is_initialized()  # an instance the caller started is left running
    store.release(held.id)
    out = list(ex.run(str(store.root), trials, threads=1))
    assert dict(out)[held.id] == "ok" and sorted(s for _, s in out).count("exists") == len(trials) - 1
    _check_store(store.root, trials, [(t.id, "ok") for t in trials])
    # the trials ran in Ray worker processes, not in the driver: their torch thread count is the one asked for
    recs = [json.loads(p.read_text()) for p in (store.trials).glob("*.json")]
    assert {r["env"]["torch_threads"] for r in recs} == {1}


def test_ray_options_are_checked():
    pytest.importorskip("ray")
    with pytest.raises(ExecutorError, match=r"invalid gpus_per_trial=-1"):
        make_executor("ray", gpus_per_trial=-1)
    with pytest.raises(ExecutorError, match=r"executor\.adress: unknown option.*Did you mean 'address'"):
        make_executor("ray", adress="auto")


def _kill_tagged(tag: str) -> list[str]:
    """SIGKILL the processes (by pid) whose environment carries this test's tag; returns their names."""
    left = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if f"OPTLAB_TEST_TAG={tag}".encode() not in f.read():
                    continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                left.append(f.read().split(b"\0")[0].decode(errors="replace"))
            os.kill(int(d), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    return left


@pytest.mark.slow
def test_ray_driver_killed_mid_grid_then_rerun_loses_and_duplicates_nothing(tmp_path, gate, blocking_site):
    """kill -9 of the driver of a local Ray instance (2 CPUs, 6 trials) once two trials are complete and
    the next two are stopped after epoch 1 with that epoch's checkpoint on disk (``fixtures_blocking``: the
    first two arrivals pass the gate, later ones wait there); a rerun keeps the complete ones, resumes
    both stopped ones from their checkpoints and runs the rest."""
    pytest.importorskip("ray")
    import uuid

    import plugin_site
    import torch

    spec = tmp_path / "g.toml"
    spec.write_text(
        SPEC.replace("epochs = 1", "epochs = 3")
        .replace("lr = [0.05, 0.1]", "lr = [0.02, 0.05, 0.1]")
        .replace("seeds = [0]", "seeds = [0, 1]")
        .replace('task = "digits"', f'task = "gated"\ntask_options = {gate.toml("digits", 1, pass_first=2)}')
    )
    trials = expand(load_spec(spec))
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "optlab.cli", "grid", "run", str(spec), "--results", str(res)]
    cmd += ["--executor", "ray", "-E", "num_cpus=2", "--threads", "1"]
    tag = uuid.uuid4().hex
    env = plugin_site.env(blocking_site, OPTLAB_TEST_TAG=tag)
    log = tmp_path / "driver.log"
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            # two CPUs: the two trials that passed must finish before two more can start and stop
            stopped = gate.wait_reached(2, alive=lambda: proc.poll() is None, log=log)
            assert len(_files(res)) == 2 and gate.tickets() == 4, (_files(res), gate.tickets())
        finally:
            proc.kill()  # SIGKILL
            proc.wait()
        # the local Ray instance dies with its driver, its workers with it; then their claims are stale
        store = Store(res)
        deadline = time.monotonic() + 120
        while store.live_claims() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not store.live_claims(), "Ray workers outlived their killed driver"
        assert not any(_pid_alive(r["pid"]) for r in stopped)
        before = {f: (res / "trials" / f).read_text() for f in _files(res)}
        assert len(before) == 2  # nothing finished after the kill: the stopped trials could not
        left = {p.stem for p in (res / "checkpoints").glob("*.pt")}
        assert len(left) == 2 and not {f"{t}.json" for t in left} & set(before)
        for t in left:
            assert torch.load(res / "checkpoints" / f"{t}.pt", weights_only=True)["epoch"] == 1
        gate.release()
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        statuses = [line.split()[1] for line in rerun.stdout.splitlines() if line.startswith("[")]  # one per trial
        assert sorted(statuses) == ["ok"] * (len(trials) - len(before))
        after = _files(res)
        assert after == sorted(f"{t.id}.json" for t in trials)
        for f, text in before.items():
            assert (res / "trials" / f).read_text() == text  # completed files untouched
        resumed = {
            f[: -len(".json")]: json.loads((res / "trials" / f).read_text())["resumed_from_epoch"]
            for f in after
            if f not in before
        }
        assert resumed == {t: (1 if t in left else None) for t in resumed}  # both mid-way trials resumed
        assert not list((res / "running").glob("*.lock")) and not list((res / "checkpoints").glob("*.pt"))
    finally:
        _kill_tagged(tag)


# ----------------------------------------------------------------------- submitit
@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_submitit_local_and_debug_executors_write_into_the_store(tmp_path, cluster):
    pytest.importorskip("submitit")
    trials = _trials()
    root = str(Store(tmp_path / "res").init().root)
    ex = make_executor("submitit", cluster=cluster, poll_s=0.2)
    out = list(ex.run(root, trials, threads=1))
    _check_store(root, trials, out)
    assert (tmp_path / "res" / "submitit").is_dir()  # job logs/pickles next to the results (shared filesystem)
    again = list(ex.run(root, trials, threads=1))
    assert sorted(s for _, s in again) == ["exists"] * len(trials)


def test_submitit_slurm_script_carries_partition_time_and_gpus(tmp_path):
    pytest.importorskip("submitit")
    ex = make_executor(
        "submitit",
        cluster="slurm",
        partition="gpu",
        time_min=90,
        gpus_per_task=2,
        cpus_per_task=4,
        mem_gb=16,
        slurm={"account": "lab"},
    )
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string("python -c pass", tmp_path, **ex.slurm_parameters())
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16GB",
        "#SBATCH --account=lab",
    ):
        assert line in text, f"{line} missing from\n{text}"
    with pytest.raises(ExecutorError, match=r"invalid cluster='slurn'; expected one of slurm, local, debug"):
        make_executor("submitit", cluster="slurn")
