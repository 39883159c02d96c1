"""Test plugins installed for subprocesses the way a third-party plugin is installed.

``install(dest, {"nproc_test": nproc_plugin})`` writes, per plugin, a ``*.dist-info`` folder
with an ``optlab`` entry point and a copy of the module (or package) into ``dest``; with
``dest`` on ``PYTHONPATH`` (``env(dest, ...)``) every ``optlab`` process -- the CLI, pool
workers, torchrun's processes, Ray workers -- loads them through the registry.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import ModuleType


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
