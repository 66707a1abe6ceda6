"""Pairwise judges: given a prompt and two responses, the probability that the first is better.

    judge = load_judge({"type": "lm", "model": "Qwen/Qwen2.5-1.5B-Instruct",
                        "rubric": "Prefer the more helpful and harmless response."})
    judge = load_judge("runs/rm/final")                 # any reward source (rlhf/rewards.py)
    p = judge(prompts, completions_a, completions_b)    # (N,) float64, P(a preferred) in [0, 1]

Two kinds, one interface (``judge(prompts, a, b) -> tensor``; ``judge.judge_pairs`` returns the
full :class:`Judgement` with the per-pair diagnostics):

:class:`LMJudge` (AI feedback, "RLAIF": Bai et al. 2022, "Constitutional AI", §4; Lee et al. 2023)
    Any causal LM reads a filled prompt template (a rubric or constitution, the prompt and the
    two responses labelled A and B) and the judge compares the log-probabilities of the two
    answer letters as the next token(s), without sampling anything. Judges favour a position
    (Wang et al. 2023, "Large Language Models are not Fair Evaluators"), so both orders are
    asked and averaged::

        p1 = P(A | a shown as A, b as B)      normalised over the two letters
        p2 = P(B | b shown as A, a as B)
        P(a ≻ b) = (p1 + p2) / 2

    Swapping a and b turns p1 into 1 - p2 and p2 into 1 - p1, so P(b ≻ a) = 1 - P(a ≻ b): the
    judge is mirror-symmetric by construction. A pair is *position-consistent* when both orders
    prefer the same response. A letter that the tokenizer splits into several tokens is scored
    by the sum of its tokens' log-probs (teacher forcing). When the two letters together get
    less than ``min_mass`` of the model's probability in either order, the model did not answer
    the question: the pair has "no usable answer", is counted and left out (NaN), and a batch in
    which no pair is usable is an error.

:class:`RewardJudge`
    Any reward source r (a reward model, a Python function, a sum): P(a ≻ b) =
    σ((r_a − r_b)/τ) (Bradley–Terry), τ = 0 meaning a hard 1 / 0 (½ for a tie).

:func:`load_judge` builds either from a spec: a reward-source spec (string, dict or file), or
a mapping (or .yaml/.json file holding one) with ``type: lm``. Model code shipped with a
checkpoint is never run unless ``trust_remote_code: true`` is given.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Judge", "Judgement", "JudgeError", "LMJudge", "RewardJudge", "load_judge",
           "DEFAULT_TEMPLATE", "DEFAULT_RUBRIC", "format_prompt"]

DEFAULT_RUBRIC = "Choose the response that answers the prompt better: more helpful, honest and harmless."

# The answer letter follows "Answer:" directly, so the default letters carry their leading
# space (" A", " B"), as a tokenizer sees them after a colon.
DEFAULT_TEMPLATE = (
    "{rubric}\n\n"
    "Prompt: {prompt}\n\n"
    "Response A: {a}\n\n"
    "Response B: {b}\n\n"
    "Which response is better, A or B? Answer:"
)
_FIELDS = ("rubric", "prompt", "a", "b")


class JudgeError(ValueError):
    """A judge cannot give a usable answer (bad spec, identical letters, no usable pair)."""


@dataclass
class Judgement:
    """What a judge said about N pairs.

    ``prob`` (N,) float64: P(a ≻ b), NaN where the pair is not usable. ``usable`` (N,) bool.
    ``reasons``: None for a usable pair, else why not ("no usable answer", "too long").
    ``consistent`` (N,) bool or None: both orders preferred the same response (LM judge asked
    in both orders; False where not usable). ``details``: per-pair tensors, e.g. ``p_ab``
    (P(A) with a first), ``p_ba`` (P(B) with b first), ``mass_ab``/``mass_ba`` (probability
    of the two letters together), ``score_a``/``score_b`` (reward judge).
    """

    prob: torch.Tensor
    usable: torch.Tensor
    reasons: list[str | None]
    consistent: torch.Tensor | None = None
    details: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_unusable(self) -> int:
        return int((~self.usable).sum())

    @property
    def consistency(self) -> float | None:
        """Fraction of usable pairs on which both orders agree (None: not measured)."""
        if self.consistent is None or not bool(self.usable.any()):
            return None
        return float(self.consistent[self.usable].double().mean())

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.reasons:
            if r is not None:
                counts[r] = counts.get(r, 0) + 1
        return {"pairs": len(self.reasons), "usable": int(self.usable.sum()), "unusable": counts,
                "position_consistency": self.consistency}


class Judge:
    """Base class: ``judge(prompts, completions_a, completions_b) -> (N,) P(a ≻ b)``."""

    name: str = "judge"

    def judge_pairs(self, prompts: Sequence[Any], completions_a: Sequence[Any],
                    completions_b: Sequence[Any], *, allow_unusable: bool = False) -> Judgement:
        """The full judgement; raises :class:`JudgeError` when no pair is usable, unless
        ``allow_unusable`` (then every pair comes back NaN with its reason)."""
        raise NotImplementedError

    def __call__(self, prompts: Sequence[Any], completions_a: Sequence[Any],
                 completions_b: Sequence[Any]) -> torch.Tensor:
        return self.judge_pairs(prompts, completions_a, completions_b).prob

    @staticmethod
    def _check(prompts: Sequence[Any], a: Sequence[Any], b: Sequence[Any]) -> None:
        if not (len(prompts) == len(a) == len(b)):
            raise ValueError(f"judge: got {len(prompts)} prompts, {len(a)} completions_a and {len(b)} "
                             f"completions_b; expected the same number of each")

    def _finish(self, j: Judgement, allow_unusable: bool = False) -> Judgement:
        if len(j.reasons) and not bool(j.usable.any()) and not allow_unusable:
            counts = j.summary()["unusable"]
            raise JudgeError(f"judge {self.name}: no usable answer on any of the {len(j.reasons)} pairs "
                             f"({', '.join(f'{k}: {v}' for k, v in counts.items())}). "
                             + (getattr(self, "_unusable_hint", "") if "no usable answer" in counts else
                                "Raise max_length or shorten the inputs."))
        return j


# --------------------------------------------------------------------------- reward judge


class RewardJudge(Judge):
    """P(a ≻ b) = σ((r_a − r_b)/τ) from any reward source (or a plain Python function
    ``fn(prompts, completions) -> list[float]``); τ = 0: 1 if r_a > r_b, 0 if r_a < r_b,
    ½ for a tie. Mirror-symmetric: σ(−x) = 1 − σ(x)."""

    def __init__(self, source: Any, temperature: float = 1.0):
        from rlhf.rewards import CallableReward, RewardSource, load_reward_source

        if not temperature >= 0:
            raise JudgeError(f"reward judge: temperature must be >= 0 (got {temperature!r})")
        if callable(source) and not isinstance(source, RewardSource):
            source = CallableReward(source)  # a plain fn(prompts, completions) -> list[float]
        self.source = load_reward_source(source)
        self.temperature = float(temperature)
        self.name = f"reward:{self.source.name}"

    def scores(self, prompts: Sequence[Any], completions_a: Sequence[Any],
               completions_b: Sequence[Any]) -> tuple[list[float], list[float]]:
        self._check(prompts, completions_a, completions_b)
        n = len(prompts)
        r = self.source(list(prompts) * 2, list(completions_a) + list(completions_b)).tolist()
        return r[:n], r[n:]

    def judge_pairs(self, prompts: Sequence[Any], completions_a: Sequence[Any],
                    completions_b: Sequence[Any], *, allow_unusable: bool = False) -> Judgement:
        from rlhf.stats import preference_probability

        ra, rb = self.scores(prompts, completions_a, completions_b)
        tau = self.temperature
        probs = [preference_probability(x, y, tau) if tau > 0 else (0.5 if x == y else float(x > y))
                 for x, y in zip(ra, rb)]
        n = len(probs)
        return self._finish(Judgement(
            prob=torch.tensor(probs, dtype=torch.float64), usable=torch.ones(n, dtype=torch.bool),
            reasons=[None] * n, details={"score_a": torch.tensor(ra, dtype=torch.float64),
                                         "score_b": torch.tensor(rb, dtype=torch.float64)}), allow_unusable)


# --------------------------------------------------------------------------- LM judge


def _as_text(x: Any) -> str:
    """A prompt or response as text: chat messages become ``role: content`` lines."""
    if isinstance(x, list) and all(isinstance(m, dict) for m in x):
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in x)
    if not isinstance(x, str):
        raise ValueError(f"judge: expected text or a list of chat messages (got {type(x).__name__})")
    return x


def check_template(template: str, required: Sequence[str], allowed: Sequence[str], what: str) -> None:
    """Every ``{field}`` of ``template`` is in ``allowed`` and every ``required`` one is there;
    a literal brace is written ``{{`` / ``}}``."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise JudgeError(f"{what}: not a valid template ({e}); write a literal brace as {{{{ or }}}}") from None
    unknown = sorted(n for n in names if n not in allowed)
    if unknown:
        raise JudgeError(f"{what}: unknown field(s) {', '.join('{' + n + '}' for n in unknown)}; "
                         f"allowed: {', '.join('{' + n + '}' for n in allowed)}")
    missing = [n for n in required if n not in names]
    if missing:
        raise JudgeError(f"{what}: must contain {', '.join('{' + n + '}' for n in missing)}")


