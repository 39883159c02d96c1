"""The plugin contract (issue 21): qualified names with real clashing plugins installed side by side,
names that keep meaning what they meant in stored trials, and what 0.1.0 plugins relied on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from plugin_site import ROOT, pip_install_to_site, site_env

import optlab
from optlab.grid import SpecError, expand, load_spec, run_grid, trial_id
from optlab.plugin import registry
from optlab.plugin.hookspecs import hookimpl
from optlab.training.tasks import Task

FISHER = ROOT / "plugins" / "optlab-fisher"
CLASH = ROOT / "tests" / "fixtures" / "clash_plugin"


@pytest.fixture
def fresh_registry():
    registry.reset()
    yield
    registry.reset()


@pytest.fixture(scope="module")
def clash_site(tmp_path_factory) -> Path:
    """optlab-fisher and the ``lab`` fixture, both registering a stepper ``levenberg_newton``, installed."""
    site = tmp_path_factory.mktemp("clash-site")
    pip_install_to_site(site, FISHER, CLASH)
    return site


def _cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "optlab.cli", *args], capture_output=True, text=True, env=site_env(site)
    )


# ------------------------------------------------------------------ two real plugins, one short name
def test_optlab_plugins_lists_both_clashing_items_and_the_clash(clash_site):
    out = _cli(clash_site, "plugins")
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^stepper\s+fisher:levenberg_newton\s+fisher\s", out.stdout, re.M), out.stdout
    assert re.search(r"^stepper\s+lab:levenberg_newton\s+lab\s", out.stdout, re.M), out.stdout
    assert re.search(r"^preset\s+sgd-ph\s+builtins\s", out.stdout, re.M)  # nobody shares it: short
    assert "stepper 'levenberg_newton': fisher:levenberg_newton, lab:levenberg_newton" in out.stdout
    assert "rejected" not in out.stderr and "failed to load" not in out.stderr, out.stderr


CLASH_SCRIPT = r"""
import torch, optlab
from optlab.plugin import registry
from optlab_fisher.plugin import LevenbergNewton
from optlab_lab_clash.plugin import MarquardtNewton

def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

def train(opt, m, steps=4):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    def closure():
        out = m(x)
        return torch.nn.functional.cross_entropy(out, y), out

    losses = [float(opt.step(closure)) for _ in range(steps)]
    assert all(map(torch.isfinite, map(torch.tensor, losses))), losses
    return losses

builtin = sorted(e.name for e in registry.entries("preset") if e.plugin == "builtins")
for name in builtin:
    m = model()
    train(optlab.optimizer(name, m), m)
print("builtin presets trained:", len(builtin))

assert type(optlab.stepper("fisher:levenberg_newton")) is LevenbergNewton
assert type(optlab.stepper("lab:levenberg_newton")) is MarquardtNewton
try:
    optlab.stepper("levenberg_newton")
except registry.AmbiguousName as exc:
    print("ambiguous:", exc)
own = (("sgd-lm", LevenbergNewton), ("sgd-marquardt", MarquardtNewton), ("fisher:sgd-lm", LevenbergNewton))
for preset, cls in own:
    m = model()
    opt = optlab.optimizer(preset, m)
    assert type(opt.rules["channelwise"].stepper) is cls, (preset, opt.rules)
    train(opt, m)
