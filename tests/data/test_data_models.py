"""Batches give the logits each sequence gets alone, on tiny randomly initialised models.

For llama, qwen2, gpt_neox and gpt2, each with sdpa and eager attention (fp32, atol 1e-5):
* left padding and right padding both equal running every sequence alone;
* a packed row (several sequences, position_ids restarting at 0, no attention_mask) equals
  running every sequence alone, i.e. nothing leaks between sequences;
* the same with the explicit 4D block mask (PackingCollator(block_mask=True)).
A negative control shows the comparison can fail: the same packed row with a plain causal
mask (2D all-ones attention_mask) does leak.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

from rlhf.data import PackingCollator, PadCollator, model_inputs, pack_examples

V = 40
ARCHS = ["llama", "qwen2", "gpt_neox", "gpt2"]
IMPLS = ["sdpa", "eager"]
ATOL = 1e-5


def config(arch: str):
    small = dict(vocab_size=V, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    if arch == "llama":
        return T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=64, **small)
    if arch == "qwen2":
        return T.Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=64, **small)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               **small)
    if arch == "gpt2":
        return T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **small)
    raise ValueError(arch)


_MODELS: dict = {}


def model(arch: str, impl: str):
    if (arch, impl) not in _MODELS:
        torch.manual_seed(0)
        m = T.AutoModelForCausalLM.from_config(config(arch), attn_implementation=impl, dtype=torch.float32)
        _MODELS[arch, impl] = m.eval()
    return _MODELS[arch, impl]


def examples():
    g = torch.Generator().manual_seed(1)
    lengths = [7, 3, 5, 9, 2, 6]
    return [{"input_ids": torch.randint(2, V, (n,), generator=g).tolist(), "completion_mask": [0] + [1] * (n - 1)}
            for n in lengths]


@torch.no_grad()
def alone(m, ex) -> torch.Tensor:
    """(n, V) logits of one sequence run by itself: no padding, no packing."""
    return m(input_ids=torch.tensor([ex["input_ids"]])).logits[0]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_left_and_right_padding_match_unpadded_runs(arch, impl):
    m, exs = model(arch, impl), examples()
    refs = [alone(m, e) for e in exs]
    for side in ("right", "left"):
        b = PadCollator(0, side)(exs)
        logits = m(**model_inputs(b)).logits  # (B, T, V)
        for i in range(len(exs)):
            real = b["attention_mask"][i].bool()
            torch.testing.assert_close(logits[i][real], refs[i], atol=ATOL, rtol=0)


@pytest.mark.parametrize("block_mask", [False, True], ids=["position_ids", "block_mask"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_packed_sequences_match_separate_runs(arch, impl, block_mask):
    m, exs = model(arch, impl), examples()
    packed = pack_examples(exs, 12)  # lengths 9+2, 7+5, 6+3+... : several sequences per row
    assert any(len(p["seq_lengths"]) > 1 for p in packed)
    b = PackingCollator(0, block_mask=block_mask)(packed)
    logits = m(**model_inputs(b)).logits  # (B, T, V)
    # Walk the rows in pack order and map every sequence back to its example by its tokens.
    by_tokens = {tuple(e["input_ids"]): alone(m, e) for e in exs}
    seen = 0
    for r, p in enumerate(packed):
        start = 0
        for n in p["seq_lengths"]:
            ref = by_tokens[tuple(p["input_ids"][start:start + n])]
            torch.testing.assert_close(logits[r, start:start + n], ref, atol=ATOL, rtol=0)
            start += n
            seen += 1
    assert seen == len(exs)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@torch.no_grad()
def test_negative_control_a_plain_causal_mask_leaks_across_packed_sequences(arch):
    m, exs = model(arch, "sdpa"), examples()
    packed = pack_examples(exs[:2], 12)  # one row: [7 tokens][3 tokens]
    assert packed[0]["seq_lengths"] == [7, 3]
    b = PackingCollator(0)(packed)
    inputs = model_inputs(b)
    inputs["attention_mask"] = torch.ones_like(b["input_ids"])  # disables packed-sequence detection
    logits = m(**inputs).logits[0]
    second = logits[7:10]
    assert (second - alone(m, exs[1])).abs().max() > 1e-3  # the 2nd sequence sees the 1st


@torch.no_grad()
def test_packing_needs_use_cache_false():
    """Why model_inputs passes use_cache=False: transformers 5 only detects packed sequences
    when it creates no KV cache, and a causal LM creates one by default (config.use_cache)."""
    m, exs = model("llama", "sdpa"), examples()
    b = PackingCollator(0)(pack_examples(exs[:2], 12))
    inputs = model_inputs(b)
    ok = m(**inputs).logits[0, 7:10]
    inputs.pop("use_cache")
    leaky = m(**inputs).logits[0, 7:10]
    ref = alone(m, exs[1])
    torch.testing.assert_close(ok, ref, atol=ATOL, rtol=0)
    assert (leaky - ref).abs().max() > 1e-3
