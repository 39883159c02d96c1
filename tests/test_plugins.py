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

import optlab
from optlab import hookspecs, registry
from optlab.hookspecs import hookimpl
from optlab.registry import RegistryError
from optlab.testing import ESTIMATOR_TARGETS, check_estimator, check_selector, check_stepper
from optlab.validation import PluginError

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


def test_builtins_come_through_the_entry_point():
    from importlib.metadata import entry_points
    eps = {ep.name: ep.value for ep in entry_points(group="optlab")}
    assert eps.get("builtins") == "optlab.plugins.builtins"
    assert registry.items("preset")["sgd-ph"].plugin == "builtins"


# ------------------------------------------------------------------ registry behaviour
class _Dup:
    @hookimpl
    def optlab_register_presets(register):
        register("sgd-ph", lambda model: [])


def test_duplicate_names_name_both_plugins(fresh_registry):
    registry.register_plugin(_Dup, "dupe-plugin")
    with pytest.raises(RegistryError, match=r"preset 'sgd-ph' is registered by two plugins: 'builtins' and 'dupe-plugin'"):
        registry.items("preset")


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


@pytest.mark.parametrize("plugin,match", [
    (_BadShape, r"plugin 'p': estimator 'bad_shape' rejected: estimate\(\) returned Tensor \(3,\) torch.float32"),
    (_NoMethod, r"plugin 'p': stepper 'no_step' rejected: does not implement step\(\)"),
    (_WrongSig, r"plugin 'p': stepper 'wrong_sig' rejected: step\(self, params, grads\) lacks argument\(s\) \['states', 'group'\]"),
])
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
    run = subprocess.run([sys.executable, "-m", "optlab.cli", "train", "--optimizer", "sgd", "--task", "digits",
                          "--model", "mlp-bn", "--epochs", "1", "--batch-size", "256", "--out", str(tmp_path / "run.json")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert re.search(rejected, run.stderr)
    for strict_env, args in (({"OPTLAB_STRICT_PLUGINS": "1"}, ["plugins"]), ({}, ["--strict", "plugins"])):
        strict = subprocess.run([sys.executable, "-m", "optlab.cli", *args], env={**env, **strict_env},
                                capture_output=True, text=True)
        assert strict.returncode == 2 and re.search(rejected, strict.stderr), strict.stderr


def test_a_plugin_that_fails_to_import_is_skipped_or_fatal_with_strict(tmp_path):
    pkg = tmp_path / "site"
    (pkg / "broken_plugin-0.1.dist-info").mkdir(parents=True)
    (pkg / "broken_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (pkg / "broken_plugin-0.1.dist-info" / "entry_points.txt").write_text("[optlab]\nbroken = broken_mod\n")
    (pkg / "broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    out = subprocess.run([sys.executable, "-m", "optlab.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "sgd-ph" in out.stdout
    assert "plugin 'broken' (broken_mod) failed to load: RuntimeError: boom at import" in out.stderr
    strict = subprocess.run([sys.executable, "-m", "optlab.cli", "--strict", "plugins"], env=env,
                            capture_output=True, text=True)
    assert strict.returncode != 0 and "boom at import" in strict.stderr
    off = subprocess.run([sys.executable, "-m", "optlab.cli", "plugins"], capture_output=True, text=True,
                         env={**env, "OPTLAB_DISABLE_ENTRYPOINTS": "1"})
    assert off.returncode == 0 and "boom" not in off.stderr and "sgd-ph" in off.stdout


def test_trace_hooks_switch(tmp_path):
    out = subprocess.run([sys.executable, "-m", "optlab.cli", "plugins"], capture_output=True, text=True,
                         env={**os.environ, "OPTLAB_TRACE_HOOKS": "1"})
    assert "optlab_register_presets" in out.stderr


# ------------------------------------------------------------------ conformance of every built-in
@pytest.mark.parametrize("name", sorted(n for n, e in registry.items("estimator").items() if e.plugin == "builtins"))
def test_builtin_estimators_pass_the_conformance_kit(name):
    cls = registry.get("estimator", name)
    assert cls.target in ESTIMATOR_TARGETS, f"{name}: declare what it estimates (target)"
    hp = {"absolute": False} if "absolute" in cls.hparams else {}
    check_estimator(cls, hp, draws=600 if cls.stochastic else 0,
                    problems=("mlp_bn1d", "wn_linear") if cls.stochastic else ("mlp_bn1d", "cnn_bn2d", "residual", "wn_linear"))


@pytest.mark.parametrize("name", sorted(n for n, e in registry.items("stepper").items() if e.plugin == "builtins"))
def test_builtin_steppers_pass_the_conformance_kit(name):
    check_stepper(registry.get("stepper", name))


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
    pkg = ROOT / "plugins" / "optlab-fisher"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "-c", str(ROOT / "constraints.txt"), "-e", str(pkg)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-2000:]
    listing = subprocess.run([sys.executable, "-m", "optlab.cli", "plugins"], capture_output=True, text=True)
    for item in ("empirical_fisher_diag", "rms_newton", "sgd-ef"):
        assert re.search(rf"\b{re.escape(item)}\s+fisher\b", listing.stdout), listing.stdout
    check = subprocess.run([sys.executable, "-c", """
from optlab.testing import check_estimator, check_stepper, empirical_fisher_reference
from optlab_fisher.plugin import EmpiricalFisherDiag, RMSNewton
check_estimator(EmpiricalFisherDiag, reference=empirical_fisher_reference, rtol=1e-10)
check_stepper(RMSNewton)
print("conformant")
"""], capture_output=True, text=True)
    assert "conformant" in check.stdout, check.stderr[-2000:]
    spec = tmp_path / "ef.toml"
    spec.write_text('name = "ef"\nseeds = [0]\n[run]\nepochs = 2\nbatch_size = 128\nmodel_options = {width = 16}\n'
                    '[[setting]]\ntask = "digits"\nmodel = "mlp-bn"\n[[optimizer]]\nname = "sgd-ef"\nnewton_lr = [0.01, 0.03]\n')
    run = subprocess.run([sys.executable, "-m", "optlab.cli", "grid", "run", str(spec), "--results", str(tmp_path / "res")],
                         capture_output=True, text=True, env={**os.environ, "OPTLAB_NO_PROGRESS": "1"})
    assert run.returncode == 0 and "ok: 2" in run.stdout, run.stdout + run.stderr[-2000:]
    rep = subprocess.run([sys.executable, "-m", "optlab.cli", "report", str(tmp_path / "res"), "-o", str(tmp_path / "rep")],
                         capture_output=True, text=True)
    assert rep.returncode == 0 and (tmp_path / "rep" / "report.html").exists(), rep.stderr[-2000:]
