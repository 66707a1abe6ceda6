"""Padding, preference batches and packing, checked against tensors written out by hand."""

from __future__ import annotations

import pytest
import torch

from rlhf.data import (
    PackingCollator,
    PadCollator,
    PreferenceCollator,
    PromptCollator,
    block_causal_mask,
    model_inputs,
    pack_examples,
)

PAD = 0
EX = [
    {"input_ids": [5, 6, 7], "completion_mask": [0, 1, 1]},
    {"input_ids": [8, 9], "completion_mask": [0, 1]},
]
T = torch.tensor


def test_right_padding():
    b = PadCollator(PAD)(EX)
    assert torch.equal(b["input_ids"], T([[5, 6, 7], [8, 9, 0]]))
    assert torch.equal(b["attention_mask"], T([[1, 1, 1], [1, 1, 0]]))
    assert torch.equal(b["completion_mask"], T([[0, 1, 1], [0, 1, 0]]))
    assert torch.equal(b["position_ids"], T([[0, 1, 2], [0, 1, 1]]))  # padding: ignored value
    assert all(v.dtype == torch.long for v in b.values())


def test_left_padding_gives_the_same_positions_to_real_tokens():
    b = PadCollator(PAD, "left")(EX)
    assert torch.equal(b["input_ids"], T([[5, 6, 7], [0, 8, 9]]))
    assert torch.equal(b["attention_mask"], T([[1, 1, 1], [0, 1, 1]]))
    assert torch.equal(b["completion_mask"], T([[0, 1, 1], [0, 0, 1]]))
    assert torch.equal(b["position_ids"], T([[0, 1, 2], [0, 0, 1]]))


def test_unpaired_labels():
    b = PadCollator(PAD)([dict(EX[0], label=True), dict(EX[1], label=False)])
    assert torch.equal(b["label"], T([True, False]))


def test_preference_batch_is_chosen_then_rejected():
    ex = [
        {"chosen_input_ids": [5, 6], "chosen_completion_mask": [0, 1],
         "rejected_input_ids": [5, 7, 7], "rejected_completion_mask": [0, 1, 1], "margin": 2.0},
        {"chosen_input_ids": [8, 9, 9, 9], "chosen_completion_mask": [0, 0, 1, 1],
         "rejected_input_ids": [8, 3], "rejected_completion_mask": [0, 1], "margin": None},
    ]
    b = PreferenceCollator(PAD)(ex)
    assert torch.equal(b["input_ids"], T([[5, 6, 0, 0], [8, 9, 9, 9], [5, 7, 7, 0], [8, 3, 0, 0]]))
    assert torch.equal(b["completion_mask"], T([[0, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0], [0, 1, 0, 0]]))
    assert torch.equal(b["attention_mask"], T([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]))
    assert torch.equal(b["margin"], T([2.0, 0.0]))  # a missing margin is 0
    for e in ex:
        e["margin"] = None
    assert "margin" not in PreferenceCollator(PAD)(ex)


def test_prompt_collator_pads_left():
    b = PromptCollator(PAD)([{"prompt_input_ids": [5, 6, 7]}, {"prompt_input_ids": [8]}])
    assert torch.equal(b["input_ids"], T([[5, 6, 7], [0, 0, 8]]))
    assert torch.equal(b["attention_mask"], T([[1, 1, 1], [0, 0, 1]]))
    assert torch.equal(b["position_ids"], T([[0, 1, 2], [0, 0, 0]]))
    assert "completion_mask" not in b


def test_bad_examples_fail_with_a_message_not_a_shape_error():
    with pytest.raises(ValueError, match="example 1: completion_mask has 1 entries for 2 tokens"):
        PadCollator(PAD)([EX[0], {"input_ids": [1, 2], "completion_mask": [0]}])
    with pytest.raises(ValueError, match="pad_token_id is None"):
        PadCollator(None)


def seq(n, start):
    """An example of n tokens with ids start.., completion mask 0 then 1s."""
    return {"input_ids": list(range(start, start + n)), "completion_mask": [0] + [1] * (n - 1)}


def test_pack_examples_best_fit_decreasing():
    # lengths 5, 3, 4, 2, 6 into rows of 8. Longest first: 6 -> new row A (room 2); 5 -> new
    # row B (room 3); 4 -> new row C (room 4); 3 -> best fit is B (room 3 -> 0); 2 -> A (room 0).
    ex = [seq(5, 10), seq(3, 20), seq(4, 30), seq(2, 40), seq(6, 50)]
    packed = pack_examples(ex, 8)
    assert [p["seq_lengths"] for p in packed] == [[2, 6], [5, 3], [4]]  # members in input order
    a = packed[0]
    assert a["input_ids"] == [40, 41, 50, 51, 52, 53, 54, 55]
    assert a["position_ids"] == [0, 1, 0, 1, 2, 3, 4, 5]
    assert a["completion_mask"] == [0, 1, 0, 1, 1, 1, 1, 1]
    assert pack_examples(ex, 8) == packed  # deterministic
    assert sorted(t for p in packed for t in p["input_ids"]) == sorted(t for e in ex for t in e["input_ids"])


