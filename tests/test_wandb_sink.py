"""The W&B sink's offline run read back record by record: the metric values it logged per epoch,
the run config and the summary equal the trial record's (not just "a .wandb file exists").

The ``.wandb`` file is W&B's transaction log: a 7-byte header (b":W&B", magic 0xBEE1 LE, version
0), then LevelDB-log records -- 32 KiB blocks; each chunk a 7-byte header (crc32 uint32, length
uint16, type uint8: 1 full, 2 first, 3 middle, 4 last) and its payload; a block tail shorter than
a header is zero padding -- whose payloads are ``wandb_internal_pb2.Record`` protobufs. The reader
below is written from that format, independently of the sink (wandb 0.31 ships no Python
reader for it).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from optlab.grid.sinks import export, make_sinks

BLOCK, HEADER = 32768, 7


def read_wandb_records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1 and data[6] == 0, data[:7]
    pos, buf = HEADER, b""
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        buf += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec
    assert buf == b"", "truncated record at the end of the file"


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def offline_run(run_dir: Path) -> tuple[dict[int, dict], dict, dict]:
    """(history by _step, config, summary) of one offline run directory."""
    [f] = run_dir.glob("*.wandb")
    history: dict[int, dict] = {}
    config: dict = {}
    summary: dict = {}
    for rec in read_wandb_records(f):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {_key(it): json.loads(it.value_json) for it in rec.history.item}
            step = row.pop("_step")
            assert step not in history, f"step {step} logged twice"
            history[step] = {k: v for k, v in row.items() if not k.startswith("_")}
        elif kind == "run":
            config.update({_key(u): json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":
            config.update({_key(u): json.loads(u.value_json) for u in rec.config.update})
        elif kind == "summary":
            summary.update({_key(u): json.loads(u.value_json) for u in rec.summary.update})
    return history, config, summary


def _record(tid, lr, status="ok"):
    metrics = [
        {
            "epoch": e,
            "train_loss": 1.0 / e + 1e-3 * e * lr,
            "val_acc": 0.41 + 0.123456789 * e,
            "lr": lr * 0.5 ** (e - 1),
            "hvp_count": 7 * e,
            "lrs": [lr, lr / 10],  # a list: not a scalar metric, not logged
        }
        for e in (1, 2, 3)
    ]
    if status == "diverged":
        metrics[-1]["train_loss"] = math.nan
    return {
        "id": tid,
        "status": status,
        "metrics": metrics,
        "config": {
            "task": "digits",
            "model": "mlp-bn",
            "optimizer": "sgd-ph",
            "seed": 3,
            "epochs": 3,
            "hparams": {"lr": lr, "hessian_momentum": 0.9, "betas": [0.9, 0.99]},
        },
    }


def test_wandb_offline_run_holds_the_trial_records_metric_values(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    records = [_record("ta", 0.1), _record("tb", 0.037, status="diverged")]
    [sink] = make_sinks(tmp_path, {"wandb": {"project": "p"}})
    assert export(records, [sink]) == 2
    # wandb-core writes the transaction log asynchronously: after run.finish() (and the sink's
    # close(), which does nothing) the last run's file can still be its 7-byte header alone (seen
    # here in 2 of 5 runs). wandb.teardown() -- what wandb's atexit hook does when the driver
    # exits -- waits for the writer.
    import wandb

    wandb.teardown()
    for rec in records:
        [run_dir] = (tmp_path / "wandb" / "wandb").glob(f"offline-run-*-{rec['id']}")
        history, config, summary = offline_run(run_dir)
        want = {
            m["epoch"]: {k: v for k, v in m.items() if k not in ("epoch", "lrs") and math.isfinite(v)}
            for m in rec["metrics"]
        }
        assert history == want  # every epoch at its own step, every finite value exactly, nothing else
        assert config["hp.lr"] == rec["config"]["hparams"]["lr"] and config["hp.hessian_momentum"] == 0.9
        assert json.loads(config["hp.betas"]) == [0.9, 0.99] and config["seed"] == 3
        assert summary["status"] == rec["status"]
    # the diverged run's NaN loss of epoch 3 is left out, its other metrics of epoch 3 are there
    history, _, _ = offline_run(next((tmp_path / "wandb" / "wandb").glob("offline-run-*-tb")))
    assert "train_loss" not in history[3] and history[3]["val_acc"] == pytest.approx(0.41 + 3 * 0.123456789, abs=0)
