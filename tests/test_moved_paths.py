"""Module paths from before the subpackages (issue 22) keep working, with a DeprecationWarning
that names the new home; the library itself imports only new paths."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK_OLD_PATHS = r"""
import importlib, json, warnings
import optlab
from optlab._moved import MOVED
out = {}
for old, homes in MOVED.items():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
    msgs = [str(w.message) for w in seen if issubclass(w.category, DeprecationWarning)]
    same = []
    for home in homes:
        new = importlib.import_module(home)
        for name in getattr(new, "__all__", [n for n in vars(new) if not n.startswith("_")]):
            same.append(getattr(mod, name) is getattr(new, name))
    out[old] = {"warned": msgs, "same": all(same), "names": len(same)}
print(json.dumps(out))
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_library_imports_trigger_no_deprecation_warning():
    code = (
        "import optlab, optlab.cli, optlab.analysis, optlab.grid, optlab.testing\n"
        "from optlab.plugin import registry\n"
        "for kind in registry.KINDS: registry.items(kind)\n"  # loads the built-ins through the entry point
        "import optlab.builtins.tasks, optlab.builtins.models, optlab.builtins.baselines\n"
    )
    r = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr


def test_every_old_module_path_warns_and_forwards_to_its_new_home():
    r = _run(CHECK_OLD_PATHS)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "optlab.hparams" in out and "optlab.train" in out and "optlab.plugins.steppers" in out
    for old, res in out.items():
        assert res["warned"], f"{old}: no DeprecationWarning"
        assert any("moved to optlab." in m for m in res["warned"]), (old, res["warned"])
        assert res["same"] and res["names"] > 0, f"{old}: names differ from the new home's ({res})"


def test_old_paths_resolve_names_split_off_into_other_modules():
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from optlab.train import RunConfig, train, load_checkpoint, lr_factor\n"
        "from optlab.distributed import RankContext, SyncBatchNorm\n"
        "from optlab.executors import ExecutorError, AbandonRunning, LocalExecutor, make_executor\n"
        "from optlab.grid import Trial, run_grid, config_label, trial_id, run_trial, environment\n"
        "import optlab.training.config as c, optlab.training.ranks as r, optlab.grid.trial as t\n"
        "assert RunConfig is c.RunConfig and RankContext is r.RankContext and run_trial is t.run_trial\n"
        "import optlab, optlab.optimizer, torch\n"  # the old module path does not hide the factory function
        "assert type(optlab.optimizer('sgd', torch.nn.Linear(2, 2), lr=0.1)).__name__ == 'RuleOptimizer'\n"
        "assert optlab.hparams.HParam is optlab.HParam\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr


def test_grid_run_trial_reexport_warns():
    r = _run(
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    from optlab.grid import run_trial\n"
        "assert any('optlab.grid.trial' in str(x.message) for x in w), [str(x.message) for x in w]\n"
    )
    assert r.returncode == 0, r.stderr
