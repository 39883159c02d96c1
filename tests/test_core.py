"""Core: partition, RuleOptimizer, presets vs torch.optim.SGD and the reference semantics."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import optlab
from optlab.plugin.registry import RegistryError
from optlab.testing import block_slices, dense_hessian, make_problem

MODELS = ["mlp_bn1d", "cnn_bn2d", "residual", "wn_linear"]


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "hp",
    [
        dict(momentum=0.9, weight_decay=5e-4),
        dict(momentum=0.9, weight_decay=1e-3, nesterov=True),
        dict(momentum=0.0, weight_decay=0.0),
    ],
)
@pytest.mark.parametrize("style", ["closure", "backward"])
def test_sgd_ph_with_empty_selector_is_torch_sgd(hp, style):
    a, b = make_problem("cnn_bn2d"), make_problem("cnn_bn2d")
    with pytest.warns(UserWarning, match="reduces to SGD"):
        opt = optlab.optimizer("sgd-ph", a.model, lr=0.05, selector="nothing", **hp)
    ref = torch.optim.SGD(b.model.parameters(), lr=0.05, **hp)
    for _ in range(20):
        if style == "closure":
            opt.step(a.loss)
        else:
            opt.zero_grad()
            a.loss().backward()
            opt.step()
        ref.zero_grad()
        b.loss().backward()
        ref.step()
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), n
    for (n, p), q in zip(a.model.named_buffers(), b.model.buffers()):
        assert torch.equal(p, q), n


def test_sgd_preset_dampening_matches_torch():
    a, b = make_problem("mlp_bn1d"), make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd", a.model, lr=0.1, momentum=0.8, dampening=0.3, weight_decay=1e-2)
    ref = torch.optim.SGD(b.model.parameters(), lr=0.1, momentum=0.8, dampening=0.3, weight_decay=1e-2)
    for _ in range(20):
        opt.zero_grad()
        a.loss().backward()
        opt.step()
        ref.zero_grad()
        b.loss().backward()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


@pytest.mark.parametrize("engine", ["autograd", "func"])
@pytest.mark.parametrize("model", MODELS)
def test_rowsum_hvp_equals_dense_block_rowsums(model, engine):
    pb = make_problem(model)
    names, params = pb.params(optlab.selector("channelwise"))
    assert params, "model has channel-wise parameters"
    H = dense_hessian(pb.loss, params, model=pb.model)
    want = [H[s, s].sum(1).abs().reshape(p.shape) for s, p in zip(block_slices(params), params)]
    from optlab.optim.hvp import get_engine

    ctx = get_engine(engine).context(model=pb.model, closure=pb.loss, params=params, names=names)
    got = optlab.estimator("rowsum_hvp").estimate(ctx, list(range(len(params))), {"absolute": True}, None)
    for i, n in enumerate(names):
        torch.testing.assert_close(got[i], want[i], rtol=1e-9, atol=1e-12, msg=n)
    assert ctx.hvp_count == len(params)


def test_dense_reference_agrees_with_finite_differences():
    from optlab.testing import fd_hessian

    pb = make_problem("residual")  # two native BatchNorms: the torch.func.hessian trap
    names, params = pb.params()
    params = [p for n, p in zip(names, params) if "bn" in n or n == "conv2.weight"]
    H = dense_hessian(pb.loss, params, model=pb.model)
    Hfd = fd_hessian(pb.loss, params, model=pb.model)
    torch.testing.assert_close(H, H.T, rtol=0, atol=1e-12)
    assert (H - Hfd).norm() / H.norm() < 1e-7


@pytest.mark.parametrize("model", MODELS)
def test_engines_agree_on_batched_hvps(model):
    pb = make_problem(model)
    names, params = pb.params(optlab.selector("channelwise"))
    from optlab.optim.hvp import get_engine

    g = torch.Generator().manual_seed(1)
    vs = {i: torch.randn(4, *p.shape, generator=g, dtype=p.dtype) for i, p in enumerate(params)}
    out = {
        e: get_engine(e).context(model=pb.model, closure=pb.loss, params=params, names=names).hvp_batched(vs)
        for e in ("autograd", "func")
    }
    H = dense_hessian(pb.loss, params, model=pb.model)
    V = torch.cat([vs[i].reshape(4, -1) for i in range(len(params))], 1)
    want = V @ H
    for e, res in out.items():
        got = torch.cat([res[i].reshape(4, -1) for i in range(len(params))], 1)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10, msg=e)


@pytest.mark.parametrize("engine", ["autograd", "func"])
@pytest.mark.parametrize("preset", ["sgd-ph", "sgd-ph-reference"])
def test_batchnorm_buffers_after_curvature_step_equal_plain_step(engine, preset):
    """After every step, buffers equal those of a plain forward on the same parameters and batch."""
    a, b = make_problem("residual"), make_problem("residual")
    hp = dict(schedule="all", every=1) if preset == "sgd-ph" else {}
    opt = optlab.optimizer(preset, a.model, engine=engine, **hp)
    for _ in range(4):
        with torch.no_grad():
            for p, q in zip(a.model.parameters(), b.model.parameters()):
                q.copy_(p)
        opt.step(a.loss)
        b.loss().backward()
        for (n, x), y in zip(a.model.named_buffers(), b.model.buffers()):
            assert torch.equal(x, y), n
    assert int(a.model.bn1.num_batches_tracked) == 4


def _reference_semantics(model, loss_fn, steps, lr=0.1, beta=0.9, wd=5e-4, eps=1e-4, tau=1e-3):
    """The paper's released SGD-PH update, written out literally (see issue 2)."""
    params = list(model.parameters())
    one_d = [p for p in params if p.dim() == 1]
    M = len(one_d)
    buf = {p: None for p in params}
    D = {p: torch.zeros_like(p) for p in one_d}
    for s in range(1, steps + 1):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        k = one_d[(s - 1) % M]
        gk = grads[[i for i, p in enumerate(params) if p is k][0]]
        hk = torch.autograd.grad(gk, k, torch.ones_like(k))[0].abs()
        with torch.no_grad():
            D[k].mul_(beta).add_((1 - beta) * hk)
            for p, g in zip(params, grads):
                g = g.detach()
                buf[p] = g.clone() if buf[p] is None else beta * buf[p] + g
                if p.dim() == 1 and p is not one_d[-1]:  # Newton step, decoupled decay
                    u = tau * (1 - beta ** (s // M + 1)) * buf[p] / (D[p] + eps) + wd * p
                else:
                    buf[p] = buf[p] + wd * p
                    u = buf[p]
                p.sub_(lr * u)


@pytest.mark.parametrize("model", ["mlp_bn1d", "cnn_bn2d", "residual"])
def test_sgd_ph_reference_reproduces_reference_semantics(model):
    a, b = make_problem(model), make_problem(model)
    opt = optlab.optimizer("sgd-ph-reference", a.model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(20):
        opt.step(a.loss)
    _reference_semantics(b.model, b.loss, 20)
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=n)
    assert not torch.equal(
        a.model[0].weight if model != "residual" else a.model.conv1.weight,
        make_problem(model).model.state_dict()["0.weight" if model != "residual" else "conv1.weight"],
    )


@pytest.mark.parametrize(
    "preset,hp",
    [
        ("sgd-ph", dict(schedule="round_robin", every=1, estimator="rowsum_hvp")),
        ("sgd-ph", dict(schedule="all", every=3, weight_decay=1e-3)),
        ("sgd-ph-reference", dict(weight_decay=5e-4)),
        ("sgd", dict(nesterov=True)),
    ],
)
def test_state_dict_resume_is_bit_for_bit(preset, hp):
    a = make_problem("cnn_bn2d")
    oa = optlab.optimizer(preset, a.model, seed=0, **hp)
    for _ in range(10):
        oa.step(a.loss)
    b = make_problem("cnn_bn2d")
    ob = optlab.optimizer(preset, b.model, seed=0, **hp)
    for _ in range(4):
        ob.step(b.loss)
    msd, osd = copy.deepcopy(b.model.state_dict()), copy.deepcopy(ob.state_dict())
    c = make_problem("cnn_bn2d", seed=7)  # different init, overwritten by the checkpoint
    c.x, c.y = a.x, a.y
    c.model.load_state_dict(msd)
    oc = optlab.optimizer(preset, c.model, seed=123, **hp)  # generator state comes from the checkpoint
    oc.load_state_dict(osd)
    for _ in range(6):
        oc.step(c.loss)
    for (n, x), y in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        assert torch.equal(x, y), n
    assert oa.state_dict()["state"].keys() == oc.state_dict()["state"].keys()
    if preset != "sgd":
        assert oa.hvp_count == oc.hvp_count > 0


def test_lr_scheduler_changes_the_step_size():
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd-ph", pb.model, lr=0.1, schedule="all")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 if epoch == 0 else 0.0)
    before = _params(pb.model)
    opt.step(pb.loss)
    sched.step()
    assert all(g["lr"] == 0.0 for g in opt.param_groups)
    moved = _params(pb.model)
    assert any(not torch.equal(before[n], moved[n]) for n in before)
    opt.step(pb.loss)
    after = _params(pb.model)
    assert all(torch.equal(moved[n], after[n]) for n in moved)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(optlab.optimizer("sgd-ph", pb.model), T_max=10)
    cos.step()
    assert cos.optimizer.param_groups[0]["lr"] < 0.1


def test_curvature_only_on_refresh_steps_and_staleness():
    pb = make_problem("cnn_bn2d")
    opt = optlab.optimizer("sgd-ph", pb.model, schedule="all", every=4, estimator="rowsum_hvp")
    counts = []
    for _ in range(9):
        opt.step(pb.loss)
        counts.append(opt.hvp_count)
    n = len(opt.param_groups[0]["params"])
    assert counts == [n, n, n, n, 2 * n, 2 * n, 2 * n, 2 * n, 3 * n]
    assert set(opt.curvature_age().values()) == {0}
    opt.step(pb.loss)
    assert set(opt.curvature_age().values()) == {1}
    pb2 = make_problem("cnn_bn2d")
    rr = optlab.optimizer("sgd-ph", pb2.model, schedule="round_robin", every=1)
    ages = None
    for _ in range(3):
        rr.step(pb2.loss)
        ages = rr.curvature_age()
    assert list(ages.values()) == [2, 1, 0, None]


def test_step_returns_detached_loss_and_sets_grad():
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd-ph", pb.model)
    loss = opt.step(pb.loss)
    assert loss.requires_grad is False and loss.shape == ()
    assert all(p.grad is not None and p.grad.grad_fn is None for p in pb.model.parameters())


# ------------------------------------------------------------------ errors
def test_one_message_for_unknown_names():
    from optlab.optim.hparams import unknown_name
    from optlab.training.tasks import Task

    assert (
        unknown_name("engine", "fnc", ["autograd", "func"])
        == "unknown engine 'fnc'. Did you mean 'func'? Valid: autograd, func."
    )
    assert unknown_name("x", "zzz", ["b", "a"], sort=True, valid_label="Valid xs") == "unknown x 'zzz'. Valid xs: a, b."
    t = Task("t", torch.zeros(4, 2), torch.zeros(4), torch.zeros(2, 2), torch.zeros(2), num_classes=2)
    with pytest.raises(ValueError, match=r"unknown split 'tset'. Did you mean 'test'\? Valid: train, val, test."):
        next(t.eval_batches("tset"))
    with pytest.raises(ValueError, match=r"unknown problem 'mlp_bn'. Did you mean 'mlp_bn1d'"):
        make_problem("mlp_bn")


def test_unknown_names_list_valid_ones_and_suggest():
    m = make_problem("mlp_bn1d").model
    with pytest.raises(RegistryError, match=r"unknown optimizer 'sgd-hp'.*Did you mean 'sgd-ph'.*Valid:"):
        optlab.optimizer("sgd-hp", m)
    with pytest.raises(RegistryError, match=r"unknown selector 'chanelwise'.*'channelwise'"):
        optlab.optimizer("sgd-ph", m, selector="chanelwise")
    with pytest.raises(RegistryError, match=r"unknown estimator 'rowsum'.*Valid estimators:.*rowsum_hvp"):
        optlab.optimizer("sgd-ph", m, estimator="rowsum")
    with pytest.raises(TypeError, match=r"unknown hyperparameter 'lrate'.*Valid:"):
        optlab.optimizer("sgd", m, lrate=0.1)
    with pytest.raises(TypeError, match=r"unknown hyperparameter 'prbes'"):
        optlab.optimizer("sgd-ph", m, prbes=3)


@pytest.mark.parametrize(
    "hp,match",
    [
        (dict(lr=-0.1), r"invalid lr=-0.1; expected a finite number >= 0"),
        (dict(eps=-1e-4), r"invalid eps=-0.0001; expected a finite number > 0"),
        (dict(tau=0.0), r"invalid tau=0.0"),
        (dict(momentum=1.0), r"invalid momentum=1.0; expected a number in \[0, 1\)"),
        (dict(momentum=-0.1), r"invalid momentum"),
        (dict(hessian_momentum=1.5), r"invalid hessian_momentum=1.5"),
        (dict(schedule="sometimes"), r"invalid schedule='sometimes'; expected one of 'all', 'round_robin'"),
        (dict(every=0), r"invalid every=0; expected an integer >= 1"),
    ],
)
def test_bad_hyperparameters_are_named(hp, match):
    with pytest.raises(ValueError, match=match):
        optlab.optimizer("sgd-ph", make_problem("mlp_bn1d").model, **hp)


def test_missing_closure_is_a_clear_error():
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd-ph", pb.model)
    pb.loss().backward()
    with pytest.raises(RuntimeError, match=r"needs the loss, so call opt.step\(closure\)"):
        opt.step()


def test_nonscalar_loss_and_no_grad_loss():
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd-ph", pb.model)
    with pytest.raises(ValueError, match=r"loss must be a scalar; got a tensor of shape \(10,\)"):
        opt.step(lambda: F.cross_entropy(pb.model(pb.x), pb.y, reduction="none"))
    with pytest.raises(ValueError, match="does not require grad"):
        opt.step(lambda: pb.loss().detach())


def test_model_without_channelwise_params_warns():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match=r"SGD-PH reduces to SGD.*optlab.decouple"):
        optlab.optimizer("sgd-ph", m)


def test_unused_parameter_in_curvature_rule_is_a_clear_error():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn, self.unused_bn = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(self.fc(x))

    m = M()
    opt = optlab.optimizer("sgd-ph", m, schedule="all")
    x = torch.randn(8, 3)
    with pytest.raises(ValueError, match=r"'unused_bn.weight' does not take part in the loss"):
        opt.step(lambda: m(x).pow(2).mean())


# ------------------------------------------------------------------ partition and selectors
def test_partition_errors_name_the_parameter():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    sgd = optlab.stepper("sgd")
    with pytest.raises(ValueError, match=r"parameter '1.weight' is matched by several rules"):
        optlab.partition(
            m,
            [
                optlab.Rule("a", optlab.selector("norm"), None, sgd),
                optlab.Rule("b", optlab.selector("one_d"), None, sgd),
                optlab.Rule("c", optlab.rest(), None, sgd),
            ],
        )
    with pytest.raises(ValueError, match=r"parameter '0.weight' .* is matched by no rule"):
        optlab.partition(m, [optlab.Rule("a", optlab.selector("one_d"), None, sgd)])
    groups = optlab.partition(
        m,
        [optlab.Rule("a", optlab.selector("norm"), None, sgd, {"lr": 0.3}), optlab.Rule("b", optlab.rest(), None, sgd)],
    )
    assert [g["param_names"] for g in groups] == [["1.weight", "1.bias"], ["0.weight", "0.bias"]]
    assert groups[0]["lr"] == 0.3 and groups[1]["lr"] == 0.1


def test_selectors_compose_and_know_module_types():
    m = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3),
        nn.GroupNorm(1, 3),
        nn.LayerNorm([3]),
        nn.InstanceNorm2d(3, affine=True),
        nn.Linear(3, 2),
    )
    sel = optlab.selector
    assert sel("norm").select(m) == [
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
        "3.weight",
        "3.bias",
        "4.weight",
        "4.bias",
    ]
    assert (sel("one_d") & ~sel("norm")).select(m) == ["0.bias", "5.bias"]
    assert (sel("regex", r"^0\.") | sel("regex", r"^5\.weight")).select(m) == ["0.weight", "0.bias", "5.weight"]
    with pytest.raises(TypeError, match="rest"):
        optlab.rest() | sel("norm")


