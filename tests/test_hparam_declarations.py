"""Hyperparameters declared once, per part: clashes between parts, the schedule's period as a
documented stepper argument, forwarded options that no part of the preset takes, one optimizer entry."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import optlab
from optlab import api
from optlab.optim.hparams import nonneg, positive_int
from optlab.optim.rules import CurvatureEstimator, Rule, Schedule, Stepper, partition
from optlab.optim.selectors import rest
from optlab.plugin import registry
from optlab.plugin.hookspecs import hookimpl


class _LrEstimator(CurvatureEstimator):
    """Declares ``lr``, which the SGD stepper declares too."""

    name = "lr_estimator"
    hparams = {"lr": nonneg(0.5)}

    def estimate(self, ctx, indices, group, generator):
        return {i: torch.ones_like(ctx.params[i]) for i in indices}


class _EveryEstimator(_LrEstimator):
    """Declares ``every``, which the refresh schedule declares."""

    name = "every_estimator"
    hparams = {"every": positive_int(3)}


class _PeriodStepper(Stepper):
    """Records the schedule it is given (``needs_schedule``)."""

    name = "period_probe"
    needs_curvature = True
    needs_schedule = True
    hparams = {"lr": nonneg(0.1)}
    seen: list = []

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0, schedule=None):
        type(self).seen.append(schedule)


class _Plugin:
    @staticmethod
    @hookimpl
    def optlab_register_estimators(register):
        register("lr_estimator", _LrEstimator)
        register("every_estimator", _EveryEstimator)

    @staticmethod
    @hookimpl
    def optlab_register_steppers(register):
        register("period_probe", _PeriodStepper)


@pytest.fixture
def tiny_plugin():
    registry.reset()
    registry.register_plugin(_Plugin, "tiny-declarations")
    yield
    registry.reset()


def _model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.parametrize(
    "estimator, match",
    [
        ("lr_estimator", r"'lr' is declared by both stepper 'sgd' and estimator 'lr_estimator'"),
        ("every_estimator", r"'every' is declared by both estimator 'every_estimator' and the refresh schedule"),
    ],
)
def test_a_name_declared_by_two_parts_of_a_rule_names_both_owners(tiny_plugin, estimator, match):
    rule = Rule("all", rest(), api.estimator(estimator), api.stepper("sgd"), {}, schedule=Schedule(1, "all"))
    with pytest.raises(ValueError, match=match):
        partition(_model(), [rule])


def test_a_stepper_gets_the_schedules_period_through_its_schedule_argument(tiny_plugin):
    model = _model()
    rules = [Rule("rr", rest(), api.estimator("rowsum_hvp"), _PeriodStepper(), {}, schedule=Schedule(1, "round_robin"))]
    opt = optlab.RuleOptimizer(model, rules)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    _PeriodStepper.seen.clear()
    opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    (sched,) = _PeriodStepper.seen
    n = len(list(model.parameters()))
    assert sched == Schedule(1, "round_robin", period=n)  # period unset: resolved to the number of tensors
    assert "period" not in _PeriodStepper.hparams  # the stepper does not declare the schedule's name


def test_sgd_ph_reference_bias_period_falls_back_to_the_schedule_period():
    """diag_newton's ``bias_correction="reference"`` reads P from ``schedule=``; unset
    ``bias_period`` and an explicit one equal to the round-robin period give the same steps."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    finals = []
    for bias_period in (None, 4):  # 4 one-dimensional tensors share the round-robin; 3 take Newton steps
        torch.manual_seed(1)
        model = _model()
        one_d = [n for n, p in model.named_parameters() if p.dim() == 1]
        m = len(one_d)
        hp = dict(
            lr=0.1, hessian_momentum=0.9, rectify_at="refresh", bias_correction="reference", bias_period=bias_period
        )
        rules = [
            Rule(
                "newton",
                api.selector("names", *one_d[:-1]),
                api.estimator("rowsum_hvp"),
                api.stepper("diag_newton"),
                hp,
                schedule=Schedule(1, "round_robin", period=m),
            ),
            Rule("rest", rest(), None, api.stepper("sgd"), dict(lr=0.1)),
        ]
        opt = optlab.RuleOptimizer(model, rules)
        for _ in range(6):
            opt.step(lambda model=model: nn.functional.cross_entropy(model(x), y))
        finals.append([p.detach().clone() for p in model.parameters()])
    assert m == 4
    for a, b in zip(*finals):
        assert torch.equal(a, b)


def test_an_estimator_option_without_its_estimator_names_the_owner_and_how_to_pick_it():
    with pytest.raises(
        TypeError,
        match=r"sgd-ph with estimator 'block_rademacher' has no hyperparameter 'probes': probes belongs to "
        r"estimator 'hutchinson'.*estimator='hutchinson' \(command line: --hp estimator=hutchinson\)",
    ):
        optlab.optimizer("sgd-ph", _model(), probes=4)
    optlab.optimizer("sgd-ph", _model(), estimator="hutchinson", probes=4)  # picked: fine
    with pytest.raises(TypeError, match=r"unknown hyperparameter 'probez'.*Did you mean 'probes'|Valid: .*tau"):
        optlab.optimizer("sgd-ph", _model(), probez=4)


