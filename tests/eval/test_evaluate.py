"""rlhf.eval.evaluate and the `rlhf eval` tool: every reported number recomputed independently."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from rlhf.eval.evaluate import SamplingConfig, completion_logps, evaluate, sample_completions
from rlhf.eval.metrics import distinct_n
from rlhf.models.config import ModelConfig
from rlhf.models.load import load_causal_lm, load_tokenizer

PROMPTS = ["reverse: a b c\n", "count: d e\n", "sort: 3 1 2\n"]


def _naive_logp(model, prompt_ids, completion_ids, temperature=1.0):
    """Sum of log softmax(logits/T)[next token] over the completion, one unpadded sequence."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double() / temperature  # (T, V)
    logp = torch.log_softmax(logits, -1)
    P = len(prompt_ids)
    return sum(float(logp[P + t - 1, tok]) for t, tok in enumerate(completion_ids))


def _per_prompt_stderr(values, group):
    means = [statistics.mean(values[i:i + group]) for i in range(0, len(values), group)]
    return statistics.stdev(means) / math.sqrt(len(means))


def test_evaluate_numbers_equal_a_direct_recomputation(tiny_llama, tiny_reference, eval_rewards):
    res = evaluate(tiny_llama, tiny_reference, PROMPTS,
                   {"a": f"{eval_rewards}:count_a", "len": f"{eval_rewards}:length"},
                   num_samples=2, max_new_tokens=8, batch_size=2, seed=3, keep_rows=True)
    rows_p, rows_r = res["rows"]["policy"], res["rows"]["reference"]
    assert len(rows_p) == len(rows_r) == 6
    # Samples of one prompt are consecutive; policy row j and reference row j share the prompt.
    assert [r["prompt"] for r in rows_p] == [p for p in PROMPTS for _ in range(2)]
    assert [r["prompt"] for r in rows_r] == [r["prompt"] for r in rows_p]

    tok = load_tokenizer(ModelConfig(name_or_path=str(tiny_llama)))
    pol = load_causal_lm(ModelConfig(name_or_path=str(tiny_llama)), for_training=False)
    ref = load_causal_lm(ModelConfig(name_or_path=str(tiny_reference)), for_training=False)
    diffs = []
    for r in rows_p:
        # the text is the decoded ids (without EOS), the length counts them
        ids = r["completion_ids"]
        body = ids[:-1] if r["ended_with_eos"] else ids
        assert r["ended_with_eos"] == (ids[-1] == tok.eos_token_id)
        assert tok.decode(body, skip_special_tokens=True) == r["completion"]
        assert r["num_tokens"] == len(body)
        lp, lr = _naive_logp(pol, r["prompt_ids"], ids), _naive_logp(ref, r["prompt_ids"], ids)
        assert r["logp"] == pytest.approx(lp, abs=1e-4)
        assert r["ref_logp"] == pytest.approx(lr, abs=1e-4)
        diffs.append(lp - lr)
    kl = res["kl"]
    assert kl["is_kl"] and kl["temperature"] == 1.0 and kl["n"] == 3
    assert kl["mean"] == pytest.approx(statistics.mean(diffs), abs=1e-4)
    assert kl["stderr"] == pytest.approx(_per_prompt_stderr(diffs, 2), abs=1e-4)

    for side, rows in (("policy", rows_p), ("reference", rows_r)):
        a = [float(r["completion"].count("a")) for r in rows]
        assert [r["rewards"]["a"] for r in rows] == a
        summ = res[side]
        assert summ["reward"]["a"]["mean"] == pytest.approx(statistics.mean(a))
        if len(set(a)) > 1:
            assert summ["reward"]["a"]["stderr"] == pytest.approx(_per_prompt_stderr(a, 2))
        n = [float(len(r["completion"])) for r in rows]
        assert summ["reward"]["len"]["mean"] == pytest.approx(statistics.mean(n))
        assert summ["length"]["mean"] == pytest.approx(statistics.mean(r["num_tokens"] for r in rows))
        assert summ["eos_fraction"] == sum(r["ended_with_eos"] for r in rows) / 6
        assert summ["distinct_2"] == distinct_n([r["completion"] for r in rows], 2)
    # Win rate on length: policy sample j against reference sample j, ties half.
    lp_, lr_ = [len(r["completion"]) for r in rows_p], [len(r["completion"]) for r in rows_r]
    wins = sum(x > y for x, y in zip(lp_, lr_)) + 0.5 * sum(x == y for x, y in zip(lp_, lr_))
    assert res["win_rate"]["len"]["win_rate"] == pytest.approx(wins / 6)
    assert res["win_rate"]["len"]["n"] == 6
    # Readable examples: the first sample of the first prompts.
    assert res["examples"][1]["policy"] == rows_p[2]["completion"]
    assert res["examples"][1]["reference"] == rows_r[2]["completion"]
    json.dumps(res, allow_nan=False)  # strict JSON


