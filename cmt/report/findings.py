"""The study's generated files, published into ``docs/findings/<name>/`` for docs/findings.md to link: the tables and
plots as the workflow wrote them (copied, never retyped) and the commits the job records were made at."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from cmt.formats import names
from cmt.formats.atomic import atomic_write_bytes

PUBLISHED = (".md", ".csv", ".png")


def commits(results: Path) -> Counter:
    """How many job records under ``results`` name each git commit (``+dirty``: the tree had uncommitted edits)."""
    return Counter(json.loads(path.read_text())["git_commit"] for path in results.rglob(names.RECORD))


def publish(results: Path, sources: list[Path], out: Path) -> list[Path]:
    """Copy the tables and plots of each source folder into ``out/<folder name>/``; write ``out/provenance.md``."""
    if out.exists():
        shutil.rmtree(out)
    copied = []
    for folder in sources:
        for path in sorted(folder.iterdir()):
            if path.suffix in PUBLISHED:
                target = out / folder.name / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                copied.append(Path(shutil.copy2(path, target)))
    lines = [f"| `{commit}` | {count} |" for commit, count in sorted(commits(results).items())]
    text = (
        f"# Provenance\n\nThe job records of `{results}` were written at these commits (count of records):\n\n"
        "| commit | records |\n|---|---|\n" + "\n".join(lines) + "\n"
    )
    atomic_write_bytes(out / "provenance.md", text.encode())
    return copied
