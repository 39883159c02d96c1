"""The plugin API: registry behaviour, documented hooks, validation, conformance of every built-in,
and the example third-party package installed for real."""

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from plugin_site import pip_install_to_site, site_env

import optlab
from optlab.plugin import hookspecs, registry
from optlab.plugin.hookspecs import hookimpl
from optlab.plugin.registration import PluginError
from optlab.plugin.registry import RegistryError
from optlab.testing import ESTIMATOR_TARGETS, check_estimator, check_selector, check_stepper, check_stepper_formula

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("optlab_register_")]


@pytest.fixture
def fresh_registry():
    registry.reset()
    yield
    registry.reset()


# ------------------------------------------------------------------ hooks are documented
def test_every_hook_is_documented_with_its_signature():
    doc = (ROOT / "docs" / "plugin-hooks.md").read_text()
    documented = set(re.findall(r"^### `(optlab_register_\w+)\((.*?)\)`", doc, flags=re.M))
    actual = {(n, ", ".join(inspect.signature(getattr(hookspecs, n)).parameters)) for n in HOOKS}
    assert actual == documented, f"hooks vs docs/plugin-hooks.md differ: {actual ^ documented}"
    for n in HOOKS:
        d = inspect.getdoc(getattr(hookspecs, n)) or ""
        assert "register(" in d and "Example::" in d, f"{n}: docstring must say what to register and show an example"
    assert set(registry.KINDS.values()) == set(HOOKS)


def test_the_hook_reference_is_generated_from_the_hookspecs():
    from optlab.plugin import hookdocs

    assert set(f.__name__ for f in hookdocs.hooks()) == set(HOOKS)
    assert (ROOT / "docs" / "plugin-hooks.md").read_text() == hookdocs.render(), (
        "docs/plugin-hooks.md is stale: run `python -m optlab.plugin.hookdocs > docs/plugin-hooks.md`"
    )


def test_builtins_come_through_the_entry_point():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="optlab")}
    assert eps.get("builtins") == "optlab.builtins"
    assert registry.items("preset")["sgd-ph"].plugin == "builtins"


# ------------------------------------------------------------------ registry behaviour
class _Dup:
    @hookimpl
    def optlab_register_presets(register):
        register("sgd-ph", lambda model: [])


def test_a_shared_short_name_loads_and_fails_only_where_it_is_used(fresh_registry):
    registry.register_plugin(_Dup, "dupe-plugin")
    assert registry.items("preset")["builtins:sgd-ph"].plugin == "builtins"  # loading is fine
    assert registry.items("preset")["dupe-plugin:sgd-ph"].plugin == "dupe-plugin"
    assert registry.clashes()[("preset", "sgd-ph")] == ["builtins:sgd-ph", "dupe-plugin:sgd-ph"]
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(
        registry.AmbiguousName,
        match=r"optimizer 'sgd-ph' is ambiguous: 2 plugins provide it\. Use a qualified name: "
        r"builtins:sgd-ph, dupe-plugin:sgd-ph",
    ):
        optlab.optimizer("sgd-ph", model)
    assert isinstance(optlab.optimizer("builtins:sgd-ph", model), optlab.RuleOptimizer)
    assert optlab.optimizer("sgd", model).defaults["lr"] > 0  # names nobody shares are unaffected
    assert "builtins:sgd-ph" in optlab.optimizer_names() and "sgd-ph" not in optlab.optimizer_names()


def test_one_plugin_registering_a_name_twice_is_an_error(fresh_registry):
    class Twice:
        @hookimpl
        def optlab_register_presets(register):
            register("twice", lambda model: [])
            register("twice", lambda model: [])

    registry.register_plugin(Twice, "twice-plugin")
    with pytest.raises(RegistryError, match=r"plugin 'twice-plugin' registered preset 'twice' twice"):
        registry.items("preset")


