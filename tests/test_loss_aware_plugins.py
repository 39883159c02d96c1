"""Perturbed-parameter evaluations for estimators (ctx.loss_and_grad_at, both engines), the step's
loss for steppers (needs_loss), and the worked example built on them: a finite-difference H_kk 1
estimator and a Levenberg-damped stepper (plugins/optlab-fisher)."""

import copy
import sys
from pathlib import Path

import pytest
import torch

import optlab
from optlab.optim.hvp import get_engine
from optlab.plugin import registry
from optlab.testing import check_estimator, check_stepper, make_problem
from optlab.training.config import RunConfig
from optlab.training.loop import train

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins" / "optlab-fisher"))
from optlab_fisher import plugin as fisher  # noqa: E402


@pytest.fixture
def fisher_registered():
    registry.reset()
    registry.register_plugin(fisher, "fisher")
    yield
    registry.reset()


def _reference_loss_and_grad(pb, names, deltas):
    """The same evaluation on a deep copy whose parameters are moved for real."""
    m = copy.deepcopy(pb.model)
    ps = dict(m.named_parameters())
    with torch.no_grad():
        for n, d in deltas.items():
            ps[n].add_(d)
    with optlab.optim.hvp.frozen_batchnorm_stats(m):
        loss = pb.loss_fn(m(pb.x), pb.y)
    gs = torch.autograd.grad(loss, [ps[n] for n in deltas])
    return loss.detach(), dict(zip(deltas, gs))


@pytest.mark.parametrize("engine", ["autograd", "func"])
def test_loss_and_grad_at_perturbed_parameters(engine):
    pb = make_problem("cnn_bn2d")
    names, params = pb.params(optlab.selector("channelwise"))
    before = {k: v.clone() for k, v in pb.model.state_dict().items()}

    ctx = get_engine(engine).context(model=pb.model, closure=pb.loss, params=params, names=names)
    g = torch.Generator().manual_seed(0)
    deltas = {
        0: 0.1 * torch.randn(params[0].shape, generator=g, dtype=params[0].dtype),
        3: 0.1 * torch.randn(params[3].shape, generator=g, dtype=params[3].dtype),
    }
    loss, grads = ctx.loss_and_grad_at(deltas)
    want_loss, want = _reference_loss_and_grad(pb, names, {names[i]: d for i, d in deltas.items()})
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=0)
    assert set(grads) == {0, 3}
    for i in deltas:
        torch.testing.assert_close(grads[i], want[names[i]], rtol=1e-10, atol=1e-14)
    only_loss, none = ctx.loss_and_grad_at({0: deltas[0]}, grad=False)
    assert none == {} and ctx.eval_count == 2 and only_loss.shape == ()
    for k, v in pb.model.state_dict().items():  # parameters and BatchNorm buffers untouched
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in pb.model.parameters())


def test_finite_differences_inside_the_optimizer_with_a_torch_standard_closure(fisher_registered):
    """The closure's own backward() is intercepted on the perturbed evaluations: the same run
    as with a forward-only closure."""
    runs = []
    for style in ("forward_only", "torch_standard"):
        pb = make_problem("mlp_bn1d")
        opt = optlab.optimizer("sgd-lm", pb.model)

        def closure():
            if style == "forward_only":
                return pb.loss()
            opt.zero_grad()
            loss = pb.loss()
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        runs.append([p.detach().clone() for p in pb.model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_loss_and_grad_at_needs_a_closure_and_matching_shapes():
    pb = make_problem("mlp_bn1d")
    names, params = pb.params(optlab.selector("channelwise"))
    ctx = get_engine("autograd").context(model=pb.model, closure=pb.loss, params=params, names=names)
    with pytest.raises(
        ValueError, match=r"perturbation of '1.weight' must be a tensor of shape \(6,\); got Tensor \(5,\)"
    ):
        ctx.loss_and_grad_at({0: torch.zeros(5, dtype=torch.float64)})
    ctx._closure = None
    with pytest.raises(ValueError, match="re-runs the step's closure, and this step has none"):
        ctx.loss_and_grad_at({0: torch.zeros(6, dtype=torch.float64)})


@pytest.mark.parametrize("engine", ["autograd", "func"])
def test_finite_difference_rowsum_passes_the_conformance_kit(engine):
    check_estimator(fisher.FiniteDifferenceRowsum, {"absolute": False}, rtol=1e-6, engine=engine)
    check_estimator(fisher.FiniteDifferenceRowsum, problems=("mlp_bn1d",), rtol=1e-6, engine=engine)  # |H_kk 1|


def test_levenberg_stepper_passes_the_conformance_kit_and_adapts_its_damping_to_the_loss():
    check_stepper(fisher.LevenbergNewton)
    st = fisher.LevenbergNewton()
    group = {k: v.default for k, v in st.hparams.items()}
    p, g = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    state = {}
    lambdas = []
    for loss in (1.0, 2.0, 3.0, 1.0):  # up, up, down
        st.step([p], [g], [state], group, curvature=[None], rule_step=1, loss=torch.tensor(loss))
        lambdas.append(state["lambda"])
    assert lambdas == [1.0, 2.0, 4.0, 3.6]
    torch.testing.assert_close(p, -(1 / 1.0 + 1 / 2.0 + 1 / 4.0 + 1 / 3.6) * g)  # D = 0: steps lr * g / lambda


def test_the_step_loss_reaches_loss_aware_steppers_and_its_absence_is_a_clear_error(fisher_registered):
    pb = make_problem("mlp_bn1d")
    opt = optlab.optimizer("sgd-lm", pb.model, every=2)  # refreshes on steps 1, 3, 5, ...
    seen = []
    orig = fisher.LevenbergNewton.step

    def spy(self, *a, loss=None, **k):
        seen.append(float(loss))
        return orig(self, *a, loss=loss, **k)

    fisher.LevenbergNewton.step = spy
    try:
        returned = [float(opt.step(pb.loss)) for _ in range(3)]
    finally:
        fisher.LevenbergNewton.step = orig
    assert seen == returned
    pb.loss().backward(create_graph=opt.needs_graph())  # step 4: no refresh, but the stepper needs the loss
    with pytest.raises(RuntimeError, match=r"stepper 'levenberg_newton' of rule 'channelwise' needs the step's loss"):
        opt.step()
    opt.zero_grad()
    opt.rule_state("channelwise")["step"] = 4
    pb.loss().backward(create_graph=opt.needs_graph())  # step 5 refreshes: finite differences need a closure
    with pytest.raises(ValueError, match=r"loss_and_grad_at\(\) re-runs the step's closure"):
        opt.step()


def test_a_plugin_with_a_finite_difference_estimator_and_a_loss_aware_stepper_trains(fisher_registered, monkeypatch):
    monkeypatch.setenv("OPTLAB_STRICT_PLUGINS", "1")  # validation of both items must pass, not be skipped
    assert {"fd_rowsum", "empirical_fisher_diag"} <= set(registry.items("estimator"))
    assert "levenberg_newton" in registry.items("stepper")
    for engine in ("autograd", "func"):
        res = train(
            RunConfig(
                task="digits",
                model="mlp-bn",
                optimizer="sgd-lm",
                epochs=3,
                batch_size=128,
                model_options={"width": 32},
                engine=engine,
                seed=0,
            ),
            progress=False,
        )
        assert res["status"] == "ok", res["error"]
        m = res["metrics"]
        assert m[-1]["train_loss"] < 0.5 * m[0]["train_loss"] and m[-1]["val_acc"] > 0.85, m
        assert set(m[-1]["lrs"]) == {"channelwise", "rest"}