def test_pack_examples_forces_mask_zero_at_each_start_and_rejects_long_examples():
    ex = [{"input_ids": [1, 2], "completion_mask": [1, 1]}, {"input_ids": [3], "completion_mask": [1]}]
    assert pack_examples(ex, 4)[0]["completion_mask"] == [0, 1, 0]
    with pytest.raises(ValueError, match="example 0 has 2 tokens, more than the packing length 1"):
        pack_examples(ex, 1)


def test_packing_collator_positions_restart_and_padding_is_its_own_block():
    packed = [
        {"input_ids": [1, 2, 3, 4, 5], "completion_mask": [0, 1, 0, 1, 1], "position_ids": [0, 1, 0, 1, 2],
         "seq_lengths": [2, 3]},
        {"input_ids": [6, 7, 8], "completion_mask": [0, 1, 1], "position_ids": [0, 1, 2], "seq_lengths": [3]},
    ]
    b = PackingCollator(PAD)(packed)
    assert torch.equal(b["input_ids"], T([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]))
    assert torch.equal(b["position_ids"], T([[0, 1, 0, 1, 2], [0, 1, 2, 0, 1]]))
    assert torch.equal(b["sequence_ids"], T([[0, 0, 1, 1, 1], [0, 0, 0, -1, -1]]))
    assert torch.equal(b["completion_mask"], T([[0, 1, 0, 1, 1], [0, 1, 1, 0, 0]]))
    assert "attention_mask" not in b
    assert set(model_inputs(b)) == {"input_ids", "position_ids", "use_cache"} and model_inputs(b)["use_cache"] is False


def test_block_causal_mask_by_hand():
    m = block_causal_mask(T([[0, 0, 1, -1]]))
    allowed = (m[0, 0] == 0).long()
    assert torch.equal(allowed, T([[1, 0, 0, 0],
                                   [1, 1, 0, 0],
                                   [0, 0, 1, 0],
                                   [0, 0, 0, 1]]))
    assert m.shape == (1, 1, 4, 4) and m.min() == torch.finfo(torch.float32).min


def test_packing_rejects_inconsistent_examples_with_a_message():
    with pytest.raises(ValueError, match="example 0: completion_mask has 1 entries for 2 tokens"):
        pack_examples([{"input_ids": [1, 2], "completion_mask": [0]}], 4)
    with pytest.raises(ValueError, match="example 0: 3 tokens but seq_lengths sum to 2"):
        PackingCollator(PAD)([{"input_ids": [1, 2, 3], "completion_mask": [0, 1, 1], "seq_lengths": [2]}])


def test_packed_layout_by_hand():
    """Rows of lengths 3, 5, 8 in a width-8 batch: best fit puts 8 alone and 5 + 3 together
    (batch order kept within a row); positions restart per sequence."""
    from rlhf.data.collate import PackedLayout, PadCollator

    seqs = [{"input_ids": list(range(10, 10 + n)), "completion_mask": [0] + [1] * (n - 1)} for n in (3, 5, 8)]
    for side in ("right", "left"):
        b = PadCollator(0, side)(seqs)
        lay = PackedLayout(b["attention_mask"])
        assert lay.shape == (2, 8)
        assert lay.pack(b["input_ids"]).tolist() == [list(range(10, 18)), [10, 11, 12, 10, 11, 12, 13, 14]]
        assert lay.position_ids.tolist() == [list(range(8)), [0, 1, 2, 0, 1, 2, 3, 4]]
        assert lay.sequence.tolist() == [[2] * 8, [0, 0, 0, 1, 1, 1, 1, 1]]
        assert lay.starts.nonzero().tolist() == [[0, 0], [1, 0], [1, 3]]


def test_packed_layout_trailing_padding_is_its_own_block():
    from rlhf.data.collate import PackedLayout

    am = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    lay = PackedLayout(am)  # 6 | 3 + 2 (+1 free)
    assert lay.shape == (2, 6)
    assert lay.position_ids[1].tolist() == [0, 1, 0, 1, 2, 0]
    assert lay.sequence[1].tolist() == [1, 1, 2, 2, 2, -1]
    x = torch.arange(18.).view(3, 6).requires_grad_()
    packed = lay.pack(x, fill=-1.0)
    assert packed[1].tolist() == [6., 7., 12., 13., 14., -1.]
    packed.sum().backward()  # gradient flows back to exactly the real tokens
    assert x.grad.tolist() == am.float().tolist()
