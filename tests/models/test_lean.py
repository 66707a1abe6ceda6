"""The lean no-grad forward (rlhf/models/lean.py) against transformers' own forward.

Every architecture the lean forward claims (llama with grouped-query and with full multi-head
attention, llama with attention/MLP biases and linear rope scaling, qwen2 with q/k/v biases and
tied embeddings, mistral with a window longer than the sequences, qwen3 with q/k norms and an
explicit head_dim) is compared with the model's own forward: whole sequences (``score``) with
left and right padding, the prompt + ``decode_step`` path of the sampler, the sampler itself
(greedy tokens against a naive unpadded greedy loop, seeded sampling across engines),
``rollout_logps`` against a naive float64 log-softmax, support detection, and bf16.

Tiny models are built with random weights and then every parameter is redrawn (norm weights
around 1, non-zero biases): transformers initialises biases to 0 and norm
weights to 1, so with its own init a lean forward that dropped a bias or a norm weight would
still match exactly.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from rlhf.models.lean import LeanLM, lean_for, lean_unsupported
from rlhf.models.load import ReferenceModel
from rlhf.models.tiny import build_tiny_model
from rlhf.rollout import SamplingConfig, rollout_logps, sample
from rlhf.rollout.sampler import _LeanDecoder, _TransformersDecoder

V, PAD, EOS = 97, 0, 1

# --------------------------------------------------------------------------- tiny models


def _randomize(model, seed: int):
    """Redraw every parameter (in place; returns ``model``) so that each one shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights come once
            z = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.5 * z)
            elif name.endswith("bias"):
                p.copy_(0.5 * z)
            elif "embed" in name:  # 0.25: tied (qwen2) logits stay ~10, as for untied heads
                p.copy_(0.25 * z)
            else:  # linear weights: unit-scale outputs for unit-scale inputs
                p.copy_(z / p.shape[-1] ** 0.5)
    return model.eval()


def _from_config(config):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = PAD, EOS
    return model.eval()


def _tiny(arch: str, **kw):
    return build_tiny_model(arch, V, pad_token_id=PAD, eos_token_id=EOS, **kw)


_BUILDERS = {
    "llama_gqa": lambda: _tiny("llama", num_heads=4, num_kv_heads=2),
    "llama_mha": lambda: _tiny("llama", num_heads=4, num_kv_heads=4),
    # o_proj and MLP biases too, and a rope variant: the lean forward must use the model's own tables.
    "llama_bias_rope": lambda: _from_config(LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attention_bias=True, mlp_bias=True, max_position_embeddings=128,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        pad_token_id=PAD, eos_token_id=EOS, tie_word_embeddings=False)),
    "qwen2": lambda: _tiny("qwen2"),  # q/k/v biases, tied embeddings
    "mistral": lambda: _tiny("mistral"),  # sliding_window 512 > every length here
    "qwen3": lambda: _from_config(Qwen3Config(  # q_norm/k_norm; head_dim 32 != hidden / heads
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=128, pad_token_id=PAD,
        eos_token_id=EOS, tie_word_embeddings=False)),
}
ARCHS = list(_BUILDERS)


@functools.cache
def _model(arch: str):
    """The fp32 model of ``arch`` (shared: tests that change a model work on a copy)."""
    return _randomize(_BUILDERS[arch](), seed=ARCHS.index(arch))


@functools.cache
def _model64(arch: str):
    """The same weights in float64: the reference the fp32 forwards are measured against."""
    return copy.deepcopy(_model(arch)).double()


def _batch(lens: list[int], side: str, seed: int = 0):
    """Random token ids (never PAD or EOS) of the given lengths padded on ``side``:
    (ids, attention_mask, position_ids), each (B, max(lens)); positions count real tokens."""
    g = torch.Generator().manual_seed(seed)
    T = max(lens)
    ids = torch.full((len(lens), T), PAD, dtype=torch.long)
    attn = torch.zeros((len(lens), T), dtype=torch.long)
    for i, n in enumerate(lens):
        cols = slice(T - n, T) if side == "left" else slice(0, n)
        ids[i, cols] = torch.randint(2, V, (n,), generator=g)
        attn[i, cols] = 1
    return ids, attn, (attn.cumsum(-1) - 1).clamp(min=0)