print("own steppers: ok")
"""


def test_clashing_items_by_qualified_name_and_builtin_presets_train(clash_site):
    out = subprocess.run([sys.executable, "-c", CLASH_SCRIPT], capture_output=True, text=True, env=site_env(clash_site))
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    n_builtin = int(re.search(r"builtin presets trained: (\d+)", out.stdout).group(1))
    assert n_builtin == len([e for e in registry.entries("preset") if e.plugin == "builtins"]) >= 7, out.stdout
    assert (
        "ambiguous: stepper 'levenberg_newton' is ambiguous: 2 plugins provide it. Use a qualified name: "
        "fisher:levenberg_newton, lab:levenberg_newton" in out.stdout
    ), out.stdout
    assert "own steppers: ok" in out.stdout


def test_cli_and_spec_take_qualified_names_with_both_installed(clash_site, tmp_path):
    run = _cli(
        clash_site,
        *("train", "--optimizer", "lab:sgd-marquardt", "--task", "builtins:digits", "--model", "mlp-bn"),
        *("--model-option", "width=8", "--epochs", "1", "--batch-size", "256", "--out", str(tmp_path / "r.json")),
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "ok"
    spec = tmp_path / "q.toml"
    spec.write_text(
        'name = "q"\nseeds = [0]\n[run]\nepochs = 1\nbatch_size = 256\nmodel_options = {width = 8}\n'
        '[[setting]]\ntask = "digits"\nmodel = "mlp-bn"\n'
        '[[optimizer]]\nname = "fisher:sgd-lm"\n[[optimizer]]\nname = "sgd-marquardt"\n'
    )
    res = tmp_path / "res"
    grid = _cli(clash_site, "grid", "run", str(spec), "--results", str(res))
    assert grid.returncode == 0 and "ok: 2" in grid.stdout, grid.stdout + grid.stderr[-2000:]
    resolved = sorted(json.loads(p.read_text())["resolved"]["optimizer"] for p in (res / "trials").glob("*.json"))
    assert resolved == ["fisher:sgd-lm", "lab:sgd-marquardt"]


# ------------------------------------------------------------------ a plugin written against 0.1.0
COMPAT = ROOT / "tests" / "fixtures" / "compat010_plugin"
COMPAT_ITEMS = {
    "task": "blobs3",
    "model": "blob-mlp",
    "selector": "norm_affine",
    "estimator": ("coord_diag", "rademacher_diag"),
    "stepper": "damped_newton",
    "preset": "blob-ph",
    "baseline": "blob-adamw",
}


@pytest.fixture(scope="module")
def compat_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("compat-site")
    pip_install_to_site(site, COMPAT)
    return site


def test_the_0_1_0_plugin_passes_its_own_tests(compat_site, tmp_path):
    """Its tests run as its author runs them (pytest in its folder), with the package installed; they
    may warn (a deprecation), never fail."""
    import shutil

    shutil.copytree(COMPAT / "tests", tmp_path / "tests")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "tests"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=site_env(compat_site),
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    n_tests = len(re.findall(r"^def test_", (COMPAT / "tests" / "test_compat010.py").read_text(), re.M))
    assert re.search(rf"\b{n_tests} passed\b", out.stdout), out.stdout[-2000:]


def test_the_0_1_0_plugin_loads_every_item_and_its_preset_trains_from_the_cli(compat_site, tmp_path):
    listing = _cli(compat_site, "--strict", "plugins")  # strict: an item failing validation would be fatal
    assert listing.returncode == 0, listing.stderr[-2000:]
    for kind, names in COMPAT_ITEMS.items():
        for name in (names,) if isinstance(names, str) else names:
            assert re.search(rf"^{kind}\s+{re.escape(name)}\s+compat010\s", listing.stdout, re.M), (kind, name)
    assert "clashes" not in listing.stdout  # it shares no name with the built-ins
    out = tmp_path / "run.json"
    run = _cli(
        compat_site,
        *("train", "--optimizer", "blob-ph", "--task", "blobs3", "--model", "blob-mlp"),
        *("--epochs", "3", "--batch-size", "32", "--out", str(out)),
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    rec = json.loads(out.read_text())
    losses = [m["train_loss"] for m in rec["metrics"]]
    assert rec["status"] == "ok" and len(losses) == 3 and losses[-1] < losses[0], rec["metrics"]
    assert rec["optimizer_plugin"] == "compat010"


# ------------------------------------------------------------------ in-process: names, ids and records
def _preset_plugin(tag: str):
    class P:
        @hookimpl
        def optlab_register_presets(register):
            def mine(model, lr=0.1):
                return [optlab.Rule("all", optlab.rest(), None, optlab.stepper("sgd"), dict(lr=lr))]

            mine.__doc__ = f"SGD ({tag})"
            register("mine", mine)

    return P


SPEC = (
    'name = "n"\nseeds = [0]\n[run]\nepochs = 1\nbatch_size = 256\nmodel_options = {width = 8}\n'
    '[[setting]]\ntask = "digits"\nmodel = "mlp-bn"\n[[optimizer]]\nname = "%s"\n'
)


def test_an_ambiguous_name_in_a_spec_lists_the_choices_and_qualified_names_expand(fresh_registry):
    registry.register_plugin(_preset_plugin("a"), "alpha")
    registry.register_plugin(_preset_plugin("b"), "beta")
    ambiguous = r"optimizer\[0\]\.name: optimizer 'mine' is ambiguous: .*alpha:mine, beta:mine"
    with pytest.raises(SpecError, match=ambiguous):
        expand(load_spec(SPEC % "mine", is_text=True))
    (t,) = expand(load_spec(SPEC % "beta:mine", is_text=True))
    assert t.config["optimizer"] == "beta:mine" and t.arm == "beta:mine"


def test_trial_ids_of_unambiguous_names_are_computed_as_before(fresh_registry):
    """The id hashes the config with the names as written, exactly as before qualified names existed."""
    (t,) = expand(load_spec(SPEC % "sgd-ph", is_text=True))
    assert t.config["optimizer"] == "sgd-ph" and t.id == trial_id(t.config)
    canon = json.dumps({**t.config, "_data_version": optlab.grid.trial.DATA_VERSION}, sort_keys=True, default=str)
    import hashlib

    assert t.id == hashlib.sha1(canon.encode()).hexdigest()[:16]
    assert "resolved" not in t.config


def test_records_store_qualified_names_and_a_changed_meaning_is_refused(fresh_registry, tmp_path):
    registry.register_plugin(_preset_plugin("a"), "alpha")
    res = tmp_path / "res"
    spec = load_spec(SPEC % "mine", is_text=True)
    assert run_grid(spec, results=res, progress=False, workers=1).get("ok") == 1
    (rec,) = [json.loads(p.read_text()) for p in (res / "trials").glob("*.json")]
    assert rec["resolved"] == {"optimizer": "alpha:mine", "task": "builtins:digits", "model": "builtins:mlp-bn"}
    registry.reset()  # alpha uninstalled, another plugin now provides "mine": the same id would mean another item
    registry.register_plugin(_preset_plugin("b"), "beta")
    with pytest.raises(SpecError, match=r"optimizer 'mine' ran as 'alpha:mine' but now resolves to 'beta:mine'"):
        run_grid(load_spec(SPEC % "mine", is_text=True), results=res, progress=False, workers=1)
    registry.reset()
    registry.register_plugin(_preset_plugin("a"), "alpha")  # back as it was: complete, nothing reruns
    again = run_grid(load_spec(SPEC % "mine", is_text=True), results=res, progress=False, workers=1)
    assert again["skipped_complete"] == 1


# ------------------------------------------------------------------ restored 0.1.0 names
def _task_args():
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    return ("t", x, y, x, y, 2)


def test_task_meta_is_accepted_and_stored():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = Task(*_task_args(), meta={"source": "made up"})
    assert t.meta == {"source": "made up"} and Task(*_task_args()).meta == {}


def test_task_meta_in_its_0_1_0_position_is_taken_as_meta_with_a_deprecation_warning():
    import torch.nn.functional as F

    with pytest.warns(DeprecationWarning, match=r"pass it by keyword, Task\(\.\.\., meta=\{\.\.\.\}\)"):
        t = Task(*_task_args(), F.cross_entropy, "cross_entropy", None, {"k": 1})
    assert t.meta == {"k": 1} and t.x_val is None


def test_task_meta_must_be_a_dict():
    with pytest.raises(TypeError, match=r"Task 't': meta must be a dict, got list \[1\]"):
        Task(*_task_args(), meta=[1])


def test_a_model_function_without_decouple_is_built_and_decoupled_by_optlab(fresh_registry):
    """0.1.0: ``fn(task_info, **options)`` with the task's options only; the runner passes decouple= since."""

    class M:
        @hookimpl
        def optlab_register_models(register):
            register("plain", lambda info: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))

    registry.register_plugin(M, "m010")
    from optlab.training.tasks import make_model

    info = {"input_shape": (4,), "num_classes": 2, "name": "x"}
    plain = make_model("plain", info, decouple=False)
    dec = make_model("m010:plain", info, decouple=True)
    assert [n for n, _ in plain.named_parameters()] == ["1.weight", "1.bias"]
    expected = optlab.decouple(make_model("plain", info, decouple=False))
    names = [n for n, _ in dec.named_parameters()]
    assert names == [n for n, _ in expected.named_parameters()] != ["1.weight", "1.bias"]


