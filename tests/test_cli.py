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


def _plugin_rows(text: str) -> dict[str, str]:
    """``optlab plugins`` output -> {kind/name: description with wrapped lines joined}."""
    lines = text.splitlines()
    indent = lines[0].index("description")
    rows, key = {}, None
    for line in lines[1:]:
        if line[:indent].strip():
            kind, name = line.split()[:2]
            key = f"{kind}/{name}"
            rows[key] = line[indent:].strip()
        else:
            rows[key] += " " + line.strip()
    return rows


def test_plugins_lists_every_item_with_its_whole_first_paragraph(capsys):
    from optlab.cli import main
    from optlab.cli.common import item_summary as _summary
    from optlab.plugin import registry

    assert main(["plugins"]) == 0
    rows = _plugin_rows(capsys.readouterr().out)
    for kind in registry.KINDS:
        for e in registry.items(kind).values():
            summary = _summary(e.item)
            assert summary and summary != "-", f"{kind} {e.name} has no description"
            # wrapped at word boundaries: joining the lines gives the whole first paragraph back
            assert rows[f"{kind}/{e.name}"] == summary


def test_plugins_into_a_closed_pipe_exits_quietly():
    import subprocess
    import sys

    proc = subprocess.run(
        f"{sys.executable} -m optlab.cli plugins | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.startswith("kind")
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_train_from_a_finished_checkpoint_says_so(tmp_path, capsys):
    from optlab.cli import main

    ck = tmp_path / "ck.pt"
    argv = ["train", "--task", "digits", "--model", "mlp-bn", "--optimizer", "sgd", "--epochs", "1"]
    argv += ["--checkpoint", str(ck)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "epoch   1" in first and "already holds" not in first
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert f"checkpoint {ck} already holds all 1 epochs" in again and "nothing was trained" in again
    # the saved last epoch is shown, the same line as the first run's
    line = next(x for x in first.splitlines() if x.startswith("epoch   1"))
    assert line.split("time")[0] in again
