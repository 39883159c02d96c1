"""``optlab plugins`` (list, ``--hparams``, ``--check``) and ``optlab explain``."""

from __future__ import annotations

import shutil
import sys
import textwrap

from .common import HelpFormatter, add_model_args, build_model, item_summary, key_values


def cmd_plugins(args) -> int:
    from ..plugin import registry

    if args.check is not None:
        return _check_plugins(args.check or None)
    errors = registry.load_errors()
    rows = [
        (kind, name, e.plugin, item_summary(e.item))
        for kind in registry.KINDS
        for name, e in sorted(registry.items(kind).items(), key=lambda ne: (ne[1].name, ne[0]))
    ]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    indent = sum(w) + 6
    # descriptions wrap at word boundaries to the terminal (80 columns when not a terminal), never cut
    width = max(shutil.get_terminal_size((100, 24)).columns, indent + 30)
    print(f"{'kind'.ljust(w[0])}  {'name'.ljust(w[1])}  {'plugin'.ljust(w[2])}  description")
    for r in rows:
        lines = textwrap.wrap(r[3], width - indent, break_long_words=False, break_on_hyphens=False) or ["-"]
        print(f"{r[0].ljust(w[0])}  {r[1].ljust(w[1])}  {r[2].ljust(w[2])}  {lines[0]}")
        for line in lines[1:]:
            print(" " * indent + line)
    clashes = registry.clashes()
    if clashes:
        print("\nclashes: several plugins provide these short names; use a qualified name <plugin>:<item>")
        for (kind, short), choices in clashes.items():
            print(f"  {kind} {short!r}: {', '.join(choices)}")
    if getattr(args, "hparams", False):
        _print_optimizer_hparams(width)
    for e in errors:
        print(f"warning: {e}", file=sys.stderr)
    return 0


def _check_plugins(name: str | None) -> int:
    """``optlab plugins --check [NAME]``: the conformance kit on plugin NAME's items (default: every
    plugin but the built-ins); exit 1 when an item fails or was rejected at load."""
    import warnings

    from ..optim.hparams import unknown_name
    from ..plugin import registry
    from ..testing import check_plugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rejections are reported below as failures
        loaded = registry.plugin_names()
        rejected = registry.rejected()
    known = sorted(set(loaded) | {p for p, *_ in rejected})
    if name is not None and name not in known:
        print(f"optlab plugins --check: {unknown_name('plugin', name, known)}", file=sys.stderr)
        return 2
    names = [name] if name else [p for p in known if p != "builtins"]
    if not names:
        print("no plugin besides the built-ins is installed (check them with `optlab plugins --check builtins`)")
        return 0
    counts = {"pass": 0, "fail": 0, "skip": 0}
    for plugin in names:
        print(f"plugin {plugin}:")
        results = check_plugin(plugin)
        width = max((len(r.name) for r in results), default=0)
        for r in results:
            counts[r.status] += 1
            print(f"  {r.status.upper():4}  {r.kind:9}  {r.name.ljust(width)}  {r.detail}")
        if not results:
            print("  (registers no item)")
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} not checked")
    return 1 if counts["fail"] else 0


def _print_optimizer_hparams(width: int) -> None:
    """``optlab plugins --hparams``: each optimizer's entry (kind, step protocol, declared defaults)."""
    from ..api import optimizer_entry, optimizer_names

    print("\noptimizer hyperparameters (defaults; '...': also forwards options to its parts):")
    for name in optimizer_names():
        entry = optimizer_entry(name)
        hps = ", ".join(f"{k}={v!r}" for k, v in entry.defaults.items()) + (", ..." if entry.open_hparams else "")
        graph = "; steps need a double-backward graph" if entry.create_graph else ""
        text = f"{name} ({entry.kind}{graph}): {hps}"
        for line in textwrap.wrap(text, width - 4, subsequent_indent="    ", break_long_words=False):
            print("  " + line)


def cmd_explain(args) -> int:
    from ..api import explain, optimizer_entry

    entry = optimizer_entry(args.optimizer)
    if entry.kind == "baseline":  # no rules: every parameter goes to the one torch optimizer
        hps = {**entry.defaults, **key_values(args.hp)}
        entry.check_names(hps)
        print(
            f"{entry.name}: baseline from plugin {entry.plugin!r}, not built from rules: every trainable "
            f"parameter is updated by {item_summary(entry.builder) or entry.name}\n"
            "hyperparameters: " + ", ".join(f"{k}={v!r}" for k, v in hps.items())
        )
        return 0
    _, model = build_model(args)
    explain(model, args.optimizer, **key_values(args.hp))
    return 0


def add_plugins_parser(sub) -> None:
    sp = sub.add_parser(
        "plugins", formatter_class=HelpFormatter, help="list every registered plugin item and its plugin"
    )
    sp.add_argument(
        "--hparams",
        action="store_true",
        help="also list every optimizer's hyperparameters with their defaults and its step protocol",
    )
    sp.add_argument(
        "--check",
        nargs="?",
        const="",
        metavar="NAME",
        help="run the conformance kit (optlab.testing) on plugin NAME's items -- every plugin but the "
        "built-ins without NAME -- and print what passes, fails and why (items rejected at load included); "
        "exit 1 if anything fails",
    )
    sp.set_defaults(fn=cmd_plugins)


def add_explain_parser(sub) -> None:
    sp = sub.add_parser("explain", formatter_class=HelpFormatter, help="show which rule every parameter goes to")
    add_model_args(sp)
    sp.add_argument("--optimizer", default="sgd-ph", help="preset or baseline")
    sp.add_argument("--hp", action="append", metavar="KEY=VALUE", help="hyperparameter, JSON value; repeatable")
    sp.set_defaults(fn=cmd_explain)
