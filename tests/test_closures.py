"""Every optimizer optlab.optimizer returns, under every documented step style.

Styles: forward-only closure, torch-standard closure (calls backward itself),
backward-first (``loss.backward(create_graph=opt.needs_graph()); opt.step()``).
Each either trains exactly as its reference does or raises a clear error; never
a silent no-op. Plus clipping, accumulation and GradScaler (issue 15 item 4).
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

import optlab
from optlab.testing import make_problem

STYLES = ("forward", "standard", "backward")
PRESETS = ("sgd", "sgd-ph", "sgd-ph-reference", "adahessian", "sophia")
BASELINES = ("torch-sgd", "torch-adamw", "pto-adahessian", "pto-sophiah", "pto-apollo")
STEPS = 4


def _build(name, model, **hp):
    kw = dict(seed=0) if name in PRESETS else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optlab.optimizer(name, model, **kw, **hp)


def _step(opt, pb, style):
    if style == "forward":
        return opt.step(lambda: (F.cross_entropy(out := pb.model(pb.x), pb.y), out))
    if style == "standard":

        def closure():
            opt.zero_grad()
            loss = pb.loss()
            loss.backward()
            return loss

        return opt.step(closure)
    opt.zero_grad()
    loss = pb.loss()
    loss.backward(create_graph=opt.needs_graph())
    opt.step()
    return loss.detach()


def _reference(name, pb):
    """The plain torch loop: the optimizer's own class fed by loss.backward()."""
    torch.manual_seed(1)  # pto estimators draw probes from the global RNG
    create_graph = name in ("pto-adahessian", "pto-sophiah")
    opt = _build(name, pb.model)
    torch_step = type(opt)._torch_step
    for _ in range(STEPS):
        opt.zero_grad()
        pb.loss().backward(create_graph=create_graph)
        torch_step(opt)
        if create_graph:
            opt.zero_grad()


def _state(pb):
    return [p.detach().clone() for p in pb.model.parameters()]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", PRESETS + BASELINES)
def test_every_optimizer_trains_or_errors_under_every_style(name, style):
    if name.startswith("pto-"):
        pytest.importorskip("pytorch_optimizer")
    pb = make_problem("mlp_bn1d")
    before = _state(pb)
    if name == "sophia" and style != "forward":  # Sophia-G needs the outputs, which only a closure returns
        opt = _build(name, pb.model)
        with pytest.raises(ValueError, match=r"needs the model outputs.*estimator='hutchinson'"):
            _step(opt, pb, style)
        assert all(torch.equal(a, b) for a, b in zip(before, _state(pb)))  # refused, not half-applied
        return
    if name in PRESETS:  # reference: the forward-only closure (the established path)
        ref = make_problem("mlp_bn1d")
        ropt = _build(name, ref.model)
        for _ in range(STEPS):
            _step(ropt, ref, "forward")
    else:
        ref = make_problem("mlp_bn1d")
        _reference(name, ref)
    torch.manual_seed(1)
    opt = _build(name, pb.model)
    for _ in range(STEPS):
        loss = _step(opt, pb, style)
        assert loss.requires_grad is False and loss.shape == ()
    after = _state(pb)
    assert max(float((a - b).abs().max()) for a, b in zip(before, after)) > 1e-4, "silent no-op"
    for (n, p), q in zip(pb.model.named_parameters(), ref.model.parameters()):
        assert torch.equal(p, q), n
    assert all(p.grad is None or p.grad.grad_fn is None for p in pb.model.parameters())  # no graph kept alive


