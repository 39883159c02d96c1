"""Structure of the ``optlab`` package: modules, import edges, circles, layers, long functions.

    python benchmarks/structure.py [SRC_DIR ...]     # default: this checkout's optlab/

Reads the source with ``ast`` (nothing is imported), so it measures any checkout, e.g. main's
before a renovation: ``git worktree add /tmp/before main && python benchmarks/structure.py
/tmp/before/optlab``. Two views of the import graph:

- *modules*: every ``.py`` file a node (a package's ``__init__`` is the package);
- *folders*: ``optlab/<x>.py`` and ``optlab/<folder>/`` one node each (what issue 22 counts).

An edge is an import of one node by another anywhere in the file (functions included);
``TYPE_CHECKING`` imports are counted too (an annotation is a dependency). A *circle* is a
strongly connected component of more than one node; *layers* is the number of nodes on the
longest import chain (a node sits one layer above everything it imports; circles collapsed).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path


def modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` of every module under the package folder ``src``."""
    out = {}
    for f in sorted(src.rglob("*.py")):
        rel = f.relative_to(src.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (f, is_pkg)
    return out


def _known(name: str, mods) -> str | None:
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(mods: dict[str, tuple[Path, bool]], type_checking: bool = True) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = mod if is_pkg else mod.rpartition(".")[0]
        stack: list[ast.AST] = [tree]
        while stack:
            node = stack.pop()
            for child in ast.iter_child_nodes(node):
                if not type_checking and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    stack.extend(child.orelse)
                    continue
                stack.append(child)
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    anchor = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                k = _known(t, mods)
                if k is not None and k != mod:
                    graph[mod].add(k)
    return graph


def folder_view(graph: dict[str, set[str]], root: str = "optlab") -> dict[str, set[str]]:
    """Collapse to ``optlab.<x>`` nodes (a subpackage is one node; the package ``optlab`` itself stays)."""

    def top(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 else m

    out: dict[str, set[str]] = defaultdict(set)
    for m, deps in graph.items():
        out[top(m)]
        for d in deps:
            if top(d) != top(m):
                out[top(m)].add(top(d))
    return dict(out)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Layer of every node (1 = imports nothing of the package); a circle's nodes share one layer."""
    comp_of = {}
    for i, c in enumerate(circles(graph)):
        for v in c:
            comp_of[v] = f"#circle{i}"
    node = {v: comp_of.get(v, v) for v in graph}
    dag: dict[str, set[str]] = defaultdict(set)
    for v, deps in graph.items():
        dag[node[v]]
        for d in deps:
            if node[d] != node[v]:
                dag[node[v]].add(node[d])
    memo: dict[str, int] = {}

    def depth(v: str) -> int:
        if v not in memo:
            memo[v] = 1 + max((depth(d) for d in dag[v]), default=0)
        return memo[v]

    return {v: depth(node[v]) for v in graph}


def functions(mods: dict[str, tuple[Path, bool]]) -> list[tuple[int, str]]:
    """``(lines, module:qualified name)`` of every function and method, longest first."""
    out = []
    for mod, (path, _) in mods.items():
        tree = ast.parse(path.read_text())

        def walk(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append((child.end_lineno - child.lineno + 1, f"{mod}:{prefix}{child.name}"))
                    walk(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")

        walk(tree, "")
    return sorted(out, reverse=True)


def report(src: Path) -> dict:
    mods = modules(src)
    graph = import_graph(mods)
    folders = folder_view(graph)
    funcs = functions(mods)
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, (p, _) in mods.items()), reverse=True)
    return {
        "modules": len(mods),
        "module_edges": sum(map(len, graph.values())),
        "module_circles": circles(graph),
        "module_layers": max(layers(graph).values()),
        "folder_nodes": len(folders),
        "folder_edges": sum(map(len, folders.values())),
        "folder_circles": circles(folders),
        "folder_layers": max(layers(folders).values()),
        "modules_over_450_lines": [(n, m) for n, m in sizes if n > 450],
        "functions_over_50": sum(1 for n, _ in funcs if n > 50),
        "functions_over_80": [(n, f) for n, f in funcs if n > 80],
        "functions_over_100": sum(1 for n, _ in funcs if n > 100),
        "longest_functions": funcs[:10],
    }


if __name__ == "__main__":
    srcs = [Path(a) for a in sys.argv[1:]] or [Path(__file__).resolve().parent.parent / "optlab"]
    for src in srcs:
        print(f"== {src}")
        for k, v in report(src).items():
            if isinstance(v, list) and v and isinstance(v[0], tuple):
                print(f"{k}:")
                for x in v:
                    print(f"    {x}")
            else:
                print(f"{k}: {v}")
