"""The package's module import graph, function-level imports included, has no circle, and its
subpackages import each other only downwards, in the order of ``docs/design.md``.

A circle hidden by imports inside functions (e.g. api -> registry -> validation ->
testing -> api) still ties the layers together; this test reads every module of the
installed ``optlab`` package (built-ins and analysis included) with ``ast`` and fails on
any circle, naming it. Imports under ``if TYPE_CHECKING:`` are not runtime imports, but an
annotation is still a dependency: the circle check counts them too. Plugins loaded through
entry points are not imports.

Layers (bottom up; a module may import its own layer and the ones below)::

    optim, store, progress  <-  plugin, api, testing  <-  training, diagnostics, integrations, optlab
    <-  grid  <-  builtins, analysis  <-  cli

The built-in plugin sits above ``grid`` because it registers grid's executors and sinks;
nothing imports it (the ``optlab`` entry point loads it, like any plugin).
"""

from __future__ import annotations

import ast
import graphlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import optlab


def package_modules(package) -> dict[str, tuple[Path, bool]]:
    """``{module name: (file, is_package)}`` for ``package`` and everything below it."""
    out = {package.__name__: (Path(package.__file__), True)}
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            out[info.name] = (Path(spec.origin), info.ispkg)
    return out


def _runtime_nodes(tree: ast.AST, type_checking: bool = False):
    """Every node of ``tree``; without ``type_checking``, not the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not type_checking and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _known(name: str, modules) -> str | None:
    """``name`` or its longest prefix that is one of ``modules``."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_names(modules: dict[str, tuple[Path, bool]], type_checking: bool = False) -> dict[str, set[str]]:
    """``{module: every dotted name its imports name}`` (``from a import b`` names ``a.b``), any depth."""
    out: dict[str, set[str]] = {m: set() for m in modules}
    for mod, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in _runtime_nodes(tree, type_checking):
            if isinstance(node, ast.Import):
                out[mod].update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    anchor = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{anchor}.{base}" if base else anchor
                out[mod].update([base] + [f"{base}.{a.name}" for a in node.names])
    return out


def import_graph(modules: dict[str, tuple[Path, bool]], type_checking: bool = False) -> dict[str, set[str]]:
    """``{module: modules it imports}``, restricted to ``modules``, at any depth of the file."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in _runtime_nodes(tree, type_checking):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    anchor = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                k = _known(t, modules)
                if k is not None and k != mod:
                    graph[mod].add(k)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Layer of every node of an acyclic graph: 1 + the highest layer it imports (1: imports nothing)."""
    memo: dict[str, int] = {}
    for node in graphlib.TopologicalSorter(graph).static_order():  # dependencies first
        memo[node] = 1 + max((memo[d] for d in graph[node]), default=0)
    return memo


