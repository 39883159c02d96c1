"""``optlab`` command line: plugins, explain, train, grid run/status, diagnose, report.

One module per group of subcommands (:mod:`.info`: plugins and explain; :mod:`.train`; :mod:`.grid`;
:mod:`.diagnose`; :mod:`.report`), each with its ``cmd_*`` function and its parser; :mod:`.common`
holds what they share. The console script is ``optlab.cli:main``.
"""

from __future__ import annotations

import argparse
import os
import sys

from optlab import progress

from .common import HelpFormatter
from .diagnose import add_diagnose_parser, cmd_diagnose
from .grid import add_grid_parser, cmd_grid
from .info import add_explain_parser, add_plugins_parser, cmd_explain, cmd_plugins
from .report import add_report_parser, cmd_report
from .train import TRAIN_HPARAM_FLAGS, add_train_parser, cmd_train

__all__ = [
    "main",
    "build_parser",
    "cmd_plugins",
    "cmd_explain",
    "cmd_train",
    "cmd_grid",
    "cmd_diagnose",
    "cmd_report",
    "TRAIN_HPARAM_FLAGS",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``optlab`` argument parser (every option has a help text; tested): one function per subcommand."""
    p = argparse.ArgumentParser(
        prog="optlab", description="Compound optimizers assembled from plugins.", formatter_class=HelpFormatter
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="a plugin that fails to load, or an item that fails validation, is fatal "
        "(otherwise reported and skipped); same as OPTLAB_STRICT_PLUGINS=1",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (
        add_plugins_parser,
        add_explain_parser,
        add_train_parser,
        add_grid_parser,
        add_diagnose_parser,
        add_report_parser,
    ):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.strict:
        from optlab.plugin import registry

        os.environ["OPTLAB_STRICT_PLUGINS"] = "1"
        registry.reset()
    # progress of the long non-grid commands, on stderr only (optlab.progress); `grid run` has its own
    long_running = args.cmd in ("report", "diagnose") or getattr(args, "grid_cmd", None) == "status"
    try:
        with progress.reporting(long_running):
            return args.fn(args)
    except BrokenPipeError:
        # the reader went away (``optlab plugins | head``): stop quietly, as ``cat`` does; point stdout at
        # devnull so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ValueError, KeyError, TypeError, FileNotFoundError, ImportError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
