"""Metric sinks: what each writes is read back with the tool's own reader (csv, TensorBoard's
EventAccumulator, MlflowClient, W&B's offline run file) and matches the stored JSON record."""

import csv
import json
import math

import pytest

from optlab.grid.sinks import CSVSink, SinkError, export, make_sinks
from optlab.plugin import registry


def _record(tid="t1", lr=0.1, status="ok", epochs=3):
    metrics = [
        {"epoch": e + 1, "train_loss": 1.0 / (e + 1), "test_acc": 0.5 + 0.1 * e, "lr": lr, "hvp_count": 10 * (e + 1)}
        for e in range(epochs)
    ]
    if status == "diverged":
        metrics[-1]["train_loss"] = math.nan
    return {
        "id": tid,
        "status": status,
        "started": 1.7e9,
        "finished": 1.7e9 + 5,
        "error": None,
        "metrics": metrics,
        "config": {
            "task": "digits",
            "model": "mlp-bn",
            "optimizer": "sgd-ph",
            "seed": 0,
            "epochs": epochs,
            "hparams": {"lr": lr, "hessian_momentum": 0.9},
            "model_options": {"width": 8},
            "milestones": None,
        },
    }


RECORDS = [_record("t1", 0.1), _record("t2", 0.05, status="diverged")]


def test_registered_and_checked(tmp_path):
    assert {"csv", "tensorboard", "mlflow", "wandb"} <= set(registry.items("sink"))
    with pytest.raises(SinkError, match=r"sinks\.tensorbord: unknown sink.*Did you mean 'tensorboard'"):
        make_sinks(tmp_path, {"tensorbord": {}})
    with pytest.raises(SinkError, match=r"sinks\.csv\.pth: unknown option.*Did you mean 'path'"):
        make_sinks(tmp_path, {"csv": {"pth": "x.csv"}})
    assert make_sinks(tmp_path, {"csv": False}) == []


def test_csv_is_tidy_and_idempotent(tmp_path):
    [sink] = make_sinks(tmp_path, {"csv": True})
    assert export(RECORDS, [sink]) == 2
    export(RECORDS, [CSVSink(tmp_path)])  # a replay (new driver) adds nothing
    rows = list(csv.DictReader(open(tmp_path / "sinks" / "metrics.csv")))
    assert len(rows) == 3 * 4 + (3 * 4 - 1)  # the diverged run's NaN loss is not written
    r = next(r for r in rows if r["trial_id"] == "t1" and r["epoch"] == "3" and r["metric"] == "test_acc")
    assert float(r["value"]) == pytest.approx(0.7) and json.loads(r["hparams"]) == {"hessian_momentum": 0.9, "lr": 0.1}
    assert {r["status"] for r in rows if r["trial_id"] == "t2"} == {"diverged"}


def test_tensorboard_event_files_hold_every_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [sink] = make_sinks(tmp_path, {"tensorboard": {}})
    export(RECORDS, [sink])
    export(RECORDS, make_sinks(tmp_path, {"tensorboard": {}}))  # replay: no second event file
    run = tmp_path / "tensorboard" / "t1"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert {"train_loss", "test_acc", "lr", "hvp_count"} <= set(acc.Tags()["scalars"])
    got = [(e.step, e.value) for e in acc.Scalars("test_acc")]
    want = [(m["epoch"], m["test_acc"]) for m in RECORDS[0]["metrics"]]
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    div = EventAccumulator(str(tmp_path / "tensorboard" / "t2"))
    div.Reload()
    assert [e.step for e in div.Scalars("train_loss")] == [1, 2]  # the NaN epoch is skipped
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")  # the HParams plugin's session data, with this trial's values
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert (
        start.hparams["hp.lr"].number_value == pytest.approx(0.1)
        and start.hparams["optimizer"].string_value == "sgd-ph"
    )
    assert acc.Scalars("final/test_acc")[0].value == pytest.approx(0.7)


@pytest.mark.parametrize("uri", ["sqlite", "file"])
def test_mlflow_runs_hold_params_and_metric_history(tmp_path, uri, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store is opt-in
    opts = {} if uri == "sqlite" else {"tracking_uri": (tmp_path / "mlruns").as_uri()}
    [sink] = make_sinks(tmp_path, {"mlflow": {**opts, "experiment": "exp1"}})
    export(RECORDS, [sink])
    export(RECORDS, make_sinks(tmp_path, {"mlflow": {**opts, "experiment": "exp1"}}))  # replay: no duplicates
    client = MlflowClient(tracking_uri=sink.tracking_uri)
    if uri == "sqlite":
        assert (
            sink.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" and (tmp_path / "mlflow.db").exists()
        )
    exp = client.get_experiment_by_name("exp1")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["optlab.trial_id"] for r in runs) == ["t1", "t2"]
    r1 = next(r for r in runs if r.data.tags["optlab.trial_id"] == "t1")
    assert r1.data.params["hp.lr"] == "0.1" and r1.data.params["optimizer"] == "sgd-ph"
    assert json.loads(r1.data.params["model_options"]) == {"width": 8}
    hist = client.get_metric_history(r1.info.run_id, "test_acc")
    assert sorted(m.step for m in hist) == [1, 2, 3]
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx([0.5, 0.6, 0.7])
    assert r1.info.status == "FINISHED"
    r2 = next(r for r in runs if r.data.tags["optlab.trial_id"] == "t2")
    assert (
        r2.data.tags["optlab.status"] == "diverged"
        and len(client.get_metric_history(r2.info.run_id, "train_loss")) == 2
    )


def test_wandb_offline_run_is_written_locally(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    [sink] = make_sinks(tmp_path, {"wandb": {"project": "p"}})
    export(RECORDS[:1], [sink])
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*-t1"))
    assert len(runs) == 1
    files = list(runs[0].glob("*.wandb"))
    assert files and files[0].stat().st_size > 0
    export(RECORDS[:1], make_sinks(tmp_path, {"wandb": {"project": "p"}}))  # replay: no second run
    assert len(list((tmp_path / "wandb" / "wandb").glob("offline-run-*-t1"))) == 1