@pytest.mark.parametrize(
    "name,match",
    [
        ("nope:sgd-ph", r"no plugin 'nope' is loaded, so no optimizer 'sgd-ph'; provided by: builtins:sgd-ph\."),
        ("builtins:sgd-pj", r"unknown optimizer of plugin 'builtins': 'sgd-pj'\. Did you mean 'sgd-ph'\?"),
        ("nope:zzz", r"unknown plugin 'nope' in optimizer name 'nope:zzz'\. Plugins with optimizers: builtins"),
        ("sgd-pj", r"unknown optimizer 'sgd-pj'\. Did you mean 'sgd-ph'\?"),
    ],
)
def test_bad_qualified_names_say_what_exists(fresh_registry, name, match):
    with pytest.raises(RegistryError, match=match):
        optlab.optimizer(name, torch.nn.Linear(2, 2))


def test_item_names_with_the_separator_are_rejected(fresh_registry, monkeypatch):
    class Colon:
        @hookimpl
        def optlab_register_presets(register):
            register("a:b", lambda model: [])

    monkeypatch.delenv("OPTLAB_STRICT_PLUGINS", raising=False)
    registry.register_plugin(Colon, "colon")
    with pytest.warns(RuntimeWarning, match=r"plugin 'colon': preset 'a:b' rejected: a name must not contain ':'"):
        assert "a:b" not in registry.items("preset") and "colon:a:b" not in registry.items("preset")


class _BadShape:
    class Est(optlab.CurvatureEstimator):
        name = "bad"
        hparams = {}

        def estimate(self, ctx, indices, group, generator):
            return {i: torch.zeros(3) for i in indices}

    @hookimpl
    def optlab_register_estimators(register):
        register("bad_shape", _BadShape.Est)


class _NoMethod:
    class St(optlab.Stepper):
        name = "nometh"
        hparams = {}

    @hookimpl
    def optlab_register_steppers(register):
        register("no_step", _NoMethod.St)


class _WrongSig:
    class St(optlab.Stepper):
        name = "wrongsig"
        hparams = {}

        def step(self, params, grads):
            pass

    @hookimpl
    def optlab_register_steppers(register):
        register("wrong_sig", _WrongSig.St)


@pytest.mark.parametrize(
    "plugin,match",
    [
        (_BadShape, r"plugin 'p': estimator 'bad_shape' rejected: estimate\(\) returned Tensor \(3,\) torch.float32"),
        (_NoMethod, r"plugin 'p': stepper 'no_step' rejected: does not implement step\(\)"),
        (
            _WrongSig,
            r"plugin 'p': stepper 'wrong_sig' rejected: step\(self, params, grads\) lacks argument\(s\) \['states', 'group'\]",  # noqa: E501
        ),
    ],
)
def test_bad_plugin_items_are_rejected_at_registration(fresh_registry, monkeypatch, plugin, match):
    monkeypatch.setenv("OPTLAB_STRICT_PLUGINS", "1")
    registry.register_plugin(plugin, "p")
    with pytest.raises(PluginError, match=match):
        registry.items("estimator")


def test_a_rejected_item_is_skipped_with_a_warning_unless_strict(fresh_registry, monkeypatch):
    monkeypatch.delenv("OPTLAB_STRICT_PLUGINS", raising=False)
    registry.register_plugin(_BadShape, "p")
    with pytest.warns(RuntimeWarning, match=r"plugin 'p': estimator 'bad_shape' rejected: .* -- skipped"):
        estimators = registry.items("estimator")
    assert "bad_shape" not in estimators and "rowsum_hvp" in estimators
    assert any("bad_shape" in e for e in registry.load_errors())
    with pytest.raises(RegistryError, match=r"unknown estimator 'bad_shape'"):
        registry.get("estimator", "bad_shape")


BAD_ITEM_PLUGIN = """
import torch
import optlab

class WrongShape(optlab.CurvatureEstimator):
    \"\"\"Returns a (3,) tensor whatever the parameter.\"\"\"
    name = "wrong_shape"

    def estimate(self, ctx, indices, group, generator):
        return {i: torch.zeros(3) for i in indices}

@optlab.hookimpl
def optlab_register_estimators(register):
    register("wrong_shape", WrongShape)
"""