def _hf_logits(model, ids, attn, pos):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attn, position_ids=pos).logits


def _lsm(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x.double(), -1)


LENS = [7, 3, 5, 1]  # different lengths, one of a single token

# --------------------------------------------------------------------------- 1. whole sequences


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ARCHS)
def test_score_equals_transformers_forward(arch, side):
    """score() logits == the model's own forward on the real positions of a padded batch of
    different-length sequences, and both are as close to the float64 forward."""
    model = _model(arch)
    ids, attn, pos = _batch(LENS, side, seed=1)
    real = attn.bool()
    ref = _hf_logits(model, ids, attn, pos)
    ours = LeanLM(model).score(ids, attn, pos)
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    # Measured max |diff| on this machine: 0.0 for every arch and side (the same kernels in the
    # same order); 1e-5 leaves room for other kernels, far below any real mistake (>= 1e-2).
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=0)
    # Against float64: measured max |log-softmax diff| 1.7e-6 .. 2.7e-6, 5.5e-6 for qwen2 (its
    # logits reach ~7); the same as transformers' own fp32 error.
    ref64 = _hf_logits(_model64(arch), ids, attn, pos)
    torch.testing.assert_close(_lsm(ours)[real], _lsm(ref64)[real], atol=2e-5, rtol=0)


def test_score_keep_and_padding_content():
    """``keep`` selects positions of the full output; what sits under padding is never read."""
    model = _model("llama_gqa")
    ids, attn, pos = _batch(LENS, "left", seed=2)
    lean = LeanLM(model)
    full = lean.score(ids, attn, pos)
    torch.testing.assert_close(lean.score(ids, attn, pos, keep=slice(3, -1)), full[:, 3:-1], atol=0, rtol=0)
    noisy = ids.masked_fill(~attn.bool(), 0) + (~attn.bool()) * torch.randint(2, V, ids.shape)
    assert not torch.equal(noisy, ids)
    again = lean.score(noisy, attn, pos)
    real = attn.bool()
    torch.testing.assert_close(again[real], full[real], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- 2. incremental decode


def _prompt_then_decode(model, S: int = 5):
    """Left-padded prompts (LENS) through LeanLM.forward into a cache, then S - 1 given tokens
    through decode_step. Returns (the S next-token logits, (ids, attention, positions) of the
    whole sequences, prompt width P)."""
    ids, attn, _ = _batch(LENS, "left", seed=3)
    B, P = ids.shape
    new = torch.randint(2, V, (B, S), generator=torch.Generator().manual_seed(4))
    full_ids = torch.cat([ids, new], 1)
    full_attn = torch.cat([attn, torch.ones((B, S), dtype=torch.long)], 1)
    full_pos = (full_attn.cumsum(-1) - 1).clamp(min=0)
    lean = LeanLM(model)
    cos, sin = lean.rotary(full_pos)  # (B, P+S, D)
    cache = lean.new_cache(B, P + S)
    bias = lean.key_bias(full_attn.bool())
    hidden = lean.forward(ids, attn.bool(), cos[:, :P], sin[:, :P], cache)
    got = [lean.logits(hidden[:, -1])]
    for t in range(S - 1):
        c = P + t
        got.append(lean.decode_step(new[:, t], c, cos[:, c], sin[:, c], cache, bias))
    return got, (full_ids, full_attn, full_pos), P


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_then_decode_steps_equal_full_forward(arch):
    """forward() of left-padded prompts into a cache, then decode_step() of given tokens: the
    logits at each step == transformers' full forward of the whole sequence at that column."""
    model = _model(arch)
    got, (full_ids, full_attn, full_pos), P = _prompt_then_decode(model)
    ref = _hf_logits(model, full_ids, full_attn, full_pos)  # (B, P+S, V)
    # Measured max |diff| 4.4e-6 over all archs and steps (logits of size ~4-7; the same as
    # transformers' own fp32-vs-float64 error): attention for one token is computed differently
    # (bmm vs SDPA), so not bit-equal; a wrong column, position or mask gives >= 1e-2.
    for t, logits in enumerate(got):
        torch.testing.assert_close(logits, ref[:, P - 1 + t], atol=2e-5, rtol=0, msg=f"step {t}")


# --------------------------------------------------------------------------- 3. the sampler


class _Tok:
    """Just what sample() reads from a tokenizer."""
    pad_token_id, eos_token_id = PAD, EOS

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(t) for t in r) for r in rows]

    def decode(self, row, skip_special_tokens=True):
        return self.batch_decode([row])[0]


