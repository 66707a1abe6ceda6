"""Generate docs/configuration.md from the stages' config dataclasses: ``python -m rlhf.docs``.

``--check`` exits 1 when the committed page differs from what the classes generate (the test
suite runs the same comparison, so a stale page fails CI).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["render", "main", "DOC_PATH"]

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def render() -> str:
    from rlhf.cli import STAGES
    from rlhf.config import reference_markdown

    classes = {name: st.load(st.config) for name, st in STAGES.items()}
    return reference_markdown(classes) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not DOC_PATH.exists() or DOC_PATH.read_text() != text:
            print(f"{DOC_PATH} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.write_text(text)
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
