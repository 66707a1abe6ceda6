"""rlhf.masking: the one reduction step. Accumulated / sharded micro-batches with the global
denominator reproduce the full-batch value (and gradient) for every aggregation mode; masked
statistics match hand examples."""

import math

import pytest
import torch

from rlhf.masking import AGGREGATIONS, aggregate, count_units, masked_mean, masked_var, masked_whiten

T = 7


def _batch():
    """(6, 7) per-token values with a grad, and a mask whose position 0 is 0 (house convention),
    with ragged lengths and one empty row (row 3)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, T, generator=gen, dtype=torch.float64)
    mask = torch.tensor(
        [
            [0, 1, 1, 1, 0, 0, 0],
            [0, 1, 1, 1, 1, 1, 1],
            [0, 0, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 1, 0],
        ]
    )
    return x, mask


def _naive(x, mask, mode):
    """Plain Python definition of each mode (see aggregate's docstring)."""
    rows = [[v for v, m in zip(xr, mr) if m] for xr, mr in zip(x.tolist(), mask.tolist())]
    nonempty = [r for r in rows if r]
    if mode == "token_mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    if mode == "sequence_mean":
        return sum(sum(r) / len(r) for r in nonempty) / len(nonempty)
    if mode == "sequence_sum":
        return sum(sum(r) for r in nonempty) / len(nonempty)
    if mode == "constant":
        return sum(sum(r) for r in rows) / T / len(rows)
    raise AssertionError(mode)


# Micro-batch layouts as row slices: accumulation steps on one process, and 2 shards × 2
# micro-batches (the shards' losses are summed, as an all-reduce SUM of gradients would).
SPLITS = {
    "accumulation": [[slice(0, 2), slice(2, 3), slice(3, 6)]],
    "sharded": [[slice(0, 1), slice(1, 3)], [slice(3, 4), slice(4, 6)]],
}


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_full_batch_value_matches_naive_definition(mode):
    x, mask = _batch()
    assert aggregate(x, mask, mode, max_len=T).item() == pytest.approx(_naive(x, mask, mode), abs=1e-12)


@pytest.mark.parametrize("layout", list(SPLITS))
@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_micro_batches_with_global_denominator_reproduce_full_batch(mode, layout):
    """Σ over micro-batches of aggregate(mb, denominator=global) == aggregate(full), and so are
    the gradients; global = Σ count_units over every micro-batch of every shard."""
    x, mask = _batch()
    x_full = x.clone().requires_grad_(True)
    full = aggregate(x_full, mask, mode, max_len=T)
    full.backward()

    parts = [s for shard in SPLITS[layout] for s in shard]
    denom = sum(count_units(mask[s], mode) for s in parts)
    x_mb = x.clone().requires_grad_(True)
    total = 0.0
    for shard in SPLITS[layout]:
        shard_total = sum(aggregate(x_mb[s], mask[s], mode, denominator=denom, max_len=T) for s in shard)
        total = total + shard_total
    total.backward()
    assert total.item() == pytest.approx(full.item(), abs=1e-12)
    assert torch.allclose(x_mb.grad, x_full.grad, atol=1e-12)


def test_local_denominators_would_not_reproduce_token_mean():
    """Negative control: averaging each micro-batch's own token mean is NOT the full-batch value
    on ragged data — the reason the global denominator exists."""
    x, mask = _batch()
    parts = SPLITS["accumulation"][0]
    local = sum(aggregate(x[s], mask[s], "token_mean") for s in parts) / len(parts)
    assert abs(local.item() - aggregate(x, mask, "token_mean").item()) > 1e-3


def test_count_units():
    _, mask = _batch()
    assert count_units(mask, "token_mean").item() == 3 + 6 + 1 + 0 + 4 + 3
    assert count_units(mask, "sequence_mean").item() == 5  # the empty row does not count
    assert count_units(mask, "sequence_sum").item() == 5
    assert count_units(mask, "constant").item() == 6  # Dr. GRPO: every row counts
    with pytest.raises(ValueError, match="unknown aggregation"):
        count_units(mask, "mean")
    with pytest.raises(ValueError, match="needs max_len"):
        aggregate(torch.zeros(2, 3), torch.ones(2, 3), "constant")


def test_masked_mean_and_var_by_hand():
    """x = (1, 2, 3, 4) masked, 99 padded: mean 2.5; unbiased var (2.25+0.25+0.25+2.25)/3 = 5/3,
    biased 5/4. Empty mask: mean 0 (not nan)."""
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 1, 1, 0]])
    assert masked_mean(x, m).item() == pytest.approx(2.5)
    assert masked_mean(x, m, dim=1).tolist() == pytest.approx([2.5])
    assert masked_var(x, m).item() == pytest.approx(5 / 3)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(5 / 4)
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


def test_masked_whiten_by_hand():
    """(x - 2.5) / sqrt(5/3 + eps) on the masked positions, 0 on padding.
    shift_mean=False keeps the mean: (x - 2.5)/σ + 2.5 (TRL's whiten convention)."""
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 1, 1, 0]])
    sd = math.sqrt(5 / 3 + 1e-8)
    expected = [(v - 2.5) / sd for v in (1, 2, 3, 4)] + [0.0]
    assert masked_whiten(x, m).tolist()[0] == pytest.approx(expected, abs=1e-12)
    kept = [(v - 2.5) / sd + 2.5 for v in (1, 2, 3, 4)] + [0.0]
    assert masked_whiten(x, m, shift_mean=False).tolist()[0] == pytest.approx(kept, abs=1e-12)


def test_padding_may_hold_inf_or_nan():
    """Log-probs of pad tokens can be -inf; masked reductions must not turn them into NaN."""
    import torch

    from rlhf.masking import aggregate, masked_mean, masked_whiten
    x = torch.tensor([[1.0, 3.0, float("inf")], [2.0, float("nan"), float("-inf")]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(x, m, "token_mean").item() == 2.0  # (1 + 3 + 2) / 3
    assert masked_mean(x, m).item() == 2.0
    w = masked_whiten(x, m)
    assert torch.isfinite(w).all() and w[0, 2] == 0 and w[1, 1] == 0


def test_bf16_losses_reduce_with_exact_counts():
    import torch

    from rlhf.masking import aggregate
    x = torch.ones(1, 300, dtype=torch.bfloat16)
    m = torch.ones(1, 300)
    # bf16 rounds 300 to 300 but 257 to 256: the reduction must happen in float32.
    assert abs(aggregate(x, m, "token_mean", denominator=257).item() - 300 / 257) < 1e-6
