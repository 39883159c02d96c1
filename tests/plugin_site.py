"""Install plugin packages for real (``pip install --target``) into a private site folder that
subprocesses see through ``PYTHONPATH``, so the test environment stays as it was for every later test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pip_install_to_site(site: Path, *packages: Path) -> None:
    """``pip install --no-deps --target site`` of each package folder (built from its pyproject)."""
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
            *map(str, packages),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]


def site_env(site: Path, **extra: str) -> dict:
    """The environment of a subprocess that sees the plugins installed in ``site``."""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OPTLAB_NO_PROGRESS": "1", "PYTHONPATH": path, **extra}
