"""Evaluate a policy against a reference policy: reward, win rate, KL, length, diversity.

    result = evaluate("runs/ppo/final", "runs/sft/final", prompts, {"gold": "my_pkg.gold:reward"},
                      num_samples=4, max_new_tokens=48)

Steps (each a function below, so recipes can reuse them):

1. sample ``num_samples`` completions per prompt from the policy and from the reference
   (:func:`sample_completions`, the ONE place that samples: rollout code can replace it);
2. score both sets with every reward source;
3. log-probs of the policy's samples, exactly the sampled token ids, under the policy and
   under the reference (:func:`completion_logps`), giving the Monte-Carlo KL;
4. summarise: mean ± standard error per source, win rate (policy sample i against reference
   sample i of the same prompt), KL, length in tokens, fraction ending with EOS, distinct-1/2.

The KL is computed with both models' log-probs at the sampling temperature T (T = 1 when
greedy), so with top_p = 1 and top_k = 0 it is an unbiased estimate of KL(π_T || π_ref,T), the
KL between the two distributions the samples come from; at the default T = 1 that is
KL(π || π_ref). With top-p/top-k truncation the samples do not come from π_T and the number is
E_{y~sampler}[log π_T(y) - log π_ref,T(y)], not a KL: ``kl["is_kl"]`` is false then. See
docs/evaluation.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf.config import from_dict, opt
from rlhf.eval.metrics import distinct_n, mean_stderr, sequence_kl, win_rate
from rlhf.rollout.config import EngineName, VLLMConfig

__all__ = ["SamplingConfig", "sample_completions", "completion_logps", "evaluate", "format_table",
           "json_safe"]


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled (shared by ``rlhf eval`` and ``rlhf best-of-n``)."""

    max_new_tokens: int = opt(64, "most tokens generated per completion (EOS included)", ge=1)
    temperature: float = opt(1.0, "softmax temperature; 0 = greedy (every sample identical)", ge=0.0)
    top_p: float = opt(1.0, "nucleus sampling: keep the smallest token set with this much "
                            "probability; 1 = off", gt=0.0, le=1.0)
    top_k: int = opt(0, "keep only the k most likely tokens; 0 = off", ge=0)
    batch_size: int = opt(8, "prompts per generation batch (rows = batch_size x samples per prompt)", ge=1)
    engine: EngineName = opt("auto", "the rollout engine: auto / lean / transformers (the built-in sampler "
                                     "and its forward, see rlhf.rollout.SamplingConfig) or vllm")
    vllm: VLLMConfig = opt(factory=VLLMConfig, help="the vLLM engine's settings (engine=vllm)")


def _chunk_seed(seed: int, chunk: int) -> int:
    # A distinct seed per batch of prompts, and no overlap between nearby run seeds
    # (seed s chunk 1 must not equal seed s+1 chunk 0).
    return seed * 1_000_003 + chunk


def sample_completions(model: Any, tokenizer: Any, prompts: Sequence[Any], sampling: SamplingConfig,
                       *, num_samples: int = 1, seed: int = 0, data_cfg: Any = None,
                       progress: Callable[[int], Any] | None = None) -> list[dict]:
    """``num_samples`` completions per prompt; the single sampling entry point of rlhf.eval
    and the best-of-n recipe.

    Returns one dict per (prompt, sample), samples of one prompt consecutive, with the keys of
    :func:`rlhf.rollout.rows.generate`: prompt, completion, ended_with_eos, num_tokens,
    prompt_ids, completion_ids (the exact sampled ids, EOS included when it ended).
    ``progress(k)`` is called after each batch with the number of prompts it held.
    """
    from rlhf.rollout.rows import generate

    rows: list[dict] = []
    bs = sampling.batch_size
    for chunk, start in enumerate(range(0, len(prompts), bs)):
        part = list(prompts[start:start + bs])
        rows += generate(model, tokenizer, part, data_cfg=data_cfg, max_new_tokens=sampling.max_new_tokens,
                         temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                         num_samples=num_samples, batch_size=bs, seed=_chunk_seed(seed, chunk),
                         engine=sampling.engine, vllm=sampling.vllm)
        if progress is not None:
            progress(len(part))
    return rows