def test_torch_sgd_with_forward_only_closure_is_torch_sgd():
    """The issue's report: this ran the closure, computed no gradient and changed nothing."""
    a, b = make_problem("mlp_bn1d"), make_problem("mlp_bn1d")
    opt = optlab.optimizer("torch-sgd", a.model, lr=0.1)
    assert isinstance(opt, torch.optim.SGD)
    ref = torch.optim.SGD(b.model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        opt.step(lambda: F.cross_entropy(a.model(a.x), a.y))
        ref.zero_grad()
        b.loss().backward()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_needs_graph_only_on_refresh_steps():
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd-ph", pb.model, every=3)
    seen = []
    for _ in range(7):
        seen.append(opt.needs_graph())
        _step(opt, pb, "backward")
    assert seen == [True, False, False, True, False, False, True]
    assert optlab.optimizer("sgd", pb.model).needs_graph() is False
    assert optlab.optimizer("sgd-ph", pb.model, engine="func").needs_graph() is False
    assert optlab.optimizer("torch-sgd", pb.model).needs_graph() is False
    pytest.importorskip("pytorch_optimizer")
    assert optlab.optimizer("pto-adahessian", pb.model).needs_graph() is True


def test_backward_first_without_graph_on_a_refresh_step_shows_the_styles():
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("adahessian", pb.model)
    pb.loss().backward()  # create_graph forgotten
    with pytest.raises(RuntimeError, match=r"(?s)without graph.*create_graph=opt.needs_graph\(\).*forward-only:"):
        opt.step()
    with pytest.raises(RuntimeError, match=r"(?s)needs the loss.*forward-only:.*torch-standard:.*backward-first:"):
        optlab.optimizer("adahessian", make_problem("mlp_bn1d").model).step()


def test_closure_without_grad_and_without_backward_is_an_error_for_baselines():
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("torch-sgd", pb.model)
    with pytest.raises(ValueError, match=r"(?s)does not require grad.*forward-only:"):
        opt.step(lambda: pb.loss().detach())


def test_torch_autograd_backward_in_closure_on_a_refresh_step_is_an_error():
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd-ph", pb.model)

    def closure():
        loss = pb.loss()
        torch.autograd.backward(loss)
        return loss

    with pytest.raises(RuntimeError, match=r"torch.autograd.backward\(\)"):
        opt.step(closure)


def test_func_engine_refuses_a_closure_that_calls_backward():
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd-ph", pb.model, engine="func")
    with pytest.raises(ValueError, match=r"engine='func'.*must not call backward"):
        _step(opt, pb, "standard")


# ------------------------------------------------------------------ clipping
@pytest.mark.parametrize("style", STYLES)
def test_max_grad_norm_is_clip_grad_norm_then_sgd_bit_for_bit(style):
    a, b = make_problem("mlp_bn1d"), make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd", a.model, lr=0.1, max_grad_norm=0.05)
    ref = torch.optim.SGD(b.model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        _step(opt, a, style)
        ref.zero_grad()
        b.loss().backward()
        norm = torch.nn.utils.clip_grad_norm_(b.model.parameters(), 0.05)
        ref.step()
        assert torch.equal(opt.last_grad_norm, norm) and norm > 0.05  # pre-clip norm recorded
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


@pytest.mark.parametrize("name", ["sgd-ph", "sgd-ph-reference", "adahessian", "sophia", "torch-adamw"])
def test_max_grad_norm_is_applied_before_the_update(name):
    a, b = make_problem("mlp_bn1d"), make_problem("mlp_bn1d")
    clipped = _build(name, a.model, max_grad_norm=0.01)
    plain = _build(name, b.model)
    _step(clipped, a, "forward")
    _step(plain, b, "forward")
    raw = torch.sqrt(sum(p.grad.pow(2).sum() for p in b.model.parameters()))
    torch.testing.assert_close(clipped.last_grad_norm, raw, rtol=1e-12, atol=0)
    got = torch.sqrt(sum(p.grad.pow(2).sum() for p in a.model.parameters()))
    torch.testing.assert_close(got, 0.01 * raw / (raw + 1e-6), rtol=1e-12, atol=0)  # clip_grad_norm_'s coefficient
    assert not all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    if name in PRESETS:  # curvature comes from the unclipped loss
        for pa, pb_ in zip(clipped.param_groups, plain.param_groups):
            for p, q in zip(pa["params"], pb_["params"]):
                for k in ("hessian", "exp_hessian_sq"):
                    if k in clipped.state[p]:
                        assert torch.equal(clipped.state[p][k], plain.state[q][k])


def test_bad_max_grad_norm_is_named():
    with pytest.raises(ValueError, match=r"invalid max_grad_norm=-1.*None \(no clipping\)"):
        optlab.optimizer("sgd-ph", make_problem("mlp_bn1d").model, max_grad_norm=-1)
    with pytest.raises(ValueError, match=r"invalid max_grad_norm=nan"):
        optlab.optimizer("torch-sgd", make_problem("mlp_bn1d").model, max_grad_norm=float("nan"))


# ------------------------------------------------------------------ accumulation
def test_accumulation_backward_first_is_torch_sgd_accumulation_bit_for_bit():
    a, b = make_problem("wn_linear"), make_problem("wn_linear")
    opt = optlab.optimizer("sgd", a.model, lr=0.1)
    ref = torch.optim.SGD(b.model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(4):
        opt.zero_grad()
        ref.zero_grad()
        for xs, ys in zip(a.x.chunk(2), a.y.chunk(2)):
            (F.cross_entropy(a.model(xs), ys) / 2).backward(create_graph=opt.needs_graph())
            (F.cross_entropy(b.model(xs), ys) / 2).backward()
        opt.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


@pytest.mark.parametrize("name", ["sgd-ph", "sgd-ph-reference", "adahessian", "sophia"])
def test_accumulation_equals_the_full_batch_step(name):
    """Two half-batches accumulated (with the graph on refresh steps) == one full-batch
    step, curvature included (BN-free model: the loss is the mean of the halves')."""
    hp = dict(estimator="hutchinson") if name == "sophia" else {}
    a, b = make_problem("wn_linear"), make_problem("wn_linear")
    acc, full = _build(name, a.model, **hp), _build(name, b.model, **hp)
    for _ in range(4):
        acc.zero_grad()
        for xs, ys in zip(a.x.chunk(2), a.y.chunk(2)):
            (F.cross_entropy(a.model(xs), ys) / 2).backward(create_graph=acc.needs_graph())
        acc.step()
        full.step(lambda: F.cross_entropy(b.model(b.x), b.y))
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ GradScaler
@pytest.mark.parametrize("name", ["sgd", "sgd-ph", "adahessian"])
def test_grad_scaler_unscales_gradients_and_curvature(name):
    a, b = make_problem("mlp_bn1d"), make_problem("mlp_bn1d")
    opt, ref = _build(name, a.model), _build(name, b.model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1)
    for _ in range(4):
        opt.zero_grad()
        scaler.scale(a.loss()).backward(create_graph=opt.needs_graph())
        scaler.step(opt)
        scaler.update()
        _step(ref, b, "forward")
    for p, q in zip(a.model.parameters(), b.model.parameters()):  # power-of-two scales: exact
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert scaler.get_scale() > 2.0**12  # no overflow seen, the scale grew


def test_grad_scaler_skips_a_step_with_inf_and_retries_the_refresh():
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd-ph", pb.model, every=5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    before = _state(pb)
    opt.zero_grad()
    (scaler.scale(pb.loss()) * float("inf")).backward(create_graph=opt.needs_graph())
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, _state(pb)))
    assert opt.needs_graph() and opt.rule_state("channelwise")["step"] == 0
    assert scaler.get_scale() == 2.0**11


def test_grad_scaler_with_unscale_before_a_curvature_step_is_refused():
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd-ph", pb.model)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(pb.loss()).backward(create_graph=opt.needs_graph())
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"unscale_.*max_grad_norm"):
        scaler.step(opt)