# ------------------------------------------------------------------ the declared contract and its version
#: ``optlab.plugin_api.__all__`` as released in 0.2.0. Never remove a name here: a release that drops
#: one from ``__all__`` must list it in ``plugin_api.DEPRECATED`` first (one minor release of warnings).
PLUGIN_API_0_2_0 = (
    *("hookimpl", "hookspecs", "SEP", "AmbiguousName", "RegistryError", "PluginError"),
    *("Stepper", "CurvatureEstimator", "Selector", "Rest", "rest", "by_predicate", "is_norm_affine"),
    *("is_weight_norm_scale", "named_parameters_with_owner", "NORM_TYPES", "Rule", "Schedule", "REQUIREMENTS"),
    *("selector", "estimator", "stepper", "CurvatureContext", "check_estimate", "EstimateError"),
    *("HParam", "nonneg", "positive", "unit_interval", "choice", "positive_int", "optional", "validate"),
    *("unknown_name", "PART_DEFAULT", "defaults_from", "given"),
    *("Task", "split_validation", "VAL_SEED", "DEFAULT_VAL_FRACTION", "decouple"),
    *("check_estimator", "check_stepper", "check_selector", "ESTIMATOR_TARGETS", "Problem", "PROBLEMS"),
    *("check_stepper_formula", "check_task", "check_model", "check_plugin", "ItemCheck"),
    *("make_problem", "dense_hessian", "fd_hessian", "dense_ggn", "output_hessian", "empirical_fisher_reference"),
    *("block_slices", "flat", "unflat", "SCHEMA_VERSION", "STATUSES", "validate_record", "DEPRECATED"),
)
#: ``ClassVar`` flags of the part base classes at 0.2.0 (with their defaults, which plugins rely on)
CLASSVARS_0_2_0 = {
    "Stepper": {"name": "", "hparams": {}, "needs_curvature": False, "needs_loss": False, "needs_schedule": False},
    "CurvatureEstimator": {"name": "", "hparams": {}, "stochastic": False, "target": "", "requires": {}},
}