def test_decouple_keeps_outputs_and_exposes_scales():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 3)).double()
    x = torch.randn(5, 2, 5, 5, dtype=torch.float64)
    before = m(x)
    optlab.decouple(m)
    torch.testing.assert_close(m(x), before, rtol=1e-12, atol=1e-12)
    scales = optlab.selector("wn_scale").select(m)
    assert scales == ["0.parametrizations.weight.original0", "3.parametrizations.weight.original0"]
    assert dict(m.named_parameters())[scales[0]].shape == (4, 1, 1, 1)
    legacy = torch.nn.utils.weight_norm(nn.Linear(3, 2))
    assert optlab.selector("wn_scale").select(legacy) == ["weight_g"]
    with pytest.raises(ValueError, match="no Conv1d, Conv2d, Conv3d, Linear layer"):
        optlab.decouple(nn.Sequential(nn.ReLU()))


def test_sgd_ph_on_decoupled_net_uses_newton_for_scales():
    pb = make_problem("wn_conv")
    opt = optlab.optimizer("sgd-ph", pb.model, schedule="all")
    assert opt.param_groups[0]["param_names"] == [
        "0.parametrizations.weight.original0",
        "4.parametrizations.weight.original0",
    ]
    for _ in range(3):
        opt.step(pb.loss)
    assert all("hessian" in opt.state[p] for p in opt.param_groups[0]["params"])