def test_cli_train_says_which_estimator_owns_probes():
    out = subprocess.run(
        [sys.executable, "-m", "optlab.cli", "train", "--optimizer", "sgd-ph", "--model", "mlp-bn", "--epochs", "1"]
        + ["--hp", "probes=4"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "OPTLAB_NO_PROGRESS": "1"},
    )
    assert out.returncode != 0
    assert "probes belongs to estimator 'hutchinson'" in out.stdout + out.stderr
    assert "--hp estimator=hutchinson" in out.stdout + out.stderr


def test_optimizer_entry_describes_presets_and_baselines():
    ph = api.optimizer_entry("sgd-ph")
    assert ph.kind == "preset" and ph.plugin == "builtins" and ph.takes_engine and ph.open_hparams
    assert ph.defaults["every"] == 50 and ph.defaults["estimator"] == "block_rademacher"
    assert not ph.create_graph and "forward-only" in ph.closure_styles
    sgd = api.optimizer_entry("torch-sgd")
    assert sgd.kind == "baseline" and not sgd.takes_engine and not sgd.open_hparams
    assert sgd.defaults == {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}
    with pytest.raises(TypeError, match=r"torch-sgd: unknown hyperparameter 'lrr'. Did you mean 'lr'"):
        sgd.check_names({"lrr": 1})
    with pytest.raises(registry.RegistryError, match=r"unknown optimizer 'sgd-hp'.*Did you mean 'sgd-ph'"):
        api.optimizer_entry("sgd-hp")


#: every built-in preset's declared hyperparameters before defaults were declared once (the preset
#: signatures of commit 4cec204): records' ``hparams_resolved`` must not change
PRESET_DEFAULTS_BEFORE = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    "sgd-scaled": {
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "nesterov": False,
        "channelwise_lr_scale": 0.1,
        "selector": "channelwise",
    },
    "sgd-frozen": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False, "selector": "channelwise"},
    "sgd-ph": {
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "hessian_momentum": 0.9,
        "tau": 0.001,
        "eps": 0.0001,
        "every": 50,
        "schedule": "all",
        "estimator": "block_rademacher",
        "rectify": "abs",
        "rectify_at": None,
        "selector": "channelwise",
        "nesterov": False,
    },
    "sgd-ph-reference": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "eps": 0.0001, "tau": 0.001},
    "adahessian": {
        "lr": 0.15,
        "betas": (0.9, 0.999),
        "eps": 0.0001,
        "weight_decay": 0.0,
        "hessian_power": 1.0,
        "probes": 1,
        "every": 1,
        "spatial_average": True,
    },
    "sophia": {
        "lr": 0.001,
        "betas": (0.965, 0.99),
        "rho": 0.04,
        "eps": 1e-15,
        "weight_decay": 0.1,
        "every": 10,
        "estimator": "ggn_mc",
        "samples": 1,
        "probes": 1,
    },
}


@pytest.mark.parametrize("name", sorted(PRESET_DEFAULTS_BEFORE))
def test_part_defaults_resolve_to_the_former_preset_defaults(name):
    new = api.optimizer_entry(name).hparams
    old = PRESET_DEFAULTS_BEFORE[name]
    assert list(new.items()) == list(old.items())
    assert [type(v) for v in new.values()] == [type(v) for v in old.values()]
    assert api.preset_hparams(name) == old


def test_a_part_default_no_part_declares_is_a_clear_error():
    from optlab.optim.hparams import PART_DEFAULT, defaults_from

    @defaults_from(("stepper", "sgd"))
    def broken(model, lr=PART_DEFAULT, tau=PART_DEFAULT):
        return [Rule("all", rest(), None, api.stepper("sgd"), {})]

    class _P:
        @staticmethod
        @hookimpl
        def optlab_register_presets(register):
            register("broken-defaults", broken)

    registry.reset()
    registry.register_plugin(_P, "broken-defaults")
    try:
        with pytest.raises(registry.RegistryError, match=r"broken-defaults: tau=PART_DEFAULT.*stepper 'sgd'"):
            api.optimizer_entry("broken-defaults")
    finally:
        registry.reset()


def test_cli_plugins_hparams_lists_each_optimizers_declared_defaults(capsys):
    from optlab.cli import main

    assert main(["plugins", "--hparams"]) == 0
    out = capsys.readouterr().out.split("optimizer hyperparameters", 1)[1]
    joined = " ".join(line.strip() for line in out.splitlines())
    assert "sgd-ph (preset): lr=0.1, momentum=0.9, weight_decay=0.0, hessian_momentum=0.9, tau=0.001" in joined
    assert "pto-adahessian (baseline; steps need a double-backward graph): lr=0.15" in joined
