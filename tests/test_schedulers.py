"""Every scheduler of torch.optim.lr_scheduler with every preset (issue 15 item 3).

The reference is a torch optimizer with the same ``defaults`` keys (SGD for
presets with ``momentum``, Adam for presets with ``betas``) driven by the same
scheduler: the learning rates and cycled momenta of every preset group must
follow its trajectory exactly; for the ``sgd`` preset the parameters must equal
torch.optim.SGD's bit for bit.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler as L

import optlab
from optlab.testing import make_problem

PRESETS = ("sgd", "sgd-ph", "sgd-ph-reference", "adahessian", "sophia")
STEPS = 7

SCHEDULERS = {
    "LambdaLR": lambda o: L.LambdaLR(o, lambda e: 0.9**e),
    "MultiplicativeLR": lambda o: L.MultiplicativeLR(o, lambda e: 0.95),
    "StepLR": lambda o: L.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: L.MultiStepLR(o, milestones=[2, 4], gamma=0.3),
    "ConstantLR": lambda o: L.ConstantLR(o, factor=0.5, total_iters=3),
    "LinearLR": lambda o: L.LinearLR(o, start_factor=0.2, total_iters=4),
    "ExponentialLR": lambda o: L.ExponentialLR(o, gamma=0.8),
    "SequentialLR": lambda o: L.SequentialLR(
        o, [L.ConstantLR(o, factor=0.5, total_iters=2), L.ExponentialLR(o, gamma=0.9)], milestones=[2]
    ),
    "CosineAnnealingLR": lambda o: L.CosineAnnealingLR(o, T_max=5),
    "ChainedScheduler": lambda o: L.ChainedScheduler([L.StepLR(o, 2, 0.5), L.ExponentialLR(o, 0.9)]),
    "ReduceLROnPlateau": lambda o: L.ReduceLROnPlateau(o, patience=0, factor=0.5),
    "CyclicLR": lambda o: L.CyclicLR(
        o, base_lr=1e-3, max_lr=1e-2, step_size_up=2, cycle_momentum=True, base_momentum=0.8, max_momentum=0.9
    ),
    "CosineAnnealingWarmRestarts": lambda o: L.CosineAnnealingWarmRestarts(o, T_0=2),
    "OneCycleLR": lambda o: L.OneCycleLR(o, max_lr=1e-2, total_steps=STEPS + 1, cycle_momentum=True),
    "PolynomialLR": lambda o: L.PolynomialLR(o, total_iters=4, power=2.0),
}


def test_every_scheduler_class_is_covered():
    """LRScheduler is the abstract base (its get_lr raises); every concrete one is tested."""
    concrete = {n for n in L.__all__ if n != "LRScheduler"}
    assert concrete == set(SCHEDULERS), concrete ^ set(SCHEDULERS)


def _reference(opt, params):
    d = opt.defaults
    if "momentum" in d:
        return torch.optim.SGD(params, lr=d["lr"], momentum=d["momentum"])
    return torch.optim.Adam(params, lr=d["lr"], betas=tuple(d["betas"]))


def _trajectory(opt):
    out = []
    for g in opt.param_groups:
        out.append((g["lr"], g.get("momentum"), tuple(g["betas"]) if "betas" in g else None))
    return out


@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("name", PRESETS)
def test_scheduler_drives_every_group_of_every_preset(name, sched):
    a, b = make_problem("mlp_bn1d"), make_problem("mlp_bn1d")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optlab.optimizer(name, a.model, seed=0)
    assert "lr" in opt.defaults and ("momentum" in opt.defaults or "betas" in opt.defaults)
    ref = _reference(opt, b.model.parameters())
    s_opt, s_ref = SCHEDULERS[sched](opt), SCHEDULERS[sched](ref)
    before = [p.detach().clone() for p in a.model.parameters()]
    seen = set()
    for _ in range(STEPS):
        loss = opt.step(lambda: (F.cross_entropy(out := a.model(a.x), a.y), out))
        ref.zero_grad()
        b.loss().backward()
        ref.step()
        if sched == "ReduceLROnPlateau":
            s_opt.step(1.0)
            s_ref.step(1.0)
        else:
            s_opt.step()
            s_ref.step()
        want = _trajectory(ref)[0]
        for got in _trajectory(opt):
            assert got[0] == want[0]
            if want[1] is not None:
                assert got[1] == want[1]
            if want[2] is not None:
                assert got[2] == want[2]
        seen.add(want[0])
        assert torch.isfinite(loss)
    assert len(seen) > 1  # the schedule did change the learning rate
    assert any(not torch.equal(p, q) for p, q in zip(before, a.model.parameters()))
    if name == "sgd":  # the schedule reaches the update: torch.optim.SGD bit for bit
        assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_defaults_hold_only_hyperparameters_every_group_has():
    m = make_problem("mlp_bn1d").model
    d = optlab.optimizer("sgd-ph", m).defaults
    assert {"lr", "momentum", "weight_decay"} <= set(d) and "tau" not in d and "params" not in d
    assert set(optlab.optimizer("adahessian", m).defaults) >= {"lr", "betas"}
