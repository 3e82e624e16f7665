"""Every cited section of ``docs/`` exists: code comments, docstrings, the schema, configs, profiles, the README and the
docs themselves cite ``method.md 8.1``, ``numerics.md §6.1``, ``workflow.md sections 2.2-2.4`` and so on; a config
file's bare section sign (``§`` and a number) means ``docs/method.md`` (its header says so); inside ``docs/x.md`` it
means x.md itself. Prints each citation whose file or section is missing and exits 1 when there is one.

    python tools/citations.py [--list]
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC_NAMES = ("method", "numerics", "workflow", "environment", "deviations", "architecture", "latent")
SCANNED = (
    "cmt/**/*.py",
    "cmt/schemas/*.json",
    "tests/**/*.py",
    "tools/*.py",
    "benchmarks/*.py",
    "workflow/Snakefile",
    "workflow/rules/*.smk",
    "workflow/profiles/**/*.yaml",
    "profiles/**/*.yaml",
    "config/*.yaml",
    "envs/*.yaml",
    "dvc.yaml",
    "README.md",
    "docs/*.md",
)
EXCLUDED = ("tests/test_docs.py",)  # the checker's own test writes citations that must break
SECTION = r"\d+(?:\.\d+)?"
LIST = rf"§?\s?{SECTION}(?:\s*(?:,|-|–|and)\s*§?\s?{SECTION})*"
NAMED = re.compile(rf"\b({'|'.join(DOC_NAMES)})\.md[`)\]]*(?:'s)?\s*(?:§\s*|sections?\s+)?({LIST})")
BARE = re.compile(rf"§\s?({SECTION})(?:\s*[-–]\s*§?({SECTION}))?")
HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", re.M)


@dataclass(frozen=True)
class Citation:
    where: str  # path:line
    doc: str  # e.g. "method.md"
    section: str


def sections(docs: Path, doc: str) -> set[str] | None:
    """The numbered headings of ``docs/<doc>``, or None when the file does not exist."""
    path = docs / doc
    return set(HEADING.findall(path.read_text())) if path.is_file() else None


def bare_doc(relative: str) -> str | None:
    """Which doc a bare ``§`` in this file refers to (None: a bare ``§`` is not allowed here)."""
    if relative.startswith("config/"):
        return "method.md"
    if relative.startswith("docs/"):
        return Path(relative).name
    return None


def line_citations(relative: str, number: int, line: str) -> list[Citation]:
    where, found = f"{relative}:{number}", []
    for match in NAMED.finditer(line):
        for section in re.findall(SECTION, match.group(2)):
            found.append(Citation(where, f"{match.group(1)}.md", section))
    rest = NAMED.sub("", line)
    for match in BARE.finditer(rest):
        doc = bare_doc(relative) or "(a bare § outside config/ and docs/ names no file)"
        found += [Citation(where, doc, s) for s in match.groups() if s]
    return found


def citations(root: Path = ROOT) -> list[Citation]:
    files = sorted({p for pattern in SCANNED for p in root.glob(pattern) if p.is_file()})
    found = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        if "__pycache__" in path.parts or relative in EXCLUDED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found += line_citations(relative, number, line)
    return found


def problems(root: Path = ROOT, docs: Path | None = None) -> list[str]:
    docs, found = docs or root / "docs", citations(root)
    known = {doc: sections(docs, doc) for doc in {c.doc for c in found}}
    out = []
    for c in found:
        if known[c.doc] is None:
            out.append(f"{c.where}: {c.doc} §{c.section}: no such file in {docs}")
        elif c.section not in known[c.doc]:
            out.append(f"{c.where}: {c.doc} §{c.section}: no such section")
    return out


def main(argv: list[str]) -> int:
    found = citations()
    if "--list" in argv:
        for c in found:
            print(f"{c.where}: {c.doc} §{c.section}")
    bad = problems()
    for line in bad:
        print(line)
    print(f"{len(found)} citations, {len(bad)} broken")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
