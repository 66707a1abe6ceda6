"""PackedLayout.unpack (rlhf/data/collate.py): the inverse of pack.

``unpack(pack(x))`` must give back every real token of the padded batch and ``fill`` under its
padding, for left and right padding, rows of very different lengths and any trailing
dimensions; and its gradient (a gather and a scatter) must route each packed slot to the padded
position it came from: the identity on real tokens through pack -> unpack, 0 on padding.
The references are the padded tensor itself, a slow loop that walks ``layout.sequence`` (each
packed slot holds the k-th real token of its sequence, in order) and finite differences
(``torch.autograd.gradcheck``).
"""

from __future__ import annotations

import pytest
import torch

from rlhf.data.collate import PackedLayout

LENGTHS = [1, 13, 2, 7, 13, 3, 1, 9]  # very different; two full rows, two single tokens


def _mask(lengths: list[int], side: str) -> torch.Tensor:
    """(N, T) attention mask with T = max(lengths), padded on ``side``: left, right, or both
    (a rollout: left-padded prompt, right-padded completion; the offsets vary by row)."""
    T = max(lengths)
    am = torch.zeros((len(lengths), T), dtype=torch.long)
    for i, n in enumerate(lengths):
        start = {"left": T - n, "right": 0, "both": (3 * i) % (T - n + 1)}[side]
        am[i, start:start + n] = 1
    return am


def _naive_unpack(layout: PackedLayout, am: torch.Tensor, y: torch.Tensor, fill) -> torch.Tensor:
    """(R, W, ...) -> (N, T, ...) by walking the packed rows: the k-th slot of sequence s in a
    row goes to the k-th real column (attention_mask ``am`` == 1) of padded row s."""
    N, T = layout.batch_shape
    out = torch.full((N, T, *y.shape[2:]), fill, dtype=y.dtype)
    real_cols = [row.nonzero().flatten().tolist() for row in am.bool()]
    seen = [0] * N
    for r in range(layout.shape[0]):
        for w in range(layout.shape[1]):
            s = int(layout.sequence[r, w])
            if s >= 0:
                out[s, real_cols[s][seen[s]]] = y[r, w]
                seen[s] += 1
    assert seen == layout.lengths  # every real token came from exactly one slot
    return out


@pytest.mark.parametrize("side", ["left", "right", "both"])
def test_unpack_inverts_pack_and_fills_padding(side):
    am = _mask(LENGTHS, side)
    lay = PackedLayout(am)
    N, T = am.shape
    R, W = lay.shape
    assert lay.batch_shape == (N, T)
    assert R < N and W == T  # really packed: several sequences share rows
    real = am.bool()
    g = torch.Generator().manual_seed(0)
    # Long ids (N, T) and a float tensor with extra trailing dims (N, T, 3, 2).
    ids = torch.randint(2, 1000, (N, T), generator=g)
    feats = torch.randn((N, T, 3, 2), generator=g)
    for x, fill_in, fill_out in ((ids, -5, 7), (feats, -5.0, 0.25)):
        back = lay.unpack(lay.pack(x, fill_in), fill_out)
        assert back.shape == x.shape and back.dtype == x.dtype
        assert torch.equal(back[real], x[real])
        assert (back[~real] == fill_out).all()
    # Default fill is 0.
    assert (lay.unpack(lay.pack(feats))[~real] == 0).all()


@pytest.mark.parametrize("side", ["left", "right", "both"])
def test_unpack_reads_the_slots_the_naive_walk_reads(side):
    """An arbitrary (R, W, 4) tensor (not made by pack: its padding slots hold values too) is
    unpacked like the slow loop over layout.sequence; padding slots are never read."""
    am = _mask(LENGTHS, side)
    lay = PackedLayout(am)
    y = torch.randn((*lay.shape, 4), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(lay.unpack(y, fill=-3.0), _naive_unpack(lay, am, y, -3.0), rtol=0, atol=0)


@pytest.mark.parametrize("side", ["left", "right", "both"])
def test_gradient_through_pack_and_unpack(side):
    """d/dx sum(unpack(pack(x)) * w) = w on real tokens, 0 on padding; d/dy sum(unpack(y) * w)
    = pack(w) (each slot receives the weight of the padded position it lands in), 0 on the
    packed padding slots; and gradcheck agrees with finite differences (float64)."""
    am = _mask(LENGTHS, side)
    lay = PackedLayout(am)
    real = am.bool()
    g = torch.Generator().manual_seed(2)
    x = torch.randn((*am.shape, 3), generator=g, requires_grad=True)
    w = torch.randn((*am.shape, 3), generator=g)
    (lay.unpack(lay.pack(x, 9.0), -1.0) * w).sum().backward()
    torch.testing.assert_close(x.grad, w * real[..., None], rtol=0, atol=0)

    y = torch.randn((*lay.shape, 3), generator=g, requires_grad=True)
    (lay.unpack(y) * w).sum().backward()
    pad_slot = lay.sequence < 0
    assert pad_slot.any()
    torch.testing.assert_close(y.grad[~pad_slot], lay.pack(w)[~pad_slot], rtol=0, atol=0)
    assert (y.grad[pad_slot] == 0).all()

    x64 = torch.randn(am.shape, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lay.unpack(lay.pack(t, 2.0), 3.0), (x64,))
    y64 = torch.randn(lay.shape, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lay.unpack(t), (y64,))


def test_any_padding_gives_the_same_packed_layout():
    """The same sequences padded left, right or on both sides share one packed layout (only
    real tokens move), and unpack puts each token back in its own batch's columns: the real
    tokens of each row, in order, are the same for every padding."""
    masks = {side: _mask(LENGTHS, side) for side in ("left", "right", "both")}
    lays = {side: PackedLayout(am) for side, am in masks.items()}
    for side in ("right", "both"):
        assert torch.equal(lays[side].sequence, lays["left"].sequence)
        assert torch.equal(lays[side].position_ids, lays["left"].position_ids)
    R, W = lays["left"].shape
    y = torch.arange(float(R * W)).view(R, W)  # every slot a different value
    ours = {side: lays[side].unpack(y, -1.0) for side in masks}
    for i, n in enumerate(LENGTHS):
        want = ours["left"][i][masks["left"][i].bool()]
        assert (want >= 0).all() and len(set(want.tolist())) == n
        for side in ("right", "both"):
            assert torch.equal(ours[side][i][masks[side][i].bool()], want)
            assert (ours[side][i][~masks[side][i].bool()] == -1).all()
