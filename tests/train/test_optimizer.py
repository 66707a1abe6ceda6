"""The trainer's AdamW: torch's fused kernel where it takes every parameter (one pass per tensor
instead of about six), the same update as the default implementation up to float rounding."""

from __future__ import annotations

import copy

import torch

from rlhf.models.tiny import build_tiny_model
from rlhf.train.trainer import _param_groups, adamw_kwargs


def _model():
    return build_tiny_model("llama", 97, hidden_size=32, num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1)


def test_fused_where_the_kernel_takes_every_parameter():
    groups = _param_groups(_model(), 0.1)
    assert adamw_kwargs(groups) == {"fused": True}
    assert adamw_kwargs(groups, sharded=True) == {}  # DTensor shards: torch's default
    assert adamw_kwargs([{"params": []}]) == {}
    on_meta = [{"params": [torch.nn.Parameter(torch.zeros(3, device="meta"))]}]
    assert adamw_kwargs(groups + on_meta) == {}  # one parameter the kernel cannot take: none fused


def test_fused_and_default_adamw_give_the_same_weights_to_rounding():
    """Five steps with weight decay on the same gradients (of a real loss, each step's own), from
    the same weights: fused vs torch's default. Measured: max |diff| 3.3e-8 on weights of up to 1
    (the norms) that moved by up to 5.1e-3 (1e-3 lr x 5 steps); bound 1e-6, i.e. 2e-4 of the
    largest move: an update off by a factor (a missed bias correction) fails it."""
    torch.manual_seed(0)
    base = _model().train()
    ids = torch.randint(2, 97, (4, 12))
    weights = {}
    for impl in ("default", "fused"):
        model = copy.deepcopy(base)
        groups = _param_groups(model, 0.1)
        kw = adamw_kwargs(groups) if impl == "fused" else {}
        assert kw == ({"fused": True} if impl == "fused" else {})
        opt = torch.optim.AdamW(groups, lr=1e-3, **kw)
        for _ in range(5):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        weights[impl] = {n: p.detach().clone() for n, p in model.named_parameters()}
    start = {n: p.detach() for n, p in base.named_parameters()}
    moved = max(float((weights["default"][n] - start[n]).abs().max()) for n in start)
    diff = max(float((weights["fused"][n] - weights["default"][n]).abs().max()) for n in start)
    assert 1e-3 < moved < 1e-2  # the steps moved the weights
    assert diff < 1e-6, (diff, moved)
