"""Constitutional AI, supervised phase (Bai et al. 2022, "Constitutional AI: Harmlessness from
AI Feedback", §3): the policy answers, a critic critiques the answer against each principle of
a constitution and a reviser rewrites it, then the policy is fine-tuned on the final revisions.

For each prompt x::

    y_0 = policy(x)
    for k, principle c_k in enumerate(principles, 1):
        critique_k = critic(critique_template(x, y_{k-1}, c_k))
        y_k        = reviser(revision_template(x, y_{k-1}, c_k, critique_k))
    SFT on (x, y_K)

The critic and the reviser are the policy itself by default (the paper's setting: the model
critiques and revises its own answers), another causal LM, or a Python function
``package.module:fn`` (critic: ``fn(prompts, responses, principle) -> critiques``; reviser:
``fn(prompts, responses, principle, critiques) -> revisions``), e.g. a rule-based editor for a
task whose rules are known. The RL phase of Constitutional AI is RLAIF: ``rlhf label`` with an
LM judge reading the constitution, ``rlhf rm`` on those labels, ``rlhf ppo`` against that
reward model (docs/ai-feedback.md).

Outputs in ``output_dir``: ``config.yaml``; ``chains.jsonl`` (per prompt: the first response
and, per principle, the critique request, the critique, the revision request and the
revision); ``revisions.jsonl`` (prompt / completion = the final revision, what SFT trains on);
``sft/`` (the inner SFT run, resumable); ``final/`` (the fine-tuned policy, hard-linked from
``sft/final``); ``summary.json`` last, which marks the run finished. A killed run resumes: the
chains are reused once written, the SFT resumes from its last checkpoint.

The built-in task has a rule-based critic and reviser (rlhf/testbed/feedback.py:
``reviews_critic``, ``reviews_reviser``, principles ``REVIEW_PRINCIPLES``), so the recipe can
be shown working where a tiny model's own critiques would be nonsense.

Run it with ``rlhf constitutional --recipe tiny [key=value ...]``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError, opt, save_config
from rlhf.data.config import DataConfig
from rlhf.eval.evaluate import SamplingConfig
from rlhf.models.config import ModelConfig
from rlhf.recipes.sft import SFTSection, inner_sft_config, run_inner_sft
from rlhf.train.guards import check_resume_config
from rlhf.train.run import prepare_output_dir, publish_model, write_json_atomic, write_jsonl_atomic

__all__ = ["ConstitutionalConfig", "train", "generate_texts", "fill",
           "load_step_function", "DEFAULT_CRITIQUE_TEMPLATE", "DEFAULT_REVISION_TEMPLATE"]

DEFAULT_CRITIQUE_TEMPLATE = (
    "Prompt: {prompt}\nResponse: {response}\n\n"
    "Critique request: identify specific ways in which the response fails this principle: "
    "{principle}\nCritique:"
)
DEFAULT_REVISION_TEMPLATE = (
    "Prompt: {prompt}\nResponse: {response}\n\n"
    "Critique request: identify specific ways in which the response fails this principle: "
    "{principle}\nCritique: {critique}\n\n"
    "Revision request: rewrite the response to remove every problem the critique names. "
    "Write only the new response.\nRevision:"
)
_CRITIQUE_FIELDS = ("prompt", "response", "principle")
_REVISION_FIELDS = ("prompt", "response", "principle", "critique")


@dataclass(frozen=True)
class ConstitutionalConfig:
    output_dir: str = opt("runs/constitutional", "folder for config.yaml, chains.jsonl, revisions.jsonl, "
                                                  "sft/, final and summary.json")
    principles: list[str] = opt(factory=list, help="the constitution: one principle per entry, applied "
                                                   "in order (critique, then revise, for each)")
    critic: str | None = opt(None, "who critiques: null = the policy itself; a causal-LM folder or hub "
                                   "id; or package.module:fn(prompts, responses, principle) -> critiques")
    reviser: str | None = opt(None, "who revises: null = the critic if it is a model (else the policy); "
                                    "a causal-LM folder or hub id; or package.module:fn(prompts, "
                                    "responses, principle, critiques) -> revisions")
    critique_template: str = opt(DEFAULT_CRITIQUE_TEMPLATE, "critique request given to a model critic; "
                                 "fields {prompt} {response} {principle} ({{ for a literal brace)")
    revision_template: str = opt(DEFAULT_REVISION_TEMPLATE, "revision request given to a model reviser; "
                                 "fields {prompt} {response} {principle} {critique}")
    critique_max_new_tokens: int = opt(64, "length limit of a model's critique, in tokens", ge=1)
    seed: int = opt(0, "seed of all sampling")
    progress: bool = opt(True, "show progress bars")
    model: ModelConfig = opt(factory=ModelConfig, help="the policy: answers the prompts, and is fine-tuned "
                                                       "on the revisions")
    data: DataConfig = opt(factory=DataConfig, help="the prompts: data.train is any file with a prompt "
                                                    "column; data.max_samples caps them; max_length and "
                                                    "chat_template also apply to the SFT")
    sampling: SamplingConfig = opt(factory=SamplingConfig, help="how responses, critiques and revisions "
                                                                "are sampled")
    sft: SFTSection = opt(factory=SFTSection, help="the fine-tuning on (prompt, final revision)")

    def validate(self) -> None:
        from rlhf.judge import JudgeError, check_template

        if not self.data.train:
            raise ConfigError("data.train", "is required: the prompts (a file with a prompt column)")
        if not self.principles:
            raise ConfigError("principles", "must list at least one principle to critique and revise "
                                            "against (got an empty list)")
        for i, p in enumerate(self.principles):
            if not isinstance(p, str) or not p.strip():
                raise ConfigError(f"principles[{i}]", f"must be a non-empty text (got {p!r})")
        for name, req, allowed in (("critique_template", ("response", "principle"), _CRITIQUE_FIELDS),
                                   ("revision_template", ("response",), _REVISION_FIELDS)):
            try:
                check_template(getattr(self, name), req, allowed, "template")
            except JudgeError as e:
                raise ConfigError(name, str(e).removeprefix("template: ")) from None
        for name in ("critic", "reviser"):
            v = getattr(self, name)
            if v is not None and not v.strip():
                raise ConfigError(name, "must be null, a model folder / hub id, or package.module:function "
                                        "(got an empty string)")


# --------------------------------------------------------------------------- helpers shared with hindsight


def generate_texts(model: Any, tokenizer: Any, texts: Sequence[Any], sampling: SamplingConfig, *,
                   seed: int, data_cfg: DataConfig, num_samples: int = 1,
                   progress: bool = False, desc: str = "sampling") -> list[str]:
    """``num_samples`` sampled completions per text (samples of one text consecutive): the
    recipe's one call into the sampler (rlhf.eval.evaluate.sample_completions)."""
    from rlhf.eval.evaluate import sample_completions

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(texts), desc=desc, unit="prompt")
    rows = sample_completions(model, tokenizer, list(texts), sampling, num_samples=num_samples, seed=seed,
                              data_cfg=data_cfg, progress=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    return [r["completion"] for r in rows]


def _is_callable_ref(ref: str) -> bool:
    return ":" in ref and "/" not in ref and not Path(ref).exists()


def load_step_function(ref: str, what: str) -> Callable:
    from rlhf.rewards import import_callable
    try:
        return import_callable(ref, what)
    except ValueError as e:
        raise ConfigError(what, str(e)) from None


def _check_outputs(values: Any, n: int, who: str) -> list[str]:
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{who}: returned {len(values)} texts for {n} responses (expected one each)")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ValueError(f"{who}: item {i} is {type(v).__name__}; expected a string")
    return values


def fill(template: str, **fields: Any) -> str:
    """``template`` with its {fields} filled (chat-message prompts written as ``role: content``)."""
    from rlhf.judge import _as_text
    return template.format(**{k: _as_text(v) for k, v in fields.items()})


# --------------------------------------------------------------------------- the recipe


def train(cfg: ConstitutionalConfig) -> dict[str, Any]:
    import torch

    from rlhf.data.load import load_records
    from rlhf.models.load import load_causal_lm, load_tokenizer

    t0 = time.time()
    out = Path(cfg.output_dir)

    # Step 1. The output folder (a finished run is never overwritten) and the step functions,
    # so that a typo in a function name fails before any model is loaded.
    prepare_output_dir(out, "auto")
    if (out / "chains.jsonl").exists() or (out / "sft").exists():  # resuming: same settings, or safe ones
        check_resume_config(out, out / "config.yaml", cfg, "constitutional")
    save_config(cfg, out / "config.yaml")
    critic_fn = load_step_function(cfg.critic, "critic") if cfg.critic and _is_callable_ref(cfg.critic) else None
    reviser_fn = load_step_function(cfg.reviser, "reviser") if cfg.reviser and _is_callable_ref(cfg.reviser) else None
    records, report = load_records(cfg.data, "prompt")
    prompts = [r.prompt for r in records]
    chains_file, sft_file = out / "chains.jsonl", out / "revisions.jsonl"

    if not (chains_file.is_file() and sft_file.is_file()):
        # Step 2. The models: the policy, and the critic / reviser models when they are not
        # the policy or functions (one copy per distinct checkpoint).
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        models: dict[str, tuple[Any, Any]] = {}

        def lm(path: str | None) -> tuple[Any, Any]:
            key = path or "<policy>"
            if key not in models:
                mcfg = cfg.model if path is None else ModelConfig(name_or_path=path)
                models[key] = (load_causal_lm(mcfg, for_training=False).to(device), load_tokenizer(mcfg))
            return models[key]

        critic_model = None if critic_fn else cfg.critic
        reviser_model = None if reviser_fn else (cfg.reviser if cfg.reviser else critic_model)
        policy, tok = lm(None)

        def request_cfg(model: Any, max_new: int) -> DataConfig:
            # Requests are longer than prompts: let them use the model's context, cut on the left.
            limit = getattr(model.config, "max_position_embeddings", None) or cfg.data.max_length
            return dataclasses.replace(cfg.data, max_length=max(2, limit - max_new + 1), max_prompt_length=None)

        def model_step(which: str | None, requests: list[str], max_new: int, seed: int, desc: str) -> list[str]:
            m, t = lm(which)
            s = dataclasses.replace(cfg.sampling, max_new_tokens=max_new)
            return generate_texts(m, t, requests, s, seed=seed, data_cfg=request_cfg(m, max_new),
                                  progress=cfg.progress, desc=desc)

        # Step 3. The policy's first responses.
        responses = generate_texts(policy, tok, prompts, cfg.sampling, seed=cfg.seed, data_cfg=cfg.data,
                                   progress=cfg.progress, desc="constitutional: responses")
        chains: list[dict[str, Any]] = [{"prompt": p, "response": r, "steps": []}
                                        for p, r in zip(prompts, responses)]
        kept_unrevised = 0

        # Step 4. Critique and revise, one principle at a time, each on the latest revision.
        for k, principle in enumerate(cfg.principles, 1):
            seed = cfg.seed + 1000 * k
            crit_req = [fill(cfg.critique_template, prompt=p, response=r, principle=principle)
                        for p, r in zip(prompts, responses)]
            if critic_fn is not None:
                critiques = _check_outputs(critic_fn(list(prompts), list(responses), principle), len(prompts),
                                           f"critic {cfg.critic}")
            else:
                critiques = model_step(critic_model, crit_req, cfg.critique_max_new_tokens, seed,
                                       f"constitutional: critiques {k}/{len(cfg.principles)}")
            rev_req = [fill(cfg.revision_template, prompt=p, response=r, principle=principle, critique=c)
                       for p, r, c in zip(prompts, responses, critiques)]
            if reviser_fn is not None:
                revisions = _check_outputs(reviser_fn(list(prompts), list(responses), principle, list(critiques)),
                                           len(prompts), f"reviser {cfg.reviser}")
            else:
                revisions = model_step(reviser_model, rev_req, cfg.sampling.max_new_tokens, seed + 1,
                                       f"constitutional: revisions {k}/{len(cfg.principles)}")
            for i, (ch, cq, c, rq, rv) in enumerate(zip(chains, crit_req, critiques, rev_req, revisions)):
                step = {"principle": principle, "critique": c, "revision": rv}
                if critic_fn is None:
                    step["critique_request"] = cq
                if reviser_fn is None:
                    step["revision_request"] = rq
                ch["steps"].append(step)
                if not rv.strip():  # an empty revision would leave nothing to train on: keep the last text
                    kept_unrevised += 1
                else:
                    responses[i] = rv
        for ch, r in zip(chains, responses):
            ch["final"] = r
        del models

        # Step 5. The chains and the SFT data, each written whole or not at all.
        write_jsonl_atomic(chains_file, chains)
        write_jsonl_atomic(sft_file, [{"prompt": ch["prompt"], "completion": ch["final"]}
                                      for ch in chains if ch["final"].strip()])
        gen_stats = {"kept_unrevised": kept_unrevised}
    else:
        gen_stats = {"reused_chains": True}

    # Step 6. Supervised fine-tuning of the policy on (prompt, final revision); resumable.
    import json
    chains = [json.loads(x) for x in chains_file.read_text().splitlines() if x.strip()]
    sft_cfg = inner_sft_config(out / "sft", cfg.model, cfg.data, sft_file, cfg.sft)
    sft_summary = run_inner_sft(sft_cfg)
    publish_model(out / "sft" / "final", out / "final")

    # Step 7. Summary, last: it marks the run finished.
    changed = sum(ch["final"] != ch["response"] for ch in chains)
    summary = {"prompts": len(chains), "principles": len(cfg.principles), "revised": changed,
               "revised_fraction": changed / max(1, len(chains)), **gen_stats,
               "sft_examples": sum(1 for ch in chains if ch["final"].strip()), "sft": sft_summary,
               "skipped": dict(report.counts), "seconds": round(time.time() - t0, 2)}
    write_json_atomic(out / "summary.json", summary)
    print(f"[constitutional] {len(chains)} prompts, {len(cfg.principles)} principles: {changed} responses "
          f"revised; policy fine-tuned on the revisions -> {out / 'final'}")
    return summary
