"""Results store: a directory of one JSON file per completed trial.

Layout::

    RESULTS/
      spec.toml                 copy of the grid spec (first run)
      trials/<trial_id>.json    a completed trial (ok / diverged / failed), written atomically
      running/<trial_id>.lock   claimed by a live process (pid, host)
      checkpoints/<trial_id>.pt per-epoch checkpoint of an unfinished trial

A trial file appears only through ``os.replace`` of a fully written, fsynced
temporary file, so a crash (even ``kill -9``) never leaves a half-written result
that looks complete. Claims use ``O_CREAT | O_EXCL``, safe for concurrent
workers; a claim whose process is gone (same host) is stale and is taken over.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

__all__ = ["Store", "StoreError"]


class StoreError(ValueError):
    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.trials = self.root / "trials"
        self.running = self.root / "running"
        self.checkpoints = self.root / "checkpoints"

    def init(self, spec_text: str | None = None) -> "Store":
        for d in (self.trials, self.running, self.checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        if spec_text is not None and not (self.root / "spec.toml").exists():
            self._atomic_write(self.root / "spec.toml", spec_text)
        return self

    # ------------------------------------------------------------- writing
    @staticmethod
    def _atomic_write(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename durable
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    def write(self, trial_id: str, result: dict) -> Path:
        path = self.trials / f"{trial_id}.json"
        self._atomic_write(path, json.dumps(result, indent=1, default=str))
        return path

    # ------------------------------------------------------------- claims
    def claim(self, trial_id: str) -> bool:
        """Take the trial for this process; False if a live process holds it."""
        lock = self.running / f"{trial_id}.lock"
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._lock_live(lock):
                    return False
                try:
                    lock.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(info)
            return True
        return False

    def release(self, trial_id: str) -> None:
        try:
            (self.running / f"{trial_id}.lock").unlink()
        except FileNotFoundError:
            pass

    @staticmethod
    def _lock_live(lock: Path) -> bool:
        try:
            info = json.loads(lock.read_text() or "{}")
        except (OSError, ValueError):
            # being written right now (created, not yet filled): treat as live unless old
            try:
                return time.time() - lock.stat().st_mtime < 60
            except FileNotFoundError:
                return False
        if info.get("host") != socket.gethostname():
            return True  # cannot check another host's processes
        return _pid_alive(int(info.get("pid", -1)))

    def live_claims(self) -> set[str]:
        if not self.running.exists():
            return set()
        return {p.stem for p in self.running.glob("*.lock") if self._lock_live(p)}

    def checkpoint(self, trial_id: str) -> Path:
        return self.checkpoints / f"{trial_id}.pt"

    # ------------------------------------------------------------- reading
    def ids(self) -> set[str]:
        if not self.trials.exists():
            return set()
        return {p.stem for p in self.trials.glob("*.json")}

    def has(self, trial_id: str) -> bool:
        return (self.trials / f"{trial_id}.json").exists()

    def read(self, trial_id: str) -> dict:
        path = self.trials / f"{trial_id}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise StoreError(f"corrupt trial file {path}: {exc}") from exc

    def iter_results(self, skip_corrupt: bool = False) -> Iterator[dict]:
        if not self.root.exists():
            raise StoreError(f"results directory {self.root} does not exist")
        if not self.trials.exists():
            raise StoreError(f"{self.root} is not an optlab results directory (no trials/ folder); "
                             "run `optlab grid run SPEC` first")
        for path in sorted(self.trials.glob("*.json")):
            try:
                yield json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                if not skip_corrupt:
                    raise StoreError(f"corrupt trial file {path}: {exc}") from exc