def _prompt_ids(seed: int = 5, lens=(6, 2, 4, 1)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, V, (n,), generator=g).tolist() for n in lens]


def _naive_greedy(model, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Greedy decoding by full unpadded forwards, no cache; also the smallest top-1/top-2 gap."""
    seq, gap = list(prompt), float("inf")
    for _ in range(n):
        logits = _hf_logits(model, torch.tensor([seq]), None, None)[0, -1]
        top = logits.topk(2).values
        gap = min(gap, (top[0] - top[1]).item())
        seq.append(int(logits.argmax()))
        if seq[-1] == EOS:
            break
    return seq[len(prompt):], gap


@pytest.mark.parametrize("arch", ["llama_gqa", "qwen2", "qwen3"])
def test_greedy_sample_lean_equals_transformers_and_naive(arch):
    """Greedy tokens: engine=lean == engine=transformers == a per-prompt unpadded greedy loop,
    with left padding (prompts of 6, 2, 4, 1 tokens) and two chunks (batch_size 3)."""
    model = _model(arch)
    pids = _prompt_ids()
    runs = {e: sample(model, _Tok(), pids, pids, SamplingConfig(engine=e, max_new_tokens=8, batch_size=3),
                      greedy=True, num_samples=1) for e in ("lean", "transformers")}
    assert torch.equal(runs["lean"].input_ids, runs["transformers"].input_ids)
    assert torch.equal(runs["lean"].completion_mask, runs["transformers"].completion_mask)
    ro = runs["lean"]
    P = ro.prompt_width
    for i, p in enumerate(pids):
        want, gap = _naive_greedy(model, p, 8)
        # The argmax is only well defined if the top two logits are apart by much more than the
        # engines' ~2e-6 difference (measured smallest gap: 0.011 for these seeds).
        assert gap > 1e-4, "near-tied logits: pick another seed"
        assert ro.input_ids[i, P:][ro.completion_mask[i, P:].bool()].tolist() == want


@pytest.mark.parametrize("arch", ["llama_gqa", "qwen3"])
def test_sampler_decoders_give_the_same_step_logits(arch):
    """The sampler's two decoders fed the same tokens: the lean one's next-token logits equal
    the transformers one's (DynamicCache) at every step (prompt logits included)."""
    model = _model(arch)
    ids, attn, pos = _batch(LENS, "left", seed=6)
    S = 6
    new = torch.randint(2, V, (len(LENS), S), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        hf = _TransformersDecoder(model, ids, attn, pos)
        lean = _LeanDecoder(LeanLM(model), ids, attn, pos, S)
        pairs = [(lean.first, hf.first)] + [(lean.step(new[:, t], t), hf.step(new[:, t], t)) for t in range(S - 1)]
    # Measured max |diff| 2.0e-6.
    for t, (a, b) in enumerate(pairs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"step {t}")


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (0, 0.9), (5, 1.0)])
def test_seeded_sampling_lean_equals_transformers(top_k, top_p):
    """Same generator seed, engine=lean vs engine=transformers: the same tokens, and the same
    per-action log-probs and entropies (with_logps, from each engine's own logits).

    Both engines draw the same uniform numbers; a token can only differ where u * total falls
    within the logits' ~2e-6 difference of a cdf boundary, which is vanishingly unlikely for
    these 12 x 8 draws (measured: every token equal, logps and entropies within 2.6e-6)."""
    model = _model("llama_gqa")
    pids = _prompt_ids(seed=8)
    cfg = dict(max_new_tokens=8, temperature=0.9, top_k=top_k, top_p=top_p, num_samples=3, batch_size=6)
    runs = {e: sample(model, _Tok(), pids, pids, SamplingConfig(engine=e, **cfg),
                      generator=torch.Generator().manual_seed(9), with_logps=True) for e in ("lean", "transformers")}
    a, b = runs["lean"], runs["transformers"]
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.completion_mask, b.completion_mask)
    assert a.lengths.float().mean() > 3  # real episodes, not all ended at once
    mask = a.completion_mask.bool()
    torch.testing.assert_close(a.logps[mask], b.logps[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.entropy[mask], b.entropy[mask], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- 4. rollout_logps


def _naive_logps_entropy(model64, ro, temperature):
    """Per sequence alone (padding removed), float64 log_softmax + gather and entropy, (B, T)."""
    logps = torch.zeros(ro.input_ids.shape, dtype=torch.float64)
    ent = torch.zeros_like(logps)
    for i in range(len(ro)):
        real = ro.attention_mask[i].bool()
        seq = ro.input_ids[i][real]
        lp = torch.log_softmax(_hf_logits(model64, seq[None], None, None)[0] / temperature, -1)  # (n, V)
        cols = real.nonzero().flatten()[1:]  # the column of each predicted token
        logps[i, cols] = lp[:-1].gather(-1, seq[1:, None]).squeeze(-1)
        ent[i, cols] = -(lp[:-1].exp() * lp[:-1]).sum(-1)
    return logps, ent


@pytest.mark.parametrize("arch", ["llama_gqa", "qwen2", "qwen3"])
def test_rollout_logps_lean_equals_transformers_and_naive(arch):
    model = _model(arch)
    pids = _prompt_ids(seed=10)
    ro = sample(model, _Tok(), pids, pids, SamplingConfig(engine="transformers", max_new_tokens=6, num_samples=2),
                generator=torch.Generator().manual_seed(11))
    T = 0.7
    lean, lean_ent = rollout_logps(model, ro, temperature=T, batch_size=3, with_entropy=True, engine="lean")
    hf, hf_ent = rollout_logps(model, ro, temperature=T, batch_size=3, with_entropy=True, engine="transformers")
    naive, naive_ent = _naive_logps_entropy(_model64(arch), ro, T)
    mask = ro.completion_mask.bool()
    P = ro.prompt_width
    # Measured: lean vs transformers max |diff| 0.0 (whole-sequence forwards agree bit for bit);
    # both vs the float64 unpadded naive at most 3.3e-6 (log-probs and entropies).
    torch.testing.assert_close(lean[mask], hf[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(lean_ent[mask], hf_ent[mask], atol=1e-5, rtol=0)
    for got, got_ent in ((lean, lean_ent), (hf, hf_ent)):
        torch.testing.assert_close(got[mask].double(), naive[mask], atol=2e-5, rtol=0)
        torch.testing.assert_close(got_ent[mask].double(), naive_ent[mask], atol=2e-5, rtol=0)
        assert got[:, :P].eq(0).all() and got_ent[:, :P].eq(0).all()  # no action in the prompt


def test_rollout_logps_of_a_reference_copy_uses_lean():
    """A ReferenceModel holding a separate copy: rollout_logps(engine=lean) runs (lean_for
    unwraps it) and equals the policy's transformers log-probs."""
    model = _model("llama_gqa")
    ref = ReferenceModel(copy.deepcopy(model), adapters_disabled=False)
    pids = _prompt_ids(seed=12)
    ro = sample(model, _Tok(), pids, pids, SamplingConfig(engine="transformers", max_new_tokens=5),
                generator=torch.Generator().manual_seed(13))
    mask = ro.completion_mask.bool()
    torch.testing.assert_close(rollout_logps(ref, ro, engine="lean")[mask],
                               rollout_logps(model, ro, engine="transformers")[mask], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- 5. support detection


@pytest.mark.parametrize("arch", ARCHS)
def test_supported_models(arch):
    model = _model(arch)
    assert lean_unsupported(model, 64) is None
    assert isinstance(lean_for(model, 64, "auto"), LeanLM)
    assert isinstance(lean_for(model, 64, "lean"), LeanLM)
    assert lean_for(model, 64, "transformers") is None


def _lora(model):
    import warnings

    import peft
    with warnings.catch_warnings():  # peft reads a deprecated transformers alias; not ours
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


def _with_hook(model):
    m = copy.deepcopy(model)
    m.model.layers[1].mlp.register_forward_hook(lambda mod, args, out: None)
    return m


@pytest.mark.parametrize("make,reason", [
    (lambda: _tiny("gpt2"), "model_type 'gpt2'"),
    (lambda: _tiny("gemma"), "model_type 'gemma'"),
    (lambda: _lora(_model("llama_gqa")), "peft"),
    (lambda: _lora(_model("llama_gqa")).get_base_model(), "peft"),  # the adapters are injected there too
    (lambda: _with_hook(_model("llama_gqa")), "hooks"),
    (lambda: _from_config(LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})), "dynamic"),
], ids=["gpt2", "gemma", "lora", "lora_base_model", "forward_hook", "dynamic_rope"])
def test_unsupported_models_say_why(make, reason):
    model = make()
    why = lean_unsupported(model, 16)
    assert why is not None and reason in why
    assert lean_for(model, 16, "auto") is None
    assert lean_for(model, 16, "transformers") is None
    with pytest.raises(ValueError, match=reason):
        lean_for(model, 16, "lean")
    with pytest.raises(ValueError, match=reason):
        LeanLM(model)


def test_a_removed_hook_no_longer_blocks():
    model = copy.deepcopy(_model("llama_gqa"))
    handle = model.model.layers[0].self_attn.register_forward_pre_hook(lambda mod, args: None)
    assert "hooks" in lean_unsupported(model, 16)
    handle.remove()
    assert lean_unsupported(model, 16) is None


_WINDOWED = {
    "mistral": lambda: _from_config(MistralConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=8)),
    "qwen2": lambda: _from_config(Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=8, use_sliding_window=True, max_window_layers=0)),
    "qwen3": lambda: _from_config(Qwen3Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=8, use_sliding_window=True, max_window_layers=0)),
}


