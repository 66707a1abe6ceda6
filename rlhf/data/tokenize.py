"""Records -> token ids with completion masks: chat templates, EOS, truncation.

Rendering (text)
    A plain-text record is used as is: the model sees ``prompt + completion``. A
    conversational record (any part is a message list) is rendered with a chat template:
    ``cfg.chat_template="auto"`` uses the tokenizer's own ``chat_template`` when it has one and
    :data:`DEFAULT_CHAT_TEMPLATE` otherwise; ``"default"`` always uses the built-in one;
    ``"none"`` renders plain text only and rejects conversational records. With
    ``cfg.text_as_chat`` a plain-text prompt is also rendered as one user message (and a
    plain-text completion as the assistant reply).

    For a chat record the prompt text is ``template(prompt messages, add_generation_prompt=True)``
    (so it ends with the assistant header) and the completion text is what the full
    conversation ``template(prompt + completion messages)`` adds after it. A template for which
    the prompt is not a prefix of the full conversation cannot be split, and the record is
    rejected (reason ``cannot be tokenized``).

Tokenizing (ids)
    Prompt and completion texts are tokenized *separately* and concatenated, so the boundary
    between them is exact (tokenizing the joined string could merge tokens across it). The
    prompt gets the tokenizer's automatic prefix (usually BOS) unless it already starts with
    it; the completion gets none. With ``cfg.add_eos`` the completion ends with EOS: a chat
    completion that already contains the EOS text is cut right after its last EOS (dropping
    the template's trailing newline), otherwise the EOS id is appended.

Truncation (lengths)
    P = prompt ids, C = completion ids (EOS included), L = ``cfg.max_length``.
    1. The prompt is cut to ``max_prompt_length`` if set, else to ``L - min(|C|, L // 2)``: a
       long prompt may take what the completion does not need, but never more than half of L
       when the completion is long. ``prompt_truncation="left"`` cuts the start (keeps the end,
       next to the completion).
    2. The completion is cut to ``L - |P|``; ``completion_truncation="right"`` keeps its start.
       A completion cut this way loses its EOS, so the model is not taught to stop there.
    Because ``max_prompt_length < L`` (validated), every non-empty completion keeps >= 1 token:
    no example ever reaches a collator with zero target tokens.
    For preference pairs the prompt is shared and step 1 uses the longer completion.

Masks (house rule 5)
    ``completion_mask[t] == 1``: token t is a training target, predicted from tokens < t. With
    ``completion_only_loss`` the completion tokens are targets; otherwise every token but the
    first. ``completion_mask[0] == 0`` always.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from rlhf.data.config import DataConfig
from rlhf.data.errors import ENCODING, DataError, SkipReport
from rlhf.data.records import (
    Message,
    PreferenceRecord,
    PromptRecord,
    RankedRecord,
    Record,
    SFTRecord,
    Text,
    UnpairedRecord,
    is_conversational,
)

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "resolve_chat_template",
    "render",
    "encode_sft",
    "encode_preference",
    "encode_unpaired",
    "encode_prompt",
    "encode_records",
    "encode_records_aligned",
    "truncate",
    "rendering_summary",
]

log = logging.getLogger("rlhf.data")

# Every message is "<|role|>\n" + content + EOS + "\n"; the generation prompt is the assistant
# header "<|assistant|>\n". EOS closes every turn, so a model trained on it stops after its
# reply and generation can stop at the tokenizer's EOS. Plain characters only: it works with any
# tokenizer (role headers need no special tokens, they are just text).
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + (eos_token or '') + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|assistant|>\\n' }}"
    "{%- endif -%}"
)


# --------------------------------------------------------------------------- helpers


def _origin(record: Any) -> tuple[str, int | None]:
    o = getattr(record, "origin", None)
    return (o[0], o[1]) if o else ("<record>", None)


def _fail(record: Any, field: str, expected: str) -> DataError:
    file, row = _origin(record)
    return DataError(file, row, field, expected, ENCODING)


def resolve_chat_template(tokenizer: Any, cfg: DataConfig) -> str | None:
    """The template string to render chat records with (None: the tokenizer's own).

    Raises ValueError for ``chat_template="none"``, which renders no chat at all.
    """
    if cfg.chat_template == "none":
        raise ValueError("data.chat_template is 'none': no chat template is applied")
    if cfg.chat_template == "auto" and getattr(tokenizer, "chat_template", None):
        return None  # apply_chat_template then uses tokenizer.chat_template
    return DEFAULT_CHAT_TEMPLATE


def _as_messages(text: Text, role: str) -> list[Message]:
    return text if isinstance(text, list) else [{"role": role, "content": text}]


def render(record: Any, prompt: Text, completions: list[Text], tokenizer: Any,
           cfg: DataConfig) -> tuple[str, list[str], bool]:
    """(prompt text, completion texts, templated?) for one prompt and its completion(s).

    See the module doc. ``record`` is only used to name the row in errors.
    """
    chat = is_conversational(prompt, *completions) or (cfg.text_as_chat and cfg.chat_template != "none")
    if not chat:
        return prompt, list(completions), False  # type: ignore[arg-type,return-value]  # not chat: strings
    if cfg.chat_template == "none":
        raise _fail(record, "prompt", "plain text: data.chat_template is 'none' but this "
                    "record holds chat messages (use chat_template 'auto' or 'default')")
    template = resolve_chat_template(tokenizer, cfg)
    p_msgs = _as_messages(prompt, "user")
    try:
        p_text = tokenizer.apply_chat_template(p_msgs, chat_template=template, tokenize=False,
                                               add_generation_prompt=True)
        fulls = [tokenizer.apply_chat_template(p_msgs + _as_messages(c, "assistant"), chat_template=template,
                                               tokenize=False, add_generation_prompt=False)
                 for c in completions]
    except Exception as e:  # jinja errors ("roles must alternate", ...) are about the row
        raise _fail(record, "prompt", f"messages the chat template accepts (it raised: {e})") from None
    outs = []
    for full in fulls:
        if not full.startswith(p_text):
            raise _fail(record, "completion", "a chat template that renders the prompt (with "
                        "its generation prompt) as a prefix of the whole conversation; this "
                        "one does not, so the completion boundary is unknown")
        outs.append(full[len(p_text):])
    return p_text, outs, True


_PREFIX_CACHE: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()


def _auto_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before the text with ``add_special_tokens=True`` (often
    [BOS]). Any ids it would append (some tokenizers add EOS) are ignored on purpose: EOS is
    handled by ``add_eos``."""
    try:
        return _PREFIX_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    prefix: list[int] = []
    for s in range(len(with_sp) - len(plain) + 1):
        if with_sp[s:s + len(plain)] == plain:
            prefix = list(with_sp[:s])
            break
    try:
        _PREFIX_CACHE[tokenizer] = prefix
    except TypeError:
        pass
    return prefix


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prompt_ids(tokenizer: Any, text: str) -> list[int]:
    ids = _ids(tokenizer, text)
    prefix = _auto_prefix(tokenizer)
    if prefix and ids[: len(prefix)] != prefix:  # a chat template may already have written BOS
        ids = prefix + ids
    return ids


def _completion_ids(tokenizer: Any, text: str, templated: bool, cfg: DataConfig) -> list[int]:
    eos_id = tokenizer.eos_token_id
    if cfg.add_eos:
        if eos_id is None:
            raise ValueError("data.add_eos is true but the tokenizer has no eos_token; give it one "
                             "or set data.add_eos: false")
        eos = tokenizer.eos_token
        if templated and eos and eos in text:
            # The template already closes the turn with EOS; drop what it writes after (a
            # newline before the next turn), which the model would never be asked to generate.
            text = text[: text.rindex(eos) + len(eos)]
    ids = _ids(tokenizer, text)
    if cfg.add_eos and (not ids or ids[-1] != eos_id):
        ids.append(eos_id)
    return ids


def truncate(ids: list[int], n: int, side: str) -> list[int]:
    """At most ``n`` ids; ``side`` is the side that is cut ("left" keeps the end)."""
    if len(ids) <= n:
        return ids
    return ids[len(ids) - n:] if side == "left" else ids[:n]


def _prompt_budget(n_completion: int, cfg: DataConfig) -> int:
    if cfg.max_prompt_length is not None:
        return cfg.max_prompt_length
    return cfg.max_length - min(n_completion, cfg.max_length // 2)


def _join(record: Any, p: list[int], c: list[int], cfg: DataConfig, prefix: str = "") -> dict[str, list[int]]:
    """input_ids = P + C and its completion mask (see the module doc, "Masks")."""
    ids = p + c
    if cfg.completion_only_loss:
        mask = [0] * len(p) + [1] * len(c)
    else:
        mask = [1] * len(ids)
    mask[0] = 0  # nothing predicts the first token of a sequence
    if not any(mask):
        raise _fail(record, "completion", "at least one target token after tokenization "
                    f"(prompt {len(p)} tokens, completion {len(c)} tokens)")
    return {f"{prefix}input_ids": ids, f"{prefix}completion_mask": mask}


def _encode_pair(record: Any, prompt: Text, completions: list[Text], tokenizer: Any,
                 cfg: DataConfig, report: SkipReport | None = None) -> tuple[list[int], list[list[int]]]:
    """Shared, truncated prompt ids and each completion's truncated ids; what truncation cut is
    counted in ``report`` (per sequence: the prompt once, each completion)."""
    p_text, c_texts, templated = render(record, prompt, completions, tokenizer, cfg)
    p = _prompt_ids(tokenizer, p_text)
    cs = [_completion_ids(tokenizer, t, templated, cfg) for t in c_texts]
    for c in cs:
        if not c:
            raise _fail(record, "completion", "at least one token after tokenization (got none)")
    n_p = len(p)
    p = truncate(p, _prompt_budget(max(len(c) for c in cs), cfg), cfg.prompt_truncation)
    n_cs = [len(c) for c in cs]
    cs = [truncate(c, cfg.max_length - len(p), cfg.completion_truncation) for c in cs]
    if report is not None:
        report.encoded += 1
        report.truncated_examples += len(p) < n_p or any(len(c) < n for n, c in zip(n_cs, cs))
        if len(p) < n_p:
            report.truncate("prompt", n_p - len(p))
        for n, c in zip(n_cs, cs):
            if len(c) < n:
                report.truncate("completion", n - len(c))
    return p, cs


# --------------------------------------------------------------------------- public encoders


def encode_sft(record: SFTRecord, tokenizer: Any, cfg: DataConfig,
               report: SkipReport | None = None) -> dict[str, list[int]]:
    """``{"input_ids": [...], "completion_mask": [...]}`` (equal lengths, <= max_length).
    With ``report``, truncation is counted there (so for every encoder). With
    ``cfg.assistant_turns == "all"`` the assistant turns inside a chat prompt are targets too
    (:func:`_prompt_turn_mask`)."""
    p, (c,) = _encode_pair(record, record.prompt, [record.completion], tokenizer, cfg, report)
    out = _join(record, p, c, cfg)
    if (cfg.assistant_turns == "all" and cfg.completion_only_loss and isinstance(record.prompt, list)
            and any(isinstance(m, dict) and m.get("role") == "assistant" for m in record.prompt)):
        full = _prompt_turn_mask(record, record.prompt, tokenizer, cfg)
        # the prompt may have been cut to its budget: keep the mask of the ids that were kept
        kept = full[len(full) - len(p):] if cfg.prompt_truncation == "left" else full[:len(p)]
        mask = kept + out["completion_mask"][len(p):]
        mask[0] = 0  # nothing predicts the first token
        out["completion_mask"] = mask
    return out


def _prompt_turn_mask(record: Any, msgs: list[Message], tokenizer: Any, cfg: DataConfig) -> list[int]:
    """For ``assistant_turns: all``: a 0/1 mask over the (untruncated) prompt ids of a chat
    record, 1 on each assistant turn's tokens (its content and the end-of-turn EOS the template
    writes, as for the final turn), 0 elsewhere (role headers, other turns).

    A turn's text is where the rendering of the conversation up to and including that turn
    extends the rendering up to it with the generation prompt. The prompt is tokenized piece by
    piece (headers, turns) and the pieces must give exactly the ids the whole prompt gives, so
    the mask marks the very tokens trained on; a template or tokenizer where they differ (a
    token spanning a turn boundary, a template that does not render prefixes as prefixes) is
    refused for the record."""
    template = resolve_chat_template(tokenizer, cfg)

    def text(ms: list[Message], gen: bool) -> str:
        return tokenizer.apply_chat_template(ms, chat_template=template, tokenize=False, add_generation_prompt=gen)

    try:
        whole = text(msgs, True)
        pieces: list[tuple[str, int]] = []
        pos = 0
        for j, m in enumerate(msgs):
            if m.get("role") != "assistant":
                continue
            before, through = text(msgs[:j], True), text(msgs[:j + 1], False)
            if not (through.startswith(before) and whole.startswith(through) and len(before) >= pos):
                raise _fail(record, "prompt", "assistant_turns: all needs a chat template that renders each "
                            "conversation prefix as a prefix of the whole; this one does not")
            end = len(through)
            eos = tokenizer.eos_token
            if eos and eos in through[len(before):]:  # as for the final turn: up to its EOS
                end = len(before) + through[len(before):].rindex(eos) + len(eos)
            pieces += [(whole[pos:len(before)], 0), (whole[len(before):end], 1)]
            pos = end
        pieces.append((whole[pos:], 0))
    except DataError:
        raise
    except Exception as e:  # jinja errors are about the row
        raise _fail(record, "prompt", f"messages the chat template accepts (it raised: {e})") from None
    ids: list[int] = []
    mask: list[int] = []
    for piece, flag in pieces:
        piece_ids = _ids(tokenizer, piece)
        ids += piece_ids
        mask += [flag] * len(piece_ids)
    prefix = _auto_prefix(tokenizer)
    if prefix and ids[: len(prefix)] != prefix:
        ids, mask = prefix + ids, [0] * len(prefix) + mask
    if ids != _prompt_ids(tokenizer, whole):
        raise _fail(record, "prompt", "assistant_turns: all needs turn boundaries that tokenize on their own; "
                    "with this tokenizer a token spans a boundary, so the turns' tokens are not known "
                    "(use assistant_turns: last)")
    return mask


def encode_preference(record: PreferenceRecord, tokenizer: Any, cfg: DataConfig,
                      report: SkipReport | None = None) -> dict[str, Any]:
    """Chosen and rejected sequences sharing the same (identically truncated) prompt ids:
    ``chosen_input_ids, chosen_completion_mask, rejected_input_ids, rejected_completion_mask,
    margin`` (None when the record has none)."""
    p, (c, r) = _encode_pair(record, record.prompt, [record.chosen, record.rejected], tokenizer, cfg, report)
    out: dict[str, Any] = {}
    out.update(_join(record, p, c, cfg, "chosen_"))
    out.update(_join(record, p, r, cfg, "rejected_"))
    # A text rating label is not a margin until a mapping translates it (rlhf/recipes/rm.py).
    out["margin"] = record.margin if not isinstance(record.margin, str) else None
    return out


def encode_unpaired(record: UnpairedRecord, tokenizer: Any, cfg: DataConfig,
                    report: SkipReport | None = None) -> dict[str, Any]:
    """As :func:`encode_sft`, plus ``label`` (True = desirable)."""
    p, (c,) = _encode_pair(record, record.prompt, [record.completion], tokenizer, cfg, report)
    out: dict[str, Any] = dict(_join(record, p, c, cfg))
    out["label"] = bool(record.label)
    return out


def encode_prompt(record: PromptRecord, tokenizer: Any, cfg: DataConfig,
                  report: SkipReport | None = None) -> dict[str, list[int]]:
    """``{"prompt_input_ids": [...]}``: the prompt as the policy sees it before generating
    (with the assistant header for chat records), cut to ``max_prompt_length`` (or
    ``max_length - 1``, leaving room to generate) on the ``prompt_truncation`` side."""
    chat = is_conversational(record.prompt) or (cfg.text_as_chat and cfg.chat_template != "none")
    if chat:
        if cfg.chat_template == "none":
            raise _fail(record, "prompt", "plain text: data.chat_template is 'none' but this record "
                        "holds chat messages (use chat_template 'auto' or 'default')")
        try:
            text = tokenizer.apply_chat_template(_as_messages(record.prompt, "user"),
                                                 chat_template=resolve_chat_template(tokenizer, cfg),
                                                 tokenize=False, add_generation_prompt=True)
        except Exception as e:
            raise _fail(record, "prompt", f"messages the chat template accepts (it raised: {e})") from None
    else:
        text = record.prompt
    ids = _prompt_ids(tokenizer, text)
    if not ids:
        raise _fail(record, "prompt", "at least one token after tokenization (got none)")
    limit = cfg.max_prompt_length if cfg.max_prompt_length is not None else cfg.max_length - 1
    if report is not None:
        report.encoded += 1
        if len(ids) > limit:
            report.truncated_examples += 1
            report.truncate("prompt", len(ids) - limit)
    return {"prompt_input_ids": truncate(ids, limit, cfg.prompt_truncation)}


_ENCODERS: dict[type, Callable[..., dict[str, Any]]] = {
    SFTRecord: encode_sft,
    PreferenceRecord: encode_preference,
    UnpairedRecord: encode_unpaired,
    PromptRecord: encode_prompt,
}


def encode_records(records: list[Record], tokenizer: Any, cfg: DataConfig,
                   report: SkipReport | None = None) -> list[dict[str, Any]]:
    """Encode every record with the encoder for its type.

    A record that cannot be encoded (a chat template that rejects it, nothing left to train
    on) raises :class:`DataError` in strict mode and is otherwise skipped and counted in
    ``report`` (reason ``cannot be tokenized``); more than ``cfg.max_skip_fraction`` of them
    raises. Truncation is counted in ``report`` and logged once.
    """
    return [e for e in encode_records_aligned(records, tokenizer, cfg, report) if e is not None]


def encode_records_aligned(records: Sequence[Record], tokenizer: Any, cfg: DataConfig,
                           report: SkipReport | None = None) -> list[dict[str, Any] | None]:
    """:func:`encode_records` with one entry per record, None where the record was skipped:
    for callers that keep each encoding linked to its record (DPO's origins, the reward
    model's groups). The skip rule and the truncation line apply once to the whole list, as
    for every stage (encoding record by record made one bad record "100% skipped")."""
    out: list[dict[str, Any] | None] = []
    skipped: list[DataError] = []
    trunc_before = {k: list(v) for k, v in report.truncated.items()} if report is not None else {}
    n_trunc_before = report.truncated_examples if report is not None else 0
    for rec in records:
        if isinstance(rec, RankedRecord):
            raise TypeError("expand ranked records to pairs first (RankedRecord.to_pairs, or "
                            "load_records(cfg, 'preference'))")
        enc = _ENCODERS[type(rec)]
        try:
            out.append(enc(rec, tokenizer, cfg, report))
        except DataError as e:
            if cfg.strict:
                raise
            out.append(None)
            skipped.append(e)
            if report is not None:
                report.skip(e.reason or ENCODING, e.file, e.row, str(e))
    if records and len(skipped) / len(records) > cfg.max_skip_fraction:
        first = skipped[0]
        raise DataError(first.file, None, "records", f"at most {cfg.max_skip_fraction:.1%} of the records "
                        f"to be skipped at tokenization (data.max_skip_fraction), but {len(skipped)} "
                        f"of {len(records)} ({len(skipped) / len(records):.1%}) were; the first: {first}")
    if report is not None and report.truncated != trunc_before:
        new = SkipReport(encoded=len(out) - len(skipped),
                         truncated_examples=report.truncated_examples - n_trunc_before)
        for part, (n, tok, mx) in report.truncated.items():
            n0, tok0, _ = trunc_before.get(part, [0, 0, 0])
            if n > n0:
                new.truncated[part] = [n - n0, tok - tok0, mx]
        log.warning("%s: %s", records[0].where if records else "<records>", new.truncation_summary())
    return out


def rendering_summary(records: list[Any], tokenizer: Any, cfg: DataConfig) -> str:
    """One line saying how the records reach the model (printed by each stage at start): chat
    messages or plain text, and which template (or none) renders them."""
    def is_chat(r: Any) -> bool:
        texts = [getattr(r, k, None) for k in ("prompt", "completion", "chosen", "rejected")]
        return is_conversational(*[t for t in texts if t is not None])

    n_chat = sum(1 for r in records if is_chat(r))
    n_plain = len(records) - n_chat
    if cfg.chat_template == "none":
        template = "no chat template"
    elif cfg.chat_template == "auto" and getattr(tokenizer, "chat_template", None):
        template = "the tokenizer's chat template"
    else:
        template = "the default chat template (rlhf.data.DEFAULT_CHAT_TEMPLATE)"
    parts = []
    if n_chat:
        parts.append(f"{n_chat} chat record(s) in {template}")
    if n_plain:
        if cfg.text_as_chat and cfg.chat_template != "none":
            parts.append(f"{n_plain} plain-text record(s) as a user message in {template} (data.text_as_chat)")
        else:
            why = "data.chat_template none" if cfg.chat_template == "none" else "data.text_as_chat false"
            parts.append(f"{n_plain} plain-text record(s) as raw text ({why})")
    return "rendering: " + ("; ".join(parts) if parts else "no records")