def test_explain_prints_every_parameter(capsys):
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    m[2].weight.requires_grad_(False)
    rows = optlab.explain(m, "sgd-ph")
    out = capsys.readouterr().out
    assert [r["rule"] for r in rows] == ["rest", "rest", "channelwise", "channelwise", "(frozen)", "rest"]
    assert "1.weight" in out and "diag_newton" in out and "block_rademacher" in out


def test_diag_newton_rectify_modes_and_bias_correction():
    """Closed form of one diag_newton step on a single tensor with a known estimate."""

    p = nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    st = optlab.stepper("diag_newton")
    h = torch.tensor([-2.0, 0.5, 4.0], dtype=torch.float64)
    g = torch.tensor([0.3, -0.6, 0.9], dtype=torch.float64)
    for rectify, rect in [("abs", h.abs()), ("clip", h.clamp_min(0.25)), ("damping", h.clamp_min(0) + 0.1)]:
        for at in ("refresh", "use"):
            q = p.detach().clone()
            group = dict(
                lr=0.5,
                momentum=0.9,
                weight_decay=0.01,
                hessian_momentum=0.8,
                tau=1e-2,
                eps=1e-3,
                rectify=rectify,
                rectify_at=at,
                floor=0.25,
                damping=0.1,
                bias_correction="refreshes",
                bias_period=None,
            )
            st.step([q], [g], [{}], group, curvature=[h], rule_step=1)
            # one refresh: D_hat = D / (1 - 0.8) = h (signed, 'use') or r(h) ('refresh') -> same r(h)
            want = p.detach() - 0.5 * (1e-2 * g / (rect + 1e-3) + 0.01 * p.detach())
            torch.testing.assert_close(q, want, rtol=1e-12, atol=0, msg=f"{rectify}/{at}")


