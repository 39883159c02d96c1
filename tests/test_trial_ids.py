"""Trial ids are pinned: a trial's id is the hash of its configuration, so a change of id
re-runs every finished trial of every results folder. The ids below were computed before
the renovation of issue 22 (subpackages by role) and must never change without a data
version bump (``DATA_VERSION``).
"""

from __future__ import annotations

import hashlib

import pytest

from optlab.grid.spec import expand, load_spec
from optlab.grid.stages import evaluation_trials

# experiments/paper-ablation.toml as of issue 22 (inlined: the file may change, the pin may not)
PRESETS = """
name = "paper-ablation"
description = "SGD-PH schedules and Hessian momentum vs SGD-M and controls; tuned on validation, 20 evaluation seeds"
seeds = [0, 1]
[protocol]
evaluation_seeds = 20
select = "val_acc"
[run]
batch_size = 64
lr_schedule = "cosine"
[[setting]]
task = "digits"
model = "cnn-bn"
epochs = 8
[[setting]]
task = "mnist1d"
model = "cnn1d"
epochs = 10
[[optimizer]]
name = "sgd"
lr = [0.03, 0.1, 0.3]
weight_decay = 5e-4
[[optimizer]]
name = "sgd-scaled"
lr = [0.03, 0.1, 0.3]
weight_decay = 5e-4
channelwise_lr_scale = 0.1
[[optimizer]]
name = "sgd-frozen"
lr = [0.03, 0.1, 0.3]
weight_decay = 5e-4
[[optimizer]]
name = "sgd-ph"
label = "sgd-ph-every50"
lr = [0.03, 0.1, 0.3]
weight_decay = 5e-4
[[optimizer]]
name = "sgd-ph"
label = "sgd-ph-every1"
lr = [0.03, 0.1, 0.3]
weight_decay = 5e-4
every = 1
[[optimizer]]
name = "sgd-ph"
label = "sgd-ph-paper"
lr = [0.03, 0.1, 0.3]
weight_decay = 5e-4
estimator = "rowsum_hvp"
schedule = "round_robin"
every = 1
hessian_momentum = 0.9
"""

SEARCH = """
name = "pin-search"
seeds = [0]
[search]
sampler = "random"
trials = 3
seed = 7
[run]
epochs = 2
[[setting]]
task = "digits"
model = "mlp-bn"
[[optimizer]]
name = "sgd-ph"
lr = {log_uniform = [0.01, 1.0]}
weight_decay = {choice = [0.0, 5e-4]}
momentum = [0.8, 0.9]
"""

NPROC_AND_BASELINES = """
name = "pin-misc"
seeds = [0, 1]
[run]
epochs = 1
nproc = [1, 2]
[[setting]]
task = "digits"
model = "cnn-bn"
[[optimizer]]
name = "torch-adamw"
lr = [0.001]
[[optimizer]]
name = "sgd"
label = "sgd-frozen-arm"
lr = 0.1
momentum = 0.0
"""


def _first_ids(trials, n=3):
    return [(t.arm, t.config["seed"], t.id) for t in trials[:n]]


def _digest(trials) -> str:
    """Every id, in expansion order, in one short hash."""
    return hashlib.sha1(" ".join(t.id for t in trials).encode()).hexdigest()[:16]


# what: (number of tuning trials, first trials (arm, seed, id), last trial id, digest of all ids)
PINNED = {
    "nproc-baselines": (
        8,
        [
            ("torch-adamw", 0, "07afa765d755bafd"),
            ("torch-adamw", 1, "d902bfabc95bb88f"),
            ("torch-adamw", 0, "a555233100890b94"),
        ],
        "c56ae1c31b872e76",
        "6763907c2d5f6783",
    ),
    "presets": (
        72,
        [("sgd", 0, "1063150f1d684ba4"), ("sgd", 1, "d1d3ec11fa1a250a"), ("sgd", 0, "b88c6588985efbcf")],
        "5e6ca4da04717023",
        "7f9f7fbab211b23c",
    ),
    "search": (
        3,
        [("sgd-ph", 0, "9285c0425c51e370"), ("sgd-ph", 0, "962923d82ad9a055"), ("sgd-ph", 0, "02d4022821a7a2eb")],
        "02d4022821a7a2eb",
        "ae744f06b26eb903",
    ),
}


def _spec(what):
    return load_spec({"presets": PRESETS, "search": SEARCH, "nproc-baselines": NPROC_AND_BASELINES}[what], is_text=True)


@pytest.mark.parametrize("what", sorted(PINNED))
def test_trial_ids_are_pinned(what):
    trials = expand(_spec(what))
    got = (len(trials), _first_ids(trials), trials[-1].id, _digest(trials))
    assert got == PINNED[what]


def test_evaluation_trial_ids_are_pinned():
    spec = _spec("presets")
    tuning = expand(spec)
    records = {
        t.id: {"status": "ok", "metrics": [{"val_acc": 0.5 + 0.01 * (i % 7), "val_loss": 1.0}]}
        for i, t in enumerate(tuning)
    }
    evaluation, _ = evaluation_trials(spec, tuning, records)
    got = (len(evaluation), _first_ids(evaluation), evaluation[-1].id, _digest(evaluation))
    assert got == EVAL_PINNED


EVAL_PINNED = (
    240,
    [("sgd", 1000, "a463dec40721f64d"), ("sgd", 1001, "becff29a40c2e37a"), ("sgd", 1002, "ba32f48cceadcd84")],
    "b5a7256605a9ff34",
    "74aa95116c8f11a2",
)
