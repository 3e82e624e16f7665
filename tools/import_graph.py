"""The import graph of ``cmt/``: no cycle between modules, none between its folders, and the layers in one direction
(cli -> stages -> the core folders; nothing below imports a layer above it). Prints the module count at ``cmt/``'s
root and exits non-zero on a violation.  Usage: ``python tools/import_graph.py [--edges]``."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cmt"
LAYERS = ("cmt.__main__", "cmt.cli", "cmt.stages")  # top to bottom; every other module is core


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every ``cmt`` module a file imports, at any depth of the file (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cmt")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cmt"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found & modules


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(files)) - {name} for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on.discard(w)
                component.append(w)
            on.discard(v)
            if component:
                out.append(sorted([v, *component]))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def folder(module: str) -> str:
    """A module's concern: its folder below ``cmt`` (``cmt.numerics.solvers`` -> ``numerics``), or ``root``."""
    parts = module.split(".")
    is_package = (PACKAGE.joinpath(*parts[1:]) / "__init__.py").exists()
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and is_package) else "root"


def folder_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Folder -> folders it imports; the registries at the root (cmt.inits, cmt.teachers, ...) are their own nodes."""
    node = {m: (folder(m) if folder(m) != "root" else m) for m in edges}
    out: dict[str, set[str]] = defaultdict(set)
    for source, targets in edges.items():
        out[node[source]] |= {node[t] for t in targets} - {node[source]}
    return dict(out)


def layer(module: str) -> int:
    return next((i for i, top in enumerate(LAYERS) if module == top or module.startswith(top + ".")), len(LAYERS))


def upward(edges: dict[str, set[str]]) -> list[str]:
    return [f"{s} -> {t}" for s, ts in sorted(edges.items()) for t in sorted(ts) if layer(t) < layer(s)]


def main(argv: list[str]) -> int:
    edges = graph()
    root = sorted(m for m in edges if folder(m) == "root" and m != "cmt")
    module_cycles, folder_cycles, up = cycles(edges), cycles(folder_graph(edges)), upward(edges)
    print(
        f"{len(edges)} modules, {sum(map(len, edges.values()))} imports; {len(root)} at cmt/'s root: {', '.join(root)}"
    )
    if "--edges" in argv:
        for source, targets in sorted(folder_graph(edges).items()):
            print(f"  {source} -> {', '.join(sorted(targets))}")
    for kind, found in (("module cycle", module_cycles), ("folder cycle", folder_cycles)):
        for component in found:
            print(f"{kind}: {' <-> '.join(component)}")
    for edge in up:
        print(f"upward import: {edge}")
    print("no cycle, no upward import" if not (module_cycles or folder_cycles or up) else "violations above")
    return 1 if module_cycles or folder_cycles or up else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
