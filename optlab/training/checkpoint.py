"""Per-epoch checkpoints of a training run: written atomically, loaded safely (``weights_only``),
set aside with a warning when unusable."""

from __future__ import annotations

import io
import os
import time
import warnings
from pathlib import Path

import torch

from optlab.store import atomic_write

__all__ = ["CHECKPOINT_KEYS", "save_checkpoint", "load_checkpoint", "reject_checkpoint"]


def save_checkpoint(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "data_generator", "torch_rng", "metrics", "epoch")


def load_checkpoint(path: Path, device) -> dict | None:
    """The checkpoint at ``path``, loaded with ``weights_only=True`` (tensors and plain containers only:
    a pickled object cannot run code), or None if it cannot be loaded safely or is malformed -- then the
    file is moved aside (``<name>.rejected-<time>``) with a warning and the run starts from scratch."""
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(ck, dict) or any(k not in ck for k in CHECKPOINT_KEYS):
            raise ValueError(f"not an optlab checkpoint (expected keys {', '.join(CHECKPOINT_KEYS)})")
        return ck
    except Exception as exc:  # unpickling refused, truncated zip, wrong shape: never executed, never fatal
        reject_checkpoint(path, exc)
        return None


def reject_checkpoint(path: Path, exc: BaseException) -> Path:
    """Move an unusable checkpoint aside (kept for inspection) and warn; the run restarts from scratch."""
    dest = path.with_name(f"{path.name}.rejected-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.replace(path, dest)
    text = str(exc).strip()
    reason = text.splitlines()[0][:300] if text else ""
    warnings.warn(
        f"checkpoint {path} could not be used ({type(exc).__name__}: {reason}); moved to {dest.name}, "
        "the run restarts from scratch",
        RuntimeWarning,
        stacklevel=3,
    )
    return dest
