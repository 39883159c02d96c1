"""A test-only plugin that stops training runs at an epoch boundary until the test lets them go.

Fault tests (kill -9, Ctrl-C, SIGTERM) must reach their fault point by an event they wait
for, never by hoping the machine is slow enough. Task ``gated`` wraps any registered task;
a run of it stops at the start of epoch ``block_after + 1`` -- after the runner has written
the checkpoint of epoch ``block_after`` (``optlab.train._run`` saves it at the end of each
epoch, before the next epoch asks for its first batch) -- and waits there until the test
releases the gate. The gate is a folder shared by the test and every process it starts:

* a run arriving at the boundary takes the next ticket ``ticket-<i>`` (``O_CREAT|O_EXCL``:
  exactly one owner per number, across processes); the first ``pass_first`` tickets pass
  without stopping (so "one trial complete, another stopped mid-way" is a state, not a race);
* a stopped run writes ``reached-<i>.json`` (atomically; ``pid``, ``rank``, ``seed``,
  ``epoch``) and waits until ``release`` exists; the test waits for ``reached-*.json``;
* once ``release`` exists no run stops at all (a rerun resumes straight through).

The epoch is counted by the task object, i.e. per process and per run: a run resumed from
its checkpoint counts from there (tests release the gate before resuming). A stopped run
that is never released raises after ``max_wait_s`` so a broken test cannot leave a process
waiting forever.

A second Ctrl-C that lands *inside* the driver's own output (a user pressing twice quickly)
cannot be timed from outside; with ``OPTLAB_TEST_SIGINT_AFTER=<text>`` in its environment, a
process that loads this plugin sends itself SIGINT right after it writes ``<text>`` to its
stderr -- the signal then arrives in the middle of that ``print``.

Installed for subprocesses as a real plugin distribution (``tests/plugin_site.py``); in the
test process register it with ``optlab.registry.register_plugin(fixtures_blocking, ...)``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from optlab.plugin.hookspecs import hookimpl
from optlab.training.tasks import Task, make_task

__all__ = ["Gate", "GatedTask", "gated", "toml_inline"]

POLL_S = 0.02


class Gate:
    """The folder both sides share (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------- test side
    def options(self, inner: str, block_after: int, pass_first: int = 0, **inner_options) -> dict:
        """``task_options`` of a ``gated`` run through this gate."""
        self.path.mkdir(parents=True, exist_ok=True)
        opts = {"inner": inner, "gate": str(self.path), "block_after": block_after, "pass_first": pass_first}
        return {**opts, "options": inner_options} if inner_options else opts

    def toml(self, inner: str, block_after: int, pass_first: int = 0, **inner_options) -> str:
        """The same options as a TOML inline table, for ``task_options = ...`` in a grid spec."""
        return toml_inline(self.options(inner, block_after, pass_first, **inner_options))

    def reached(self) -> list[dict]:
        """The runs stopped at the gate so far (ticket order)."""
        out = []
        for p in sorted(self.path.glob("reached-*.json"), key=lambda p: int(p.stem.split("-")[1])):
            out.append(json.loads(p.read_text()))
        return out

    def wait_reached(self, n: int, timeout: float = 300.0, alive=None, log: Path | None = None) -> list[dict]:
        """Wait until ``n`` runs are stopped at the gate; fail early once ``alive()`` is False (the
        process under test ended), with the tail of ``log`` (its output) in the message."""
        deadline = time.monotonic() + timeout
        while len(got := self.reached()) < n:
            why = None
            if alive is not None and not alive():
                why = f"the process ended before {n} run(s) reached the gate ({len(got)} did)"
            elif time.monotonic() > deadline:
                why = f"{len(got)} of {n} run(s) reached the gate within {timeout:.0f} s"
            if why:
                tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
                raise AssertionError(f"{why}\n{tail}")
            time.sleep(POLL_S)
        return got

    def tickets(self) -> int:
        """How many runs arrived at the boundary (passed or stopped)."""
        return len(list(self.path.glob("ticket-*")))

    def release(self) -> None:
        (self.path / "release").touch()

    @property
    def released(self) -> bool:
        return (self.path / "release").exists()

    # -------------------------------------------------------------- run side
    def _ticket(self) -> int:
        i = 0
        while True:
            try:
                os.close(os.open(self.path / f"ticket-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return i
            except FileExistsError:
                i += 1

    def arrive(self, info: dict, pass_first: int, max_wait_s: float) -> None:
        """Called by a run at the boundary: pass, or announce and wait for the release."""
        if self.released:
            return
        ticket = self._ticket()
        if ticket < pass_first:
            return
        tmp = self.path / f".reached-{ticket}.tmp"
        tmp.write_text(json.dumps({**info, "ticket": ticket, "pid": os.getpid(), "rank": os.environ.get("RANK")}))
        os.replace(tmp, self.path / f"reached-{ticket}.json")
        deadline = time.monotonic() + max_wait_s
        while not self.released:
            if time.monotonic() > deadline:
                raise RuntimeError(f"gate {self.path} was not released within {max_wait_s} s")
            time.sleep(POLL_S)


def toml_inline(d: dict) -> str:
    """A TOML inline table of strings, numbers and nested tables (JSON strings are TOML strings)."""
    items = (f"{k} = {toml_inline(v) if isinstance(v, dict) else json.dumps(v)}" for k, v in d.items())
    return "{" + ", ".join(items) + "}"


class GatedTask(Task):
    """The inner task's data and loss; ``train_batches`` stops at the gate once per run."""

    gate: Gate
    block_after: int
    pass_first: int
    max_wait_s: float
    seed: int
    epochs_started: int

    def train_batches(self, batch_size: int, generator) -> Iterator[tuple]:
        # a generator: this body runs at the epoch's first batch, after the previous epoch's checkpoint
        self.epochs_started += 1
        if self.epochs_started == self.block_after + 1:
            self.gate.arrive({"seed": self.seed, "epoch": self.block_after}, self.pass_first, self.max_wait_s)
        yield from super().train_batches(batch_size, generator)


def gated(
    seed: int = 0,
    inner: str = "digits",
    gate: str = "",
    block_after: int = 1,
    pass_first: int = 0,
    max_wait_s: float = 600.0,
    options: dict | None = None,
) -> Task:
    """Task ``inner`` (built with ``options``), stopping at ``gate`` after epoch ``block_after``."""
    if not gate:
        raise ValueError("task 'gated' needs gate=<folder>")
    if not isinstance(block_after, int) or block_after < 1:
        raise ValueError(f"invalid block_after={block_after!r}; expected an integer >= 1")
    base = make_task(inner, seed=seed, **(options or {}))
    task = GatedTask(**{f.name: getattr(base, f.name) for f in fields(Task)})
    task.gate, task.block_after, task.pass_first = Gate(gate), block_after, pass_first
    task.max_wait_s, task.seed, task.epochs_started = max_wait_s, seed, 0
    return task


class _SigintAfter:
    """``sys.stderr`` that sends this process SIGINT, once, right after a write holding ``text``."""

    def __init__(self, stream, text: str):
        self._stream, self._text, self._sent = stream, text, False

    def write(self, s: str) -> int:
        n = self._stream.write(s)
        if not self._sent and self._text in s:
            self._sent = True
            self._stream.flush()
            os.kill(os.getpid(), signal.SIGINT)
        return n

    def __getattr__(self, name):
        return getattr(self._stream, name)


if os.environ.get("OPTLAB_TEST_SIGINT_AFTER"):
    sys.stderr = _SigintAfter(sys.stderr, os.environ["OPTLAB_TEST_SIGINT_AFTER"])


@hookimpl
def optlab_register_tasks(register):
    register("gated", gated)