@pytest.mark.parametrize("arch", list(_WINDOWED))
def test_sliding_window_shorter_than_the_episode_is_refused(arch):
    """A window of 8: supported up to 8 tokens (where it equals full attention, checked against
    transformers), refused beyond (where transformers' output really differs from lean's)."""
    model = _randomize(_WINDOWED[arch](), seed=20)
    assert lean_unsupported(model, 8) is None
    assert "sliding attention window of 8" in lean_unsupported(model, 9)
    assert "sliding attention window of 8" in lean_unsupported(model, None)  # length unknown
    assert lean_for(model, 20, "auto") is None
    with pytest.raises(ValueError, match="sliding"):
        lean_for(model, 20, "lean")
    lean = LeanLM(model)  # the class itself runs any length; lean_for guards the length
    for n, equal in ((8, True), (9, False)):
        ids, attn, pos = _batch([n, n - 2], "left", seed=21)
        diff = (lean.score(ids, attn, pos) - _hf_logits(model, ids, attn, pos))[attn.bool()].abs().max()
        assert (diff < 1e-5) == equal, (n, diff)


def test_qwen_without_sliding_layers_is_supported():
    """qwen2 with use_sliding_window=False ignores its sliding_window; max_window_layers equal to
    the depth means no layer slides."""
    off = _from_config(Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                                   use_sliding_window=False))
    deep = _from_config(Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                                    use_sliding_window=True, max_window_layers=2))
    assert lean_unsupported(off, 64) is None
    assert lean_unsupported(deep, 64) is None


