"""The modern relatives assembled from parts (issue 24): AdamW, Lion, Muon, SOAP and cross-family presets.

References: ``torch.optim.AdamW``/``Adam`` (bit for bit, float32 and float64, with schedulers),
``pytorch_optimizer`` 4.x ``Lion``, ``Muon`` and ``SOAP`` (float64, >= 20 steps, tolerances stated at each
test), Newton--Schulz against pytorch_optimizer's and against its own definition (singular values).
Resume (state_dict mid-run) bit for bit for every new preset; DDP with 2 real gloo processes.
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import traceback
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim import lr_scheduler as L

import optlab
from optlab.builtins.adaptive_steppers import Adam, Lion
from optlab.builtins.eigenbasis import EigenbasisAdam
from optlab.builtins.orthogonal import (
    NS_COEFFICIENTS,
    hidden_matrices,
    is_hidden_matrix,
    newton_schulz,
    output_head,
    shape_scale,
)
from optlab.optim.ddp import convert_sync_batchnorm
from optlab.optim.selectors import named_parameters_with_owner
from optlab.testing import check_selector, check_stepper, make_problem

NEW_PRESETS = ("adamw", "lion", "muon", "soap", "sgd-ph-muon", "adamw-ph")


def _equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------------ AdamW == torch.optim.AdamW
SCHEDULES = {
    "none": None,
    "OneCycleLR": lambda o: L.OneCycleLR(o, max_lr=1e-2, total_steps=40, cycle_momentum=True),  # cycles betas[0]
    "CosineAnnealingLR": lambda o: L.CosineAnnealingLR(o, T_max=10),
    "StepLR": lambda o: L.StepLR(o, step_size=3, gamma=0.5),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize(
    "hp",
    [
        {},
        dict(lr=1e-2, weight_decay=0.1, amsgrad=True),
        dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0),
    ],
    ids=["defaults", "wd-amsgrad", "betas-eps-nowd"],
)
@pytest.mark.parametrize("model", ["cnn_bn2d", "ln_mlp"])
def test_adamw_preset_is_torch_adamw_bit_for_bit(model, hp, schedule, dtype):
    a, b = make_problem(model, dtype=dtype), make_problem(model, dtype=dtype)
    opt = optlab.optimizer("adamw", a.model, **hp)
    ref = torch.optim.AdamW(b.model.parameters(), **hp)
    s_opt = SCHEDULES[schedule](opt) if SCHEDULES[schedule] else None
    s_ref = SCHEDULES[schedule](ref) if SCHEDULES[schedule] else None
    lrs = set()
    for _ in range(30):
        opt.zero_grad()
        a.loss().backward()
        opt.step()
        ref.zero_grad()
        b.loss().backward()
        ref.step()
        if s_opt is not None:
            s_opt.step()
            s_ref.step()
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
        assert tuple(opt.param_groups[0]["betas"]) == tuple(ref.param_groups[0]["betas"])
        lrs.add(ref.param_groups[0]["lr"])
    assert (len(lrs) > 1) == (schedule != "none")
    assert _max_diff(a.model, make_problem(model, dtype=dtype).model) > 1e-3  # it trained
    assert _equal(a.model, b.model)
    for p, q in zip(a.model.parameters(), b.model.parameters()):  # the moments too
        sa, sb = opt.state[p], ref.state[q]
        assert sa["step"] == int(sb["step"])
        for k in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if hp.get("amsgrad") else ()):
            assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_stepper_with_coupled_decay_is_torch_adam(dtype):
    """``decoupled_weight_decay=False``: L2 decay added to the gradient, torch.optim.Adam's update."""
    a, b = make_problem("mlp_bn1d", dtype=dtype), make_problem("mlp_bn1d", dtype=dtype)
    hp = dict(lr=1e-2, weight_decay=0.05, amsgrad=True)
    opt = optlab.optimizer("adamw", a.model, decoupled_weight_decay=False, **hp)
    ref = torch.optim.Adam(b.model.parameters(), foreach=False, **hp)
    for _ in range(25):
        opt.step(a.loss)
        ref.zero_grad()
        b.loss().backward()
        ref.step()
    assert _equal(a.model, b.model)


