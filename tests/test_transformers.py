"""Hugging Face Trainer integration: a randomly initialised BERT (config only, offline), float64, synthetic data."""

import contextlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import optlab  # noqa: E402
from optlab.integrations.transformers import OptlabTrainer, optlab_optimizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import transformers_app as app  # noqa: E402


def train(tmp_path, preset, **kw):
    t = app.trainer(str(tmp_path), preset, **kw)
    t.seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.train()
    return t


def reference(preset, seen, *, accumulation=1, max_grad_norm=None):
    """The plain optlab loop on the micro-batches the Trainer saw: backward-first style, one process."""
    model = app.make_model()
    opt = optlab.optimizer(preset, model, seed=0, max_grad_norm=max_grad_norm, **app.HP[preset])
    for s in range(0, len(seen), accumulation):
        opt.zero_grad()
        # refresh steps: attention on SDPA's math backend (the fused CPU kernel has no double backward)
        math = sdpa_kernel(SDPBackend.MATH) if opt.needs_graph() else contextlib.nullcontext()
        with math:
            for inputs in seen[s : s + accumulation]:
                loss = model(**inputs).loss / accumulation
                loss.backward(create_graph=opt.needs_graph())
        opt.step()
    return model, opt


def assert_same(trained, want):
    init = list(app.make_model().parameters())
    assert any(not torch.equal(p, q) for p, q in zip(trained.parameters(), init))  # it did train
    for (n, p), q in zip(trained.named_parameters(), want.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12, msg=n)


def test_layernorm_affine_parameters_go_to_the_channelwise_rule():
    rows = optlab.explain(app.make_model(), "sgd-ph", file=open(os.devnull, "w"))
    by_module = {}
    for r in rows:
        by_module.setdefault(r["module"], set()).add(r["rule"])
    assert by_module["LayerNorm"] == {"channelwise"}
    assert "channelwise" not in by_module["Linear"] and "channelwise" not in by_module["Embedding"]


@pytest.mark.parametrize("preset", ["sgd", "sgd-ph", "adahessian"])
def test_trainer_equals_the_optlab_loop(preset, tmp_path):
    t = train(tmp_path, preset)
    assert len(t.seen) == app.STEPS
    want, ref_opt = reference(preset, t.seen)
    assert_same(t.model, want)
    opt = optlab_optimizer(t.optimizer)
    if preset != "sgd":  # every=2: steps 2 and 4 refreshed curvature, with create_graph through accelerate
        assert opt.hvp_count > 0 and opt.hvp_count == ref_opt.hvp_count
        assert all(age is not None for age in opt.curvature_age().values())
    else:
        assert opt.hvp_count == 0


def test_accumulation_and_clipping_equal_the_optlab_loop(tmp_path):
    # 2 micro-batches per step: the curvature of the accumulated loss; clipping moved into the optimizer
    t = train(tmp_path, "sgd-ph", accumulation=2, max_grad_norm=0.05)
    assert len(t.seen) == 2 * app.STEPS
    opt = optlab_optimizer(t.optimizer)
    assert opt.max_grad_norm == 0.05  # the optimizer clips, the Trainer does not
    want, ref_opt = reference("sgd-ph", t.seen, accumulation=2, max_grad_norm=0.05)
    assert float(ref_opt.last_grad_norm) > 0.05  # clipping was active
    assert_same(t.model, want)
    assert opt.hvp_count == ref_opt.hvp_count > 0
    logged = [r for r in t.state.log_history if "grad_norm" in r]
    assert len(logged) == app.STEPS
    assert logged[-1]["grad_norm"] == pytest.approx(float(ref_opt.last_grad_norm), rel=1e-12)


def test_refused_configurations(tmp_path):
    with pytest.raises(ValueError, match="do not also pass"):
        OptlabTrainer(
            model=app.make_model(),
            args=app.trainer(str(tmp_path), "sgd").args,
            optimizer_name="sgd",
            optimizers=(torch.optim.SGD(app.make_model().parameters(), lr=0.1), None),
        )
    with pytest.raises(Exception, match="sgd-phh"):
        app.trainer(str(tmp_path), "sgd").__class__(model=app.make_model(), optimizer_name="sgd-phh")


def test_fp16_with_curvature_is_refused_and_bf16_refreshes_curvature(tmp_path):
    with pytest.raises(NotImplementedError, match="fp16.*bf16=True"):
        train(tmp_path, "sgd-ph", fp16=True)
    t = app.trainer(str(tmp_path), "sgd-ph", bf16=True)
    t.model.float()  # autocast to bfloat16 from float32 weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.train()
    opt = optlab_optimizer(t.optimizer)
    assert t.accelerator.mixed_precision == "bf16"
    assert opt.hvp_count > 0 and all(torch.isfinite(p).all() for p in t.model.parameters())


@pytest.mark.slow
def test_torchrun_two_processes_replicas_in_sync(tmp_path):
    # DDP on gloo, 2 micro-batches per step, clipping: refresh steps accumulate under no_sync with a graph,
    # the optimizer averages gradients and curvature over the ranks, then clips
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        cmd + [str(Path(app.__file__)), str(tmp_path), "sgd-ph", "2", "0.05"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert len(r0["seen"]) == len(r1["seen"]) == 2 * app.STEPS
    assert r0["hvp_count"] > 0 and r0["hvp_count"] == r1["hvp_count"]
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))  # replicas identical
    # the ranks saw different halves of each global batch
    assert not torch.equal(r0["seen"][0]["input_ids"], r1["seen"][0]["input_ids"])
    # one process on the concatenated global micro-batches (layer norm is per sample: no cross-sample
    # statistics): the same trajectory, up to the order of summation
    glob = [
        {k: torch.cat([a[k], b[k]]) for k in a}  # mean loss of 8 samples = average of the two ranks' means
        for a, b in zip(r0["seen"], r1["seen"])
    ]
    want, ref_opt = reference("sgd-ph", glob, accumulation=2, max_grad_norm=0.05)
    assert float(ref_opt.last_grad_norm) > 0.05  # clipping was active
    assert r0["hvp_count"] == ref_opt.hvp_count
    init = list(app.make_model().parameters())
    assert any(not torch.equal(a, b) for a, b in zip(r0["params"], init))
    for a, b in zip(r0["params"], want.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)
