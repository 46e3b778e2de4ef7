"""The repository documents itself: no reference to notes outside it, and every in-repo documentation link resolves.

* No tracked file (but this one) names the design notes that are not part of the repository (the METHODS, DATASETS
  and ANCHORS notes); what they said for users lives in ``docs/``.
* Every relative Markdown link of ``README.md`` and ``docs/*.md`` (and of ``benchmarks/RESULTS.md``) points to an
  existing file, and a ``#section`` of a Markdown file to an existing heading.
* Every ``docs/<name>.md#section`` reference in a tracked text file (docstrings, comments, configs) names an existing
  docs page and heading.
"""
from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

NOTE_NAMES = ("METHODS", "DATASETS", "ANCHORS")
OUTSIDE_NOTES = re.compile(
    rb"\b(?:" + b"|".join(n.encode() for n in NOTE_NAMES) + rb")(?:\.md\b|(?: section)? \xc2?\xa7?\d)"
)
"""A note's file name (one of ``NOTE_NAMES`` + ``.md``), or a section number after the bare name (``METHODS 7.3``,
``ANCHORS 1.7``); the registries (``METHODS.register``, ``DATASETS.get(...)``) do not match."""

LINKED_PAGES = ("README.md", "docs/*.md", "benchmarks/RESULTS.md")
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
DOCS_REFERENCE = re.compile(r"(?<![\w./-])docs/([\w-]+\.md)(?:#([\w-]+))?")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [name for name in out.decode().split("\0") if name]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link text kept, lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def without_code(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a Markdown file: its headings' slugs (repeats numbered -1, -2, ... as GitHub does) and
    explicit ``<a id="...">`` / ``<a name="...">``."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found: set[str] = set(HTML_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in HEADING.findall(text):
        slug = github_slug(heading)
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return frozenset(found)


def linked_pages() -> list[Path]:
    pages = {path for pattern in LINKED_PAGES for path in ROOT.glob(pattern)}
    return sorted(pages)


def relative_links(page: Path) -> list[str]:
    text = without_code(page.read_text(encoding="utf-8"))
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("//")]


def broken(source: Path, target: str) -> str | None:
    """Why ``target`` (relative to ``source``) does not resolve, or None."""
    path_part, _, anchor = target.partition("#")
    path_part = path_part.split("?")[0]
    resolved = (source.parent / path_part).resolve() if path_part else source
    try:
        resolved.relative_to(ROOT)
    except ValueError:
        return f"{target}: points outside the repository"
    if not resolved.exists():
        return f"{target}: no such file"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"{target}: {resolved.relative_to(ROOT).as_posix()} has no heading with the anchor #{anchor}"
    return None


def test_no_reference_to_notes_outside_the_repository() -> None:
    offending = []
    for name in tracked_files():
        if name == THIS:
            continue
        path = ROOT / name
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if OUTSIDE_NOTES.search(line):
                offending.append(f"{name}:{number}: {line.decode(errors='replace').strip()[:120]}")
    assert not offending, "references to notes that are not in the repository (point at docs/ instead):\n" + "\n".join(
        offending
    )


def test_the_docs_pages_exist() -> None:
    for name in ("methods.md", "datasets.md", "protocol.md"):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("methods.md", "datasets.md", "protocol.md"):
        assert f"(docs/{name})" in readme, f"README.md does not link docs/{name}"


@pytest.mark.parametrize("page", linked_pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_markdown_links_resolve(page: Path) -> None:
    problems = [why for target in relative_links(page) if (why := broken(page, target))]
    assert not problems, f"{page.relative_to(ROOT).as_posix()}: broken links:\n" + "\n".join(problems)


def test_docs_references_in_files_resolve() -> None:
    problems = []
    for name in tracked_files():
        path = ROOT / name
        if name == THIS or not path.is_file() or path.suffix not in {".py", ".yaml", ".yml", ".md", ".toml", ".txt"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in DOCS_REFERENCE.finditer(text):
            page, anchor = ROOT / "docs" / match.group(1), match.group(2)
            line = text.count("\n", 0, match.start()) + 1
            if not page.is_file():
                problems.append(f"{name}:{line}: docs/{match.group(1)} does not exist")
            elif anchor and anchor not in anchors(page):
                problems.append(f"{name}:{line}: docs/{match.group(1)} has no heading with the anchor #{anchor}")
    assert not problems, "references to docs/ that do not resolve:\n" + "\n".join(problems)


def test_github_slug() -> None:
    assert github_slug("IRRA: recipe") == "irra-recipe"
    assert github_slug("Multi-GPU and multi-node (DDP)") == "multi-gpu-and-multi-node-ddp"
    assert github_slug("Your own data (`custom`)") == "your-own-data-custom"
    assert github_slug("Samplers, optimisers and schedules") == "samplers-optimisers-and-schedules"
    assert github_slug("See [the docs](docs/methods.md)") == "see-the-docs"
