"""The ``submitit`` executor against a real SLURM scheduler (slurmctld + slurmd on this machine).

Bring a single-node cluster up with ``.ci/slurm_up.sh`` (root, Debian's ``slurm-wlm``/``munge``) and
down with ``.ci/slurm_down.sh``; CI does both around this file. Without a cluster the test is
skipped with the reason (no ``sinfo``, or ``sinfo`` finds no idle node).

A grid of three trials runs as one SLURM job array; the third job to reach the end of epoch 1 stops
there with that epoch's checkpoint written (``fixtures_blocking``'s gate: an event the test waits
for, never a sleep) and is cancelled with ``scancel``. The cluster has no accounting (``sacct``
fails), so the driver finds the cancelled job through ``squeue``: it returns by itself once the other
two have their records, reporting the cancelled trial as ``error`` (lost by the executor). The rerun
-- again through SLURM -- resumes the cancelled trial from its checkpoint, leaves the two finished
trials untouched, and ends with exactly one record per trial.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optlab.grid.spec import expand, load_spec
from optlab.store import pid_alive

pytestmark = pytest.mark.slow

SPEC = """
name = "slurm"
seeds = [0]
[run]
epochs = 3
batch_size = 256
model_options = {{width = 8}}
[[setting]]
task = "gated"
task_options = {gate}
model = "mlp-bn"
[[optimizer]]
name = "sgd"
lr = [0.02, 0.05, 0.1]
[executor]
name = "submitit"
cluster = "slurm"
cpus_per_task = 1
time_min = 15
poll_s = 0.5
"""


def _slurm_skip_reason() -> str | None:
    """Why this machine cannot run the test (None: a SLURM node is idle and takes jobs)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client on PATH (sinfo/sbatch); bring a cluster up with .ci/slurm_up.sh (root, Debian)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s (slurmctld not running?); see .ci/slurm_up.sh"
    if out.returncode != 0:
        return f"sinfo failed (is slurmctld up? .ci/slurm_up.sh): {out.stderr.strip()[-300:]}"
    states = out.stdout.split()
    if not {"idle", "mix"} & set(states):
        return f"no SLURM node takes jobs (node states: {states or 'none'}); see .ci/slurm_up.sh"
    return None


@pytest.fixture
def slurm():
    reason = _slurm_skip_reason()
    if reason:
        pytest.skip(reason)


def _slurm_env(pid: int) -> dict[str, str]:
    """The SLURM_* variables of process ``pid`` (a job step runs on this machine: slurmd is local)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").partition("=") for item in raw if item.startswith(b"SLURM_"))
    return {k: v for k, _, v in pairs}


def _job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    m = re.search(r"JobState=(\S+)", out.stdout)
    return m.group(1) if m else f"unknown ({out.stderr.strip()})"


def _wait_until(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.1)


def _job_logs(res: Path) -> str:
    """The tails of the jobs' submitit logs (for failure messages)."""
    parts = []
    for p in sorted((res / "submitit").glob("*/*.out")) + sorted((res / "submitit").glob("*/*.err")):
        parts.append(f"--- {p.relative_to(res)}\n{p.read_text(errors='replace')[-1500:]}")
    return "\n".join(parts)


def _files(res: Path) -> list[str]:
    return sorted(p.name for p in (res / "trials").glob("*.json"))