def test_create_graph_only_on_refresh_steps(monkeypatch):
    pb = make_problem("cnn_bn2d")
    opt = optlab.optimizer("sgd-ph", pb.model, schedule="all", every=3)
    seen = []
    real = torch.autograd.grad

    def spy(outputs, inputs, *args, **kwargs):
        if kwargs.get("create_graph"):
            seen.append(len(seen_steps))
        return real(outputs, inputs, *args, **kwargs)

    seen_steps = []
    monkeypatch.setattr(torch.autograd, "grad", spy)
    for _ in range(7):
        seen_steps.append(1)
        opt.step(pb.loss)
    assert seen == [1, 4, 7]


def test_func_engine_on_torch_weight_norm_says_what_to_do():
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    torch.nn.utils.parametrizations.weight_norm(m[0])
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    opt = optlab.optimizer("sgd-ph", m, engine="func", schedule="all")
    with pytest.raises(NotImplementedError, match=r"Use engine='autograd'.*optlab.decouple\(\)"):
        opt.step(lambda: F.cross_entropy(m(x), y))
    optlab.optimizer("sgd-ph", m, engine="autograd", schedule="all").step(lambda: F.cross_entropy(m(x), y))
    before = m(x)
    optlab.decouple(m)  # swaps torch's fused weight norm for the primitive-op one, same values
    torch.testing.assert_close(m(x), before)
    optlab.optimizer("sgd-ph", m, engine="func", schedule="all").step(lambda: F.cross_entropy(m(x), y))
