"""Results store: a directory of one JSON file per completed trial.

Layout::

    RESULTS/
      spec.toml                 copy of the grid spec (first run)
      trials/<trial_id>.json    a completed trial (ok / diverged / failed), written atomically
      running/<trial_id>.lock   claimed by a live process (pid, host); its mtime is the heartbeat
      checkpoints/<trial_id>.pt per-epoch checkpoint of an unfinished trial
      quarantine/               trial files that failed validation (moved aside, kept for inspection)
                                and checkpoints that could not be loaded safely

A trial file appears only through ``os.replace`` of a fully written, fsynced
temporary file, so a crash (even ``kill -9``) never leaves a half-written result
that looks complete. Claims use ``O_CREAT | O_EXCL``, safe for concurrent
workers. While a trial runs, a daemon thread of its process touches the claim
every ``heartbeat_s`` seconds (30). A claim is stale when its process is gone
(same host: the pid is checked) or, for a claim of another host (a SLURM or Ray
node, whose processes cannot be checked), when its heartbeat is older than
``stale_after_s`` (600, ``$OPTLAB_CLAIM_STALE_AFTER``; keep it well above the
heartbeat and any clock skew between hosts). A stale claim is taken over
atomically (check-and-remove under a ``flock``, so of many processes racing for
one dead claim exactly one wins).

A trial file counts as complete only if it is a valid trial record (:func:`record_problem` is None:
one rule used by ``grid run``, ``grid status``, ``report`` and
``analysis.load``). ``grid run`` quarantines a file that does not validate and
reruns its trial; the read-only commands count and name such files.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from .progress import track

__all__ = ["Store", "StoreError", "CorruptRecord", "atomic_write", "record_problem", "SCHEMA_VERSION", "STATUSES"]

#: version of the trial-record format written by this code (1: records without the field)
SCHEMA_VERSION = 2
STATUSES = ("ok", "diverged", "failed")


class StoreError(ValueError):
    pass


class CorruptRecord(StoreError):
    """A trial file that is not a valid optlab trial record (``path``, ``problem``)."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"invalid trial file {path}: {problem}")


