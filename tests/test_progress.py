"""Progress of long commands (issue 23): on stderr only, a tqdm bar when stderr is a terminal (checked
through a real pseudo-terminal, python's ``pty``), plain lines off a terminal, nothing with
``OPTLAB_NO_PROGRESS=1``, and stdout (the command's output) byte-identical with or without it."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import termios

import pytest

from optlab import progress

ENV = {k: v for k, v in os.environ.items() if k != "OPTLAB_NO_PROGRESS"}
ENV.update(OMP_NUM_THREADS="1", OPTLAB_NO_CACHE="1", COLUMNS="100")

TINY_SPEC = """
name = "tiny"
seeds = [0]

[run]
epochs = 1
batch_size = 256

[[setting]]
task = "digits"
model = "mlp-bn"
model_options = { width = 8, depth = 1 }

[[optimizer]]
name = "sgd"
lr = [0.1, 0.2]
"""


def _run(args, cwd, env=ENV, tty: str | None = None, timeout=300):
    """Run ``python -m optlab.cli ARGS``; ``tty`` = "stderr" or "stdout" puts that stream on a pty (the
    other stays a pipe). Returns (returncode, stdout bytes, stderr bytes)."""
    cmd = [sys.executable, "-m", "optlab.cli", *args]
    if tty is None:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    master, slave = pty.openpty()
    termios.tcsetwinsize(slave, (24, 100))  # a fresh pty is 0 columns wide: tqdm would draw an empty bar
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, tty: slave}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, **streams)
    os.close(slave)
    chunks = []
    while True:  # read the terminal until every writer has closed it (EIO)
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    piped = proc.stdout if tty == "stderr" else proc.stderr
    other = piped.read()
    proc.wait(timeout=timeout)
    term = b"".join(chunks)
    return (proc.returncode, other, term) if tty == "stderr" else (proc.returncode, term, other)


def test_track_reports_plain_lines_on_stderr_off_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("OPTLAB_NO_PROGRESS", raising=False)
    assert list(progress.track(range(20), desc="outside")) == list(range(20))  # library use: silent
    assert capsys.readouterr() == ("", "")
    with progress.reporting():
        assert list(progress.track(range(20), desc="loading", unit="files")) == list(range(20))
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    # a line at every tenth (2, 4, ..., 18 of 20), then the closing line with the time
    assert lines[:-1] == [f"loading: {i}/20 files" for i in range(2, 20, 2)]
    assert lines[-1].startswith("loading: 20/20 files in ") and lines[-1].endswith(" s")
    assert "\r" not in err
    monkeypatch.setenv("OPTLAB_NO_PROGRESS", "1")
    with progress.reporting():
        assert list(progress.track(range(20), desc="loading")) == list(range(20))
    assert capsys.readouterr() == ("", "")


def test_track_passes_generators_through_and_names_an_unknown_total(capsys, monkeypatch):
    monkeypatch.delenv("OPTLAB_NO_PROGRESS", raising=False)
    with progress.reporting():
        assert list(progress.track((i * i for i in range(5)), desc="gen")) == [0, 1, 4, 9, 16]
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("gen: 5 it in ")


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """A finished two-trial grid (one epoch each) and its spec."""
    d = tmp_path_factory.mktemp("tiny-grid")
    (d / "tiny.toml").write_text(TINY_SPEC)
    rc, out, err = _run(["grid", "run", "tiny.toml", "--results", "res"], d, env={**ENV, "OPTLAB_NO_PROGRESS": "1"})
    assert rc == 0, err.decode()[-3000:]
    return d


@pytest.mark.parametrize(
    "args",
    [["grid", "status", "tiny.toml", "--results", "res"], ["report", "res", "-o", "rep"]],
    ids=["grid-status", "report"],
)
def test_off_a_terminal_progress_goes_to_stderr_and_stdout_is_unchanged(tiny_results, args):
    rc, out, err = _run(args, tiny_results)
    assert rc == 0, err.decode()[-3000:]
    rc_q, out_q, err_q = _run(args, tiny_results, env={**ENV, "OPTLAB_NO_PROGRESS": "1"})
    assert rc_q == 0
    assert out == out_q  # progress never reaches stdout
    assert b"reading " in err and b"2/2 files in " in err, err.decode()
    assert b"reading " not in err_q and b"files in" not in err_q
    assert b"\r" not in err  # plain lines, no carriage returns, in a log file


def test_report_on_a_terminal_draws_a_bar_on_stderr_only(tiny_results):
    rc, out, term = _run(["report", "res", "-o", "rep-tty"], tiny_results, tty="stderr")
    assert rc == 0, term.decode(errors="replace")[-3000:]
    assert b"\r" in term and b"reading " in term and b"/2 " in term, term
    assert b"files in " not in term  # the bar, not the plain lines
    assert b"\r" not in out and b"reading " not in out and b"wrote " in out


def test_diagnose_progress_off_and_on_a_terminal(tmp_path):
    args = ["diagnose", "--model", "mlp-bn", "--model-option", "width=8", "--batch-size", "32", "--out", "d"]
    rc, out, err = _run(args, tmp_path)
    assert rc == 0, err.decode()[-3000:]
    assert b"dense Hessian blocks: " in err and b"estimators: " in err
    assert b"dense Hessian blocks" not in out and b"offdiag_frob_mass" in out
    rc, out_t, term = _run(args, tmp_path, tty="stderr")
    assert rc == 0, term.decode(errors="replace")[-3000:]
    assert b"\r" in term and b"dense Hessian blocks" in term
    assert b"dense Hessian blocks" not in out_t and b"offdiag_frob_mass" in out_t


def test_grid_run_bar_follows_stderr_not_stdout(tmp_path):
    """The grid bar is drawn by tqdm on stderr: with only stderr on a terminal the bar shows and stdout gets
    no per-trial lines; with only stdout on a terminal (stderr to a log) the per-trial lines are written."""
    (tmp_path / "tiny.toml").write_text(TINY_SPEC)
    rc, out, term = _run(["grid", "run", "tiny.toml", "--results", "a"], tmp_path, tty="stderr")
    assert rc == 0, term.decode(errors="replace")[-3000:]
    assert b"grid tiny" in term and b"\r" in term and b"2/2" in term, term
    assert b"[1/2]" not in out and b"[2/2]" not in out
    rc, out, err = _run(["grid", "run", "tiny.toml", "--results", "b"], tmp_path, tty="stdout")
    assert rc == 0, err.decode(errors="replace")[-3000:]
    assert b"[1/2] ok" in out and b"[2/2] ok" in out, out
    assert b"grid tiny:" not in err  # no bar in the log file
