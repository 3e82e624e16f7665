"""The repository's own docs: every section a comment, docstring, schema description, config or profile line, the
README or another doc cites exists (tools/citations.py), and the check notices a renamed section or a missing file."""

import shutil

from helpers.project import ROOT, load_tool


def test_every_cited_section_exists_in_docs():
    checker = load_tool("citations")
    found = checker.citations()
    assert checker.problems() == []
    cited = {c.doc for c in found}
    assert {"method.md", "numerics.md", "workflow.md", "environment.md"} <= cited
    assert (
        sum(c.where.startswith("cmt/") for c in found) >= 80 and sum(c.where.startswith("config/") for c in found) >= 80
    )


def test_a_renamed_section_or_a_missing_doc_breaks_the_check(tmp_path):
    checker = load_tool("citations")
    docs = shutil.copytree(ROOT / "docs", tmp_path / "docs")
    method = docs / "method.md"
    method.write_text(method.read_text().replace("### 8.1 ECT", "### 8.9 ECT", 1))
    (docs / "environment.md").unlink()
    broken = checker.problems(ROOT, docs)
    renamed = [line for line in broken if "method.md §8.1: no such section" in line]
    assert any(line.startswith("config/paper.yaml:") for line in renamed)
    assert any(line.startswith("cmt/objectives/ect.py:") for line in renamed)
    missing = [line for line in broken if "environment.md" in line]
    assert missing and all("no such file" in line for line in missing)
    assert all("§8.1" in line or "environment.md" in line for line in broken)


def test_citation_forms_are_read_as_written():
    checker = load_tool("citations")

    def read(path: str, line: str) -> list[tuple[str, str]]:
        return [(c.doc, c.section) for c in checker.line_citations(path, 1, line)]

    assert read("cmt/x.py", "(method.md 3.4, 4, 7): a student") == [("method.md", s) for s in ("3.4", "4", "7")]
    assert read("README.md", "see `docs/numerics.md` §7.2 and [x](workflow.md) §2.4") == [
        ("numerics.md", "7.2"),
        ("workflow.md", "2.4"),
    ]
    assert read("cmt/x.py", "numerics.md sections 3-5 and 7.") == [("numerics.md", s) for s in ("3", "5", "7")]
    assert read("config/x.yaml", "q: 1  # (§8.2-8.3, §14)") == [("method.md", s) for s in ("8.2", "8.3", "14")]
    assert read("docs/workflow.md", "the params file (§1.6)") == [("workflow.md", "1.6")]
    assert read("cmt/x.py", "# see §3")[0][0].startswith("(a bare §")
    assert read("cmt/x.py", "a plain 3.4 or method.md without a number") == []
