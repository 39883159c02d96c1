"""What the subcommands share: argument types, the help formatter, the task/model options."""

from __future__ import annotations

import argparse
import inspect
import json

__all__ = [
    "json_value",
    "key_values",
    "positive_number",
    "probability",
    "item_summary",
    "HelpFormatter",
    "add_model_args",
    "add_option_args",
    "build_model",
]


def json_value(text: str):
    """A JSON value, or the text itself when it is not JSON (``lr=0.1`` -> 0.1, ``engine=func`` -> "func")."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def key_values(items: list[str]) -> dict:
    """``["KEY=VALUE", ...]`` -> ``{key: JSON value}`` (dashes in keys become underscores)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: expected KEY=VALUE, got {item!r} (e.g. --hp hessian_momentum=0.99)")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = json_value(v)
    return out


def positive_number(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive number, e.g. 0.005")
    return v


def probability(text: str) -> float:
    """argparse type: a number in (0, 1)."""
    v = positive_number(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number in (0, 1), e.g. 0.05")
    return v


def item_summary(item) -> str:
    """The first paragraph of an item's docstring, on one line (what ``optlab plugins`` shows)."""
    doc = inspect.getdoc(item) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    return text[:-2] + "." if text.endswith("::") else text  # reST literal-block marker


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, off switches)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_model_args(sp) -> None:
    """``--task``, ``--model``, ``--decouple`` and their options (explain, diagnose)."""
    sp.add_argument("--task", default="digits", help="registered task (`optlab plugins` lists them)")
    sp.add_argument("--model", default="cnn-bn", help="registered model")
    sp.add_argument("--decouple", action="store_true", help="weight-normalize conv/linear layers")
    add_option_args(sp)


def add_option_args(sp) -> None:
    """``--task-option`` and ``--model-option`` (repeatable KEY=VALUE)."""
    sp.add_argument(
        "--task-option",
        action="append",
        metavar="KEY=VALUE",
        help="task option, JSON value (e.g. val_fraction=0.1); repeatable",
    )
    sp.add_argument(
        "--model-option",
        action="append",
        metavar="KEY=VALUE",
        help="model option, JSON value (e.g. width=32); repeatable",
    )


def build_model(args):
    """The task and model named by ``--task``/``--model`` and their options."""
    from optlab.training.tasks import make_model, make_task

    task = make_task(args.task, **key_values(getattr(args, "task_option", None)))
    model = make_model(args.model, task.info, decouple=args.decouple, **key_values(getattr(args, "model_option", None)))
    return task, model