def top_level(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph of ``optlab.<x>`` nodes: a subpackage is one node (its modules' imports, merged)."""

    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(top(m), set()).update(top(d) for d in deps if top(d) != top(m))
    return out


#: rank of every top-level module and subpackage: a module imports only ranks <= its own
RANKS = {
    "optlab.optim": 0,
    "optlab.store": 0,
    "optlab.progress": 0,  # progress on stderr for long commands; imports nothing of optlab
    "optlab.plugin": 1,
    "optlab.api": 1,
    "optlab._moved": 1,
    "optlab.training": 2,
    "optlab.testing": 2,  # the kit builds tasks and models (check_task, check_model)
    "optlab.plugin_api": 2,  # re-exports Task and the kit
    "optlab.diagnostics": 2,
    "optlab.integrations": 2,
    "optlab": 2,
    "optlab.grid": 3,
    "optlab.builtins": 4,
    "optlab.analysis": 4,
    "optlab.cli": 5,
}


def test_the_optlab_package_has_no_import_cycle():
    graph = import_graph(package_modules(optlab), type_checking=True)
    assert "optlab.builtins" in graph and "optlab.testing" in graph, sorted(graph)
    assert "optlab.plugin.registry" in graph["optlab.api"]  # the graph sees real edges
    assert "optlab.grid.trial" in graph["optlab.grid.executors.base"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_subpackages_import_only_downwards_in_at_most_8_layers():
    graph = top_level(import_graph(package_modules(optlab), type_checking=True))
    unranked = sorted(set(graph) - set(RANKS))
    assert not unranked, f"give these a rank in RANKS (and a place in docs/design.md): {unranked}"
    upward = sorted((a, b) for a, deps in graph.items() for b in deps if RANKS[b] > RANKS[a])
    assert not upward, f"imports against the layer order (importer, imported): {upward}"
    assert find_cycle(graph) is None
    depth = layers(graph)
    assert max(depth.values()) <= 8, depth
    assert depth["optlab.cli"] == max(depth.values()) and depth["optlab.optim"] == 1


def test_nothing_imports_the_builtin_plugin_or_an_old_module_path():
    from optlab._moved import MOVED

    mods = package_modules(optlab)
    graph = import_graph(mods, type_checking=True)
    importers = sorted(
        m for m, deps in graph.items() if "optlab.builtins" in deps and not m.startswith("optlab.builtins")
    )
    assert not importers, f"the built-in plugin is loaded through its entry point only; imported by {importers}"
    old = {m: sorted(n for n in names if n in MOVED) for m, names in imported_names(mods, True).items()}
    old = {m: n for m, n in old.items() if n}
    assert not old, f"library modules import deprecated module paths: {old}"


def test_registration_does_not_depend_on_the_conformance_kit():
    graph = import_graph(package_modules(optlab))
    reach, todo = set(), ["optlab.plugin.registry"]
    while todo:
        m = todo.pop()
        for n in graph[m] - reach:
            reach.add(n)
            todo.append(n)
    assert "optlab.testing" not in reach and "optlab.api" not in reach, sorted(reach)
    assert "optlab.plugin.kit_problems" in reach  # registration checks run items on the tiny problems


@pytest.mark.parametrize(
    "b_source",
    [
        "from .a import x\n",  # module level
        "def f():\n    from . import a\n",  # hidden in a function
        "import pkg.a as a\n",  # absolute
    ],
)
def test_the_check_finds_a_cycle_hidden_in_a_function(tmp_path, b_source):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("x = 1\n\ndef g():\n    from .b import y\n    return y\n")
    (pkg / "b.py").write_text(b_source + "y = 2\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import z\n")
    (pkg / "d.py").write_text("from .c import TYPE_CHECKING\nz = 0\n")
    mods = {
        "pkg": (pkg / "__init__.py", True),
        "pkg.a": (pkg / "a.py", False),
        "pkg.b": (pkg / "b.py", False),
        "pkg.c": (pkg / "c.py", False),
        "pkg.d": (pkg / "d.py", False),
    }
    graph = import_graph(mods)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.c"] == set() and graph["pkg.d"] == {"pkg.c"}  # TYPE_CHECKING imports are not edges
    assert set(find_cycle(graph)) == {"pkg.a", "pkg.b"}
    annotated = import_graph(mods, type_checking=True)  # ... but annotations are dependencies
    assert annotated["pkg.c"] == {"pkg.d"} and set(find_cycle({"pkg.c": {"pkg.d"}, "pkg.d": {"pkg.c"}})) == {
        "pkg.c",
        "pkg.d",
    }


def test_layers_and_the_top_level_view():
    graph = {"p.a": set(), "p.b": {"p.a"}, "p.c.x": {"p.b"}, "p.c.y": {"p.c.x", "p.a"}, "p.d": {"p.c.y"}}
    assert layers(graph) == {"p.a": 1, "p.b": 2, "p.c.x": 3, "p.c.y": 4, "p.d": 5}
    assert top_level(graph) == {"p.a": set(), "p.b": {"p.a"}, "p.c": {"p.a", "p.b"}, "p.d": {"p.c"}}
    assert layers(top_level(graph)) == {"p.a": 1, "p.b": 2, "p.c": 3, "p.d": 4}
