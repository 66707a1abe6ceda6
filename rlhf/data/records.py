"""Canonical records: what every input format is converted to before tokenization.

A *text* is either a plain string or a conversation, i.e. a list of chat messages
``{"role": "user" | "assistant" | "system" | ..., "content": str}``. A record is
*conversational* when any of its texts is a message list; it is then rendered with a chat
template (see :mod:`rlhf.data.tokenize`), otherwise its prompt and completion are plain text
that is concatenated as is.

``origin`` is ``(source name, 1-based row number)`` of the input row the record came from; it
is used in error messages and to keep every record of one row on the same side of a
train/eval split. It does not take part in equality.

The entry points that produce records from a source (``load_records``, ``load_train_eval``)
live in :mod:`rlhf.data.load` and are re-exported from :mod:`rlhf.data` (not from here: records
are the layer below the loaders).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlhf.data.errors import IDENTICAL_RESPONSES, TIE, SkipReport

__all__ = [
    "Message",
    "Text",
    "SFTRecord",
    "PreferenceRecord",
    "RankedRecord",
    "UnpairedRecord",
    "PromptRecord",
    "Record",
    "is_conversational",
    "readable",
]

Message = dict[str, Any]  # {"role": str, "content": str}
Text = str | list[Message]
Origin = tuple[str, int] | None


def is_conversational(*texts: Any) -> bool:
    """True when any of ``texts`` is a list of chat messages (rather than a plain string)."""
    return any(isinstance(t, list) for t in texts)


def readable(text: Any) -> str:
    """A prompt or completion as text for people (logs, sample tables): a string as is, chat
    messages one per line as ``role: content`` (not a Python list repr)."""
    if isinstance(text, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                         for m in text)
    return str(text)


def _where(origin: Origin) -> str:
    return f"{origin[0]}:{origin[1]}" if origin else "<record>"


@dataclass
class SFTRecord:
    """A prompt and the completion to learn (supervised fine-tuning).

    For a chat ``messages`` row, ``prompt`` is every message before the last assistant turn
    and ``completion`` is ``[last assistant message]``.
    """

    prompt: Text
    completion: Text
    origin: Origin = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        return _where(self.origin)


@dataclass
class PreferenceRecord:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) completion.

    ``margin`` (optional) is how much better chosen is than rejected, as used by the margin
    loss of Llama 2 (Touvron et al. 2023, eq. 2): a number, or a text rating label (e.g.
    "significantly better") that the reward model's ``loss.margin_mapping`` turns into one;
    None when the data gives none.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | str | None = None
    origin: Origin = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        return _where(self.origin)


@dataclass
class RankedRecord:
    """A prompt with K >= 2 responses ordered by ``scores`` (higher is better) or ``ranks``
    (1 is best; lower is better). When both are given, ``scores`` decide."""

    prompt: Text
    responses: list[Text]
    scores: list[float] | None = None
    ranks: list[float] | None = None
    origin: Origin = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        return _where(self.origin)

    def _quality(self) -> list[float]:
        """One number per response, higher = better."""
        if self.scores is not None:
            return [float(s) for s in self.scores]
        if self.ranks is not None:
            return [-float(r) for r in self.ranks]
        raise ValueError(f"{self.where}: RankedRecord needs scores or ranks")

    def to_pairs(self, report: SkipReport | None = None) -> list[PreferenceRecord]:
        """All K(K-1)/2 pairs (i < j in response order), the better response as ``chosen``.

        Pairs with equal quality (ties) carry no preference and are skipped; so are pairs of
        two identical responses. Both are counted in ``report`` when one is given
        (reasons ``TIE`` / ``IDENTICAL_RESPONSES``). ``margin`` is left None: a score scale is
        not a margin scale.
        """
        q = self._quality()
        pairs = []
        file, row = self.origin if self.origin else ("<record>", None)
        k = len(self.responses)
        for i in range(k):
            for j in range(i + 1, k):
                if q[i] == q[j]:
                    if report is not None:
                        report.skip(TIE, file, row)
                    continue
                if self.responses[i] == self.responses[j]:
                    if report is not None:
                        report.skip(IDENTICAL_RESPONSES, file, row)
                    continue
                hi, lo = (i, j) if q[i] > q[j] else (j, i)
                pairs.append(PreferenceRecord(self.prompt, self.responses[hi], self.responses[lo],
                                              None, self.origin))
        return pairs

    @property
    def n_ties(self) -> int:
        """Number of tied pairs (the pairs :meth:`to_pairs` skips as ties)."""
        q = self._quality()
        return sum(q[i] == q[j] for i in range(len(q)) for j in range(i + 1, len(q)))


@dataclass
class UnpairedRecord:
    """A prompt, one completion and whether it is desirable (KTO, Ethayarajh et al. 2024)."""

    prompt: Text
    completion: Text
    label: bool
    origin: Origin = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        return _where(self.origin)


@dataclass
class PromptRecord:
    """A prompt alone (online RL: the policy generates the completion).

    ``columns`` holds the row's other columns (by their source names), e.g. a ground-truth
    ``answer``: reward functions receive them as keyword arguments (rlhf.rewards).
    """

    prompt: Text
    origin: Origin = field(default=None, compare=False, repr=False)
    columns: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def where(self) -> str:
        return _where(self.origin)


Record = SFTRecord | PreferenceRecord | RankedRecord | UnpairedRecord | PromptRecord