def _install_fake_dist(site: Path, dist: str, ep_name: str, module: str, source: str) -> None:
    """A real installed distribution (dist-info with an ``optlab`` entry point) on a PYTHONPATH folder."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[optlab]\n{ep_name} = {module}\n")
    (site / f"{module}.py").write_text(source)


def test_a_plugin_item_that_fails_validation_is_skipped_by_every_command_unless_strict(tmp_path):
    site = tmp_path / "site"
    _install_fake_dist(site, "bad_item_plugin", "baditem", "bad_item_mod", BAD_ITEM_PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(site), "OPTLAB_NO_PROGRESS": "1"}
    env.pop("OPTLAB_STRICT_PLUGINS", None)
    rejected = r"plugin 'baditem': estimator 'wrong_shape' rejected: estimate\(\) returned Tensor \(3,\)"
    out = subprocess.run([sys.executable, "-m", "optlab.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "sgd-ph" in out.stdout and "wrong_shape" not in out.stdout, out.stderr
    assert re.search(rejected, out.stderr) and "skipped" in out.stderr, out.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "optlab.cli",
            "train",
            "--optimizer",
            "sgd",
            "--task",
            "digits",
            "--model",
            "mlp-bn",
            "--epochs",
            "1",
            "--batch-size",
            "256",
            "--out",
            str(tmp_path / "run.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert re.search(rejected, run.stderr)
    for strict_env, args in (({"OPTLAB_STRICT_PLUGINS": "1"}, ["plugins"]), ({}, ["--strict", "plugins"])):
        strict = subprocess.run(
            [sys.executable, "-m", "optlab.cli", *args], env={**env, **strict_env}, capture_output=True, text=True
        )
        assert strict.returncode == 2 and re.search(rejected, strict.stderr), strict.stderr


def test_a_plugin_that_fails_to_import_is_skipped_or_fatal_with_strict(tmp_path):
    pkg = tmp_path / "site"
    (pkg / "broken_plugin-0.1.dist-info").mkdir(parents=True)
    (pkg / "broken_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n"
    )
    (pkg / "broken_plugin-0.1.dist-info" / "entry_points.txt").write_text("[optlab]\nbroken = broken_mod\n")
    (pkg / "broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    out = subprocess.run([sys.executable, "-m", "optlab.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "sgd-ph" in out.stdout
    assert "plugin 'broken' (broken_mod) failed to load: RuntimeError: boom at import" in out.stderr
    strict = subprocess.run(
        [sys.executable, "-m", "optlab.cli", "--strict", "plugins"], env=env, capture_output=True, text=True
    )
    assert strict.returncode != 0 and "boom at import" in strict.stderr
    off = subprocess.run(
        [sys.executable, "-m", "optlab.cli", "plugins"],
        capture_output=True,
        text=True,
        env={**env, "OPTLAB_DISABLE_ENTRYPOINTS": "1"},
    )
    assert off.returncode == 0 and "boom" not in off.stderr and "sgd-ph" in off.stdout


def test_trace_hooks_switch(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "optlab.cli", "plugins"],
        capture_output=True,
        text=True,
        env={**os.environ, "OPTLAB_TRACE_HOOKS": "1"},
    )
    assert "optlab_register_presets" in out.stderr


# ------------------------------------------------------------------ conformance of every built-in
@pytest.mark.parametrize("name", sorted(n for n, e in registry.items("estimator").items() if e.plugin == "builtins"))
def test_builtin_estimators_pass_the_conformance_kit(name):
    cls = registry.get("estimator", name)
    assert cls.target in ESTIMATOR_TARGETS, f"{name}: declare what it estimates (target)"
    hp = {"absolute": False} if "absolute" in cls.hparams else {}
    check_estimator(
        cls,
        hp,
        draws=600 if cls.stochastic else 0,
        problems=("mlp_bn1d", "wn_linear") if cls.stochastic else ("mlp_bn1d", "cnn_bn2d", "residual", "wn_linear"),
    )


# Each built-in stepper's update written out from its docstring / paper, independently of its code.
def _rectify(x, mode, floor, damping):
    return {"abs": x.abs(), "clip": x.clamp_min(floor), "damping": x.clamp_min(0) + damping}[mode]


def sgd_reference(p, g, h, st, grp, *, step, **_):
    """torch.optim.SGD: d = g + wd p; b = d, then mom b + (1 - damp) d; d = d + mom b (nesterov) or b."""
    d = g + grp["weight_decay"] * p
    if grp["momentum"]:
        st["b"] = d.clone() if step == 1 else grp["momentum"] * st["b"] + (1 - grp["dampening"]) * d
        d = d + grp["momentum"] * st["b"] if grp["nesterov"] else st["b"]
    return p - grp["lr"] * d


def diag_newton_reference(p, g, h, st, grp, *, step, schedule, num_tensors, **_):
    """SGD-PH's 1-D rule (arXiv:2403.02681, Alg. 1) with the documented rectification and bias corrections."""
    beta, tau, eps = grp["hessian_momentum"], grp["tau"], grp["eps"]

    def r(x):
        return _rectify(x, grp["rectify"], grp["floor"], grp["damping"])

    if h is not None:
        st["D"] = beta * st.get("D", torch.zeros_like(p)) + (1 - beta) * (r(h) if grp["rectify_at"] == "refresh" else h)
        st["n"] = st.get("n", 0) + 1
    st["b"] = g.clone() if step == 1 else grp["momentum"] * st["b"] + g
    D, n, b = st.get("D", torch.zeros_like(p)), st.get("n", 0), st["b"]
    use = r if grp["rectify_at"] == "use" else (lambda x: x)
    if grp["bias_correction"] == "refreshes":
        u = b if n == 0 else tau * b / (use(D / (1 - beta**n)) + eps)
    elif grp["bias_correction"] == "reference":
        period = grp["bias_period"] or schedule.period or num_tensors
        u = tau * (1 - beta ** (step // period + 1)) * b / (use(D) + eps)
    else:
        u = tau * b / (use(D) + eps)
    return p - grp["lr"] * (u + grp["weight_decay"] * p)


def adam_hessian_reference(p, g, h, st, grp, *, step, **_):
    """AdaHessian (Yao et al. 2021, Alg. 1), decoupled weight decay; no step before the first refresh."""
    (b1, b2), k = grp["betas"], grp["hessian_power"]
    st["m"] = b1 * st.get("m", 0 * p) + (1 - b1) * g
    if h is not None:
        st["v"], st["n"] = b2 * st.get("v", 0 * p) + (1 - b2) * h * h, st.get("n", 0) + 1
    if not st.get("n"):
        return p
    denom = (st["v"] / (1 - b2 ** st["n"])) ** (k / 2) + grp["eps"]
    return p - grp["lr"] * ((st["m"] / (1 - b1**step)) / denom + grp["weight_decay"] * p)


def clipped_newton_reference(p, g, h, st, grp, *, step, **_):
    """Sophia (Liu et al. 2023, Alg. 3): p(1 - lr wd) - lr sign(m) min(|m| / max(rho h, eps), 1)."""
    b1, b2 = grp["betas"]
    st["m"] = b1 * st.get("m", 0 * p) + (1 - b1) * g
    if h is not None:
        st["h"] = b2 * st.get("h", 0 * p) + (1 - b2) * h
    ratio = torch.minimum(st["m"].abs() / torch.clamp(grp["rho"] * st["h"], min=grp["eps"]), torch.ones_like(p))
    return p * (1 - grp["lr"] * grp["weight_decay"]) - grp["lr"] * st["m"].sign() * ratio


def adam_reference(p, g, h, st, grp, *, step, **_):
    """Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019): m, v EMAs with bias corrections;
    decoupled decay p(1 - lr wd) or L2 decay g + wd p; amsgrad divides by the running max of v."""
    (b1, b2), eps, wd, lr = grp["betas"], grp["eps"], grp["weight_decay"], grp["lr"]
    if grp["decoupled_weight_decay"]:
        p = p * (1 - lr * wd)
    else:
        g = g + wd * p
    st["m"] = b1 * st.get("m", 0 * p) + (1 - b1) * g
    st["v"] = b2 * st.get("v", 0 * p) + (1 - b2) * g * g
    v = st["v"]
    if grp["amsgrad"]:
        st["vmax"] = v = torch.maximum(st.get("vmax", v), v)
    return p - lr * (st["m"] / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + eps)


def lion_reference(p, g, h, st, grp, *, step, **_):
    """Lion (Chen et al. 2023, Alg. 2): u = sign(b1 m + (1 - b1) g); m <- b2 m + (1 - b2) g; decoupled decay."""
    (b1, b2), lr = grp["betas"], grp["lr"]
    m = st.get("m", 0 * p)
    u = torch.sign(b1 * m + (1 - b1) * g)
    st["m"] = b2 * m + (1 - b2) * g
    return p * (1 - lr * grp["weight_decay"]) - lr * u


STEPPER_FORMULAS = {
    "sgd": (
        sgd_reference,
        [{}, {"momentum": 0.9, "weight_decay": 0.01}, {"momentum": 0.8, "dampening": 0.3}],
        [{"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}],
    ),
    "diag_newton": (
        diag_newton_reference,
        [{}, {"tau": 0.5, "weight_decay": 0.01}, {"tau": 0.5, "rectify_at": "use", "rectify": "clip", "floor": 0.2}],
        [
            {"tau": 0.5, "rectify": "damping", "damping": 0.3, "rectify_at": "use"},
            {"tau": 0.5, "bias_correction": "reference"},
            {"tau": 0.5, "bias_correction": "reference", "bias_period": 3},
            {"tau": 0.5, "bias_correction": "none", "momentum": 0.5},
        ],
    ),
    "adam_hessian": (adam_hessian_reference, [{}, {"hessian_power": 0.5, "weight_decay": 0.01}], []),
    "clipped_newton": (clipped_newton_reference, [{}, {"rho": 1.0, "weight_decay": 0.0}], []),
    "adam": (
        adam_reference,
        [{"lr": 0.01}, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}],
        [{"lr": 0.01, "weight_decay": 0.05, "decoupled_weight_decay": False}],
    ),
    "lion": (lion_reference, [{"lr": 0.01}, {"lr": 0.01, "weight_decay": 0.1, "betas": (0.8, 0.95)}], []),
}

#: built-in steppers checked against an installed reference implementation instead of a formula written
#: here (tests/test_relatives.py: Newton-Schulz Muon vs pytorch_optimizer.Muon, SOAP vs pytorch_optimizer.SOAP)
REFERENCE_CHECKED = {"orthogonal_momentum", "eigenbasis_adam"}


def test_every_builtin_stepper_has_a_formula_check():
    builtin = {n for n, e in registry.items("stepper").items() if e.plugin == "builtins"}
    assert set(STEPPER_FORMULAS) | REFERENCE_CHECKED == builtin


@pytest.mark.parametrize("name", sorted(STEPPER_FORMULAS))
def test_builtin_steppers_pass_the_conformance_kit_with_their_formula(name):
    reference, (first, *more), extra = STEPPER_FORMULAS[name]
    check_stepper(registry.get("stepper", name), first, reference=reference)
    for i, hp in enumerate(more + extra):  # the other variants: the formula alone, refreshes every 1..3 steps
        check_stepper_formula(registry.get("stepper", name), reference, hp, steps=7, refresh_every=1 + i % 3)


class _DoesNothing(optlab.Stepper):
    name = "does_nothing"
    hparams = {"lr": optlab.HParam(0.1)}

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        for st in states:
            st["n"] = st.get("n", 0) + 1


class _EmaMomentum(optlab.Stepper):
    """A wrong SGD: an EMA buffer (1 - momentum) g where torch.optim.SGD's heavy ball adds g."""

    name = "ema_momentum"
    hparams = optlab.stepper("sgd").hparams

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        for p, g, st in zip(params, grads, states):
            st["b"] = group["momentum"] * st.get("b", torch.zeros_like(p)) + (1 - group["momentum"]) * g
            p.add_(st["b"], alpha=-group["lr"])


def test_the_kit_fails_a_stepper_that_does_nothing():
    with pytest.raises(AssertionError, match=r"_DoesNothing: 5 steps with nonzero gradients left every parameter"):
        check_stepper(_DoesNothing)
    with pytest.raises(AssertionError, match=r"_DoesNothing: step 1 .*differs from the reference"):
        check_stepper_formula(_DoesNothing, lambda p, g, h, st, grp, **_: p - grp["lr"] * g)


def test_the_kit_fails_a_stepper_with_a_wrong_formula():
    check_stepper(_EmaMomentum, {"momentum": 0.9})  # without a reference it passes: resumable, moves, keeps dtype
    with pytest.raises(AssertionError, match=r"_EmaMomentum: step 1 \(curvature refreshed\), tensor 0 \(4,\)"):
        check_stepper(_EmaMomentum, {"momentum": 0.9}, reference=sgd_reference)
    with pytest.raises(AssertionError, match=r"DiagNewton: step \d.*differs from the reference"):
        wrong = lambda p, g, h, st, grp, **kw: diag_newton_reference(p, g, h, st, {**grp, "eps": 2 * grp["eps"]}, **kw)  # noqa: E731
        check_stepper_formula(registry.get("stepper", "diag_newton"), wrong, {"tau": 0.5})


def _blobs_task(seed=0, labels=None):
    from optlab.training.tasks import Task

    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10) % 2 if labels is None else labels
    return Task("blobs", x, y, x, torch.arange(10) % 2, num_classes=2)


class _WithSpare(torch.nn.Module):
    def __init__(self, n_out):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, n_out))
        self.spare = torch.nn.Linear(2, 2)  # never used in forward

    def forward(self, x):
        return self.body(x)


