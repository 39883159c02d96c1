"""mkdocs hook: replace ``<!-- cli-reference -->`` in cli.md by every ``optlab`` subcommand's ``--help``,
formatted by the real parser (``optlab.cli.build_parser``)."""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"


def _subcommands(parser: argparse.ArgumentParser, prefix: str):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, f"{prefix} {name}")


def cli_reference() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps help text to the terminal's width
    from optlab.cli import build_parser

    parts = []
    for name, parser in _subcommands(build_parser(), "optlab"):
        parser.prog = name
        parts.append(f"## `{name}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
