"""Install plugin packages for real (``pip install --target``) into a private site folder that
subprocesses see through ``PYTHONPATH``, so the test environment stays as it was for every later test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