def test_adam_skips_parameters_without_gradient_like_torch():
    """A frozen-for-a-while tensor keeps its own step count (bias correction), as torch's per-tensor step."""
    a, b = make_problem("mlp_bn1d"), make_problem("mlp_bn1d")
    opt, ref = optlab.optimizer("adamw", a.model, lr=1e-2), torch.optim.AdamW(b.model.parameters(), lr=1e-2)
    pa, pb = next(a.model.parameters()), next(b.model.parameters())
    for s in range(12):
        for o, pb_, p in ((opt, a, pa), (ref, b, pb)):
            o.zero_grad()
            pb_.loss().backward()
            if s < 5:
                p.grad = None
            o.step()
    assert opt.state[pa]["step"] == 7
    assert _equal(a.model, b.model)


# ------------------------------------------------------------------ Lion == pytorch_optimizer.Lion
@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("hp", [dict(lr=1e-3, weight_decay=0.1), dict(lr=3e-4, betas=(0.95, 0.98))])
def test_lion_matches_pytorch_optimizer_float64(hp, foreach):
    """Tolerance 0: the same lerp/sign/mul operations in the same order give the same bits (measured)."""
    pto = pytest.importorskip("pytorch_optimizer")
    a, b = make_problem("cnn_bn2d"), make_problem("cnn_bn2d")
    opt = optlab.optimizer("lion", a.model, **hp)
    ref = pto.Lion(b.model.parameters(), foreach=foreach, **hp)
    for _ in range(25):
        opt.step(a.loss)
        ref.zero_grad()
        b.loss().backward()
        ref.step()
    assert _max_diff(a.model, make_problem("cnn_bn2d").model) > 1e-3
    assert _equal(a.model, b.model)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"])


# ------------------------------------------------------------------ SOAP == pytorch_optimizer.SOAP
@pytest.mark.parametrize(
    "hp",
    [
        dict(precondition_frequency=3),
        dict(precondition_frequency=2, precondition_1d=True, max_precondition_dim=8, weight_decay=0.1, lr=1e-2),
    ],
    ids=["defaults-freq3", "1d-capped-wd"],
)
@pytest.mark.parametrize("model", ["cnn_bn2d", "token"])
def test_soap_matches_pytorch_optimizer_float64(model, hp):
    """Tolerance 0 (measured): eigh, the power-iteration QR (in float32, as the reference) and the
    projections run the same operations on the same bits. 25 steps = 8-12 basis refreshes; conv
    kernels have 4 factors; ``max_precondition_dim=8`` leaves longer dimensions unrotated."""
    pto = pytest.importorskip("pytorch_optimizer")
    if model == "token":
        (a, loss_a), (b, loss_b) = token_problem(), token_problem()
    else:
        pa, pb = make_problem(model), make_problem(model)
        a, loss_a, b, loss_b = pa.model, pa.loss, pb.model, pb.loss
    init = [p.detach().clone() for p in a.parameters()]
    opt = optlab.optimizer("soap", a, **hp)
    ref = pto.SOAP(b.parameters(), **hp)
    for _ in range(25):
        opt.step(loss_a)
        ref.zero_grad()
        loss_b().backward()
        ref.step()
    assert max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), init)) > 1e-2
    assert _equal(a, b)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"])


