"""A columnar (Parquet) cache of the frames built from a results directory.

Building the tidy frames of thousands of trial files costs seconds (JSON parsing and
per-record Python); reading them back from Parquet costs milliseconds
(``benchmarks/store_scale.py``). The JSON files stay the source of truth: the cache
is keyed on a fingerprint of ``trials/`` -- every file's name, mtime (ns) and size --
plus the builder's source code and options, and is rebuilt whenever any of them
changes (a trial added, rewritten, removed; the analysis code changed). It lives in
``RESULTS/.cache/`` and is written atomically; deleting it is always safe. Without
pyarrow, or for frames Parquet cannot hold exactly, nothing is cached.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

__all__ = ["fingerprint", "cached_frames", "CACHE_DIR"]

CACHE_DIR = ".cache"


def fingerprint(trials_dir: str | Path, salt: str = "") -> str:
    """sha1 over sorted ``(name, mtime_ns, size)`` of ``*.json`` in ``trials_dir`` and ``salt``."""
    h = hashlib.sha1(salt.encode())
    try:
        entries = sorted(
            (e.name, e.stat().st_mtime_ns, e.stat().st_size)
            for e in os.scandir(trials_dir)
            if e.name.endswith(".json") and not e.name.startswith(".")
        )
    except FileNotFoundError:
        entries = []
    for name, mtime, size in entries:
        h.update(f"{name}\0{mtime}\0{size}\n".encode())
    return h.hexdigest()


def _builder_salt(build: Callable, options: dict) -> str:
    try:
        src = inspect.getsource(inspect.getmodule(build))
    except (OSError, TypeError):
        src = getattr(build, "__qualname__", repr(build))
    return hashlib.sha1(src.encode()).hexdigest() + json.dumps(options, sort_keys=True, default=str)


def _same(a, b) -> bool:
    """Equal frames: columns, index, dtypes and values (NaN equal to NaN) -- vectorized."""
    return list(a.columns) == list(b.columns) and a.index.equals(b.index) and a.dtypes.equals(b.dtypes) and a.equals(b)


def cached_frames(
    root: str | Path,
    build: Callable[[], tuple],
    names: tuple[str, ...] = ("epochs", "trials"),
    options: dict | None = None,
    key_of: Callable | None = None,
) -> tuple:
    """``build()``'s frames for ``root``, from ``root/.cache`` when its key still matches.

    ``build`` returns one DataFrame per entry of ``names``; ``options`` (e.g. ``skip_corrupt``)
    and ``build``'s module source are part of the key.
    """
    root = Path(root)
    salt = _builder_salt(key_of or build, options or {})
    key = fingerprint(root / "trials", salt)
    cache = root / CACHE_DIR
    key_file = cache / "frames.key"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return build()
    import pandas as pd

    paths = [cache / f"{n}.parquet" for n in names]
    try:
        if key_file.read_text() == key and all(p.exists() for p in paths):
            return tuple(pd.read_parquet(p) for p in paths)
    except (OSError, ValueError):
        pass
    frames = build()
    try:
        cache.mkdir(exist_ok=True)
        for f, p in zip(frames, paths):
            tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
            f.to_parquet(tmp)
            back = pd.read_parquet(tmp)
            if not _same(back, f):  # cache only what Parquet holds exactly
                raise ValueError(f"{p.name}: the Parquet round trip changes the frame")
            os.replace(tmp, p)
        tmp = key_file.with_name(f".frames.key.tmp{os.getpid()}")
        tmp.write_text(key)
        os.replace(tmp, key_file)
    except Exception as exc:  # a cache that cannot be written is no error: the frames are correct anyway
        try:
            for p in cache.glob(f".*.tmp{os.getpid()}"):
                p.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError):  # a read-only results directory: silently uncached
            return frames
        warnings.warn(
            f"results cache not written ({type(exc).__name__}: {str(exc)[:200]})", RuntimeWarning, stacklevel=2
        )
    return frames
