"""The distribution's declarations agree with each other (issue 23). The wheel itself is built, installed
outside the checkout and exercised by ``.ci/wheel_check.sh``; the floors are run by ``.ci/min_versions.sh``."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
FISHER = tomllib.loads((ROOT / "plugins" / "optlab-fisher" / "pyproject.toml").read_text())["project"]


def _pins(path: Path) -> dict[str, str]:
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return dict(ln.split("==") for ln in lines if "==" in ln)


def test_every_core_floor_is_the_version_min_versions_installs():
    pins = _pins(ROOT / "constraints-min.txt")
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    assert {r.name for r in reqs} == set(pins), "constraints-min.txt must pin exactly the core dependencies"
    for r in reqs:
        floors = [Version(s.version) for s in r.specifier if s.operator == ">="]
        assert floors == [Version(pins[r.name])], f"{r}: floor differs from constraints-min.txt ({pins[r.name]})"


def test_scipy_floor_has_bootstrap_rng_and_torch_pin_is_admitted():
    scipy = next(Requirement(r) for r in PROJECT["dependencies"] if r.startswith("scipy"))
    assert not scipy.specifier.contains("1.14.1") and scipy.specifier.contains("1.15.0")
    torch_pin = _pins(ROOT / "constraints.txt")["torch"]
    torch = next(Requirement(r) for r in PROJECT["dependencies"] if r.startswith("torch"))
    assert torch.specifier.contains(torch_pin), (str(torch), torch_pin)
    assert _pins(ROOT / "constraints-min.txt")["torch"] == torch_pin  # the CPU pin holds in the floors run


def test_metadata_a_user_sees():
    assert PROJECT["license"] == "MIT" and (ROOT / "LICENSE").is_file() and PROJECT["license-files"] == ["LICENSE"]
    assert PROJECT["authors"] and PROJECT["urls"]
    assert "Typing :: Typed" in PROJECT["classifiers"] and (ROOT / "optlab" / "py.typed").is_file()
    version = PROJECT["version"]
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text(), "the version must have a CHANGELOG section"


def test_example_plugin_targets_this_release_and_its_python():
    assert FISHER["requires-python"] == PROJECT["requires-python"]
    optlab_req = next(Requirement(r) for r in FISHER["dependencies"] if Requirement(r).name == "optlab")
    assert optlab_req.specifier.contains(PROJECT["version"])
    assert optlab_req.specifier == SpecifierSet(">=0.2,<0.3")


def test_cli_reference_page_lists_every_subcommand_help():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "hooks" / "cli_reference.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.on_page_markdown("intro\n\n" + hook.MARKER + "\n", page=None)
    for cmd in ("plugins", "explain", "train", "grid run", "grid status", "diagnose", "report"):
        assert f"## `optlab {cmd}`" in page, cmd
    assert "usage: optlab train" in page and "--epochs" in page and hook.MARKER not in page
