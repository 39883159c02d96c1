"""Progress of long non-grid commands (``optlab report``, ``optlab grid status``, ``optlab diagnose``).

Progress goes to **stderr only**, so stdout stays exactly the command's output (tables, verdicts,
``wrote PATH`` lines) whether or not it is piped. Library calls are silent: a loop reports only
inside :func:`reporting`, which the command line enters for the commands above.

- stderr is a terminal: a tqdm bar, cleared when the loop ends;
- stderr is not a terminal (a log file, CI): plain lines ``DESC: i/N UNIT`` at every tenth of the
  loop and a closing ``DESC: N/N UNIT in S s`` -- no carriage returns;
- ``OPTLAB_NO_PROGRESS=1``: nothing.
"""

from __future__ import annotations

import contextvars
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_REPORTING: contextvars.ContextVar[bool] = contextvars.ContextVar("optlab_progress_reporting", default=False)


@contextmanager
def reporting(enabled: bool = True) -> Iterator[None]:
    """Within this block, :func:`track` reports progress on stderr (unless ``OPTLAB_NO_PROGRESS=1``)."""
    token = _REPORTING.set(enabled)
    try:
        yield
    finally:
        _REPORTING.reset(token)


def active() -> bool:
    """Whether :func:`track` reports here: inside :func:`reporting` and ``OPTLAB_NO_PROGRESS`` is not ``1``."""
    return _REPORTING.get() and os.environ.get("OPTLAB_NO_PROGRESS") != "1"


def track(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Yield ``iterable``'s items, reporting progress on stderr when :func:`active` (see the module docstring)."""
    if not active():
        yield from iterable
        return
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    stream = sys.stderr
    if stream.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, leave=False, dynamic_ncols=True)
        return
    t0, shown, i = time.perf_counter(), 0, 0
    for i, item in enumerate(iterable, start=1):
        yield item
        if total:
            tenth = 10 * i // total
            if tenth > shown and i < total:
                shown = tenth
                print(f"{desc}: {i}/{total} {unit}", file=stream, flush=True)
    of = f"/{total}" if total else ""
    print(f"{desc}: {i}{of} {unit} in {time.perf_counter() - t0:.1f} s", file=stream, flush=True)
