"""A prompt built from several columns (``data.prompt_template``), e.g. Alpaca's instruction + input.

The template is Python ``str.format`` text whose fields name source columns::

    "{instruction}\\n\\n{input}"

One rule makes the common "optional column" case work without a second template: the template
is cut into paragraphs at blank lines (``"\\n\\n"``), and a paragraph with fields that are all
empty (missing, null or whitespace) in a row is left out for that row. So with Alpaca's
``"### Instruction:\\n{instruction}\\n\\n### Input:\\n{input}\\n\\n### Response:\\n"`` a row
with an empty ``input`` gets no ``### Input:`` paragraph. Paragraphs without fields are kept.
"""

from __future__ import annotations

import string
from typing import Any

from rlhf.data.errors import EMPTY, WRONG_TYPE, BadRow

__all__ = ["template_fields", "render_template", "ALPACA_TEMPLATE"]

# The built-in ``alpaca`` format's prompt: the instruction, then the input when there is one.
ALPACA_TEMPLATE = "{instruction}\n\n{input}"


def template_fields(template: str) -> list[str]:
    """The column names a template reads, in order, each once. Raises ValueError for a
    template ``str.format`` cannot parse, or a field that is not a plain name."""
    out: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"not a valid template ({e}); write literal braces as {{{{ and }}}}") from None
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name or not name.replace("_", "").replace("-", "").replace(" ", "").isalnum() or spec or conv:
            raise ValueError(f"fields must be plain column names like {{instruction}} (got {{{name}}})")
        if name not in out:
            out.append(name)
    return out


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def render_template(template: str, data: dict[str, Any]) -> str:
    """The prompt for one row (see the module doc). Raises :class:`BadRow` for a field that is
    a list or mapping (chat messages cannot be pasted into text) or a prompt that comes out
    empty."""
    kept = []
    for para in template.split("\n\n"):
        fields = template_fields(para)
        values = {f: data.get(f) for f in fields}
        for f, v in values.items():
            if isinstance(v, (list, dict)):
                raise BadRow(WRONG_TYPE, f, f"text for data.prompt_template (got a {type(v).__name__})")
        if fields and all(_blank(v) for v in values.values()):
            continue
        kept.append(para.format(**{f: "" if _blank(v) else str(v) for f, v in values.items()}))
    text = "\n\n".join(kept)
    if not text.strip():
        raise BadRow(EMPTY, "prompt", "a non-empty prompt from data.prompt_template (every field is empty)")
    return text
