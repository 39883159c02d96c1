"""Lightning integration: automatic optimization with optlab presets, one process and strategy="ddp"."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning")

import optlab  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import lightning_app as app  # noqa: E402

PRESETS = ("sgd", "sgd-ph", "sgd-ph-reference", "adahessian", "sophia")


def reference(preset: str, steps: int = 4):
    """The plain optlab loop on the same batches, forward-only closure, one process."""
    x, y = app.data()
    model = app.make_model()
    opt = optlab.optimizer(preset, model, seed=0, **app.HP[preset])
    for s in range(steps):
        xb, yb = x[s * app.BATCH : (s + 1) * app.BATCH], y[s * app.BATCH : (s + 1) * app.BATCH]
        opt.step(lambda: F.cross_entropy(model(xb), yb))
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("preset", PRESETS)
def test_lightning_single_process_equals_the_optlab_loop(preset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m, _ = app.fit(preset, devices=1)
    want = reference(preset)
    init = list(app.make_model().parameters())
    assert any(not torch.equal(p, q) for p, q in zip(m.parameters(), init))
    for p, q in zip(m.parameters(), want):
        assert torch.equal(p.detach(), q)  # the torch-standard closure Lightning passes, served exactly


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["sgd-ph", "adahessian"])
def test_lightning_ddp_two_processes_replicas_in_sync(preset, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    proc = subprocess.run(
        [sys.executable, str(Path(app.__file__)), str(tmp_path), preset, "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a, b) for a, b in zip(r0, r1))  # replicas identical
    # DistributedSampler splits each global batch of 8 between the ranks (BN-free model):
    # the same trajectory as one process on the concatenated batches, up to summation order
    ref = reference(preset)
    init = list(app.make_model().parameters())
    assert any(not torch.equal(a, b) for a, b in zip(r0, init))
    for a, b in zip(r0, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
