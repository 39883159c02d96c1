"""Plugins installed for subprocesses the way a third-party plugin is installed.

Two ways, both into a private site folder that subprocesses see through ``PYTHONPATH`` (the test
environment stays as it was for every later test):

* :func:`install` writes, per test-only plugin module, a ``*.dist-info`` folder with an ``optlab``
  entry point and a copy of the module (or package); :func:`env` is the subprocess environment;
* :func:`pip_install_to_site` installs real plugin packages (a folder with a ``pyproject.toml``) with
  ``pip install --target``; :func:`site_env` is the subprocess environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def install(dest: Path, plugins: dict[str, ModuleType]) -> Path:
    """Install each ``{entry-point name: module}`` as distribution ``optlab-<name>`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, module in plugins.items():
        dist = "optlab-" + name.replace("_", "-")
        info = dest / f"{dist.replace('-', '_')}-0.0.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0\n")
        (info / "entry_points.txt").write_text(f"[optlab]\n{name} = {module.__name__}\n")
        src = Path(module.__file__)
        if src.name == "__init__.py":  # a package
            shutil.copytree(src.parent, dest / src.parent.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / src.name)
    return dest


def env(site: Path, tmp: Path | None = None, **extra: str) -> dict:
    """This environment with ``site`` first on ``PYTHONPATH`` (and ``TMPDIR`` inside ``tmp``)."""
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    out = {**os.environ, "PYTHONPATH": path, "OPTLAB_NO_PROGRESS": "1", **extra}
    if tmp is not None:
        (tmp / "tmp").mkdir(exist_ok=True)
        out["TMPDIR"] = str(tmp / "tmp")
    return out


def pip_install_to_site(site: Path, *packages: Path) -> None:
    """``pip install --no-deps --target site`` of each package folder (built from its pyproject, from a
    temporary copy so that no build output lands in the repository)."""
    src = Path(tempfile.mkdtemp(prefix="optlab-plugin-src-"))
    copies = []
    for pkg in packages:
        dest = src / pkg.name
        shutil.copytree(pkg, dest, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        copies.append(dest)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            "-c",
            str(ROOT / "constraints.txt"),
            *map(str, copies),
        ],
        capture_output=True,
        text=True,
    )
    shutil.rmtree(src, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]


def site_env(site: Path, **extra: str) -> dict:
    """The environment of a subprocess that sees the plugins installed in ``site``."""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OPTLAB_NO_PROGRESS": "1", "PYTHONPATH": path, **extra}
