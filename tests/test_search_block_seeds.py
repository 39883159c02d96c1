"""A block's sampled configurations depend on its content, not its position in the spec
(``optlab.grid.search.block_seeds``): inserting or reordering other blocks leaves them unchanged."""

from __future__ import annotations

import pytest

from optlab.grid.spec import expand, load_spec

HEAD = """
name = "seeds"
seeds = [0, 1]
[search]
sampler = "{sampler}"
trials = 4
seed = 3
[run]
epochs = 1
[[setting]]
task = "digits"
model = "mlp-bn"
"""

SGD_PH = """
[[optimizer]]
name = "sgd-ph"
lr = {log_uniform = [0.01, 1.0]}
hessian_momentum = {uniform = [0.0, 0.99]}
"""

SGD = """
[[optimizer]]
name = "sgd"
lr = {log_uniform = [0.001, 0.5]}
momentum = {choice = [0.0, 0.9]}
"""

INSERTED = """
[[optimizer]]
name = "sgd"
label = "sgd-plain"
lr = {log_uniform = [0.01, 1.0]}
"""


def _by_arm(blocks: str, sampler: str) -> dict[str, list[dict]]:
    trials = expand(load_spec(HEAD.format(sampler=sampler) + blocks, is_text=True))
    out: dict[str, list[dict]] = {}
    for t in trials:
        out.setdefault(t.arm, []).append((t.id, t.config["hparams"]))
    return out


@pytest.mark.parametrize("sampler", ["random", "halton"])
def test_inserting_or_reordering_blocks_keeps_the_others_configurations(sampler):
    base = _by_arm(SGD_PH + SGD, sampler)
    assert set(base) == {"sgd-ph", "sgd"} and len(base["sgd"]) == 8  # 4 configurations x 2 seeds
    inserted = _by_arm(INSERTED + SGD_PH + SGD, sampler)  # a new block before both
    assert inserted["sgd-ph"] == base["sgd-ph"]
    assert inserted["sgd"] == base["sgd"]
    swapped = _by_arm(SGD + SGD_PH, sampler)
    assert swapped["sgd-ph"] == base["sgd-ph"] and swapped["sgd"] == base["sgd"]
    # the inserted block has the same lr space as sgd-ph's lr but draws its own values
    assert {h["lr"] for _, h in inserted["sgd-plain"]}.isdisjoint({h["lr"] for _, h in base["sgd-ph"]})


def test_blocks_sharing_a_label_draw_different_configurations():
    two = """
[[optimizer]]
name = "sgd-ph"
label = "ph"
lr = {log_uniform = [0.01, 1.0]}
every = 1
[[optimizer]]
name = "sgd-ph"
label = "ph"
lr = {log_uniform = [0.01, 1.0]}
every = 50
"""
    trials = expand(load_spec(HEAD.format(sampler="random") + two, is_text=True))
    lrs = {
        h["every"]: {t.config["hparams"]["lr"] for t in trials if t.config["hparams"]["every"] == h["every"]}
        for h in (t.config["hparams"] for t in trials)
    }
    assert len(lrs[1]) == len(lrs[50]) == 4 and lrs[1].isdisjoint(lrs[50])