def _linear_model(info, decouple=False, rescale_g=False, spare=False):
    m = _WithSpare(info["num_classes"]) if spare else torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    if decouple:
        optlab.decouple(m)
        if rescale_g:  # g = 2 ||w||: no longer the same function at initialization
            with torch.no_grad():
                next(p for n, p in m.named_parameters() if n.endswith("original0")).mul_(2)
    return m


def test_check_task_and_check_model_fail_what_they_guard():
    from optlab.testing import check_model, check_task

    check_task(_blobs_task)
    with pytest.raises(AssertionError, match=r"task 'blobs': train labels must be integers in \[0, 2\)"):
        check_task(lambda seed=0: _blobs_task(seed, labels=torch.arange(10)))
    info = {"input_shape": (1, 8, 8), "num_classes": 10, "name": "digits"}
    check_model(_linear_model, info)
    with pytest.raises(AssertionError, match=r"parameters that get no gradient: \['spare.weight', 'spare.bias'\]"):
        check_model(_linear_model, info, spare=True)
    with pytest.raises(AssertionError, match="decouple=True changes the initial function"):
        check_model(_linear_model, info, rescale_g=True)


def test_a_reference_that_never_moves_is_refused():
    with pytest.raises(AssertionError, match=r"the reference for _DoesNothing never changed a parameter"):
        check_stepper_formula(_DoesNothing, lambda p, g, h, st, grp, **_: p)


