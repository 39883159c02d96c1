"""Ctrl-C (issue 15): a grid run stops handing out trials, a second Ctrl-C abandons running ones,
the exit status is 130, and a rerun completes with nothing lost or duplicated.

Every signal is sent in a known state, reached by waiting for events: runs stop at a gate after
epoch 1 (``fixtures_blocking``; the first ``pass_first`` arrivals pass it and complete), and the
second Ctrl-C follows the driver's own "interrupted" line, not a pause."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import plugin_site
import pytest
import torch

from optlab.grid.run import grid_status, run_grid
from optlab.grid.spec import expand, load_spec
from optlab.store import Store, pid_alive

SPEC = """
name = "ctrlc"
seeds = [0, 1, 2, 3]
[run]
epochs = 2
batch_size = 128
model_options = {{width = 16}}
[[setting]]
task = "gated"
model = "mlp-bn"
task_options = {options}
[[optimizer]]
name = "sgd"
lr = [0.05, 0.1]
"""


def _sigint_default() -> None:
    """In the driver's process before exec: Ctrl-C handled as in a terminal's foreground job. A
    process started with SIGINT ignored (pytest itself run as a background job from a script, or
    under ``nohup ... &``) passes that on through exec, and Python then installs no handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Driver:
    """``optlab grid run`` in its own process group (``killpg`` = a terminal's Ctrl-C); its stderr is
    read line by line so a test can wait for what the driver says."""

    def __init__(self, tmp_path, site, options: str, workers: int, **env: str):
        self.spec = tmp_path / "g.toml"
        self.spec.write_text(SPEC.format(options=options))
        self.res = tmp_path / "res"
        cmd = [sys.executable, "-m", "optlab.cli", "grid", "run", str(self.spec), "--results", str(self.res)]
        cmd += ["--workers", str(workers), "--threads", "1"]
        self.proc = subprocess.Popen(
            cmd,
            env=plugin_site.env(site, **env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_sigint_default,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # EOF
            self._cond.notify_all()

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_line(self, text: str, timeout: float = 300.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: any(text in ln for ln in self.lines) or self.lines[-1:] == [""], timeout)
        assert ok and text in self.err, f"the driver did not say {text!r}:\n{self.err[-3000:]}\n{self.signal_state()}"

    def signal_state(self) -> str:
        """The driver's signal masks (SigBlk/SigIgn/SigCgt from /proc): for a driver that ignored Ctrl-C."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        except OSError as exc:
            return f"(no /proc status: {exc})"
        return " ".join(ln for ln in status if ln.startswith(("SigBlk", "SigIgn", "SigCgt", "State")))

    def wait(self, timeout: float = 300.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        return rc


def _checkpoint_epochs(res) -> dict[str, int]:
    return {p.stem: torch.load(p, weights_only=True)["epoch"] for p in (res / "checkpoints").glob("*.pt")}


INTERRUPTED = "interrupted: no new trials; waiting for"


@pytest.mark.parametrize(
    "workers,presses",
    [
        (2, 2),
        # the second Ctrl-C inside the driver's own "interrupted" print (the driver sends it to itself,
        # fixtures_blocking): it used to escape before the wait for the running trials began, and the
        # driver then hung at exit joining a pool whose workers were still stopped
        (2, "2-in-print"),
        pytest.param(2, 1, marks=pytest.mark.slow),
        pytest.param(1, 1, marks=pytest.mark.slow),
    ],
)
def test_ctrl_c_stops_the_grid_and_a_rerun_completes(tmp_path, gate, blocking_site, workers, presses):
    """Ctrl-C once ``workers`` trials are complete and ``workers`` more are stopped mid-way (after epoch 1,
    checkpoint written). The pool (``workers=2``): the first Ctrl-C hands out nothing new and waits for the
    running trials -- released, they complete; a second abandons them (they are still stopped), wherever
    it lands. One worker (trials in the driver's process): Ctrl-C interrupts the running trial. Nothing
    else ever starts."""
    in_print = {"OPTLAB_TEST_SIGINT_AFTER": INTERRUPTED} if presses == "2-in-print" else {}
    d = _Driver(tmp_path, blocking_site, gate.toml("digits", 1, pass_first=workers), workers, **in_print)
    try:
        stopped = gate.wait_reached(workers, alive=d.alive)
        trials = d.res / "trials"
        passed = {p.name for p in trials.glob("*.json")}
        assert len(passed) == workers, passed  # the runs that passed the gate finished before the others began
        running = set(_checkpoint_epochs(d.res))
        assert len(running) == workers and set(_checkpoint_epochs(d.res).values()) == {1}
        os.killpg(d.proc.pid, signal.SIGINT)
        if workers > 1:
            d.wait_for_line(f"{INTERRUPTED} {workers} running trial(s)")
            if presses == 2:
                os.killpg(d.proc.pid, signal.SIGINT)  # the running trials are still stopped at the gate
            elif presses == 1:
                gate.release()  # the running trials complete; nothing new is handed out
        try:
            rc = d.wait(timeout=120)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 130, f"exit status {rc}\n{d.err[-3000:]}\n{d.signal_state()}"
    finally:
        gate.release()
        if d.alive():
            os.killpg(d.proc.pid, signal.SIGKILL)
    assert "Traceback" not in d.err and "resume with: optlab grid run" in d.err, d.err[-3000:]
    n_total = len(expand(load_spec(d.spec)))
    done_before = {p.name: p.read_bytes() for p in trials.glob("*.json")}
    finished_running = workers > 1 and presses == 1
    assert set(done_before) == passed | ({f"{t}.json" for t in running} if finished_running else set())
    assert gate.tickets() == 2 * workers  # no other trial reached epoch 2: none was handed out after Ctrl-C
    if not finished_running:  # abandoned or interrupted: gone, their epoch-1 checkpoints kept
        assert not any(pid_alive(r["pid"]) for r in stopped if r["pid"] != d.proc.pid)
        assert _checkpoint_epochs(d.res) == dict.fromkeys(running, 1)
    counts = run_grid(d.spec, results=d.res, progress=False, workers=1)  # in this process: "gated" is registered here
    assert counts["skipped_complete"] == len(done_before)
    assert grid_status(d.spec, results=d.res)["ok"] == n_total
    for name, content in done_before.items():  # completed files untouched
        assert (trials / name).read_bytes() == content
    if not finished_running:
        for t in running:
            assert json.loads((trials / f"{t}.json").read_text())["resumed_from_epoch"] == 1
    assert not list(Store(d.res).running.glob("*.lock"))


def test_sigterm_abandons_running_trials_and_leaves_no_worker_behind(tmp_path, gate, blocking_site):
    """SIGTERM to the driver alone (a batch system's time limit, ``kill PID``) used to leave the pool's
    workers training on as orphans. Now the driver terminates them, says how to resume, exits 143.
    Sent while both workers are stopped mid-trial (after epoch 1), so they cannot finish first."""
    d = _Driver(tmp_path, blocking_site, gate.toml("digits", 1), 2)
    try:
        stopped = gate.wait_reached(2, alive=d.alive)
        workers = {r["pid"] for r in stopped}
        locks = {json.loads(p.read_text())["pid"] for p in (d.res / "running").glob("*.lock")}
        assert locks == workers and d.proc.pid not in workers and len(workers) == 2
        d.proc.send_signal(signal.SIGTERM)  # the driver only, not its process group
        assert d.wait(timeout=120) == 143, d.err[-3000:]
    finally:
        if d.alive():
            os.killpg(d.proc.pid, signal.SIGKILL)
    assert "terminated (SIGTERM)" in d.err and "resume with: optlab grid run" in d.err and "Traceback" not in d.err
    # the driver waited for its workers' exit; a zombie (reaped later by its parent's parent) counts as gone
    deadline = time.monotonic() + 60
    while any(pid_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in workers), "workers outlived the driver"
    assert not list((d.res / "trials").glob("*.json"))
    running = _checkpoint_epochs(d.res)
    assert len(running) == 2 and set(running.values()) == {1}
    gate.release()
    run_grid(d.spec, results=d.res, progress=False, workers=1)
    assert grid_status(d.spec, results=d.res)["ok"] == len(expand(load_spec(d.spec)))
    for t in running:
        assert json.loads((d.res / "trials" / f"{t}.json").read_text())["resumed_from_epoch"] == 1