# ------------------------------------------------------------------ Newton--Schulz
def test_newton_schulz_is_pytorch_optimizers_iteration_and_nearly_orthogonal():
    pytest.importorskip("pytorch_optimizer")
    from pytorch_optimizer.optimizer.utils.matrix import zero_power_via_newton_schulz_5

    g = torch.Generator().manual_seed(0)
    for shape in [(8, 5), (5, 8), (6, 6), (3, 4, 7), (2, 9, 4)]:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        got = newton_schulz(x)
        want = zero_power_via_newton_schulz_5(x, num_steps=5, weights=NS_COEFFICIENTS, dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
        # its own definition: x's singular vectors, singular values mapped into ~[0.68, 1.13]
        u, _, vh = torch.linalg.svd(x, full_matrices=False)
        d = u.mT @ got @ vh.mT
        diag = d.diagonal(dim1=-2, dim2=-1)
        torch.testing.assert_close(d, torch.diag_embed(diag), rtol=0, atol=1e-12)
        assert float(diag.min()) > 0.6 and float(diag.max()) < 1.25, diag


def test_newton_schulz_batches_same_shape_matrices():
    """One batched call equals the matrices done one by one (no Python loop is needed for a batch)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 7, 4, generator=g, dtype=torch.float64)
    batched = newton_schulz(x)
    for i in range(6):
        torch.testing.assert_close(batched[i], newton_schulz(x[i]), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match=r"needs matrices.*shape \(5,\)"):
        newton_schulz(torch.ones(5))


def test_shape_scale_variants():
    assert shape_scale((16, 4), "sqrt_ratio") == 2.0 and shape_scale((4, 16), "sqrt_ratio") == 1.0
    assert shape_scale((8, 2, 3, 3), "sqrt_ratio") == 1.0  # conv: fan_in = 2*3*3
    assert shape_scale((16, 4), "moonlight") == pytest.approx(0.2 * 4)
    assert shape_scale((4, 9, 1), "moonlight") == pytest.approx(0.2 * 3)
    assert shape_scale((4, 9), "none") == 1.0


# ------------------------------------------------------------------ which parameters are hidden matrices
class TokenNet(nn.Module):
    """Embedding -> conv (no bias: before BatchNorm) -> 3 hidden Linears (two of one shape) -> LayerNorm -> head."""

    def __init__(self, tied: bool = False):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.conv = nn.Conv1d(6, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm1d(8)
        self.l1 = nn.Linear(8, 16)
        self.l2 = nn.Linear(16, 16)
        self.l3 = nn.Linear(16, 16)
        self.l4 = nn.Linear(16, 6, bias=False)
        self.ln = nn.LayerNorm(6)
        self.pos = nn.Parameter(torch.zeros(7, 6))  # a raw parameter: not a hidden matrix
        self.head = nn.Linear(6, 11)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, t):
        h = (self.emb(t) + self.pos).transpose(1, 2)
        h = torch.tanh(self.bn(self.conv(h))).mean(-1)
        for lin in (self.l1, self.l2, self.l3):
            h = torch.tanh(lin(h))
        return self.head(self.ln(self.l4(h)))


def token_problem(dtype=torch.float64, tied=False):
    torch.manual_seed(0)
    model = TokenNet(tied).to(dtype)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 11, (32, 7), generator=g), torch.randint(0, 11, (32,), generator=g)
    return model, (lambda m=model: F.cross_entropy(m(x), y))


def test_hidden_matrices_selector_conforms_and_recognises_embedding_head_and_weight_norm():
    check_selector(hidden_matrices(), reference=is_hidden_matrix)
    model, _ = token_problem()
    assert output_head(model) == "head"
    sel = hidden_matrices(exclude=("head",))
    assert sel.select(model) == ["conv.weight", "l1.weight", "l2.weight", "l3.weight", "l4.weight"]
    tied, _ = token_problem(tied=True)
    assert output_head(tied) == "head"  # found through its own _parameters although the weight is emb's
    assert sel.select(tied) == ["conv.weight", "l1.weight", "l2.weight", "l3.weight", "l4.weight"]
    # weight norm: the direction v is a matrix, the scale g ([C, 1]) is not
    wn = make_problem("wn_linear").model
    names = [n for n, _ in wn.named_parameters()]
    got = hidden_matrices().select(wn)
    assert all(n.endswith("original1") for n in got if "parametrizations" in n) and got
    assert not any(n.endswith("original0") for n in got) and set(got) <= set(names)
    mha = nn.MultiheadAttention(8, 2)
    assert hidden_matrices().select(mha) == ["in_proj_weight", "out_proj.weight"]


def test_muon_explain_lists_every_parameter_with_its_rule():
    model, _ = token_problem()
    buf = io.StringIO()
    rows = optlab.explain(model, "sgd-ph-muon", file=buf)
    rule = {r["parameter"]: r["rule"] for r in rows}
    assert {n for n, r in rule.items() if r == "muon"} == {f"{m}.weight" for m in ("conv", "l1", "l2", "l3", "l4")}
    assert {n for n, r in rule.items() if r == "channelwise"} == {"bn.weight", "bn.bias", "ln.weight", "ln.bias"}
    assert {n for n, r in rule.items() if r == "adamw"} == {
        "emb.weight",
        "pos",
        "l1.bias",
        "l2.bias",
        "l3.bias",
        "head.weight",
        "head.bias",
    }
    text = buf.getvalue()
    assert "orthogonal_momentum" in text and "diag_newton" in text and "adam " in text
    rows = optlab.explain(model, "muon", head=None, file=io.StringIO())
    assert {r["parameter"] for r in rows if r["rule"] == "muon"} >= {"head.weight"}
    with pytest.raises(ValueError, match=r"invalid head='fc'.*'auto', None or .*head"):
        optlab.optimizer("muon", model, head="fc")


def test_cli_explain_and_plugins_show_the_new_parts():
    env = {**os.environ, "OPTLAB_NO_PROGRESS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "optlab.cli",
            "explain",
            "--optimizer",
            "sgd-ph-muon",
            "--task",
            "digits",
            "--model",
            "cnn-bn",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    params = [ln for ln in lines[1:] if not ln.startswith(("sgd-ph-muon:", "warning"))]
    assert params and all(any(r in ln for r in ("channelwise", "muon", "adamw")) for ln in params), out.stdout
    assert any("muon" in ln and "Conv2d" in ln for ln in params)
    plugins = subprocess.run(
        [sys.executable, "-m", "optlab.cli", "plugins", "--hparams"], capture_output=True, text=True, env=env
    )
    assert plugins.returncode == 0, plugins.stderr[-2000:]
    text = plugins.stdout
    for kind, name in [
        ("stepper", "adam"),
        ("stepper", "lion"),
        ("stepper", "orthogonal_momentum"),
        ("stepper", "eigenbasis_adam"),
        ("selector", "hidden_matrices"),
        *[("preset", p) for p in NEW_PRESETS],
    ]:
        row = [ln for ln in text.splitlines() if ln.split()[:2] == [kind, name]]
        assert row and len(row[0].split()) > 4, f"{kind} {name} missing or undescribed"
    assert "muon (preset): lr=0.02, momentum=0.95" in " ".join(text.split())
    assert "adamw_lr=0.0003" in text and "shape_scale='sqrt_ratio'" in text


# ------------------------------------------------------------------ Muon == pytorch_optimizer.Muon
@pytest.fixture
def pto_muon_in_float64(monkeypatch):
    """pytorch_optimizer's Muon iterates Newton--Schulz in bfloat16 (Jordan's GPU default); run it in
    float64 so the comparison tests the algorithm, not bfloat16 rounding (ours: ``ns_dtype="param"``)."""
    pto = pytest.importorskip("pytorch_optimizer")
    import pytorch_optimizer.optimizer.muon.base as base

    monkeypatch.setattr(
        base,
        "zero_power_via_newton_schulz_5",
        functools.partial(base.zero_power_via_newton_schulz_5, dtype=torch.float64),
    )
    return pto


@pytest.mark.parametrize(
    "variant",
    [
        dict(shape_scale="sqrt_ratio", nesterov=True, foreach=None),
        dict(shape_scale="sqrt_ratio", nesterov=True, foreach=False),
        dict(shape_scale="moonlight", nesterov=False, foreach=False),
    ],
    ids=["jordan-batched", "jordan-per-tensor", "moonlight-no-nesterov"],
)
def test_muon_matches_pytorch_optimizer_float64(pto_muon_in_float64, variant):
    """Tolerance 1e-12 absolute on parameters after 25 steps (measured <= 6e-15: the AdamW half's
    lerp vs mul+addcmul for the second moment and addmm vs baddbmm round differently)."""
    pto = pto_muon_in_float64
    a, loss_a = token_problem()
    b, loss_b = token_problem()
    hp = dict(lr=0.02, momentum=0.95, weight_decay=0.1, nesterov=variant["nesterov"])
    opt = optlab.optimizer("muon", a, shape_scale=variant["shape_scale"], adamw_lr=1e-3, adamw_weight_decay=0.05, **hp)
    sel = hidden_matrices(exclude=(output_head(b),))
    mats = [i.param for i in named_parameters_with_owner(b) if sel.matches(i)]
    rest = [p for p in b.parameters() if all(p is not q for q in mats)]
    assert len(mats) == 5 and len(rest) == 11
    ref = pto.Muon(
        [dict(params=mats, use_muon=True), dict(params=rest, use_muon=False)],
        adamw_lr=1e-3,
        adamw_wd=0.05,
        use_adjusted_lr=variant["shape_scale"] == "moonlight",
        foreach=variant["foreach"],
        **hp,
    )
    assert ref.param_groups[1]["betas"] == (0.9, 0.95) and ref.param_groups[1]["eps"] == 1e-10  # our adamw_* defaults
    for _ in range(25):
        opt.step(loss_a)
        ref.zero_grad()
        loss_b().backward()
        ref.step()
    assert _max_diff(a, token_problem()[0]) > 0.1  # it trained
    assert _max_diff(a, b) < 1e-12, _max_diff(a, b)


def test_muon_bfloat16_iteration_is_jordans_precision():
    """``ns_dtype="bfloat16"`` runs the iteration in bfloat16 as pytorch_optimizer's default: close to
    it (bfloat16's 8 bits), far from float64 orthogonalization."""
    pto = pytest.importorskip("pytorch_optimizer")
    a, loss_a = token_problem()
    b, loss_b = token_problem()
    opt = optlab.optimizer("muon", a, ns_dtype="bfloat16")
    sel = hidden_matrices(exclude=(output_head(b),))
    mats = [i.param for i in named_parameters_with_owner(b) if sel.matches(i)]
    rest = [p for p in b.parameters() if all(p is not q for q in mats)]
    ref = pto.Muon([dict(params=mats, use_muon=True), dict(params=rest, use_muon=False)], foreach=False)
    opt.step(loss_a)
    ref.zero_grad()
    loss_b().backward()
    ref.step()
    torch.testing.assert_close(a.l2.weight, b.l2.weight, rtol=0, atol=0.02 * 2**-7)


# ------------------------------------------------------------------ conformance and resume
@pytest.mark.parametrize(
    "cls,hp",
    [
        (Adam, {}),
        (Adam, dict(amsgrad=True, decoupled_weight_decay=False)),
        (Lion, {}),
        (EigenbasisAdam, dict(precondition_frequency=2, precondition_1d=True)),
    ],
)
def test_steppers_pass_the_conformance_kit(cls, hp):
    check_stepper(cls, dict(hp, lr=1e-3))


def _train(opt, loss, steps):
    for _ in range(steps):
        opt.step(loss)


@pytest.mark.parametrize("name", NEW_PRESETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_new_presets_resume_bit_for_bit(name, dtype):
    hp = dict(every=2) if name in ("sgd-ph-muon", "adamw-ph") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, loss_a = token_problem(dtype)
        oa = optlab.optimizer(name, a, seed=0, **hp)
        _train(oa, loss_a, 8)
        b, loss_b = token_problem(dtype)
        ob = optlab.optimizer(name, b, seed=0, **hp)
        _train(ob, loss_b, 3)
        msd, osd = b.state_dict(), ob.state_dict()
        c, loss_c = token_problem(dtype)
        with torch.no_grad():
            for p in c.parameters():
                p.add_(1.0)  # overwritten by the checkpoint
        c.load_state_dict(msd)
        oc = optlab.optimizer(name, c, seed=123, **hp)
        oc.load_state_dict(osd)
        _train(oc, loss_c, 5)
    assert _max_diff(a, token_problem(dtype)[0]) > 1e-4
    assert _equal(a, c)


def test_new_presets_validate_hyperparameters():
    model, _ = token_problem()
    with pytest.raises(ValueError, match=r"invalid shape_scale='kj'.*'sqrt_ratio', 'moonlight', 'none'"):
        optlab.optimizer("muon", model, shape_scale="kj")
    with pytest.raises(ValueError, match=r"invalid betas=\(0.9, 1.0\); expected two numbers in \[0, 1\)"):
        optlab.optimizer("adamw", model, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"invalid momentum=1.0"):
        optlab.optimizer("sgd-ph-muon", model, momentum=1.0)
    with pytest.raises(TypeError, match=r"unknown hyperparameter 'momentum'"):
        optlab.optimizer("lion", model, momentum=0.9)
    scalar = nn.Linear(3, 2)
    scalar.gain = nn.Parameter(torch.tensor(1.0))
    rules = [optlab.Rule("m", optlab.selector("rest"), None, optlab.stepper("orthogonal_momentum"), {})]
    opt = optlab.RuleOptimizer(scalar, rules)
    with pytest.raises(ValueError, match=r"parameter 'gain' is a scalar \(shape \(\)\).*hidden_matrices"):
        opt.step(lambda: scalar(torch.ones(1, 3)).sum() * scalar.gain)


def test_orthogonal_momentum_views_a_vector_as_a_column_like_pytorch_optimizer(pto_muon_in_float64):
    """A 1-D tensor in the matrix rule (not what Muon's selector picks) is an n x 1 matrix, as in
    pytorch_optimizer.Muon: the update is the normalized momentum times sqrt(n) (shape scale)."""
    torch.manual_seed(0)
    a = nn.Linear(5, 1).double()
    b = nn.Linear(5, 1).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 5, dtype=torch.float64)
    rules = [optlab.Rule("m", optlab.selector("rest"), None, optlab.stepper("orthogonal_momentum"), {})]
    opt = optlab.RuleOptimizer(a, rules)
    ref = pto_muon_in_float64.Muon([dict(params=list(b.parameters()), use_muon=True)], foreach=False)
    for _ in range(20):
        opt.step(lambda: a(x).pow(2).mean())
        ref.zero_grad()
        b(x).pow(2).mean().backward()
        ref.step()
    assert _max_diff(a, b) < 1e-12


@pytest.mark.parametrize("name", ["muon", "sgd-ph-muon"])
def test_a_scheduler_scales_every_rule_of_the_mixed_presets(name):
    """LR schedulers mutate group["lr"] of every rule, each from its own initial lr; the step reads it."""
    model, loss = token_problem()
    opt = optlab.optimizer(name, model, every=2) if name == "sgd-ph-muon" else optlab.optimizer(name, model)
    initial = {g["rule"]: g["lr"] for g in opt.param_groups}
    sched = L.CosineAnnealingLR(opt, T_max=4)
    for step in range(1, 4):
        opt.step(loss)
        sched.step()
        factor = (1 + torch.cos(torch.tensor(torch.pi * step / 4, dtype=torch.float64)).item()) / 2
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(initial[g["rule"]] * factor, rel=1e-12), g["rule"]
    # the step reads the mutated lr: a zero learning rate leaves the matrices where they are
    for g in opt.param_groups:
        g["lr"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(loss)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_sgd_ph_muon_is_its_three_rules():
    """The mixed preset's channel-wise rule is sgd-ph's, its matrix rule muon's, its rest adamw's:
    with the Newton rule's parameters frozen out, it equals the ``muon`` preset bit for bit."""
    a, loss_a = token_problem()
    b, loss_b = token_problem()
    with pytest.warns(UserWarning, match="Newton rule is empty"):
        oa = optlab.optimizer("sgd-ph-muon", a, selector="nothing")
    ob = optlab.optimizer("muon", b)
    _train(oa, loss_a, 6)
    _train(ob, loss_b, 6)
    assert _equal(a, b)
    d = optlab.preset_hparams("sgd-ph-muon")
    assert d["lr"] == 0.02 and d["tau"] == 1e-3 and d["newton_lr"] == 0.1 and d["every"] == 50


# ------------------------------------------------------------------ grid
def test_grid_run_smoke_with_new_presets(tmp_path):
    spec = tmp_path / "rel.toml"
    spec.write_text(
        'name = "relatives"\nseeds = [0]\n[run]\nepochs = 1\nbatch_size = 128\nmodel_options = {width = 16}\n'
        '[[setting]]\ntask = "digits"\nmodel = "mlp-bn"\n'
        '[[optimizer]]\nname = "muon"\nlr = [0.01, 0.02]\nshape_scale = "moonlight"\n'
        '[[optimizer]]\nname = "adamw"\nlr = 1e-3\n'
        '[[optimizer]]\nname = "lion"\nlr = 1e-4\n'
        '[[optimizer]]\nname = "sgd-ph-muon"\nlr = 0.02\nevery = 5\n'
    )
    env = {**os.environ, "OPTLAB_NO_PROGRESS": "1"}
    res = tmp_path / "res"
    run = subprocess.run(
        [sys.executable, "-m", "optlab.cli", "grid", "run", str(spec), "--results", str(res)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0 and "ok: 5" in run.stdout, run.stdout + run.stderr[-2000:]
    records = []
    for root, _, files in os.walk(res):
        for f in files:
            if f.endswith(".json"):
                with open(os.path.join(root, f)) as fh:
                    try:
                        rec = json.load(fh)
                    except json.JSONDecodeError:
                        continue
                if isinstance(rec, dict) and "hparams_resolved" in json.dumps(rec):
                    records.append(rec)
    text = json.dumps(records)
    assert '"shape_scale": "moonlight"' in text and '"adamw_lr": 0.0003' in text
    assert '"orthogonal_momentum"' in text and '"ns_steps": 5' in text and '"lion"' in text


# ------------------------------------------------------------------ DDP: 2 gloo processes
from test_distributed import WORLD, batch, free_port, global_batch, train  # noqa: E402

DDP_STEPS = 4
DDP_PRESETS = {
    "adamw": dict(lr=1e-2),
    "lion": dict(lr=1e-3),
    "muon": dict(lr=0.02, adamw_lr=1e-2),
    "soap": dict(lr=1e-2, precondition_frequency=2),
    "soap-unrotated": dict(lr=1e-2, precondition_frequency=2, max_precondition_dim=1),
    "sgd-ph-muon": dict(lr=0.02, every=2),
    "adamw-ph": dict(lr=1e-2, every=2),
}


def ddp_model(kind: str) -> nn.Module:
    """Two same-shape hidden matrices (one Newton--Schulz batch), a BatchNorm and a head."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Linear(6, 8, bias=False),
        nn.BatchNorm1d(8),
        nn.Tanh(),
        nn.Linear(8, 8),
        nn.Tanh(),
        nn.Linear(8, 8),
        nn.Tanh(),
        nn.Linear(8, 3),
    ).double()
    return convert_sync_batchnorm(m) if kind == "syncbn" else m


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in ts])


def ddp_case(rank: int, key: str, style: str) -> dict:
    name = key.split("-unrotated")[0]
    model = ddp_model("syncbn")
    ddp = DDP(model)
    opt = optlab.optimizer(name, ddp, seed=0, **DDP_PRESETS[key])
    train(ddp, opt, style, range(DDP_STEPS), lambda s: batch(rank, s))
    params = _flat(model.parameters())
    gathered = [torch.zeros_like(params) for _ in range(WORLD)]
    dist.all_gather(gathered, params)
    res = {"replica_diff": float((gathered[0] - gathered[1]).abs().max())}
    if rank == 0:
        res["moved"] = float((params - _flat(ddp_model("bn").parameters())).abs().max())
        ref = ddp_model("bn")  # one process on the concatenated batch: what SyncBatchNorm computes
        ropt = optlab.optimizer(name, ref, seed=0, **DDP_PRESETS[key]).distribute(None)
        train(ref, ropt, "forward", range(DDP_STEPS), global_batch)
        res["ref_diff"] = float((params - _flat(ref.parameters())).abs().max())
    return res


def ddp_resume(rank: int, name: str) -> dict:
    hp, data = DDP_PRESETS[name], (lambda s: batch(rank, s))
    a = ddp_model("syncbn")
    da = DDP(a)
    train(da, optlab.optimizer(name, da, seed=0, **hp), "forward", range(DDP_STEPS), data)
    b = ddp_model("syncbn")
    db = DDP(b)
    ob = optlab.optimizer(name, db, seed=0, **hp)
    train(db, ob, "forward", range(2), data)
    c = ddp_model("syncbn")
    c.load_state_dict(b.state_dict())
    dc = DDP(c)
    oc = optlab.optimizer(name, dc, seed=9, **hp)
    oc.load_state_dict(ob.state_dict())
    train(dc, oc, "forward", range(2, DDP_STEPS), data)
    return {"resume_diff": float((_flat(a.parameters()) - _flat(c.parameters())).abs().max())}


DDP_CASES = [(n, "forward") for n in DDP_PRESETS] + [("sgd-ph-muon", "standard"), ("sgd-ph-muon", "backward")]


def ddp_worker(rank: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    results: dict = {}
    try:
        for name, style in DDP_CASES:
            try:
                results[f"{name}/{style}"] = ddp_case(rank, name, style)
            except Exception as exc:  # noqa: BLE001 - recorded; every rank raises alike
                results[f"{name}/{style}"] = {"error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()}
        for name in ("muon", "soap", "sgd-ph-muon"):
            results[f"resume/{name}"] = ddp_resume(rank, name)
    finally:
        if rank == 0:
            with open(path, "w") as f:
                json.dump(results, f)
        dist.barrier()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_measured(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ddp_rel") / "results.json")
    mp.spawn(ddp_worker, args=(free_port(), path), nprocs=WORLD, join=True)
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("case", [f"{n}/{s}" for n, s in DDP_CASES])
def test_new_presets_keep_ddp_replicas_identical(ddp_measured, case):
    """Replicas bit-identical; float64 2-rank training == one process on the concatenated batch (1e-6;
    SyncBatchNorm). Not for rotated SOAP: its first factors G G^T are rank-deficient, so the
    eigenvectors of the (near-)null space are arbitrary and 1e-16 differences between the ranks'
    averaged gradient and the one-process gradient pick other, equally valid bases (measured 1e-2
    apart after 4 steps; in one process, scaling the loss by 1 + 1e-15 moves SOAP's parameters by
    1e-2 too, the unrotated ones by 2e-16); with every dimension unrotated (``max_precondition_dim=1``)
    it holds."""
    r = ddp_measured[case]
    assert "error" not in r, r.get("tb")
    assert r["replica_diff"] == 0.0
    assert r["moved"] > 1e-3
    if case != "soap/forward":
        assert r["ref_diff"] < 1e-6, r


@pytest.mark.parametrize("name", ["muon", "soap", "sgd-ph-muon"])
def test_new_presets_resume_under_ddp(ddp_measured, name):
    assert ddp_measured[f"resume/{name}"]["resume_diff"] == 0.0
