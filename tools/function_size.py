"""The size rule of cmt/ (DEVELOPERS.md style): no function longer than 60 lines or with more than 7 parameters
(positional and keyword-only, not ``self``/``cls``); network constructors that mirror EDM's or EDM2's signatures, so
their weights load by name, are exempt (``EXEMPT``). Prints the longest functions and the widest signatures, and
exits 1 when a function outside ``EXEMPT`` breaks the rule.

    python tools/function_size.py [--top N]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES, MAX_PARAMS = 60, 7
EXEMPT = {"cmt/nets/unet.py:UNetBlock.__init__"}  # EDM's UNetBlock signature: its weights load by name


def functions(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, lines, parameters) of every function in ``path``."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = child.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                params = len([n for n in names if n not in ("self", "cls")])
                found.append((f"{prefix}{child.name}", child.end_lineno - child.lineno + 1, params))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text()), "")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    rows = [
        (f"{path.relative_to(ROOT)}:{name}", lines, params)
        for path in sorted((ROOT / "cmt").rglob("*.py"))
        for name, lines, params in functions(path)
    ]
    for title, key in (("longest functions", 1), ("widest signatures", 2)):
        print(f"{title}:")
        for row in sorted(rows, key=lambda r: -r[key])[: args.top]:
            print(f"  {row[key]:4d}  {row[0]}{'  (exempt)' if row[0] in EXEMPT else ''}")
    broken = [r for r in rows if r[0] not in EXEMPT and (r[1] > MAX_LINES or r[2] > MAX_PARAMS)]
    for name, lines, params in broken:
        print(f"over the rule: {name} ({lines} lines, {params} parameters)")
    print(f"{len(rows)} functions; {len(broken)} over {MAX_LINES} lines or {MAX_PARAMS} parameters")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
