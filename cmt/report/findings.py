"""A study target's generated files, published into ``docs/findings/<name>/<sweep>/`` for docs/findings.md to link:
the sweep's tables and plots and its experiments' as the workflow wrote them (copied, never retyped), and the commits
the sweep's job records were made at. Each sweep publishes on its own, so one finished target need not wait for the
other."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from cmt.formats import names
from cmt.formats.atomic import atomic_write_bytes

PUBLISHED = (".md", ".csv", ".png")


def commits(records: list[Path]) -> Counter:
    """How many of the job records in ``records`` (folders holding a record) name each git commit (``+dirty``: the
    tree had uncommitted edits)."""
    return Counter(json.loads((folder / names.RECORD).read_text())["git_commit"] for folder in records)


def _copy(source: Path, target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    return [
        Path(shutil.copy2(path, target / path.name)) for path in sorted(source.iterdir()) if path.suffix in PUBLISHED
    ]


def publish(tables: Path, experiments: list[Path], records: list[Path], out: Path) -> list[Path]:
    """Copy the sweep's ``tables`` into ``out/`` and each experiment folder into ``out/<folder name>/``; write
    ``out/provenance.md`` from the sweep's job ``records``."""
    if out.exists():
        shutil.rmtree(out)
    copied = _copy(tables, out)
    for folder in experiments:
        copied += _copy(folder, out / folder.name)
    lines = [f"| `{commit}` | {count} |" for commit, count in sorted(commits(records).items())]
    text = (
        f"# Provenance\n\nThe {len(records)} job records behind these files were written at these commits (count of "
        "records):\n\n| commit | records |\n|---|---|\n" + "\n".join(lines) + "\n"
    )
    atomic_write_bytes(out / "provenance.md", text.encode())
    return copied