def test_scancel_of_a_job_array_task_mid_trial_then_rerun_loses_and_duplicates_nothing(
    tmp_path, slurm, gate, blocking_site
):
    import plugin_site
    import torch

    spec = tmp_path / "g.toml"
    spec.write_text(SPEC.format(gate=gate.toml("digits", 1, pass_first=2)))
    trials = expand(load_spec(spec))
    ids = sorted(t.id for t in trials)
    assert len(ids) == 3
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "optlab.cli", "grid", "run", str(spec), "--results", str(res), "--threads", "1"]
    # sbatch exports the submitting environment (--export=ALL), so the jobs see the gated task's site
    env = plugin_site.env(blocking_site, tmp_path)
    log = tmp_path / "driver.log"
    array_ids: set[str] = set()
    driver = None
    try:
        with open(log, "w") as out:
            driver = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        # at most 2 jobs run at once (2 CPUs, 1 per job): the first two arrivals pass, the third stops
        (stopped,) = gate.wait_reached(1, timeout=600, alive=lambda: driver.poll() is None, log=log)
        assert stopped["epoch"] == 1 and stopped["ticket"] == 2 and gate.tickets() == 3
        pid = stopped["pid"]
        slurm_env = _slurm_env(pid)
        # the stopped trial is a task of a SLURM job array, run by slurmd
        assert {"SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"} <= set(slurm_env), slurm_env
        job_id, array_id = slurm_env["SLURM_JOB_ID"], slurm_env["SLURM_ARRAY_JOB_ID"]
        task = f"{array_id}_{slurm_env['SLURM_ARRAY_TASK_ID']}"  # how squeue and submitit name the task
        array_ids.add(array_id)
        assert _job_state(job_id) == "RUNNING"
        # its claim and its epoch-1 checkpoint are on disk
        claims = {p.stem: json.loads(p.read_text()) for p in (res / "running").glob("*.lock")}
        (killed,) = [t for t, c in claims.items() if c["pid"] == pid]
        assert torch.load(res / "checkpoints" / f"{killed}.pt", weights_only=True)["epoch"] == 1
        assert f"{killed}.json" not in _files(res)

        subprocess.run(["scancel", job_id], check=True, timeout=30)
        # SIGTERM (submitit's job ignores it), SIGKILL after KillWait (5 s in .ci/slurm_up.sh), then
        # the job leaves COMPLETING once slurmd has reaped its processes
        _wait_until(lambda: not pid_alive(pid), f"job {job_id}'s process {pid} to end after scancel")
        _wait_until(lambda: _job_state(job_id) == "CANCELLED", f"job {job_id} to be CANCELLED")
        # the other two jobs finish and write their records; the driver sees the cancelled job leave the
        # queue without a result (no accounting here: `sacct` fails, so it asks squeue) and returns by itself
        others = sorted(f"{t}.json" for t in ids if t != killed)
        try:
            rc = driver.wait(timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail("the driver did not return within 600 s of the scancel:\n" + log.read_text()[-3000:])
        first = log.read_text()
        assert rc == 0, first[-3000:] + _job_logs(res)
        assert _files(res) == others, first[-3000:]
        statuses = sorted(line.split()[1] for line in first.splitlines() if line.startswith("["))
        assert statuses == ["error", "ok", "ok"], first
        assert f"optlab: trial {killed} lost by the executor: JobLost: SLURM job {task} " in first, first
        assert re.search(r"grid slurm -> .*error: 1", first), first
        before = {f: (res / "trials" / f).read_text() for f in _files(res)}
        assert sorted(before) == sorted(f"{t}.json" for t in ids if t != killed)
        assert (res / "checkpoints" / f"{killed}.pt").exists()  # what the rerun resumes from

        gate.release()
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:] + _job_logs(res)
        array_ids |= {p.name.split("_")[0] for p in (res / "submitit").iterdir() if "_" in p.name}
        assert len(array_ids) == 2, array_ids  # one job array per run
        statuses = [line.split()[1] for line in rerun.stdout.splitlines() if line.startswith("[")]
        assert statuses == ["ok"], rerun.stdout  # only the cancelled trial ran again

        # nothing lost, nothing duplicated: one record per trial id, the finished two untouched
        assert _files(res) == [f"{t}.json" for t in ids]
        for f, text in before.items():
            assert (res / "trials" / f).read_text() == text
        records = {t: json.loads((res / "trials" / f"{t}.json").read_text()) for t in ids}
        for t, rec in records.items():
            assert rec["status"] == "ok" and len(rec["metrics"]) == 3, rec
            assert rec["resumed_from_epoch"] == (1 if t == killed else None)
        assert not list((res / "running").glob("*.lock")) and not list((res / "checkpoints").glob("*.pt"))
        assert not (res / "quarantine").exists() or not any((res / "quarantine").iterdir())
    finally:
        gate.release()
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        for p in (res / "submitit").glob("*_*") if (res / "submitit").is_dir() else ():
            array_ids.add(p.name.split("_")[0])
        if array_ids:  # only this test's jobs
            subprocess.run(["scancel", *sorted(array_ids)], capture_output=True, timeout=30)