def _is_num(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def record_problem(rec, trial_id: str | None = None) -> str | None:
    """Why ``rec`` is not a valid trial record, or None if it is.

    Checks the shape every reader relies on: a JSON object with a known
    ``status``, a ``config`` naming task/model/optimizer (strings), an integer
    seed and a ``hparams`` object, ``metrics`` as a list of objects with an
    integer ``epoch`` and numeric values, as many epochs as configured for an
    ``ok`` trial, an ``id`` equal to the file name, and a known schema version.
    """
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    version = rec.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        return f"unknown schema_version {version!r} (this optlab reads 1..{SCHEMA_VERSION})"
    status = rec.get("status")
    if status not in STATUSES:
        return f"unknown status {status!r}; expected one of {', '.join(STATUSES)}"
    if trial_id is not None and rec.get("id") not in (None, trial_id):
        return f"id {rec.get('id')!r} does not match the file name {trial_id!r}"
    cfg = rec.get("config")
    if not isinstance(cfg, dict):
        return "missing 'config' object"
    for key in ("task", "model", "optimizer"):
        if not isinstance(cfg.get(key), str):
            return f"config.{key} must be a string, got {cfg.get(key)!r}"
    if not isinstance(cfg.get("seed", 0), int):
        return f"config.seed must be an integer, got {cfg.get('seed')!r}"
    if not isinstance(cfg.get("hparams", {}), dict):
        return f"config.hparams must be an object, got {type(cfg.get('hparams')).__name__}"
    metrics = rec.get("metrics")
    if not isinstance(metrics, list):
        return f"'metrics' must be a list, got {type(metrics).__name__}"
    for i, m in enumerate(metrics):
        if not isinstance(m, dict):
            return f"metrics[{i}] must be an object, got {type(m).__name__}"
        if not isinstance(m.get("epoch"), int) or m["epoch"] != i + 1:
            return f"metrics[{i}].epoch must be {i + 1}, got {m.get('epoch')!r}"
        for k, v in m.items():
            if k != "lrs" and not _is_num(v):
                return f"metrics[{i}].{k} must be a number, got {v!r}"
    if status == "ok":
        epochs = cfg.get("epochs")
        if isinstance(epochs, int) and len(metrics) != epochs:
            return f"status ok but {len(metrics)} of {epochs} epochs recorded"
    resolved = rec.get("resolved", {})
    if not isinstance(resolved, dict) or not all(isinstance(v, str) for v in resolved.values()):
        return f"'resolved' must map config names to qualified names (strings), got {resolved!r}"
    if "stage" in rec and rec["stage"] not in ("tuning", "evaluation"):
        return f"unknown stage {rec['stage']!r}; expected 'tuning' or 'evaluation'"
    return None


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part
    (write a temporary file beside it, fsync, ``os.replace``, fsync the directory)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
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


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` (on this host) runs; a zombie -- killed, not yet reaped -- does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): the signal test is all there is
        return True


def _default_stale_after() -> float:
    text = os.environ.get("OPTLAB_CLAIM_STALE_AFTER", "600")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise StoreError(f"invalid OPTLAB_CLAIM_STALE_AFTER={text!r}; expected seconds > 0, e.g. 600")
    return value


class Store:
    """The results directory of one grid (layout in the module docstring)."""

    def __init__(self, root: str | Path, *, heartbeat_s: float = 30.0, stale_after_s: float | None = None):
        self.root = Path(root)
        #: seconds between two touches of a claim this process holds
        self.heartbeat_s = float(heartbeat_s)
        #: a claim of another host whose heartbeat is older than this is stale
        self.stale_after_s = _default_stale_after() if stale_after_s is None else float(stale_after_s)
        self._beats: dict[str, threading.Event] = {}
        self.trials = self.root / "trials"
        self.running = self.root / "running"
        self.checkpoints = self.root / "checkpoints"
        self.quarantined = self.root / "quarantine"

    def init(self, spec_text: str | None = None) -> Store:
        for d in (self.trials, self.running, self.checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        if spec_text is not None and not (self.root / "spec.toml").exists():
            atomic_write(self.root / "spec.toml", spec_text)
        return self

    # ------------------------------------------------------------- writing
    def write(self, trial_id: str, result: dict) -> Path:
        path = self.trials / f"{trial_id}.json"
        atomic_write(path, json.dumps(result, indent=1, default=str))
        return path

    # ------------------------------------------------------------- claims
    def claim(self, trial_id: str) -> bool:
        """Take the trial for this process; False if a live process holds it.

        A stale claim (its process is gone) is taken over atomically: checking and removing
        it happens under an exclusive ``flock`` on ``RESULTS/.claims.lock``, so of many processes
        racing for one dead claim exactly one removes it, and the fresh ``O_EXCL`` lock
        then has exactly one owner.
        """
        lock = self.running / f"{trial_id}.lock"
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                with open(self.root / ".claims.lock", "a") as guard:
                    fcntl.flock(guard, fcntl.LOCK_EX)
                    if self._lock_live(lock):
                        return False
                    lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(info)
                f.flush()
            self._start_heartbeat(trial_id, lock)
            return True
        return False

    def _start_heartbeat(self, trial_id: str, lock: Path) -> None:
        stop = self._beats[trial_id] = threading.Event()

        def beat():
            while not stop.wait(self.heartbeat_s):
                try:
                    os.utime(lock)
                except FileNotFoundError:
                    return  # released (or taken over after this process was presumed dead)

        threading.Thread(target=beat, name=f"optlab-heartbeat-{trial_id}", daemon=True).start()

    def release(self, trial_id: str) -> None:
        stop = self._beats.pop(trial_id, None)
        if stop is not None:
            stop.set()
        try:
            (self.running / f"{trial_id}.lock").unlink()
        except FileNotFoundError:
            pass

    def _lock_live(self, lock: Path) -> bool:
        try:
            info = json.loads(lock.read_text() or "{}")
            if not isinstance(info, dict):
                raise ValueError("not an object")
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            # being written right now (created, not yet filled): treat as live unless old
            try:
                return time.time() - lock.stat().st_mtime < 60
            except FileNotFoundError:
                return False
        if info.get("host") != socket.gethostname():
            # another host's process cannot be checked: its heartbeat (the file's mtime) says whether it lives
            try:
                return time.time() - lock.stat().st_mtime < self.stale_after_s
            except FileNotFoundError:
                return False
        try:
            return pid_alive(int(info.get("pid", -1)))
        except (TypeError, ValueError):
            return False

    def live_claims(self) -> set[str]:
        if not self.running.exists():
            return set()
        return {p.stem for p in self.running.glob("*.lock") if self._lock_live(p)}

    def checkpoint(self, trial_id: str) -> Path:
        return self.checkpoints / f"{trial_id}.pt"

    # ------------------------------------------------------------- quarantine
    def quarantine(self, path: Path, reason: str) -> Path:
        """Move ``path`` (a bad trial file or checkpoint) to ``quarantine/`` with a ``.reason`` note beside it."""
        self.quarantined.mkdir(parents=True, exist_ok=True)
        dest = self.quarantined / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            return dest
        atomic_write(dest.with_name(dest.name + ".reason"), reason + "\n")
        return dest

    # ------------------------------------------------------------- reading
    def ids(self) -> set[str]:
        """Ids of the trial files present (valid or not; see :meth:`scan`)."""
        if not self.trials.exists():
            return set()
        return {p.stem for p in self.trials.glob("*.json")}

    def has(self, trial_id: str) -> bool:
        """True if a *valid* result of ``trial_id`` exists."""
        try:
            self.read(trial_id)
        except (FileNotFoundError, CorruptRecord):
            return False
        return True

    def read(self, trial_id: str) -> dict:
        """The validated record of ``trial_id``; :class:`CorruptRecord` if it does not validate."""
        return self._load(self.trials / f"{trial_id}.json")

    @staticmethod
    def _load(path: Path) -> dict:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptRecord(path, f"not UTF-8 text ({exc.reason})") from exc
        if not text.strip():
            raise CorruptRecord(path, "empty file")
        try:
            rec = json.loads(text)
        except ValueError as exc:
            raise CorruptRecord(path, f"not valid JSON ({exc})") from exc
        problem = record_problem(rec, path.stem)
        if problem:
            raise CorruptRecord(path, problem)
        return rec

    def scan(self) -> tuple[dict[str, dict], list[CorruptRecord]]:
        """Every trial file: ``({id: valid record}, [CorruptRecord for each file that does not validate])``."""
        good, bad = {}, []
        if self.trials.exists():
            paths = sorted(self.trials.glob("*.json"))
            for path in track(paths, desc=f"reading {self.trials}", unit="files"):
                try:
                    good[path.stem] = self._load(path)
                except CorruptRecord as exc:
                    bad.append(exc)
                except FileNotFoundError:
                    pass  # quarantined or retried by another process meanwhile
        return good, bad

    def quarantine_corrupt(self) -> list[CorruptRecord]:
        """Move every trial file that does not validate to ``quarantine/`` (warning for each); return them."""
        _, bad = self.scan()
        for exc in bad:
            dest = self.quarantine(exc.path, exc.problem)
            warnings.warn(f"{exc}; moved to {dest} and the trial will rerun", RuntimeWarning, stacklevel=2)
        return bad

    def iter_results(self, skip_corrupt: bool = False) -> Iterator[dict]:
        """Valid records in id order. A file that does not validate raises :class:`CorruptRecord`
        unless ``skip_corrupt`` (then it is skipped with a warning naming it)."""
        if not self.root.exists():
            raise StoreError(f"results directory {self.root} does not exist")
        if not self.trials.exists():
            raise StoreError(
                f"{self.root} is not an optlab results directory (no trials/ folder); run `optlab grid run SPEC` first"
            )
        good, bad = self.scan()
        if bad and not skip_corrupt:
            raise bad[0]
        for exc in bad:
            warnings.warn(f"skipped {exc}", RuntimeWarning, stacklevel=2)
        yield from good.values()


def __getattr__(name: str):
    if name == "validate_record":  # renamed in 0.2.0: "validate" checks values and raises; this returns a reason
        import warnings

        warnings.warn(
            "optlab.store.validate_record is deprecated since optlab 0.2.0 and will be removed in 0.3.0; "
            "use optlab.store.record_problem (same arguments, same result)",
            DeprecationWarning,
            stacklevel=2,
        )
        return record_problem
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
