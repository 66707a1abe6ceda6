"""The LM head in chunks (rlhf.logprobs.chunked_head_logps): the same log-probs and gradients as
the whole-logits computation, without ever holding the (rows x vocab) logits."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rlhf.logprobs as L
from rlhf.logprobs import chunked_head_logps, packed_sequence_logps, token_logps


def _case(n=37, H=16, V=50, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, H, generator=g) * 2).requires_grad_()
    w = torch.randn(V, H, generator=g).requires_grad_()
    b = torch.randn(V, generator=g).requires_grad_() if bias else None
    t = torch.randint(0, V, (n,), generator=g)
    gout = torch.randn(n, generator=g)  # an arbitrary upstream gradient per row (as DPO's weights)
    return h, w, b, t, gout


def _naive64(h, w, b, t, temp):
    """Reference: float64 log_softmax of the whole logits, gathered."""
    logits = h.double() @ w.double().T + (0 if b is None else b.double())
    return torch.log_softmax(logits / temp, -1).gather(-1, t[:, None]).squeeze(-1)


@pytest.mark.parametrize("chunk_elements", [50, 50 * 5, 50 * 8 + 7, 10 ** 6])  # 1 row, uneven, one slice
@pytest.mark.parametrize("temp", [1.0, 0.7])
def test_values_and_gradients_equal_the_whole_logits(chunk_elements, temp):
    h, w, b, t, gout = _case()
    got = chunked_head_logps(h, w, t, b, temp, chunk_elements=chunk_elements)
    (got * gout).sum().backward()
    grads = [x.grad.clone() for x in (h, w, b)]
    for x in (h, w, b):
        x.grad = None
    want = _naive64(h, w, b, t, temp)
    (want * gout.double()).sum().backward()
    # fp32 against a float64 reference: measured max difference over these cases 6.7e-6 (values)
    # and 2.9e-5 (gradients, sums over 37 rows), with and without ATEN_CPU_CAPABILITY=default;
    # the tolerances are about 3x those.
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)
    for g, x in zip(grads, (h, w, b)):
        torch.testing.assert_close(g.double(), x.grad.double(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("temp", [1.0, 0.7])
def test_frozen_head_gradient_made_in_the_forward(temp):
    """A frozen head (LoRA): d log p / dh is made per slice in the forward; the same values and
    gradient as the whole logits, and no (n, V) tensor survives into the backward."""
    h, w, b, t, gout = _case(seed=2)
    w.requires_grad_(False)
    b.requires_grad_(False)
    got = chunked_head_logps(h, w, t, b, temp, chunk_elements=50 * 8 + 7)
    assert got.grad_fn is not None and "Frozen" in type(got.grad_fn).__name__
    (got * gout).sum().backward()
    g = h.grad.clone()
    h.grad = None
    want = _naive64(h, w, b, t, temp)
    (want * gout.double()).sum().backward()
    # measured max difference 5.5e-6 (values) and 8.6e-6 (gradient) against float64, both kernel
    # sets; tolerances as for the trainable head
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)
    torch.testing.assert_close(g.double(), h.grad.double(), atol=1e-4, rtol=0)
    n, V = 64, 512
    h, w, b, t, gout = _case(n=n, V=V, H=8)
    w.requires_grad_(False)
    b.requires_grad_(False)
    out = chunked_head_logps(h, w, t, b, chunk_elements=8 * V)
    with _LargestOutput() as m:
        (out * gout).sum().backward()
    assert m.largest < n * V  # the backward makes nothing vocabulary-sized


def test_no_grad_path_and_no_bias():
    h, w, _, t, _ = _case(bias=False, seed=1)
    with torch.no_grad():
        got = chunked_head_logps(h, w, t, chunk_elements=100)
    assert not got.requires_grad
    torch.testing.assert_close(got.double(), _naive64(h, w, None, t, 1.0), atol=2e-5, rtol=0)


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op produced (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def test_the_whole_logits_never_exist():
    n, V = 64, 512
    h, w, b, t, gout = _case(n=n, V=V, H=8)
    with _LargestOutput() as m:
        (chunked_head_logps(h, w, t, b, chunk_elements=8 * V) * gout).sum().backward()
    # the weight's gradient (V x H) is the largest tensor; no (n, V) logits nor their gradient
    assert m.largest < n * V, m.largest
    with _LargestOutput() as m:
        (token_logps(torch.nn.functional.linear(h, w, b), t) * gout).sum().backward()
    assert m.largest >= n * V  # the unchunked computation does make them (the check can fail)


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 97, (4, 12), generator=g)
    am = torch.ones(4, 12, dtype=torch.long)
    am[1, 9:] = 0
    am[3, 6:] = 0
    cm = torch.zeros(4, 12, dtype=torch.long)
    cm[:, 4:] = 1
    cm = cm * am
    return {"input_ids": ids, "attention_mask": am, "completion_mask": cm}


@pytest.mark.parametrize("fn", [packed_sequence_logps, L.bucketed_sequence_logps])
def test_sequence_logps_chunked_equal_unchunked(llama, fn, monkeypatch):
    """A real (tiny) Llama: the chunked head path gives the unchunked sums and gradients."""
    batch = _batch()
    sums, lengths = fn(llama, batch)
    sums.sum().backward()
    want_grad = [p.grad.clone() for p in llama.parameters()]
    llama.zero_grad(set_to_none=True)
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", 97 * 3)  # 3 rows per slice: several slices
    calls = []
    orig = L.chunked_head_logps
    monkeypatch.setattr(L, "chunked_head_logps", lambda *a, **k: calls.append(1) or orig(*a, **k))
    sums_c, lengths_c = fn(llama, batch)
    sums_c.sum().backward()
    assert calls, "the chunked path did not run"
    assert torch.equal(lengths, lengths_c)
    # the same float32 arithmetic sliced: measured max difference 0 (sums) and 8.3e-7 (gradients,
    # up to 3.9 in size), with and without ATEN_CPU_CAPABILITY=default; tolerances about 5x those
    torch.testing.assert_close(sums_c, sums, atol=1e-6, rtol=0)
    for p, g in zip(llama.parameters(), want_grad):
        torch.testing.assert_close(p.grad, g, atol=5e-6, rtol=0)
    llama.zero_grad(set_to_none=True)


def test_frozen_head_model_equal_unchunked(llama, monkeypatch):
    """The LoRA situation on a real (tiny) Llama: head and embeddings frozen, the layers trained."""
    frozen = [llama.get_output_embeddings().weight, llama.get_input_embeddings().weight]
    for p in frozen:
        p.requires_grad_(False)
    try:
        batch = _batch()
        want, _ = packed_sequence_logps(llama, batch)
        want.sum().backward()
        want_grad = [p.grad.clone() for p in llama.parameters() if p.requires_grad]
        llama.zero_grad(set_to_none=True)
        monkeypatch.setattr(L, "CHUNK_ELEMENTS", 97 * 3)
        calls = []
        orig = L._FrozenHeadLogps.apply
        monkeypatch.setattr(L._FrozenHeadLogps, "apply", lambda *a: calls.append(1) or orig(*a))
        got, _ = packed_sequence_logps(llama, batch)
        assert calls, "the frozen-head path did not run"
        got.sum().backward()
        # measured max difference 0 (sums) and 6.3e-7 (gradients), both kernel sets
        torch.testing.assert_close(got, want, atol=5e-6, rtol=0)
        for p, g in zip([p for p in llama.parameters() if p.requires_grad], want_grad):
            torch.testing.assert_close(p.grad, g, atol=5e-6, rtol=0)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        llama.zero_grad(set_to_none=True)


def test_forward_logps_chunked_equal_unchunked(llama, monkeypatch):
    """SFT's and evaluation's per-token log-probs (forward_logps, every position): the same
    values and gradients with the head in slices, padding included."""
    batch = _batch()
    want = L.forward_logps(llama, batch)
    (want * batch["attention_mask"]).sum().backward()
    want_grad = [p.grad.clone() for p in llama.parameters()]
    llama.zero_grad(set_to_none=True)
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", 97 * 5)
    calls = []
    orig = L.chunked_head_logps
    monkeypatch.setattr(L, "chunked_head_logps", lambda *a, **k: calls.append(1) or orig(*a, **k))
    got = L.forward_logps(llama, batch)
    (got * batch["attention_mask"]).sum().backward()
    assert calls and got.shape == want.shape and torch.all(got[:, 0] == 0)
    # measured: values equal, gradients 7.2e-7 apart (both kernel sets); tolerances as above
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for p, g in zip(llama.parameters(), want_grad):
        torch.testing.assert_close(p.grad, g, atol=5e-6, rtol=0)
    llama.zero_grad(set_to_none=True)
    logps, logits = L.forward_logps(llama, batch, return_logits=True)  # asked for logits: whole, as before
    assert logits.shape == (4, 12, 97) and len(calls) == 1


def test_reference_model_runs_chunked_under_its_context(llama, monkeypatch):
    """The reference wrapper (no grad, eval, adapters off) is unwrapped under its context, so the
    reference pass at a real vocabulary does not hold the whole logits either."""
    from rlhf.models.load import ReferenceModel

    ref = ReferenceModel(llama, adapters_disabled=False)
    batch = _batch()
    want, _ = L.bucketed_sequence_logps(ref, batch)
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", 97 * 3)
    calls = []
    orig = L.chunked_head_logps
    monkeypatch.setattr(L, "chunked_head_logps", lambda *a, **k: calls.append(1) or orig(*a, **k))
    got, _ = L.bucketed_sequence_logps(ref, batch)
    assert calls and not got.requires_grad
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # measured: equal (as the test above)


def test_wrapped_or_unlisted_models_are_not_split(llama):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    assert L._head_split(gpt2) is None  # not a listed architecture: its logits are asked for
    assert L._head_split(lambda **kw: None) is None
    assert L._head_split(llama) is not None
