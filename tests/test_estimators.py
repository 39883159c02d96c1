"""Curvature estimators against dense float64 references; statistical tests for stochastic ones."""

import pytest
import torch
from torch import nn

import optlab
from optlab.builtins import estimators as E
from optlab.optim.hvp import get_engine
from optlab.testing import check_estimator, dense_ggn, dense_hessian, flat, make_problem

PROBLEMS = ("mlp_bn1d", "cnn_bn2d", "residual", "wn_linear", "wn_conv")


@pytest.mark.parametrize("hp", [{}, {"chunk_size": 2}])
def test_exact_diag_equals_dense_diagonal(hp):
    check_estimator(E.ExactDiag, hp, target="hessian_diag", problems=PROBLEMS, rtol=1e-8)


@pytest.mark.parametrize("hp", [{}, {"chunk_size": 5}])
def test_ggn_exact_diag_equals_dense_ggn_diagonal(hp):
    check_estimator(E.GGNExactDiag, hp, target="ggn_diag", problems=PROBLEMS, rtol=1e-8)


def test_ggn_exact_diag_mse():
    pb = make_problem("mlp_bn1d")
    pb.y = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    pb.loss_fn = torch.nn.functional.mse_loss
    names, params = pb.params(optlab.selector("channelwise"))
    ref = dense_ggn(pb.outputs, pb.y, params, loss="mse", model=pb.model).diagonal()
    ctx = get_engine("autograd").context(model=pb.model, closure=pb.closure, params=params, names=names)
    got = E.GGNExactDiag().estimate(ctx, [0, 1], {"loss": "mse", "chunk_size": None}, None)
    torch.testing.assert_close(flat([got[0], got[1]]), ref, rtol=1e-10, atol=1e-14)


def test_dense_ggn_is_the_hessian_for_a_linear_model():
    """Independent check of the GGN reference: for a linear model + CE, GGN == Hessian."""
    pb = make_problem("mlp_bn1d")
    pb.model = nn.Linear(5, 3).double()
    names, params = pb.params()
    torch.testing.assert_close(
        dense_ggn(pb.outputs, pb.y, params), dense_hessian(pb.loss, params), rtol=1e-10, atol=1e-14
    )


