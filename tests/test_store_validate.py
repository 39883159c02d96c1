"""``store.validate_record``: per-epoch metrics must be epochs 1..E in order.

Readers take ``metrics[-1]`` as the final epoch and ``metrics[i]`` as epoch i + 1 (curves,
time-to-target): a record whose epochs are out of order, repeated or skipped would be read as a
different trajectory without any error, so it is rejected with the index and the expected epoch.
"""

from __future__ import annotations

import copy

import pytest

from optlab.store import record_problem as validate_record


def _record(epochs=(1, 2, 3)):
    return {
        "id": "abc",
        "status": "ok",
        "config": {"task": "digits", "model": "mlp", "optimizer": "sgd", "seed": 0, "hparams": {}, "epochs": 3},
        "metrics": [{"epoch": e, "val_acc": 0.5 + 0.1 * i, "val_loss": 1.0 - 0.1 * i} for i, e in enumerate(epochs)],
    }


def test_a_record_with_epochs_in_order_is_valid():
    assert validate_record(_record(), "abc") is None


@pytest.mark.parametrize(
    "epochs,index,want",
    [((2, 1, 3), 0, 1), ((1, 1, 3), 1, 2), ((1, 3, 2), 1, 2), ((0, 1, 2), 0, 1), ((1, 2, 4), 2, 3)],
)
def test_epochs_out_of_order_repeated_or_skipped_are_rejected(epochs, index, want):
    rec = _record(epochs)
    before = copy.deepcopy(rec)
    why = validate_record(rec, "abc")
    assert why == f"metrics[{index}].epoch must be {want}, got {epochs[index]}"
    assert rec == before  # validation does not repair