@torch.no_grad()
def completion_logps(model: Any, rows: Sequence[dict], *, pad_token_id: int, temperature: float = 1.0,
                     batch_size: int = 16) -> torch.Tensor:
    """Summed log-prob of each row's ``completion_ids`` given its ``prompt_ids``: (N,) float64.

    The sequences are right-padded (pads after the real tokens change nothing a causal model
    computes for them) and scored with :func:`rlhf.logprobs.forward_logps` under
    ``softmax(logits / temperature)``; the completion mask selects the completion tokens
    (house rule 5: mask[t] = 1 when token t is a completion token predicted from < t).
    """
    from rlhf.data.collate import PadCollator
    from rlhf.logprobs import forward_logps
    from rlhf.masking import masked_sum

    collate = PadCollator(pad_token_id, "right")
    device = next(model.parameters()).device
    out = []
    for k in range(0, len(rows), batch_size):
        part = rows[k:k + batch_size]
        seqs = [{"input_ids": list(r["prompt_ids"]) + list(r["completion_ids"]),
                 "completion_mask": [0] * len(r["prompt_ids"]) + [1] * len(r["completion_ids"])}
                for r in part]
        batch = {n: t.to(device) for n, t in collate(seqs).items()}
        logps = forward_logps(model, batch, temperature)  # (B, T)
        out.append(masked_sum(logps, batch["completion_mask"], dim=-1).double().cpu())  # (B,)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


# --------------------------------------------------------------------------- helpers


def _model_config(spec: Any, dtype: str) -> Any:
    from rlhf.models.config import ModelConfig
    if isinstance(spec, ModelConfig):
        return spec
    return ModelConfig(name_or_path=str(spec), dtype=dtype)  # type: ignore[arg-type]  # a str from the caller


def _load(spec: Any, dtype: str, device: torch.device) -> tuple[Any, Any, Any]:
    from rlhf.models.load import load_causal_lm, load_tokenizer
    mcfg = _model_config(spec, dtype)
    tok = load_tokenizer(mcfg)
    model = load_causal_lm(mcfg, for_training=False).to(device)
    return mcfg, tok, model


def _side_summary(rows: list[dict], scores: dict[str, torch.Tensor], group: int) -> dict[str, Any]:
    """Reward, length, EOS and diversity of one model's samples."""
    texts = [r["completion"] for r in rows]
    return {
        "reward": {name: mean_stderr(s.tolist(), group) for name, s in scores.items()},
        "length": mean_stderr([r["num_tokens"] for r in rows], group),
        "eos_fraction": sum(bool(r["ended_with_eos"]) for r in rows) / len(rows),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
    }


def _score(source: Any, rows: list[dict], chunk: int = 256, columns: Sequence[dict] | None = None) -> torch.Tensor:
    """Scores of ``rows``; ``columns[i]`` (when given) is the data row of ``rows[i]``'s prompt,
    passed on as keyword arguments (rlhf.rewards.row_columns)."""
    from rlhf.rewards import call_reward, row_columns

    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    cols = list(columns) if columns is not None else [{}] * len(rows)
    parts = [call_reward(source, prompts[k:k + chunk], completions[k:k + chunk], **row_columns(cols[k:k + chunk]))
             for k in range(0, len(rows), chunk)]
    return torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64)


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON accepts: nan/inf become null, tuples lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- evaluate