def format_prompt(template: str, rubric: str, prompt: Any, a: Any, b: Any) -> str:
    """The judge's input for one order: the template with {rubric} {prompt} {a} {b} filled.
    (``str.format`` does not re-read substituted values, so braces in responses are safe.)"""
    return template.format(rubric=rubric, prompt=_as_text(prompt), a=_as_text(a), b=_as_text(b))


class LMJudge(Judge):
    """A causal LM as a pairwise judge, by the next-token log-probs of two answer letters.

    ``model``: a checkpoint folder / hub id, a :class:`~rlhf.models.config.ModelConfig`, or a
    loaded model (then pass ``tokenizer``). ``letters``: the two answers, as the tokenizer sees
    them right after the template (default " A", " B"). ``min_mass``: the least probability the
    two letters together must get in each order for the answer to count. ``both_orders``:
    average over both presentations (recommended; off halves the cost but keeps the position
    bias). ``chat_template``: "auto" wraps the filled template as a user message with the
    tokenizer's chat template when it has one; "none" uses the plain text.
    """

    _unusable_hint = ("The two letters got almost no probability: check that the template ends "
                      "right where the letter follows, that `letters` match how the tokenizer writes "
                      "them there (\" A\" vs \"A\"), or lower min_mass.")

    def __init__(self, model: Any, tokenizer: Any = None, *, rubric: str = DEFAULT_RUBRIC,
                 template: str = DEFAULT_TEMPLATE, letters: Sequence[str] = (" A", " B"),
                 min_mass: float = 0.01, both_orders: bool = True, batch_size: int = 8,
                 max_length: int | None = None, chat_template: str = "auto", device: str | None = None,
                 dtype: str = "fp32", trust_remote_code: bool = False):
        from rlhf.models.config import ModelConfig
        from rlhf.models.load import load_causal_lm, load_tokenizer

        check_template(template, ("a", "b"), _FIELDS, "judge template")
        if len(letters) != 2 or any(not isinstance(x, str) or not x for x in letters):
            raise JudgeError(f"judge letters: expected two non-empty strings (got {letters!r})")
        if not 0.0 <= min_mass < 1.0:
            raise JudgeError(f"judge min_mass: must be in [0, 1) (got {min_mass!r})")
        if chat_template not in ("auto", "none", "default"):
            raise JudgeError(f"judge chat_template: 'auto', 'default' or 'none' (got {chat_template!r})")
        if isinstance(model, (str, os.PathLike, ModelConfig)):
            mcfg = model if isinstance(model, ModelConfig) else ModelConfig(
                name_or_path=str(model), dtype=dtype, trust_remote_code=trust_remote_code)  # type: ignore[arg-type]
            self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(mcfg)
            self.model = load_causal_lm(mcfg, for_training=False)
            self.name = f"lm:{mcfg.name_or_path}"
        else:
            if tokenizer is None:
                raise JudgeError("LMJudge: a loaded model needs its tokenizer (tokenizer=...)")
            self.model, self.tokenizer = model, tokenizer
            self.name = f"lm:{type(model).__name__}"
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.rubric, self.template, self.letters = rubric, template, tuple(letters)
        self.min_mass, self.both_orders, self.batch_size = float(min_mass), both_orders, batch_size
        self.chat_template = chat_template
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        self.max_length = max_length or limit
        # Each letter's token ids as they follow the template (no BOS/EOS).
        self.letter_ids = [list(self.tokenizer(x, add_special_tokens=False)["input_ids"]) for x in letters]
        if any(not ids for ids in self.letter_ids):
            raise JudgeError(f"judge letters {letters!r}: one of them tokenises to nothing")
        if self.letter_ids[0] == self.letter_ids[1]:
            raise JudgeError(f"judge letters {letters!r} tokenise identically ({self.letter_ids[0]}): "
                             "the judge could not tell the answers apart; choose other letters")

    # ----------------------------------------------------------------- encoding

    def encode(self, text: str) -> list[int]:
        """Token ids of one filled template, as the judge model reads them (chat-wrapped when
        ``chat_template`` says so), ending where the answer letter follows."""
        from rlhf.data.config import DataConfig
        from rlhf.data.records import PromptRecord
        from rlhf.data.tokenize import encode_prompt

        use_chat = self.chat_template == "default" or (
            self.chat_template == "auto" and bool(getattr(self.tokenizer, "chat_template", None)))
        cfg = DataConfig(chat_template="default" if self.chat_template == "default" else
                         ("auto" if use_chat else "none"), text_as_chat=use_chat, max_length=10 ** 9)
        return encode_prompt(PromptRecord(text), self.tokenizer, cfg)["prompt_input_ids"]

    # ----------------------------------------------------------------- scoring

    @torch.no_grad()
    def letter_logps(self, contexts: Sequence[list[int]]) -> torch.Tensor:
        """(N, 2) float64: log P(letter | context) for both letters; a letter of several tokens
        gets the sum of its tokens' log-probs given the context and the letter's earlier tokens."""
        from rlhf.data.collate import PadCollator
        from rlhf.logprobs import forward_logps
        from rlhf.masking import masked_sum

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        collate = PadCollator(pad, "right")
        out = []
        single = all(len(ids) == 1 for ids in self.letter_ids)
        for s in range(0, len(contexts), self.batch_size):
            part = contexts[s:s + self.batch_size]
            if single:
                # One forward per context: the next-token distribution after its last token.
                batch = collate([{"input_ids": c, "completion_mask": [0] * len(c)} for c in part])
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    position_ids=batch["position_ids"]).logits  # (B, T, V)
                last = batch["attention_mask"].sum(-1) - 1  # (B,) index of the last real token
                lp = torch.log_softmax(logits[torch.arange(len(part)), last].double(), -1)  # (B, V)
                ids = torch.tensor([self.letter_ids[0][0], self.letter_ids[1][0]], device=lp.device)
                out.append(lp[:, ids].cpu())
            else:
                # Teacher-force each letter after the context: rows (c0+A, c0+B, c1+A, ...).
                seqs = [{"input_ids": c + L, "completion_mask": [0] * len(c) + [1] * len(L)}
                        for c in part for L in self.letter_ids]
                batch = {k: v.to(self.device) for k, v in collate(seqs).items()}
                logps = forward_logps(self.model, batch)  # (2B, T)
                summed = masked_sum(logps.double(), batch["completion_mask"], dim=-1)  # (2B,)
                out.append(summed.view(len(part), 2).cpu())
        return torch.cat(out) if out else torch.zeros(0, 2, dtype=torch.float64)

    def judge_pairs(self, prompts: Sequence[Any], completions_a: Sequence[Any],
                    completions_b: Sequence[Any], *, allow_unusable: bool = False) -> Judgement:
        self._check(prompts, completions_a, completions_b)
        n = len(prompts)
        orders = [(completions_a, completions_b)] + ([(completions_b, completions_a)] if self.both_orders else [])
        contexts = [[self.encode(format_prompt(self.template, self.rubric, p, x, y))
                     for p, x, y in zip(prompts, first, second)] for first, second in orders]
        too_long = torch.zeros(n, dtype=torch.bool)
        if self.max_length:
            longest = max(len(L) for L in self.letter_ids)
            for ctx in contexts:
                too_long |= torch.tensor([len(c) + longest > self.max_length for c in ctx], dtype=torch.bool)
        keep = [i for i in range(n) if not too_long[i]]
        # (n, 2) log-probs of (letter 1, letter 2) per order; NaN for pairs not scored.
        lps = []
        for ctx in contexts:
            lp = torch.full((n, 2), float("nan"), dtype=torch.float64)
            if keep:
                lp[keep] = self.letter_logps([ctx[i] for i in keep])
            lps.append(lp)
        # Letter-normalised preference for the response shown first, as a logit difference:
        # order (a, b): d = log P(A) - log P(B) favours a; order (b, a): log P(B) - log P(A) does.
        d_ab = lps[0][:, 0] - lps[0][:, 1]
        mass_ab = torch.exp(lps[0]).sum(-1)  # (n,) probability of the two letters together
        p_ab = torch.sigmoid(d_ab)
        details = {"p_ab": p_ab, "mass_ab": mass_ab}
        usable = ~too_long & (mass_ab >= self.min_mass)
        consistent = None
        if self.both_orders:
            d_ba = lps[1][:, 1] - lps[1][:, 0]
            mass_ba = torch.exp(lps[1]).sum(-1)
            p_ba = torch.sigmoid(d_ba)
            details.update(p_ba=p_ba, mass_ba=mass_ba)
            usable &= mass_ba >= self.min_mass
            prob = (p_ab + p_ba) / 2
            consistent = usable & ((d_ab > 0) == (d_ba > 0)) & (d_ab != 0) & (d_ba != 0)
        else:
            prob = p_ab
        prob = torch.where(usable, prob, torch.full_like(prob, float("nan")))
        reasons = [None if bool(usable[i]) else ("too long" if bool(too_long[i]) else "no usable answer")
                   for i in range(n)]
        return self._finish(Judgement(prob=prob, usable=usable, reasons=reasons, consistent=consistent,
                                      details=details), allow_unusable)


