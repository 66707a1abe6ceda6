"""README.md and docs/ point only at files inside the repository (issue 23 item 9: the README
ended on a design file in the team's workspace, which a user who cloned the project lacks)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_relative_links_resolve_inside_the_repository():
    bad = []
    for page in _pages():
        for target in _LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path = (page.parent / target).resolve()
            if not path.exists() or ROOT.resolve() not in path.parents:
                bad.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not bad, bad


def test_no_page_names_the_team_workspace():
    for page in _pages():
        assert "shared/DESIGN.md" not in page.read_text(), page
    assert (ROOT / "docs" / "design.md").is_file()