def test_reference_model_unwrapping():
    """A frozen-copy reference -> a LeanLM over the copy; the LoRA policy with adapters off ->
    None (auto) or an error (lean): the lean forward would run the adapters."""
    model = _model("llama_gqa")
    ref = ReferenceModel(copy.deepcopy(model), adapters_disabled=False)
    lean = lean_for(ref, 16, "auto")
    assert isinstance(lean, LeanLM) and lean.model is ref.module
    assert lean_for(ref, 16, "transformers") is None
    lora_ref = ReferenceModel(_lora(model), adapters_disabled=True)
    assert lean_for(lora_ref, 16, "auto") is None
    with pytest.raises(ValueError, match="LoRA reference"):
        lean_for(lora_ref, 16, "lean")


# --------------------------------------------------------------------------- 6. bf16


@functools.cache
def _bf16_llama():
    return copy.deepcopy(_model("llama_gqa")).to(torch.bfloat16)


def test_bf16_score_matches_transformers():
    model = _bf16_llama()
    ids, attn, pos = _batch(LENS, "left", seed=30)
    real = attn.bool()
    ours = LeanLM(model).score(ids, attn, pos)
    assert ours.dtype == torch.bfloat16
    ref = _hf_logits(model, ids, attn, pos)
    ref64 = _hf_logits(_model64("llama_gqa"), ids, attn, pos)
    # Measured: lean vs transformers bf16 max |log-softmax diff| 0.0; each vs float64 0.048
    # (bf16 keeps ~3 digits of logits of size ~4; transformers' bf16 error on other batches of
    # this model reaches 0.076, hence 0.15 against float64).
    torch.testing.assert_close(_lsm(ours)[real], _lsm(ref)[real], atol=3e-2, rtol=0)
    torch.testing.assert_close(_lsm(ours)[real], _lsm(ref64)[real], atol=0.15, rtol=0)


