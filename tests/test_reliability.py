"""Reliability and security of the runner and the store (issue 14): unsafe checkpoints, corrupt
trial files, spec names that escape results/, malformed specs, concurrent stale-claim takeover."""

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from optlab.grid.run import grid_status, run_grid
from optlab.grid.spec import SpecError, expand, load_spec
from optlab.store import CorruptRecord, Store
from optlab.training.config import RunConfig
from optlab.training.loop import train

SPEC = """
name = "rel"
seeds = [0]
[run]
epochs = 2
batch_size = 256
model_options = {width = 8}
[[setting]]
task = "digits"
model = "mlp-bn"
[[optimizer]]
name = "sgd"
lr = [0.05, 0.1]
"""
TIMING = {"time_forward_backward", "time_curvature", "time_update", "time_epoch", "wall_time"}


def _strip(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    # a checkpoint-shaped dict whose metrics entry executes code when unpickled without weights_only
    torch.save(
        {
            "model": {},
            "optimizer": {},
            "scheduler": {},
            "data_generator": torch.zeros(1),
            "torch_rng": torch.zeros(1),
            "metrics": [_Payload(marker)],
            "epoch": 1,
        },
        path,
    )


def test_malicious_checkpoint_is_never_executed_and_the_run_restarts(tmp_path):
    marker = tmp_path / "pwned"
    ck = tmp_path / "run.pt"
    _malicious_checkpoint(ck, marker)
    cfg = RunConfig(
        task="digits", model="mlp-bn", optimizer="sgd-ph", epochs=2, batch_size=256, model_options={"width": 8}
    )
    with pytest.warns(RuntimeWarning, match="could not be used.*restarts from scratch"):
        res = train(cfg, checkpoint=ck, progress=False)
    assert not marker.exists()
    assert res["status"] == "ok" and res["resumed_from_epoch"] is None and res["checkpoint_rejected"] is True
    assert len(list(tmp_path.glob("run.pt.rejected-*"))) == 1  # set aside for inspection
    clean = train(cfg, progress=False)
    assert _strip(res["metrics"]) == _strip(clean["metrics"])
    # the payload is real: the unsafe load this replaced would have run it
    torch.load(next(tmp_path.glob("run.pt.rejected-*")), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04truncated-zip"])
def test_unreadable_checkpoint_restarts_cleanly(tmp_path, content):
    ck = tmp_path / "run.pt"
    ck.write_bytes(content)
    with pytest.warns(RuntimeWarning, match="could not be used"):
        res = train(
            RunConfig(
                task="digits", model="mlp-bn", optimizer="sgd", epochs=1, batch_size=256, model_options={"width": 8}
            ),
            checkpoint=ck,
            progress=False,
        )
    assert res["status"] == "ok" and res["checkpoint_rejected"] is True


def test_checkpoint_of_another_model_restarts_cleanly(tmp_path):
    ck = tmp_path / "run.pt"
    small = RunConfig(
        task="digits", model="mlp-bn", optimizer="sgd", epochs=1, batch_size=256, model_options={"width": 8}
    )
    assert train(small, checkpoint=ck, progress=False)["status"] == "ok"
    wide = RunConfig(**{**small.to_dict(), "epochs": 2, "model_options": {"width": 16}})
    with pytest.warns(RuntimeWarning, match="could not be used"):
        res = train(wide, checkpoint=ck, progress=False)
    assert res["status"] == "ok" and res["resumed_from_epoch"] is None and len(res["metrics"]) == 2


def test_grid_run_never_executes_a_shared_checkpoint(tmp_path):
    spec = load_spec(SPEC, is_text=True)
    trials = expand(spec)
    res = tmp_path / "res"
    store = Store(res).init(spec.text)
    marker = tmp_path / "pwned"
    _malicious_checkpoint(store.checkpoint(trials[0].id), marker)
    with pytest.warns(RuntimeWarning):
        counts = run_grid(spec, results=res, progress=False)
    assert not marker.exists() and counts["ok"] == len(trials)
    assert store.read(trials[0].id)["checkpoint_rejected"] is True


# ------------------------------------------------------------------ corrupt trial files
def _valid_record(t):
    return {
        "schema_version": 2,
        "id": t.id,
        "config": t.config,
        "status": "ok",
        "error": None,
        "metrics": [{"epoch": e + 1, "test_acc": 0.5, "val_acc": 0.5} for e in range(t.config["epochs"])],
    }


CORRUPT = {
    "empty": lambda t: b"",
    "truncated": lambda t: json.dumps(_valid_record(t)).encode()[:40],
    "garbage": lambda t: b"\x00\xff\xfe garbage",
    "not_utf8": lambda t: b'\xff\xfe{"a": 1}',
    "a_list": lambda t: b"[1, 2, 3]",
    "a_string": lambda t: b'"ok"',
    "no_config": lambda t: json.dumps({"status": "ok", "metrics": []}).encode(),
    "weird_status": lambda t: json.dumps({**_valid_record(t), "status": "weird"}).encode(),
    "metrics_not_objects": lambda t: json.dumps({**_valid_record(t), "metrics": [[1, 2], [3]]}).encode(),
    "too_few_epochs": lambda t: json.dumps({**_valid_record(t), "metrics": _valid_record(t)["metrics"][:1]}).encode(),
    "other_id": lambda t: json.dumps({**_valid_record(t), "id": "0123456789abcdef"}).encode(),
    "future_schema": lambda t: json.dumps({**_valid_record(t), "schema_version": 99}).encode(),
    "string_metric": lambda t: json.dumps(
        {**_valid_record(t), "metrics": [{"epoch": 1, "test_acc": "high"}, {"epoch": 2, "test_acc": 0.5}]}
    ).encode(),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_trial_file_is_summarised_quarantined_and_rerun(tmp_path, kind):
    from optlab.analysis import load
    from optlab.analysis.report import write_report

    spec = load_spec(SPEC, is_text=True)
    trials = expand(spec)
    res = tmp_path / "res"
    run_grid(spec, results=res, progress=False)
    store = Store(res)
    bad = store.trials / f"{trials[0].id}.json"
    bad.write_bytes(CORRUPT[kind](trials[0]))
    # read-only commands: summarise, never crash, never count it as complete
    st = grid_status(spec, results=res)
    assert st["invalid"] == 1 and st["ok"] == len(trials) - 1 and trials[0].id in st["invalid_files"][0]
    with pytest.warns(RuntimeWarning, match="skipped invalid trial file"):
        _, frame = load(res, skip_corrupt=True)
    assert trials[0].id not in set(frame["trial_id"])
    with pytest.raises(CorruptRecord):
        load(res)
    _, md = write_report(res, tmp_path / "rep")
    assert "invalid file" in md.read_text() and trials[0].id in md.read_text()
    # grid run: quarantine (kept for inspection) and rerun
    with pytest.warns(RuntimeWarning, match="moved to .*quarantine"):
        counts = run_grid(spec, results=res, progress=False, retry_failed=True)
    assert counts["quarantined"] == 1 and counts["ok"] == 1
    kept = [p for p in (res / "quarantine").iterdir() if not p.name.endswith(".reason")]
    assert len(kept) == 1 and kept[0].read_bytes() == CORRUPT[kind](trials[0])
    assert store.read(trials[0].id)["status"] == "ok"
    assert grid_status(spec, results=res)["ok"] == len(trials)


def test_grid_status_cli_lists_invalid_files(tmp_path):
    spec_path = tmp_path / "g.toml"
    spec_path.write_text(SPEC)
    res = tmp_path / "res"
    trials = expand(load_spec(spec_path))
    Store(res).init()
    (res / "trials" / f"{trials[0].id}.json").write_text('{"status": "weird"}')
    (res / "trials" / f"{trials[1].id}.json").write_text("[]")
    out = subprocess.run(
        [sys.executable, "-m", "optlab.cli", "grid", "status", str(spec_path), "--results", str(res)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "invalid 2" in out.stdout and "do not validate" in out.stdout and "Traceback" not in out.stderr
    assert "expected a JSON object, got list" in out.stdout


# ------------------------------------------------------------------ spec names and types
@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", "..", ".hidden", "x" * 101, "sp ace"])
def test_spec_name_cannot_write_outside_results(name):
    with pytest.raises(SpecError, match="invalid grid name"):
        load_spec(f"name = {json.dumps(name)}\n" + SPEC.split("\n", 2)[2], is_text=True)


def test_results_key_chooses_a_directory(tmp_path):
    text = SPEC.replace('name = "rel"', f'name = "rel"\nresults = "{tmp_path / "elsewhere"}"')
    counts = run_grid(load_spec(text, is_text=True), progress=False)
    assert counts["results"] == str(tmp_path / "elsewhere") and counts["ok"] == 2


@pytest.mark.parametrize(
    "edit,match",
    [
        (("epochs = 2", 'epochs = "two"'), r"<spec>\.run: invalid epochs='two'; expected an integer >= 1"),
        (('name = "rel"', "name = 5"), r"<spec>\.name: expected a string, got int 5"),
        (("[run]\n", "run = [1]\n[xrun]\n"), r"unknown key 'xrun'|run: expected a \[run\] table"),
        (('task = "digits"', "task = 3"), r"setting\[0\]: invalid task=3"),
        (("batch_size = 256", "batch_size = 1.5"), r"run: invalid batch_size=1.5"),
        (("model_options = {width = 8}", "model_options = 3"), r"run: invalid model_options=3"),
        (
            ("[[optimizer]]\nname", "optimizer = 3\n[[optimizerx]]\nname"),
            r"unknown key 'optimizerx'|optimizer: expected",
        ),
        (("seeds = [0]", "seeds = [true]"), r"seeds: invalid seed True"),
    ],
)
def test_spec_type_errors_are_clear_and_attributed(edit, match):
    with pytest.raises(SpecError, match=match):
        expand(load_spec(SPEC.replace(*edit), is_text=True))


def test_run_table_that_is_not_a_table():
    text = SPEC.replace("[run]\nepochs = 2\nbatch_size = 256\nmodel_options = {width = 8}\n", "")
    text = "run = [1]\n" + text
    with pytest.raises(SpecError, match=r"run: expected a \[run\] table, got list"):
        load_spec(text, is_text=True)


# ------------------------------------------------------------------ concurrent stale-claim takeover
def _taker(root, trial_id, barrier, out):
    barrier.wait(timeout=300)  # all start together (no pause: they wait for each other)
    out.put(Store(root).claim(trial_id))
    barrier.wait(timeout=300)  # stay alive until every taker has tried: an exited owner's claim is stale (correctly)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_claim_takeover_has_exactly_one_owner(tmp_path):
    store = Store(tmp_path).init()
    ctx = mp.get_context("fork")
    n = 12
    for round_ in range(5):
        tid = f"t{round_}"
        import socket

        (store.running / f"{tid}.lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
        barrier, out = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_taker, args=(str(tmp_path), tid, barrier, out)) for _ in range(n)]
        for p in procs:
            p.start()
        wins = [out.get(timeout=300) for _ in range(n)]
        for p in procs:
            p.join(300)
            assert p.exitcode == 0, f"round {round_}: a taker failed ({p.exitcode})"
        assert sum(wins) == 1, f"round {round_}: {sum(wins)} owners"


_HOLDER = """
import json, sys, time
from pathlib import Path
from optlab.store import Store
root, tid = sys.argv[1], sys.argv[2]
store = Store(root, heartbeat_s=0.05)
assert store.claim(tid)
lock = Path(root) / "running" / f"{tid}.lock"
info = json.loads(lock.read_text())
info["host"] = "node-elsewhere"  # as a SLURM/Ray node would have written it: its pid cannot be checked here
lock.write_text(json.dumps(info))
print("claimed", flush=True)
time.sleep(600)
"""


def test_another_hosts_claim_is_live_while_it_beats_and_stale_after_its_process_dies(tmp_path):
    """A claim of another host used to stay 'live' forever: a dead node kept its trial busy. The holder's
    heartbeat (the lock's mtime, touched by a thread) keeps it live; once the process is killed the heartbeat
    stops and, ``stale_after_s`` later, another worker takes the trial over.

    No margin depends on how busy the machine is: the lock's mtime is set back by hand (what time passing
    without a beat does) and the test waits for the holder's heartbeat to bring it forward again -- an event;
    after the kill nothing can touch it, so setting it back past ``stale_after_s`` is exactly a dead node."""
    store = Store(tmp_path).init()
    lock = store.running / "t0.lock"
    other = Store(tmp_path, stale_after_s=600.0)

    def set_back(seconds: float) -> float:
        t = time.time() - seconds
        os.utime(lock, (t, t))
        return t

    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), "t0"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        assert other.live_claims() == {"t0"} and not other.claim("t0")
        for _ in range(3):  # a claim set back past stale_after_s is brought forward by the next beat
            old = set_back(3600)
            deadline = time.monotonic() + 300
            while lock.stat().st_mtime <= old + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert lock.stat().st_mtime > old + 3000, "the holder's heartbeat did not touch its claim"
            assert other.live_claims() == {"t0"}
            assert not other.claim("t0"), "a beating claim of another host was taken over"
    finally:
        holder.kill()
        holder.wait()
    assert json.loads(lock.read_text())["host"] == "node-elsewhere"
    assert not other.claim("t0")  # just killed: its last heartbeat is recent, the claim still counts
    set_back(other.stale_after_s - 60)
    assert other.live_claims() == {"t0"} and not other.claim("t0")  # not yet stale
    set_back(other.stale_after_s + 1)
    assert other.live_claims() == set()
    assert other.claim("t0")  # taken over: the lock is now this process's
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    other.release("t0")
    assert not lock.exists()


def test_claim_stale_after_must_be_positive_seconds(monkeypatch, tmp_path):
    from optlab.store import StoreError

    monkeypatch.setenv("OPTLAB_CLAIM_STALE_AFTER", "soon")
    with pytest.raises(StoreError, match="OPTLAB_CLAIM_STALE_AFTER='soon'.*seconds > 0"):
        Store(tmp_path)
    monkeypatch.setenv("OPTLAB_CLAIM_STALE_AFTER", "90")
    assert Store(tmp_path).stale_after_s == 90.0


# ------------------------------------------------------------------ bad optimizer calls
@pytest.mark.parametrize(
    "name,hp,match",
    [
        ("torch-sgd", {"lr": float("nan")}, r"torch-sgd: invalid lr=nan; expected a finite number >= 0"),
        ("torch-sgd", {"lr": float("inf")}, r"invalid lr=inf"),
        ("torch-sgd", {"momentum": 1.0}, r"invalid momentum=1.0; expected a number in \[0, 1\)"),
        ("torch-adamw", {"betas": (0.9, 1.5)}, r"invalid betas=\(0.9, 1.5\)"),
        ("torch-adamw", {"weight_decay": -1}, r"invalid weight_decay=-1"),
    ],
)
def test_baselines_validate_like_presets(name, hp, match):
    import optlab

    with pytest.raises(ValueError, match=match):
        optlab.optimizer(name, torch.nn.Linear(2, 2), **hp)


def test_wrong_name_type_and_frozen_model_are_clear_errors():
    import optlab

    with pytest.raises(TypeError, match="first argument is the optimizer's name.*got NoneType None.*Valid: "):
        optlab.optimizer(None, torch.nn.Linear(2, 2))
    for name in ("sgd", "sgd-ph", "torch-sgd"):
        with pytest.raises(ValueError, match="has no trainable parameter"):
            optlab.optimizer(name, torch.nn.Linear(2, 2).requires_grad_(False))
