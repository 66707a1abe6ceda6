"""Per-token log-probs: equal to a naive log_softmax + gather, padding-side invariant."""

from __future__ import annotations

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