def test_bf16_decode_steps_match_float64():
    """The bf16 prompt + decode path is about as close to the float64 forward as transformers'
    own bf16 forward is. Max |log-softmax diff| vs float64 measured on this batch: transformers
    bf16 0.065 (full forward) and 0.062 (its cached decoder); lean 0.081 once key_bias is cast
    to the model dtype (without it, decode_step raises on a bf16 model). A wrong position, mask
    or cache column gives errors of order 1."""
    model = _bf16_llama()
    got, (full_ids, full_attn, full_pos), P = _prompt_then_decode(model)
    ref64 = _lsm(_hf_logits(_model64("llama_gqa"), full_ids, full_attn, full_pos))
    for t, logits in enumerate(got):
        assert logits.dtype == torch.bfloat16
        torch.testing.assert_close(_lsm(logits), ref64[:, P - 1 + t], atol=0.15, rtol=0, msg=f"step {t}")


def test_bf16_sampling_with_the_lean_engine():
    """sample() of a bf16 llama with engine=lean: each action's log-prob (with_logps) is within
    bf16 rounding of the float64 model's log-prob of the same token (rollout_logps of the
    float64 copy; measured 0.055 with key_bias cast to bf16, transformers' bf16 error ~0.07)."""
    model = _bf16_llama()
    pids = _prompt_ids(seed=31)
    ro = sample(model, _Tok(), pids, pids, SamplingConfig(engine="lean", max_new_tokens=6),
                generator=torch.Generator().manual_seed(32), with_logps=True)
    want = rollout_logps(_model64("llama_gqa"), ro, engine="transformers")
    mask = ro.completion_mask.bool()
    assert mask.sum() >= 8
    torch.testing.assert_close(ro.logps[mask].double(), want[mask].double(), atol=0.15, rtol=0)
