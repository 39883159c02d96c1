"""The package's module import graph, function-level imports included, has no cycle.

A circle hidden by imports inside functions (e.g. api -> registry -> validation ->
testing -> api) still ties the layers together; this test reads every module of the
installed ``optlab`` package (plugins and analysis included) with ``ast`` and fails on
any cycle, naming it. Imports under ``if TYPE_CHECKING:`` are not runtime imports and
are left out; plugins loaded through entry points are not imports either.
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


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
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


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """``{module: modules it imports}``, restricted to ``modules``, at any depth of the file."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in _runtime_nodes(tree):
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


def test_the_optlab_package_has_no_import_cycle():
    graph = import_graph(package_modules(optlab))
    assert "optlab.plugins.builtins" in graph and "optlab.testing" in graph, sorted(graph)
    assert "optlab.registry" in graph["optlab.api"]  # the graph sees real edges
    assert "optlab.trial" in graph["optlab.executors"] and "optlab.grid" not in graph["optlab.executors"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_registration_does_not_depend_on_the_conformance_kit():
    graph = import_graph(package_modules(optlab))
    reach, todo = set(), ["optlab.registry"]
    while todo:
        m = todo.pop()
        for n in graph[m] - reach:
            reach.add(n)
            todo.append(n)
    assert "optlab.testing" not in reach and "optlab.api" not in reach, sorted(reach)
    assert "optlab.problems" in reach  # validation runs items on the tiny problems


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
