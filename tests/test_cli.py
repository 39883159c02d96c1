"""The command line: every option of every subcommand has a help text (issue 15)."""

import argparse

from optlab.cli import build_parser


def _walk(parser, path):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + [name])
        elif not isinstance(action, argparse._HelpAction):
            yield " ".join(path), action


def test_every_option_has_a_help_text_and_shows_its_default():
    missing = [f"{where} {a.option_strings or a.dest}" for where, a in _walk(build_parser(), ["optlab"]) if not a.help]
    assert not missing, missing
    for where, a in _walk(build_parser(), ["optlab"]):
        if a.default not in (None, False, argparse.SUPPRESS) and a.option_strings:
            sub = build_parser()
            for name in where.split()[1:]:
                sub = next(x for x in sub._actions if isinstance(x, argparse._SubParsersAction)).choices[name]
            assert "default:" in sub.format_help().replace("\n", " "), (where, a.option_strings)