@pytest.mark.parametrize("engine", ["autograd", "func"])
def test_engines_give_same_estimates(engine):
    pb = make_problem("residual")
    names, params = pb.params(optlab.selector("channelwise"))
    ref_ctx = get_engine("autograd").context(model=pb.model, closure=pb.closure, params=params, names=names)
    ctx = get_engine(engine).context(model=pb.model, closure=pb.closure, params=params, names=names)
    idx = list(range(len(params)))
    for est, hp in [
        (E.ExactDiag(), {"chunk_size": None}),
        (E.GGNExactDiag(), {"loss": "cross_entropy", "chunk_size": 3}),
    ]:
        a, b = est.estimate(ref_ctx, idx, hp, None), est.estimate(ctx, idx, hp, None)
        for i in idx:
            torch.testing.assert_close(a[i], b[i], rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize(
    "cls,hp,target",
    [
        (E.BlockRademacher, {}, "hessian_rowsum"),
        (E.Hutchinson, {"probes": 2}, "hessian_diag"),
        (E.Hutchinson, {"probes": 1, "distribution": "gaussian"}, "hessian_diag"),
        (E.GGNMonteCarlo, {"samples": 2}, "ggn_diag"),
    ],
)
def test_stochastic_estimators_are_unbiased(cls, hp, target):
    check_estimator(cls, hp, target=target, draws=300, problems=("mlp_bn1d", "cnn_bn2d", "residual"))


def test_unbiasedness_check_catches_a_biased_estimator():
    """Negative control: the statistical check must fail for |z * Hz| (biased) ."""

    class AbsHutchinson(E.Hutchinson):
        def estimate(self, ctx, indices, group, generator):
            return {k: v.abs() for k, v in super().estimate(ctx, indices, group, generator).items()}

    with pytest.raises(AssertionError, match="biased"):
        check_estimator(AbsHutchinson, {"probes": 1}, target="hessian_diag", draws=300, problems=("cnn_bn2d",))


@pytest.mark.parametrize("cls,key", [(E.Hutchinson, "probes"), (E.GGNMonteCarlo, "samples")])
def test_variance_falls_as_one_over_probes(cls, key):
    pb = make_problem("cnn_bn2d")
    names, params = pb.params(optlab.selector("channelwise"))
    est = cls()
    idx = list(range(len(params)))
    variances = {}
    for n in (1, 4):
        hp = {k: s.default for k, s in est.hparams.items()} | {key: n}
        gen = torch.Generator().manual_seed(11)
        ctx = get_engine("autograd").context(model=pb.model, closure=pb.closure, params=params, names=names)
        draws = torch.stack([flat([est.estimate(ctx, idx, hp, gen)[i] for i in idx]) for _ in range(400)])
        variances[n] = draws.var(0).sum().item()
    ratio = variances[1] / variances[4]
    assert 3.2 < ratio < 5.0, ratio


def test_block_rademacher_on_one_tensor_is_the_signed_rowsum():
    pb = make_problem("cnn_bn2d")
    names, params = pb.params(optlab.selector("channelwise"))
    ctx = get_engine("autograd").context(model=pb.model, closure=pb.closure, params=params, names=names)
    gen = torch.Generator().manual_seed(0)
    got = E.BlockRademacher().estimate(ctx, [2], {}, gen)[2]
    want = E.RowsumHVP().estimate(ctx, [2], {"absolute": False}, None)[2]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_hutchinson_spatial_average():
    pb = make_problem("cnn_bn2d")
    names, params = pb.params(optlab.selector("regex", r"^3\.weight$"))  # conv weight (4,3,3,3)
    est = E.Hutchinson()
    base = {k: s.default for k, s in est.hparams.items()} | {"probes": 3}
    ctx = get_engine("autograd").context(model=pb.model, closure=pb.closure, params=params, names=names)
    plain = est.estimate(ctx, [0], base, torch.Generator().manual_seed(5))[0]
    avg = est.estimate(ctx, [0], base | {"spatial_average": True}, torch.Generator().manual_seed(5))[0]
    torch.testing.assert_close(avg, plain.mean(dim=(2, 3), keepdim=True).expand_as(plain))
    assert avg.shape == params[0].shape
    # 1-D tensors are untouched by spatial averaging
    assert torch.equal(E.spatial_average(torch.arange(3.0)), torch.arange(3.0))


def test_exact_diag_vmapped_equals_loop_of_single_hvps():
    pb = make_problem("mlp_bn1d")
    names, params = pb.params(optlab.selector("channelwise"))
    ctx = get_engine("autograd").context(model=pb.model, closure=pb.closure, params=params, names=names)
    p = params[0]
    loop = torch.stack(
        [ctx.hvp({0: e.reshape(p.shape)})[0].reshape(-1)[j] for j, e in enumerate(torch.eye(p.numel(), dtype=p.dtype))]
    )
    vm = E.ExactDiag().estimate(ctx, [0], {"chunk_size": None}, None)[0]
    torch.testing.assert_close(vm, loop, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ in the optimizer
@pytest.mark.parametrize("estimator", ["exact_diag", "block_rademacher", "hutchinson", "ggn_exact_diag", "ggn_mc"])
def test_every_estimator_runs_in_sgd_ph_and_resumes_bit_for_bit(estimator):
    import copy

    hp = dict(estimator=estimator, schedule="all", every=2)
    a = make_problem("cnn_bn2d")
    oa = optlab.optimizer("sgd-ph", a.model, seed=3, **hp)
    for _ in range(6):
        oa.step(a.closure)
    b = make_problem("cnn_bn2d")
    ob = optlab.optimizer("sgd-ph", b.model, seed=3, **hp)
    for _ in range(3):
        ob.step(b.closure)
    msd, osd = copy.deepcopy(b.model.state_dict()), copy.deepcopy(ob.state_dict())
    c = make_problem("cnn_bn2d", seed=9)
    c.x, c.y = a.x, a.y
    c.model.load_state_dict(msd)
    oc = optlab.optimizer("sgd-ph", c.model, seed=999, **hp)  # generator state comes from the checkpoint
    oc.load_state_dict(osd)
    for _ in range(3):
        oc.step(c.closure)
    for (n, x), y in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        assert torch.equal(x, y), n
    expected = "use" if optlab.estimator(estimator).stochastic else "refresh"
    assert oa.param_groups[0]["rectify_at"] == expected


@pytest.mark.parametrize("preset,hp", [("adahessian", {}), ("sophia", {}), ("sophia", {"estimator": "hutchinson"})])
def test_second_order_presets_train(preset, hp):
    pb = make_problem("cnn_bn2d")
    opt = optlab.optimizer(preset, pb.model, lr=0.05 if preset == "sophia" else 0.15, **hp)
    first = opt.step(pb.closure).item()
    for _ in range(30):
        last = opt.step(pb.closure).item()
    assert last < first
    assert opt.hvp_count + opt.vjp_count > 0


def test_gauss_newton_without_outputs_is_a_clear_error():
    pb = make_problem("cnn_bn2d")
    opt = optlab.optimizer("sgd-ph", pb.model, estimator="ggn_exact_diag")
    with pytest.raises(ValueError, match=r"needs the model outputs: make the closure return \(loss, outputs\)"):
        opt.step(pb.loss)


# ------------------------------------------------------------------ diagnostics
def test_diagnostics_on_a_diagonal_block_report_zero_offdiagonal_mass():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
    x = torch.randn(16, 5, dtype=torch.float64)
    df = optlab.diagnose(
        bn, (x, None), loss_fn=lambda out, y: out.pow(2).sum(0).mean(), estimators=("rowsum_hvp", "hutchinson")
    )
    assert list(df["tensor"]) == ["weight", "bias", "(all selected)"]
    assert (df["offdiag_frob_mass"].abs() < 1e-12).all()
    assert (df["rowsum_hvp_relerr"] < 1e-10).all()  # diagonal block: row sums are the diagonal


def test_diagnostics_on_a_cnn_report_offdiagonal_mass_and_costs():
    pb = make_problem("cnn_bn2d")
    buffers = {n: b.clone() for n, b in pb.model.named_buffers()}
    df = optlab.diagnose(pb.model, (pb.x, pb.y))
    assert df["offdiag_frob_mass"].max() > 0.05
    assert (df["exact_diag_products"] == df["size"]).all()
    n_tensors = (df["tensor"] != "(all selected)").sum()
    assert df.set_index("tensor").loc["(all selected)", "rowsum_hvp_products"] == n_tensors
    assert df.set_index("tensor").loc["(all selected)", "block_rademacher_products"] == 1
    for n, b in pb.model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    fig = optlab.diagnostics.plot_diagnostics(df)
    assert len(fig.axes) == 2


def test_diagnostics_bad_input():
    pb = make_problem("cnn_bn2d")
    with pytest.raises(ValueError, match=r"dense block of '1.weight' has 3 rows, more than max_block=2"):
        optlab.diagnose(pb.model, (pb.x, pb.y), max_block=2)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        optlab.diagnose(pb.model, (pb.x, pb.y), selector="wn_scale")
    with pytest.raises(ValueError, match="loss must be a scalar"):
        optlab.diagnose(pb.model, (pb.x, pb.y), loss_fn=lambda o, y: o.sum(1))
