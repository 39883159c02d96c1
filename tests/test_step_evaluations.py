"""Evaluation every N steps in the training loop (time to target): rows, resumption, trial ids."""

import math

import pytest

from optlab.grid import trial_id
from optlab.training.config import RunConfig
from optlab.training.loop import train

CFG = dict(
    task="modular-arithmetic",
    model="transformer-preln",
    optimizer="sgd-ph",
    hparams={"lr": 0.1, "every": 3},
    epochs=3,
    batch_size=8,  # 60 training equations: 7 steps per epoch (the last partial batch is dropped)
    task_options={"p": 11, "train_fraction": 0.5},
    model_options={"width": 8, "heads": 2},
    eval_every_steps=4,
)


def test_rows_every_n_steps_and_at_every_epoch_end():
    r = train(CFG, progress=False)
    assert r["status"] == "ok" and r["steps_per_epoch"] == 7
    evs = r["evaluations"]
    assert [e["step"] for e in evs] == [4, 7, 8, 12, 14, 16, 20, 21]
    assert [e["epoch"] for e in evs] == pytest.approx([4 / 7, 1, 8 / 7, 12 / 7, 2, 16 / 7, 20 / 7, 3])
    ends = {e["step"]: e for e in evs if e["step"] % 7 == 0}
    for m in r["metrics"]:  # the epoch-end rows are the epoch's validation metrics
        assert ends[7 * m["epoch"]]["val_acc"] == m["val_acc"] and ends[7 * m["epoch"]]["val_loss"] == m["val_loss"]
    secs = [e["seconds"] for e in evs]
    assert all(b >= a for a, b in zip(secs, secs[1:])) and secs[-1] <= r["metrics"][-1]["wall_time"]
    # HVPs so far: one refresh every 3 steps (steps 1, 4, 7, ...), cumulative across epochs
    hvps = [e["hvp_count"] for e in evs]
    assert hvps == sorted(hvps) and hvps[-1] == sum(m["hvp_count"] for m in r["metrics"]) > 0


def test_resumed_run_continues_the_same_series(tmp_path):
    full = train(CFG, progress=False)
    ck = tmp_path / "ck.pt"

    def stop(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # after epoch 2's row, before its checkpoint: resume from epoch 1

    with pytest.raises(KeyboardInterrupt):
        train(CFG, checkpoint=ck, progress=False, on_epoch=stop)
    resumed = train(CFG, checkpoint=ck, progress=False)
    assert resumed["resumed_from_epoch"] == 1
    strip = lambda evs: [{k: v for k, v in e.items() if k != "seconds"} for e in evs]  # noqa: E731
    assert strip(resumed["evaluations"]) == strip(full["evaluations"])
    secs = [e["seconds"] for e in resumed["evaluations"]]
    assert all(b >= a for a, b in zip(secs, secs[1:]))


def test_unset_keeps_every_trial_id_and_bad_values_are_named():
    plain = {k: v for k, v in CFG.items() if k != "eval_every_steps"}
    d = RunConfig.from_dict(plain).to_dict()
    assert "eval_every_steps" not in d  # the id of every earlier configuration is unchanged
    assert trial_id(RunConfig.from_dict({**plain, "eval_every_steps": None}).to_dict()) == trial_id(d)
    assert trial_id(RunConfig.from_dict(CFG).to_dict()) != trial_id(d)
    assert "evaluations" not in train({**plain, "epochs": 1}, progress=False)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=rf"invalid eval_every_steps={bad!r}; expected an integer >= 1"):
            RunConfig.from_dict({**CFG, "eval_every_steps": bad}).validate()
    assert not math.isnan(train({**CFG, "epochs": 1}, progress=False)["evaluations"][0]["val_acc"])