def test_a_policy_against_itself_has_zero_kl(tiny_llama, eval_rewards):
    res = evaluate(tiny_llama, tiny_llama, PROMPTS[:2], {"a": f"{eval_rewards}:count_a"},
                   num_samples=2, max_new_tokens=6)
    assert res["kl"]["mean"] == 0.0 and res["kl"]["stderr"] == 0.0


def test_monte_carlo_kl_matches_the_exact_kl_at_the_sampling_temperature(tiny_llama, tiny_reference):
    """One generated token: KL(π_T || π_ref,T) is a sum over the vocabulary, computed exactly
    from the two next-token distributions at T = 0.5. 3000 samples from the sampler must give
    a mean within 4 standard errors of it. The same check against the T = 1 value must fail,
    so the test sees a temperature mix-up. (The tokenizer's pad is set to EOS here so that a
    sampled pad id cannot be confused with padding.)"""
    T = 0.5
    tok = load_tokenizer(ModelConfig(name_or_path=str(tiny_llama)))
    tok.pad_token = tok.eos_token
    pol = load_causal_lm(ModelConfig(name_or_path=str(tiny_llama)), for_training=False)
    ref = load_causal_lm(ModelConfig(name_or_path=str(tiny_reference)), for_training=False)
    rows = sample_completions(pol, tok, [PROMPTS[0]], SamplingConfig(max_new_tokens=1, temperature=T, batch_size=1),
                              num_samples=3000, seed=0)
    assert all(len(r["completion_ids"]) == 1 for r in rows)
    from rlhf.eval.metrics import sequence_kl
    lp = completion_logps(pol, rows, pad_token_id=tok.pad_token_id, temperature=T, batch_size=500)
    lr = completion_logps(ref, rows, pad_token_id=tok.pad_token_id, temperature=T, batch_size=500)
    est = sequence_kl(lp, lr)

    ids = torch.tensor([rows[0]["prompt_ids"]])
    with torch.no_grad():
        zp, zr = pol(input_ids=ids).logits[0, -1].double(), ref(input_ids=ids).logits[0, -1].double()

    def exact(t):
        p, q = torch.log_softmax(zp / t, -1), torch.log_softmax(zr / t, -1)
        return float((p.exp() * (p - q)).sum())

    assert abs(est["mean"] - exact(T)) < 4 * est["stderr"], (est, exact(T))
    assert abs(est["mean"] - exact(1.0)) > 4 * est["stderr"], (est, exact(1.0))


# --------------------------------------------------------------------------- the tool


def test_parse_rewards_names():
    from rlhf.tools.eval import parse_rewards
    assert parse_rewards(["runs/rm/final", "gold=pkg.mod:fn", "pkg.m:f"]) == {
        "reward": "runs/rm/final", "gold": "pkg.mod:fn", "reward2": "pkg.m:f"}
    assert parse_rewards(["a/b=c/final"]) == {"reward": "a/b=c/final"}  # a path, not a name
    with pytest.raises(ValueError, match="used twice"):
        parse_rewards(["x=a:b", "x=c:d"])


def test_eval_tool_writes_json_prints_a_table_and_never_overwrites(tiny_llama, tiny_reference, eval_rewards,
                                                                   tmp_path, capsys):
    from rlhf.tools.eval import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "eval.json"
    argv = ["--policy", str(tiny_llama), "--reference", str(tiny_reference), "--prompts", str(prompts),
            "--reward", f"a={eval_rewards}:count_a", "--num-samples", "2", "--max-new-tokens", "6",
            "--top-p", "0.9", "--chat-template", "none", "--no-progress", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["settings"]["num_prompts"] == 3 and res["settings"]["num_samples"] == 2
    assert res["settings"]["top_p"] == 0.9
    assert res["kl"]["is_kl"] is False  # top-p truncation: flagged, not called a KL
    assert "win rate [a]" in printed and "reward [a]" in printed and "not a KL" in printed
    assert f"{res['policy']['reward']['a']['mean']:.3f}" in printed

    before = out.read_text()
    assert main(argv) == 1
    assert "never overwritten" in capsys.readouterr().err
    assert out.read_text() == before

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    assert main(["--policy", str(tiny_llama), "--prompts", str(bad)]) == 1
    assert f"{bad}:2: prompt" in capsys.readouterr().err
    assert main(["--policy", str(tiny_llama), "--prompts", str(prompts), "--reward", "no_such_mod:f"]) == 1
    assert "cannot import module 'no_such_mod'" in capsys.readouterr().err
