"""The sampler (rlhf/rollout.py): exact agreement with transformers' own greedy decoding under
left padding, the sampling distribution, top-k/top-p against naive implementations, episode
ends, and log-probs against an unpadded naive forward."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rlhf.rollout import SamplingConfig, filter_logits, rollout_logps, sample, shift_values


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    cfg = ModelConfig(name_or_path=str(tiny_llama))
    return load_causal_lm(cfg, for_training=False), load_tokenizer(cfg)


PROMPTS = ["Name a colour.", "What is two plus two? Answer briefly please", "Hi"]


def _ids(tok, prompts):
    return [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]


def test_greedy_with_left_padding_equals_hf_generate_unpadded(llama):
    """Each prompt decoded alone by transformers (no padding at all) gives the same tokens as
    our batched, left-padded sampler: positions and masks are right."""
    model, tok = llama
    ids = _ids(tok, PROMPTS)
    ro = sample(model, tok, PROMPTS, ids, SamplingConfig(max_new_tokens=10), greedy=True)
    P = ro.prompt_width
    assert P == max(len(x) for x in ids)
    for i, x in enumerate(ids):
        ref = model.generate(input_ids=torch.tensor([x]), max_new_tokens=10, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, len(x):].tolist()
        if tok.eos_token_id in ref:
            ref = ref[:ref.index(tok.eos_token_id) + 1]
        ours = ro.input_ids[i, P:][ro.completion_mask[i, P:].bool()].tolist()
        assert ours == ref
        # The prompt sits right-aligned at column P, with attention only on real tokens.
        assert ro.input_ids[i, P - len(x):P].tolist() == x
        assert ro.attention_mask[i, :P].sum() == len(x)


def test_logps_equal_naive_unpadded_forward(llama):
    """rollout_logps on the padded batch == log_softmax + gather on each sequence alone."""
    model, tok = llama
    torch.manual_seed(0)
    ro = sample(model, tok, PROMPTS, _ids(tok, PROMPTS), SamplingConfig(max_new_tokens=8, num_samples=2))
    logps = rollout_logps(model, ro, temperature=0.7)
    for i in range(len(ro)):
        real = ro.attention_mask[i].bool()
        seq = ro.input_ids[i][real]
        with torch.no_grad():
            logits = model(input_ids=seq[None]).logits[0].double() / 0.7
        naive = torch.log_softmax(logits[:-1], -1).gather(-1, seq[1:, None]).squeeze(-1)
        mask = ro.completion_mask[i][real][1:].bool()
        ours = logps[i][real][1:][mask]
        torch.testing.assert_close(ours.double(), naive[mask], atol=2e-5, rtol=0)


def _naive_filter(logits: list[float], temperature: float, top_k: int, top_p: float) -> set[int]:
    """Indices kept, computed the slow obvious way."""
    z = [x / temperature for x in logits]
    order = sorted(range(len(z)), key=lambda i: -z[i])
    if top_k:
        order = order[:top_k]
    m = max(z[i] for i in order)
    w = [math.exp(z[i] - m) for i in order]
    probs = [x / sum(w) for x in w]
    kept, mass = [], 0.0
    for i, p in zip(order, probs):
        if mass >= top_p:
            break
        kept.append(i)
        mass += p
    return set(kept)


@pytest.mark.parametrize("top_k,top_p", [(0, 0.5), (3, 1.0), (4, 0.8), (0, 0.999), (1, 1.0)])
def test_filter_logits_matches_naive(top_k, top_p):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 10, generator=g) * 2
    out = filter_logits(logits, 0.8, top_k, top_p)
    for row, orig in zip(out, logits):
        kept = set(torch.isfinite(row).nonzero().flatten().tolist())
        assert kept == _naive_filter(orig.tolist(), 0.8, top_k, top_p)
        # Kept entries are the temperature-scaled logits, unchanged.
        idx = sorted(kept)
        torch.testing.assert_close(row[idx], orig[idx] / 0.8)


def test_first_token_distribution_matches_softmax(llama):
    """4000 one-token samples: the frequency of each of the top-3 tokens (top_k=3, T=0.7) is
    within 4 standard errors of softmax(logits/T) renormalised over the top 3."""
    model, tok = llama
    x = _ids(tok, ["Name a colour."])[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([x])).logits[0, -1]
    top = torch.topk(logits, 3)
    p = torch.softmax(top.values / 0.7, -1)
    g = torch.Generator().manual_seed(0)
    ro = sample(model, tok, ["p"], [x], SamplingConfig(max_new_tokens=1, temperature=0.7, top_k=3,
                                                        num_samples=4000, batch_size=4000), generator=g)
    first = ro.input_ids[:, ro.prompt_width]
    assert set(first.tolist()) <= set(top.indices.tolist())
    for tok_id, prob in zip(top.indices.tolist(), p.tolist()):
        freq = (first == tok_id).double().mean().item()
        se = math.sqrt(prob * (1 - prob) / 4000)
        assert abs(freq - prob) < 4 * se + 1e-9


class ScriptedLM(nn.Module):
    """A fake causal LM that emits token 5 until position ``stop_at[row]`` (counted from the
    first generated token), then EOS; rows with stop_at = None never end."""

    def __init__(self, eos: int, stop_at: list[int | None], vocab: int = 16):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.eos, self.stop_at, self.vocab = eos, stop_at, vocab
        self.config = None
        self.step = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, **_):
        B, T = input_ids.shape
        if T > 1:  # prefill
            self.step = 0
        logits = torch.full((B, T, self.vocab), -30.0)
        for b in range(B):
            s = self.stop_at[b]
            nxt = self.eos if (s is not None and self.step >= s) else 5
            logits[b, -1, nxt] = 30.0
        self.step += 1
        return type("Out", (), {"logits": logits})()


class _Tok:
    pad_token_id, eos_token_id = 0, 2

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(t) for t in r if t not in (0, 2)) for r in rows]

    def decode(self, row, skip_special_tokens=True):
        return self.batch_decode([row])[0]


def test_episode_ends_at_eos_and_is_cut_at_the_limit():
    model = ScriptedLM(eos=2, stop_at=[0, 3, None])
    ro = sample(model, _Tok(), ["a", "b", "c"], [[7], [7, 8], [9]], SamplingConfig(max_new_tokens=6))
    P = ro.prompt_width
    assert P == 2
    assert ro.lengths.tolist() == [1, 4, 6]  # EOS counts as an action; row 3 hit the limit
    assert ro.ended.tolist() == [True, True, False]
    assert ro.input_ids[1, P:P + 4].tolist() == [5, 5, 5, 2]
    assert ro.input_ids[0, P + 1:].eq(0).all()  # padding after the end, not attended
    assert ro.attention_mask[0, P + 1:].eq(0).all() and ro.completion_mask[0, P + 1:].eq(0).all()
    assert ro.completions == ["", "5 5 5", "5 5 5 5 5 5"]
    # Position ids count real tokens: the one-token prompt of row 0 starts at position 0.
    assert ro.position_ids[0, P - 1].item() == 0 and ro.position_ids[1, P - 1].item() == 1


def test_stop_strings_end_the_episode():
    model = ScriptedLM(eos=2, stop_at=[None])
    ro = sample(model, _Tok(), ["a"], [[7]], SamplingConfig(max_new_tokens=6, stop_strings=["5 5 5"]))
    assert ro.lengths.tolist() == [3] and ro.ended.tolist() == [True]


def test_shift_values_reads_the_state_before_each_action():
    raw = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert shift_values(raw).tolist() == [[0.0, 1.0, 2.0, 3.0]]


@pytest.mark.parametrize("top_k,top_p,temperature", [(0, 1.0, 0.7), (5, 0.9, 1.3)])
def test_sampler_logps_equal_a_second_forward(llama, top_k, top_p, temperature):
    """with_logps keeps what rollout_logps recomputes: each action's log-prob under
    softmax(logits / T) (the policy itself, whatever top-k/top-p drew it) and that
    distribution's entropy; 0 outside the completion; rows sampled in several batches."""
    model, tok = llama
    torch.manual_seed(0)
    cfg = SamplingConfig(max_new_tokens=9, num_samples=3, temperature=temperature, top_k=top_k, top_p=top_p,
                         batch_size=4)
    ro = sample(model, tok, PROMPTS, _ids(tok, PROMPTS), cfg, with_logps=True)
    want, want_ent = rollout_logps(model, ro, temperature=temperature, with_entropy=True)
    mask = ro.completion_mask.bool()
    torch.testing.assert_close(ro.logps[mask], want[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(ro.entropy[mask], want_ent[mask], atol=1e-5, rtol=0)
    assert ro.logps[~mask].eq(0).all() and ro.entropy[~mask].eq(0).all()
    assert sample(model, tok, PROMPTS, _ids(tok, PROMPTS), cfg).logps is None  # off by default
