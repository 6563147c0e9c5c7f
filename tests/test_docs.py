"""The README for a newcomer: short, the two set-up commands, and every moved detail reachable by a link that
resolves; the commands the documentation names exist."""

from __future__ import annotations

import re
from pathlib import Path

from wsvs.runtime.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_screen = "\n".join(text.splitlines()[:30])
    assert "make demo" in first_screen and "make test" in first_screen
    assert "wsvs-export model.pt" in text and "from wsvs.runtime import Segmenter" in text


def test_every_relative_link_resolves_to_a_file_and_heading():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
    readme_links = {(REPO / t.partition("#")[0]).resolve() for t in LINK.findall((REPO / "README.md").read_text())
                    if not t.startswith("#")}
    assert set(PAGES[1:]) <= readme_links  # every docs page is reachable from the README


def test_documented_commands_exist():
    action = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    commands = set(action.choices)
    named, fence = set(), False
    for page in PAGES:  # in code: `wsvs X`, .venv/bin/wsvs X, or a code block's line starting with wsvs X
        for line in page.read_text().splitlines():
            fence = fence != line.startswith("```")
            named |= set(re.findall(r"(?:`|/bin/)wsvs ([a-z][a-z-]+)", line))
            named |= set(re.findall(r"^wsvs ([a-z][a-z-]+)", line) if fence else [])
    assert {"segment", "bench", "doctor", "train", "export"} <= named
    assert named <= commands, sorted(named - commands)


def test_slugs_follow_github():
    assert slug("Reproduced results: one command each") == "reproduced-results-one-command-each"
    assert slug("The pipeline (`wsvs train`)") == "the-pipeline-wsvs-train"