@pytest.mark.parametrize("name", ["channelwise", "norm", "wn_scale", "one_d", "nothing"])
def test_builtin_selectors_pass_the_conformance_kit(name):
    check_selector(optlab.selector(name), allow_empty=name == "nothing")


def test_conformance_kit_catches_a_broken_stepper():
    class Leaky(optlab.Stepper):
        name = "leaky"
        hparams = {"lr": optlab.HParam(0.1)}

        def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
            for p, g, st in zip(params, grads, states):
                st["n"] = st.get("n", 0) + 1
                p.sub_(group["lr"] * g * (1 + torch.rand(()).item()))  # draws from the global RNG: not resumable

    with pytest.raises(AssertionError, match="resume differs"):
        check_stepper(Leaky)


# ------------------------------------------------------------------ the example third-party package
@pytest.mark.slow
def test_example_plugin_installs_registers_conforms_and_runs_in_a_grid(tmp_path):
    """Installed (as a user would, through its entry point) into a private site directory on the
    subprocesses' PYTHONPATH, so the test venv stays as it was for every later test."""
    site = tmp_path / "site"
    pip_install_to_site(site, ROOT / "plugins" / "optlab-fisher")
    env = site_env(site)
    listing = subprocess.run([sys.executable, "-m", "optlab.cli", "plugins"], capture_output=True, text=True, env=env)
    for item in ("empirical_fisher_diag", "rms_newton", "sgd-ef", "fd_rowsum", "levenberg_newton", "sgd-lm"):
        assert re.search(rf"\b{re.escape(item)}\s+fisher\b", listing.stdout), listing.stdout
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            """
from optlab.testing import check_estimator, check_stepper, empirical_fisher_reference
from optlab_fisher.plugin import EmpiricalFisherDiag, RMSNewton
check_estimator(EmpiricalFisherDiag, reference=empirical_fisher_reference, rtol=1e-10)
check_stepper(RMSNewton)
print("conformant")
""",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert "conformant" in check.stdout, check.stderr[-2000:]
    spec = tmp_path / "ef.toml"
    spec.write_text(
        'name = "ef"\nseeds = [0]\n[run]\nepochs = 2\nbatch_size = 128\nmodel_options = {width = 16}\n'
        '[[setting]]\ntask = "digits"\nmodel = "mlp-bn"\n[[optimizer]]\nname = "sgd-ef"\nnewton_lr = [0.01, 0.03]\n'
    )
    run = subprocess.run(
        [sys.executable, "-m", "optlab.cli", "grid", "run", str(spec), "--results", str(tmp_path / "res")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0 and "ok: 2" in run.stdout, run.stdout + run.stderr[-2000:]
    rep = subprocess.run(
        [sys.executable, "-m", "optlab.cli", "report", str(tmp_path / "res"), "-o", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert rep.returncode == 0 and (tmp_path / "rep" / "report.html").exists(), rep.stderr[-2000:]


# ------------------------------------------------------------------ the kit names what fails
class _Shaped(optlab.CurvatureEstimator):
    """Exact rowsum (H_kk 1) with one defect chosen by ``mode``."""

    name = "shaped"
    target = "hessian_rowsum"
    mode = "ok"

    def estimate(self, ctx, indices, group, generator):
        out = {k: ctx.hvp({k: torch.ones_like(ctx.params[k])})[k] for k in indices}
        if self.mode == "shape":
            out[1] = out[1][:-1]
        elif self.mode == "dtype":
            out[1] = out[1].float()
        elif self.mode == "nan":
            out[1] = out[1].clone()
            out[1][2] = float("nan")
        elif self.mode == "missing":
            del out[1]
        return out


@pytest.mark.parametrize(
    "mode,match",
    [
        (
            "shape",
            r"_Shaped on mlp_bn1d \(autograd\): estimate\(\) returned Tensor \(5,\) torch.float64 for '1.bias'; "
            r"expected a tensor of shape \(6,\) and dtype torch.float64",
        ),
        (
            "dtype",
            r"returned Tensor \(6,\) torch.float32 for '1.bias'; expected a tensor of shape \(6,\) and dtype torch.float64",  # noqa: E501
        ),
        ("nan", r"non-finite values for '1.bias' at 1 entry: first \[2\] = \[nan\]"),
        ("missing", r"returned no estimate for \['1.bias'\]"),
    ],
)
def test_check_estimator_names_the_tensor_and_entries_that_fail(mode, match):
    bad = type("_Shaped", (_Shaped,), {"mode": mode})
    check_estimator(type("_Shaped", (_Shaped,), {"mode": "ok"}), problems=("mlp_bn1d",))
    with pytest.raises(ValueError, match=match):
        check_estimator(bad, problems=("mlp_bn1d",))


def test_check_selector_sees_layernorm_and_groupnorm_and_rejects_an_empty_selection():
    from torch import nn

    from optlab.optim.selectors import by_predicate

    bn_only = by_predicate(lambda n, p, m: isinstance(m, nn.modules.batchnorm._BatchNorm), "bn only")
    all_norms = lambda n, p, m: isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))  # noqa: E731
    check_selector(optlab.selector("norm"), reference=all_norms)
    with pytest.raises(
        AssertionError, match=r"bn only.* on ln_mlp: selected \[\], the reference selects \['1.weight', '1.bias'\]"
    ):
        check_selector(bn_only, reference=all_norms)
    layer_norm = by_predicate(lambda n, p, m: isinstance(m, nn.LayerNorm), "layernorm")
    check_selector(layer_norm)  # selects something only on ln_mlp: passes
    with pytest.raises(AssertionError, match="selected no parameter on any of"):
        check_selector(layer_norm, problems=("mlp_bn1d", "cnn_bn2d", "residual", "wn_linear"))
    check_selector(optlab.selector("nothing"), allow_empty=True)


# ------------------------------------------------------------------ items run under what they declare
class _FuncOnly(optlab.CurvatureEstimator):
    """H_kk 1 that insists on the func engine (as an estimator using torch.func transforms would)."""

    name = "func_only"
    target = "hessian_rowsum"
    requires = {"engine": "func"}

    def estimate(self, ctx, indices, group, generator):
        if ctx.engine != "func":
            raise RuntimeError(f"func_only needs engine='func', got {ctx.engine!r}")
        return {k: ctx.hvp({k: torch.ones_like(ctx.params[k])})[k] for k in indices}


class _ReadsOutputs(optlab.CurvatureEstimator):
    """diag(GGN) from output VJPs: needs the closure to return (loss, outputs)."""

    name = "reads_outputs"
    target = "ggn_diag"
    requires = {"closure": "loss_outputs"}

    def estimate(self, ctx, indices, group, generator):
        from optlab.builtins.estimators import _output_sqrt_rows

        jt = ctx.output_vjp_batched(_output_sqrt_rows(ctx.outputs, "cross_entropy"))
        return {k: jt[k].pow(2).sum(0) for k in indices}


def _plugin_with(cls):
    class P:
        @hookimpl
        def optlab_register_estimators(register):
            register(cls.name, cls)

    return P


@pytest.mark.parametrize("cls", [_FuncOnly, _ReadsOutputs])
def test_items_are_validated_and_checked_under_what_they_declare(fresh_registry, monkeypatch, cls):
    monkeypatch.setenv("OPTLAB_STRICT_PLUGINS", "1")
    check_estimator(cls, problems=("mlp_bn1d", "wn_linear"), rtol=1e-8)
    registry.register_plugin(_plugin_with(cls), "declares")
    assert registry.get("estimator", cls.name) is cls
    undeclared = type(cls.__name__, (cls,), {"requires": {}})
    with pytest.raises(Exception, match="needs engine='func'|needs the model outputs"):
        check_estimator(undeclared, problems=("mlp_bn1d",))
    registry.register_plugin(_plugin_with(type("U", (undeclared,), {"name": "undeclared"})), "undeclared")
    hint = "needs engine='func'" if cls is _FuncOnly else r"declare requires = \{'closure': 'loss_outputs'\}"
    with pytest.raises(PluginError, match=rf"estimator 'undeclared' rejected: estimate\(\) raised .*{hint}"):
        registry.items("estimator")


def test_a_malformed_requires_declaration_is_rejected(fresh_registry, monkeypatch):
    monkeypatch.setenv("OPTLAB_STRICT_PLUGINS", "1")
    bad = type("Bad", (_FuncOnly,), {"name": "bad_requires", "requires": {"engin": "func"}})
    registry.register_plugin(_plugin_with(bad), "p")
    with pytest.raises(
        PluginError,
        match=r"rejected: requires: unknown requirement 'engin'. Did you mean 'engine'\? "
        r"Valid: engine, closure.",
    ):
        registry.items("estimator")
    with pytest.raises(ValueError, match=r"requires\['engine'\]: unknown engine 'jax'.*Valid: autograd, func"):
        check_estimator(type("B", (_FuncOnly,), {"requires": {"engine": "jax"}}))
