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


def _min_versions_extras() -> list[str]:
    """The optional extras ``.ci/min_versions.sh`` installs at their floors (its ``EXTRAS=`` line)."""
    (line,) = [ln for ln in (ROOT / ".ci" / "min_versions.sh").read_text().splitlines() if ln.startswith("EXTRAS=")]
    return line.split("=", 1)[1].split("#")[0].strip().split(",")


def test_every_floor_is_the_version_min_versions_installs():
    """Core dependencies and the dependencies of every extra the floors run installs: each floor in
    pyproject.toml is the version constraints-min.txt pins (names compared canonically)."""
    from packaging.utils import canonicalize_name

    pins = {canonicalize_name(n): v for n, v in _pins(ROOT / "constraints-min.txt").items()}
    extras = _min_versions_extras()
    assert set(extras) <= set(PROJECT["optional-dependencies"]) - {"test", "docs", "vision"}, extras
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    reqs += [Requirement(r) for e in extras for r in PROJECT["optional-dependencies"][e]]
    names = {canonicalize_name(r.name) for r in reqs}
    assert names == set(pins), "constraints-min.txt must pin exactly the core and the floors run's extras' dependencies"
    for r in reqs:
        floors = [Version(s.version) for s in r.specifier if s.operator == ">="]
        pin = pins[canonicalize_name(r.name)]
        assert floors == [Version(pin)], f"{r}: floor differs from constraints-min.txt ({pin})"


def test_the_floors_run_installs_every_extra_the_default_suite_needs():
    """test.sh installs the extras the default suite uses; the floors run installs the same ones."""
    (line,) = [ln for ln in (ROOT / "test.sh").read_text().splitlines() if "OPTLAB_EXTRAS=" in ln]
    test_sh = set(line.split("OPTLAB_EXTRAS=", 1)[1].split()[0].split(",")) - {"test"}
    assert set(_min_versions_extras()) == test_sh


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