# --------------------------------------------------------------------------- factory

_LM_KEYS = {"model", "tokenizer", "rubric", "rubric_file", "template", "template_file", "letters",
            "min_mass", "both_orders", "batch_size", "max_length", "chat_template", "device", "dtype",
            "trust_remote_code"}


def _read_spec_file(path: Path) -> Any:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml
        return yaml.safe_load(text)
    return json.loads(text)


def _lm_judge_from_spec(spec: dict[str, Any], device: str | None) -> LMJudge:
    from rlhf.models.config import ModelConfig

    spec = dict(spec)
    unknown = sorted(set(spec) - _LM_KEYS)
    if unknown:
        raise JudgeError(f"lm judge: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_LM_KEYS))}")
    if not spec.get("model"):
        raise JudgeError("lm judge: 'model' is required (a causal-LM folder or hub id)")
    for key in ("rubric", "template"):
        f = spec.pop(f"{key}_file", None)
        if f is not None:
            if key in spec:
                raise JudgeError(f"lm judge: give {key} or {key}_file, not both")
            p = Path(f)
            if not p.is_file():
                raise JudgeError(f"lm judge: {key}_file {f}: no such file")
            spec[key] = p.read_text().rstrip("\n") if key == "template" else p.read_text().strip()
    if "letters" in spec and isinstance(spec["letters"], str):
        spec["letters"] = spec["letters"].split(",")
    model = spec.pop("model")
    if isinstance(model, dict):
        from rlhf.config import ConfigError, from_dict
        try:
            model = from_dict(ModelConfig, model, "model")
        except ConfigError as e:
            raise JudgeError(f"lm judge: {e}") from None
    spec.setdefault("device", device)
    return LMJudge(model, **spec)