def test_plugin_api_keeps_every_released_name_or_deprecates_it():
    from optlab import plugin_api

    gone = [n for n in PLUGIN_API_0_2_0 if n not in plugin_api.__all__ and n not in plugin_api.DEPRECATED]
    assert not gone, f"removed from optlab.plugin_api without a deprecation release: {gone}"
    missing = [n for n in plugin_api.__all__ if not hasattr(plugin_api, n)]
    assert not missing, f"in __all__ but not importable: {missing}"
    for name, (replacement, since, removed) in plugin_api.DEPRECATED.items():
        assert replacement and since and removed, name
        with pytest.warns(DeprecationWarning, match=re.escape(replacement)):
            getattr(plugin_api, name)
    for cls, flags in CLASSVARS_0_2_0.items():
        for flag, default in flags.items():
            assert getattr(getattr(plugin_api, cls), flag) == default, (cls, flag)


def test_a_retired_name_stays_importable_with_a_warning_naming_its_replacement(monkeypatch):
    from optlab import plugin_api

    monkeypatch.setitem(plugin_api.DEPRECATED, "old_check", ("optlab.plugin_api.check_stepper", "0.2.0", "0.3.0"))
    monkeypatch.setitem(plugin_api._RETIRED, "old_check", plugin_api.check_stepper)
    with pytest.warns(DeprecationWarning, match=r"old_check is deprecated since optlab 0\.2\.0 and will be removed "):
        from optlab.plugin_api import old_check  # noqa: F401  (the import statement a plugin would have)
    with pytest.raises(AttributeError, match="has no attribute 'never_was'"):
        plugin_api.never_was  # noqa: B018


def test_version_changelog_and_policy_agree():
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert optlab.__version__ == version, "reinstall optlab (pip install -e .): its metadata is stale"
    log = (ROOT / "CHANGELOG.md").read_text()
    section = log.split(f"## [{version}]", 1)[1].split("\n## [", 1)[0]
    for sub in ("### Added", "### Changed", "### Deprecated", "### Fixed"):
        assert sub in section, sub
    assert "Task.meta" in section and "plugin_api" in section and "<plugin>:<item>" in section
    policy = (ROOT / "docs" / "plugin-hooks.md").read_text()
    assert "## Versioning and deprecation policy" in policy and "optlab>=0.2,<0.3" in policy


