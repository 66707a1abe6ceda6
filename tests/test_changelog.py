"""The version is written in three places; they must agree (CONTRIBUTING.md, CHANGELOG.md)."""

from __future__ import annotations

import re
from pathlib import Path

import rlhf

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_pyproject_and_newest_changelog_entry() -> None:
    """pyproject.toml's version == rlhf.__version__ == the newest released section of
    CHANGELOG.md (the first ``## [x.y.z]`` after ``## [Unreleased]``)."""
    # A regex, not tomllib: the project supports Python 3.10, which has no tomllib.
    project = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    headings = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert headings[0] == "Unreleased", headings[:3]
    assert re.fullmatch(r"\d+\.\d+\.\d+", headings[1]), headings[1]
    assert project == rlhf.__version__ == headings[1]