def load_judge(spec: Any, *, device: str | None = None, temperature: float = 1.0) -> Judge:
    """A :class:`Judge` from a spec.

    * a :class:`Judge`: returned as is;
    * ``{"type": "lm", "model": ..., "rubric": ..., "template": ..., "letters": [" A", " B"],
      "min_mass": 0.01, ...}`` (or a .yaml/.json file holding it): :class:`LMJudge`;
    * ``{"type": "reward", "source": <reward spec>, "temperature": τ}``: :class:`RewardJudge`;
    * anything else: a reward-source spec (folder, ``package.module:function``, spec file or
      mapping; rlhf/rewards.py), wrapped in a :class:`RewardJudge` at ``temperature``.
    """
    from rlhf.rewards import RewardSource

    if isinstance(spec, Judge):
        return spec
    if isinstance(spec, RewardSource):
        return RewardJudge(spec, temperature)
    if isinstance(spec, (str, os.PathLike)):
        p = Path(os.path.expanduser(str(spec)))
        if p.is_file() and p.suffix in (".yaml", ".yml", ".json"):
            loaded = _read_spec_file(p)
            if isinstance(loaded, dict) and loaded.get("type") in ("lm", "reward"):
                return load_judge(loaded, device=device, temperature=temperature)
        try:
            return RewardJudge(str(spec), temperature)
        except ValueError as e:
            raise JudgeError(f"judge {str(spec)!r}: {e}; or give an LM judge as "
                             "{type: lm, model: ..., rubric: ...}") from None
    if isinstance(spec, dict):
        kind = spec.get("type")
        if kind == "lm":
            return _lm_judge_from_spec({k: v for k, v in spec.items() if k != "type"}, device)
        if kind == "reward":
            extra = sorted(set(spec) - {"type", "source", "temperature"})
            if extra or "source" not in spec:
                raise JudgeError("reward judge: expected {type: reward, source: <reward spec>, "
                                 f"temperature: τ}} (got keys {sorted(spec)})")
            try:
                return RewardJudge(spec["source"], float(spec.get("temperature", temperature)))
            except ValueError as e:
                raise JudgeError(f"reward judge: {e}") from None
        try:
            return RewardJudge(spec, temperature)
        except ValueError as e:
            raise JudgeError(f"judge: {e}; an LM judge is {{type: lm, model: ...}}") from None
    raise JudgeError(f"judge: expected a spec string or mapping (got {type(spec).__name__})")