# ------------------------------------------------------------------ optlab plugins --check
def test_check_runs_the_kit_on_every_installed_plugin(clash_site):
    out = _cli(clash_site, "plugins", "--check")
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "plugin fisher:" in out.stdout and "plugin lab:" in out.stdout and "plugin builtins:" not in out.stdout
    for line in (
        r"PASS  estimator  fisher:empirical_fisher_diag\s+check_estimator \(target empirical_fisher_diag\)",
        r"PASS  stepper    fisher:levenberg_newton\s+check_stepper",
        r"PASS  stepper    lab:levenberg_newton\s+check_stepper",
        r"PASS  preset     lab:sgd-marquardt\s+builds and takes 3 finite steps",
    ):
        assert re.search(line, out.stdout), (line, out.stdout)
    assert re.search(r"^\d+ passed, 0 failed, \d+ not checked$", out.stdout, re.M), out.stdout


BAD_PLUGIN = '''
import torch, optlab


class WrongShape(optlab.CurvatureEstimator):
    name = "wrong_shape"
    target = "hessian_diag"

    def estimate(self, ctx, indices, group, generator):
        return {i: torch.zeros(3) for i in indices}


class Idle(optlab.Stepper):
    """Takes no step."""

    name = "idle"
    hparams = {"lr": optlab.HParam(0.1)}

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        pass


@optlab.hookimpl
def optlab_register_estimators(register):
    register("wrong_shape", WrongShape)


@optlab.hookimpl
def optlab_register_steppers(register):
    register("idle", Idle)
'''


def test_check_reports_items_rejected_at_load_and_failing_the_kit(tmp_path):
    pkg = tmp_path / "optlab-bad"
    (pkg / "optlab_bad").mkdir(parents=True)
    (pkg / "optlab_bad" / "__init__.py").write_text(BAD_PLUGIN)
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "optlab-bad"\nversion = "0.0.1"\n'
        '[project.entry-points.optlab]\nbad = "optlab_bad"\n[tool.setuptools]\npackages = ["optlab_bad"]\n'
    )
    site = tmp_path / "site"
    pip_install_to_site(site, pkg)
    out = _cli(site, "plugins", "--check", "bad")
    assert out.returncode == 1, out.stdout + out.stderr[-2000:]
    assert re.search(
        r"FAIL  estimator  wrong_shape\s+rejected at load: plugin 'bad': estimator 'wrong_shape' rejected: "
        r"estimate\(\) returned Tensor \(3,\)",
        out.stdout,
    ), out.stdout
    assert re.search(
        r"FAIL  stepper    bad:idle\s+Idle: 5 steps with nonzero gradients left every parameter", out.stdout
    )
    assert "0 passed, 2 failed, 0 not checked" in out.stdout
    unknown = _cli(site, "plugins", "--check", "bda")
    assert unknown.returncode == 2 and "unknown plugin 'bda'. Did you mean 'bad'?" in unknown.stderr, unknown.stderr


def test_a_plugin_declaring_other_optlab_versions_loads_with_a_warning(tmp_path):
    pkg = tmp_path / "optlab-old"
    (pkg / "optlab_old").mkdir(parents=True)
    (pkg / "optlab_old" / "__init__.py").write_text(
        "import optlab\n\n\n@optlab.hookimpl\ndef optlab_register_presets(register):\n"
        "    register('old-sgd', lambda model, lr=0.1: optlab.preset_rules('sgd', model, lr=lr))\n"
    )
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "optlab-old"\nversion = "1.0"\ndependencies = ["optlab>=0.1,<0.2"]\n'
        '[project.entry-points.optlab]\nold = "optlab_old"\n[tool.setuptools]\npackages = ["optlab_old"]\n'
    )
    site = tmp_path / "site"
    pip_install_to_site(site, pkg)
    out = _cli(site, "plugins")
    assert out.returncode == 0 and re.search(r"^preset\s+old-sgd\s+old\s", out.stdout, re.M), out.stderr
    declares = r"plugin 'old' \(optlab-old 1\.0\) declares optlab(<0\.2,>=0\.1|>=0\.1,<0\.2), but this is optlab "
    assert re.search(declares + re.escape(optlab.__version__), out.stderr), out.stderr