def evaluate(policy: Any, reference: Any, prompts: Sequence[Any], rewards: dict[str, Any], *,
             num_samples: int = 1, max_new_tokens: int = 64, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, batch_size: int = 8, seed: int = 0,
             data_cfg: Any = None, dtype: str = "fp32", device: str | None = None,
             num_examples: int = 3, keep_rows: bool = False, progress: bool = False,
             columns: Sequence[dict[str, Any]] | None = None,
             engine: str = "auto") -> dict[str, Any]:
    """Evaluate ``policy`` against ``reference`` (checkpoint folders, hub ids or ModelConfigs).

    ``rewards`` maps a name to a reward-source spec (see :func:`rlhf.rewards.load_reward_source`).
    ``reference`` may be None: then only the policy's own metrics are computed. The policy
    samples with ``seed``, the reference with ``seed + 1`` (independent samples, as the win
    rate assumes). Standard errors treat prompts as the independent units (samples of one
    prompt are averaged first). Returns a JSON-ready dict; ``keep_rows`` adds every sample.
    ``columns`` (one dict per prompt: its data row's other columns, e.g. a ground-truth answer)
    reach the reward functions as keyword arguments.
    """
    from rlhf.data.config import DataConfig
    from rlhf.rewards import load_reward_source

    prompts = list(prompts)
    if not prompts:
        raise ValueError("evaluate: no prompts")
    if num_samples < 1:
        raise ValueError(f"evaluate: num_samples must be >= 1 (got {num_samples})")
    # from_dict checks every bound and names the offending field.
    sampling = from_dict(SamplingConfig, {"max_new_tokens": max_new_tokens, "temperature": temperature,
                                          "top_p": top_p, "top_k": top_k, "batch_size": batch_size,
                                          "engine": engine})
    data_cfg = data_cfg or DataConfig()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # Reward sources first: a bad spec fails before any sampling.
    sources = {name: load_reward_source(spec, device=device) for name, spec in rewards.items()}
    # Log-probs at the sampling temperature (see the module doc); greedy has none, use 1.
    kl_temperature = temperature if temperature > 0 else 1.0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(prompts) * (2 if reference is not None else 1), desc="eval", unit="prompt")
    tick = bar.update if bar is not None else None

    # Step 1a. Policy samples and their log-probs under the policy.
    _, tok_p, model_p = _load(policy, dtype, dev)
    rows_p = sample_completions(model_p, tok_p, prompts, sampling, num_samples=num_samples, seed=seed,
                                data_cfg=data_cfg, progress=tick)
    logps_p = completion_logps(model_p, rows_p, pad_token_id=tok_p.pad_token_id, temperature=kl_temperature)
    del model_p

    # Step 1b. Reference samples, and the reference's log-probs of the POLICY's samples. The KL
    # needs both models to share one vocabulary (the same token ids mean the same strings).
    rows_r: list[dict] = []
    logps_r = None
    kl_skipped = None
    if reference is not None:
        _, tok_r, model_r = _load(reference, dtype, dev)
        rows_r = sample_completions(model_r, tok_r, prompts, sampling, num_samples=num_samples,
                                    seed=seed + 1, data_cfg=data_cfg, progress=tick)
        if tok_r.get_vocab() == tok_p.get_vocab():
            logps_r = completion_logps(model_r, rows_p, pad_token_id=tok_r.pad_token_id,
                                       temperature=kl_temperature)
        else:
            kl_skipped = "policy and reference tokenizers differ; a token-level KL is undefined"
        del model_r
    if bar is not None:
        bar.close()

    # Step 2. Rewards of both sides under every source.
    if columns is not None and len(columns) != len(prompts):
        raise ValueError(f"evaluate: {len(columns)} column rows for {len(prompts)} prompts")
    cols = [columns[i // num_samples] for i in range(len(prompts) * num_samples)] if columns is not None else None
    scores_p = {name: _score(s, rows_p, columns=cols) for name, s in sources.items()}
    scores_r = {name: _score(s, rows_r, columns=cols) for name, s in sources.items()} if rows_r else {}

    # Step 3. Summaries.
    g = num_samples
    result: dict[str, Any] = {
        "settings": {"policy": str(_model_config(policy, dtype).name_or_path),
                     "reference": None if reference is None else str(_model_config(reference, dtype).name_or_path),
                     "num_prompts": len(prompts), "num_samples": num_samples, "seed": seed,
                     "rewards": {name: s.name for name, s in sources.items()},
                     "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                     "top_k": top_k},
        "policy": _side_summary(rows_p, scores_p, g),
        "reference": _side_summary(rows_r, scores_r, g) if rows_r else None,
        "win_rate": {name: win_rate(scores_p[name].tolist(), scores_r[name].tolist())
                     for name in sources} if rows_r else {},
        "kl": None,
    }
    if logps_r is not None:
        is_kl = temperature > 0 and top_p == 1.0 and top_k == 0
        result["kl"] = {**sequence_kl(logps_p.tolist(), logps_r.tolist(), g), "temperature": kl_temperature,
                        "is_kl": is_kl,
                        "estimator": ("mean over policy samples of log pi_T(y) - log pi_ref_T(y), "
                                      f"T = {kl_temperature:g}; an unbiased estimate of KL(pi_T || pi_ref_T)"
                                      if is_kl else
                                      "mean over samples of log pi_T(y) - log pi_ref_T(y), but the "
                                      "samples were drawn with top-p/top-k truncation or greedily: "
                                      "NOT a KL (see docs/evaluation.md)")}
    elif kl_skipped:
        result["kl"] = {"skipped": kl_skipped}

    # Step 4. A few sample rows to read (the first sample of the first prompts).
    examples = []
    for i in range(min(num_examples, len(prompts))):
        j = i * g
        ex = {"prompt": rows_p[j]["prompt"], "policy": rows_p[j]["completion"],
              "rewards": {name: {"policy": float(scores_p[name][j])} for name in sources}}
        if rows_r:
            ex["reference"] = rows_r[j]["completion"]
            for name in sources:
                ex["rewards"][name]["reference"] = float(scores_r[name][j])
        examples.append(ex)
    result["examples"] = examples
    if keep_rows:
        def plain(rows, scores, logps=None, ref_logps=None):
            out = []
            for j, r in enumerate(rows):
                row = {k: r[k] for k in ("prompt", "completion", "ended_with_eos", "num_tokens",
                                         "prompt_ids", "completion_ids")}
                row["rewards"] = {name: float(s[j]) for name, s in scores.items()}
                if logps is not None:
                    row["logp"] = float(logps[j])
                if ref_logps is not None:
                    row["ref_logp"] = float(ref_logps[j])
                out.append(row)
            return out
        result["rows"] = {"policy": plain(rows_p, scores_p, logps_p, logps_r),
                          "reference": plain(rows_r, scores_r)}
    return json_safe(result)


# --------------------------------------------------------------------------- display


def _pm(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("mean") is None:
        return "-"
    se = d.get("stderr")
    return f"{d['mean']:.{digits}f} ± {se:.{digits}f}" if se is not None else f"{d['mean']:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of an :func:`evaluate` result, policy and reference side by side."""
    s = result["settings"]
    pol, ref = result["policy"], result.get("reference")
    rows: list[tuple[str, str, str]] = []
    for name in pol["reward"]:
        rows.append((f"reward [{name}]", _pm(pol["reward"][name]), _pm(ref["reward"][name]) if ref else "-"))
    for name, w in result.get("win_rate", {}).items():
        lo, hi = w["ci95"]
        ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
        rows.append((f"win rate [{name}]", f"{w['win_rate']:.3f}{ci}", f"ties {w['ties']}/{w['n']}"))
    kl = result.get("kl")
    if kl and "mean" in kl:
        rows.append(("KL(policy || ref), nats", _pm(kl), "" if kl["is_kl"] else "(not a KL: top-p/top-k/greedy)"))
    elif kl:
        rows.append(("KL(policy || ref)", "skipped", kl["skipped"]))
    rows.append(("length (tokens)", _pm(pol["length"], 1), _pm(ref["length"], 1) if ref else "-"))
    rows.append(("ends with EOS", f"{pol['eos_fraction']:.1%}", f"{ref['eos_fraction']:.1%}" if ref else "-"))
    rows.append(("distinct-1 / distinct-2", f"{pol['distinct_1']:.3f} / {pol['distinct_2']:.3f}",
                 f"{ref['distinct_1']:.3f} / {ref['distinct_2']:.3f}" if ref else "-"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows + [("", "policy", "")])
    head = (f"{s['num_prompts']} prompts x {s['num_samples']} samples, T={s['temperature']:g}, "
            f"top_p={s['top_p']:g}, top_k={s['top_k']}, max_new_tokens={s['max_new_tokens']}")
    lines = [f"policy:    {s['policy']}", f"reference: {s['reference']}", head, "",
             f"{'':<{w0}}  {'policy':<{w1}}  reference"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    for ex in result.get("examples", [])[:3]:
        lines += ["", f"prompt:    {ex['prompt']!r}", f"policy:    {ex['policy']!r}"]
        if "reference" in ex:
            lines.append(f"reference: {ex['reference']!r}")
    return "\n".join(lines)
