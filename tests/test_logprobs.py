"""Per-token log-probs: equal to a naive log_softmax + gather, padding-side invariant."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlhf.logprobs import entropy_from_logits, shifted_token_logps, token_logps


def test_token_logps_equals_naive_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 4  # (B, T, V), large logits stress stability
    ids = torch.randint(0, 11, (3, 7), generator=g)
    for temp in (1.0, 0.7):
        naive = torch.log_softmax(logits.double() / temp, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(token_logps(logits, ids, temp).double(), naive, atol=1e-5, rtol=0)
    # bf16 logits are upcast before the logsumexp: result equals the fp32 computation on the
    # same (rounded) bf16 values.
    lb = logits.bfloat16()
    naive_b = torch.log_softmax(lb.double(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logps(lb, ids).double(), naive_b, atol=1e-5, rtol=0)


def test_shifted_alignment():
    """Position t holds log p(x_t | x_<t), i.e. logits[t-1] scored at ids[t]; position 0 is 0."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 9, generator=g)
    ids = torch.randint(0, 9, (2, 5), generator=g)
    out = shifted_token_logps(logits, ids)
    assert torch.all(out[:, 0] == 0)
    for b in range(2):
        for t in range(1, 5):
            want = torch.log_softmax(logits[b, t - 1].double(), -1)[ids[b, t]]
            assert abs(out[b, t].item() - want.item()) < 1e-5


def test_entropy_matches_definition():
    p = torch.tensor([0.5, 0.25, 0.25])
    logits = p.log()
    want = -(p * p.log()).sum()  # = 1.5 ln 2
    assert abs(entropy_from_logits(logits).item() - 1.5 * torch.log(torch.tensor(2.0)).item()) < 1e-6
    assert abs(entropy_from_logits(logits).item() - want.item()) < 1e-6


def test_entropy_ignores_masked_vocabulary_and_keeps_float64():
    logits = torch.tensor([[0.0, 0.0, float("-inf")]])
    assert abs(entropy_from_logits(logits).item() - torch.log(torch.tensor(2.0)).item()) < 1e-6
    x = torch.randn(2, 5, dtype=torch.float64)
    ids = torch.tensor([1, 3])
    assert token_logps(x, ids).dtype == torch.float64


# --------------------------------------------------------------------------- per-sequence sums

def _model(arch: str):
    import transformers
    torch.manual_seed(0)
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _sequences(lengths=(5, 17, 33, 9, 40, 3, 2, 21), seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        p = max(1, n // 3)
        out.append({"input_ids": torch.randint(0, 97, (n,), generator=g).tolist(),
                    "completion_mask": [0] * p + [1] * (n - p)})
    return out


def _naive_sums(model, seqs):
    """Each sequence alone, unpadded: full log_softmax in float64, summed over its completion."""
    out = []
    for s in seqs:
        ids = torch.tensor([s["input_ids"]])
        logp = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[0]  # (n, V)
        out.append(sum(logp[t - 1, ids[0, t]] for t in range(1, ids.shape[1]) if s["completion_mask"][t]))
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_sequence_logps_layouts_equal_naive(arch, side):
    """packed, bucketed and padded all equal the one-sequence-at-a-time computation, whichever
    side the batch is padded on; completion lengths count the completion tokens."""
    from rlhf.data.collate import PadCollator
    from rlhf.logprobs import sequence_logps

    model, seqs = _model(arch), _sequences()
    batch = PadCollator(0, side)(seqs)
    want = _naive_sums(model, seqs)
    for layout in ("packed", "bucketed", "padded"):
        got, lengths = sequence_logps(model, batch, layout)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
        assert lengths.tolist() == [sum(s["completion_mask"]) for s in seqs]


def test_packed_gradient_equals_padded():
    from rlhf.data.collate import PadCollator
    from rlhf.logprobs import sequence_logps

    model = _model("llama")
    batch = PadCollator(0, "right")(_sequences())
    w = torch.linspace(-1, 1, 8)  # a loss that weighs sequences differently
    grads = []
    for layout in ("packed", "padded"):
        model.zero_grad()
        (sequence_logps(model, batch, layout)[0] * w).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_bucketed_is_batch_invariant_to_the_bit():
    """A sequence's bucketed value is the same bits alone, in any batch, in any order."""
    from rlhf.data.collate import PadCollator
    from rlhf.logprobs import bucketed_sequence_logps

    model, seqs = _model("llama"), _sequences()
    collate = PadCollator(0, "right")
    alone = torch.stack([bucketed_sequence_logps(model, collate([s]))[0][0] for s in seqs])
    together = bucketed_sequence_logps(model, collate(seqs))[0]
    rev = bucketed_sequence_logps(model, PadCollator(0, "left")(seqs[::-1]))[0].flip(0)
    assert torch.equal(alone, together) and torch.equal(alone, rev)


def test_models_without_logits_to_keep_fall_back_to_full_logits():
    from rlhf.data.collate import PadCollator
    from rlhf.logprobs import sequence_logps

    inner = _model("llama")

    class Plain(torch.nn.Module):  # a forward with no logits_to_keep argument
        def __init__(self):
            super().__init__()
            self.m = inner

        def forward(self, input_ids, position_ids=None, attention_mask=None, use_cache=False):
            return inner(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                         use_cache=use_cache)

    batch = PadCollator(0, "right")(_sequences())
    torch.testing.assert_close(sequence_logps(Plain(), batch)[0], sequence_logps(inner, batch)[0],
                               rtol=0, atol=1e-5)


def test_logits_to_keep_without_mask_support_falls_back_to_full_logits():
    """transformers before 5.21 (the vLLM venv pins 5.19) takes ``logits_to_keep`` as an int or
    positions only: a 2-D bool mask there indexed the sequence axis and raised. Such a forward
    gets the whole logits instead, with the same numbers; Llama reads the mask from 5.21 on."""
    from rlhf.data.collate import PadCollator
    from rlhf.logprobs import _keeps_mask, packed_sequence_logps, sequence_logps

    inner = _model("llama")

    class Old(torch.nn.Module):  # a forward as transformers 5.19 wrote it
        def __init__(self):
            super().__init__()
            self.m = inner

        def forward(self, input_ids, position_ids=None, attention_mask=None, use_cache=False, logits_to_keep=0):
            out = inner.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                              use_cache=use_cache)
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            return SimpleNamespace(logits=inner.lm_head(out.last_hidden_state[:, keep, :]))

    import transformers.modeling_utils

    assert not _keeps_mask(Old())
    assert _keeps_mask(inner) == hasattr(transformers.modeling_utils, "slice_logits_to_keep")  # from 5.21 on
    batch = PadCollator(0, "right")(_sequences())
    torch.testing.assert_close(packed_sequence_logps(Old(), batch)[0], sequence_logps(inner, batch)[0],
                               rtol=0, atol=1e-5)
