"""Ctrl-C (issue 15): a grid run stops handing out trials, a second Ctrl-C abandons running ones,
the exit status is 130, and a rerun completes with nothing lost or duplicated."""

import os
import signal
import subprocess
import sys
import time

import pytest

from optlab.grid.run import grid_status, run_grid
from optlab.grid.spec import expand, load_spec
from optlab.store import Store, pid_alive

SPEC = """
name = "ctrlc"
seeds = [0, 1, 2, 3]
[run]
epochs = 2
batch_size = 32
[[setting]]
task = "digits"
model = "cnn-bn"
[[optimizer]]
name = "sgd"
lr = [0.05, 0.1]
"""


def _start(tmp_path, workers):
    spec = tmp_path / "g.toml"
    spec.write_text(SPEC)
    res = tmp_path / "res"
    cmd = [
        sys.executable,
        "-m",
        "optlab.cli",
        "grid",
        "run",
        str(spec),
        "--results",
        str(res),
        "--workers",
        str(workers),
        "--threads",
        "1",
    ]
    env = {**os.environ, "OPTLAB_NO_PROGRESS": "1"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )  # its own process group: killpg = a terminal's Ctrl-C
    return spec, res, proc


def _wait_for(pred, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(
    "workers,presses", [(2, 2), pytest.param(2, 1, marks=pytest.mark.slow), pytest.param(1, 1, marks=pytest.mark.slow)]
)
def test_ctrl_c_stops_the_grid_and_a_rerun_completes(tmp_path, workers, presses):
    spec, res, proc = _start(tmp_path, workers)
    trials = res / "trials"
    assert _wait_for(lambda: trials.exists() and any(trials.glob("*.json"))), "no trial finished"
    os.killpg(proc.pid, signal.SIGINT)
    if presses == 2:
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
    t0 = time.time()
    out, err = proc.communicate(timeout=120)
    elapsed = time.time() - t0
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "resume with: optlab grid run" in err
    if presses == 2:
        assert elapsed < 15, f"second Ctrl-C took {elapsed:.1f}s to exit"
    n_total = len(expand(load_spec(spec)))
    done_before = {p.name: p.read_bytes() for p in trials.glob("*.json")}
    assert 0 < len(done_before) < n_total
    counts = run_grid(spec, results=res, progress=False, workers=2)
    assert counts["skipped_complete"] == len(done_before)
    assert grid_status(spec, results=res)["ok"] == n_total
    for name, content in done_before.items():  # completed files untouched
        assert (trials / name).read_bytes() == content
    assert not list(Store(res).running.glob("*.lock"))


def test_sigterm_abandons_running_trials_and_leaves_no_worker_behind(tmp_path):
    """SIGTERM to the driver alone (a batch system's time limit, ``kill PID``) used to leave the pool's
    workers training on as orphans. Now the driver terminates them, says how to resume, exits 143."""
    import json

    spec, res, proc = _start(tmp_path, 2)
    running = res / "running"
    assert _wait_for(lambda: running.exists() and len(list(running.glob("*.lock"))) == 2), "no trials running"
    workers = {json.loads(p.read_text())["pid"] for p in running.glob("*.lock")}
    assert proc.pid not in workers and len(workers) == 2
    proc.send_signal(signal.SIGTERM)  # the driver only, not its process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert "terminated (SIGTERM)" in err and "resume with: optlab grid run" in err and "Traceback" not in err

    # a zombie (reaped later by its parent's parent) counts as gone
    assert _wait_for(lambda: not any(pid_alive(p) for p in workers), timeout=20), "workers outlived the driver"
    n_total = len(expand(load_spec(spec)))
    run_grid(spec, results=res, progress=False, workers=2)
    assert grid_status(spec, results=res)["ok"] == n_total
