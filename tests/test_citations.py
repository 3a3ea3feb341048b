"""Every citation in the repository points to something a clone has: no project-internal documents,
and each `docs/published_behaviour.md §N` names a section that exists there."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "fixtures", "__pycache__", ".pytest_cache", ".ruff_cache"}
SUFFIXES = {".py", ".md", ".txt", ".toml", ".sh", ""}
# Built from parts so that this file does not match itself.
INTERNAL = re.compile(r"\b(" + "|".join(["SP" + "EC", "NO" + "TES\\.md", "MET" + "HODS\\.md",
                                            "PUBLISHED_" + "COMMANDS"]) + r")\b")
SECTION = re.compile(r"published_behaviour\.md §(\d+)")


def repo_text_files():
    for path in REPO.rglob("*"):
        if path.is_file() and path.suffix in SUFFIXES and not SKIP_DIRS & set(path.relative_to(REPO).parts):
            yield path


def test_no_citation_of_documents_a_clone_does_not_have():
    found = [f"{path.relative_to(REPO)}:{i}" for path in repo_text_files()
             for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if INTERNAL.search(line)]
    assert found == []


def test_cited_sections_exist():
    doc = (REPO / "docs" / "published_behaviour.md").read_text()
    sections = {int(n) for n in re.findall(r"^## §(\d+) ", doc, flags=re.M)}
    assert sections == set(range(1, 9))
    cited = {(str(path.relative_to(REPO)), int(n)) for path in repo_text_files()
             for n in SECTION.findall(path.read_text(errors="replace"))}
    assert len(cited) > 30  # the code cites it throughout
    assert [c for c in cited if c[1] not in sections] == []
