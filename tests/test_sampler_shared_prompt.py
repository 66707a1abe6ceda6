"""A prompt's K samples share one prefill in the built-in sampler (rlhf/rollout/sampler.py): the
distinct prompts are prefilled once and their KV cache copied to their rows. The samples must be
those of the unshared prefill (every row prefilling its own prompt, the path before): the same
tokens under a seed, for the lean forward and the transformers path, left-padded prompts of
different lengths, K = 1 and K > 1, groups cut across sampling batches; and the prefill work
falls from B rows to the number of distinct prompts per batch (counted)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

import rlhf.rollout.sampler as sampler
from rlhf.rollout import SamplingConfig, sample

PROMPTS = ["Name a colour.", "What is two plus two? Answer briefly please", "Hi", "Say something."]


@pytest.fixture(scope="module")
def models(tiny_llama, instruction_data, tmp_path_factory):
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.models.tiny import make_tiny_checkpoint

    texts = [json.loads(x)["prompt"] for x in instruction_data["train"].read_text().splitlines()]
    out = {"llama": tiny_llama}
    for arch in ("gpt2", "mistral"):  # learned positions; a sliding-window cache
        out[arch] = make_tiny_checkpoint(tmp_path_factory.mktemp(arch) / arch, arch, texts, vocab_size=300,
                                         hidden_size=64, num_layers=2, num_heads=4, seed=0)
    loaded = {}
    for name, path in out.items():
        cfg = ModelConfig(name_or_path=str(path))
        loaded[name] = (load_causal_lm(cfg, for_training=False), load_tokenizer(cfg))
    return loaded


def _run(model, tok, cfg: SamplingConfig, shared: bool, monkeypatch, seed: int = 3):
    with monkeypatch.context() as m:
        if not shared:
            m.setattr(sampler, "_shared_rows", lambda rows: None)  # every row prefills its prompt
        before = dict(sampler.PREFILL_COUNTS)
        g = torch.Generator().manual_seed(seed)
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
        ro = sample(model, tok, PROMPTS, ids, cfg, generator=g, with_logps=True)
        return ro, {k: sampler.PREFILL_COUNTS[k] - before[k] for k in before}


@pytest.mark.parametrize("arch,engine", [("llama", "lean"), ("llama", "transformers"), ("gpt2", "auto"),
                                         ("mistral", "transformers")])
@pytest.mark.parametrize("K,batch_size", [(1, 64), (4, 64), (3, 5)])
def test_shared_prefill_samples_the_same_tokens(models, monkeypatch, arch, engine, K, batch_size):
    """Same tokens, attention and lengths; log-probs and entropies equal to float rounding of a
    prefill of fewer rows: a matrix product over fewer rows may round differently (measured with
    llama / gpt2 / mistral, K = 1, 3, 4, 8: 0 under ATEN_CPU_CAPABILITY avx2 and avx512, and under
    default 0 except the lean path with groups cut across batches, 1.9e-6; bound 1e-5, the
    sampler-vs-forward bound of test_rollout). batch_size 5 with K = 3 cuts groups across
    batches (a batch holds parts of two or three prompts)."""
    model, tok = models[arch]
    if engine == "lean":
        from rlhf.models.lean import lean_unsupported
        assert lean_unsupported(model) is None  # the lean path really runs
    cfg = SamplingConfig(max_new_tokens=8, num_samples=K, temperature=1.3, batch_size=batch_size, engine=engine)
    a, na = _run(model, tok, cfg, True, monkeypatch)
    b, nb = _run(model, tok, cfg, False, monkeypatch)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert a.completions == b.completions and torch.equal(a.lengths, b.lengths)
    mask = a.completion_mask.bool()
    assert mask.sum() > len(a)  # completions with more than one token were drawn
    torch.testing.assert_close(a.logps[mask], b.logps[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.entropy[mask], b.entropy[mask], atol=1e-5, rtol=0)
    # The work: unshared, every row; shared, the distinct prompts of each sampling batch.
    rows = [i for i in range(len(PROMPTS)) for _ in range(K)]
    chunks = [rows[s:s + batch_size] for s in range(0, len(rows), batch_size)]
    assert nb["rows"] == len(rows)
    assert na["rows"] == sum(len(set(c)) for c in chunks)
    if K > 1 and batch_size >= len(rows):
        assert na["rows"] * K == nb["rows"] and na["tokens"] * K == nb["tokens"]


def test_greedy_shared_prefill_equals_unshared(models, monkeypatch):
    """Greedy decoding (ReMax's baseline) through the shared prefill: the same argmax tokens."""
    model, tok = models["llama"]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    cfg = SamplingConfig(max_new_tokens=8, num_samples=2)
    out = []
    for shared in (True, False):
        with monkeypatch.context() as m:
            if not shared:
                m.setattr(sampler, "_shared_rows", lambda rows: None)
            out.append(sample(model, tok, PROMPTS, ids, cfg, greedy=True).input_ids)
    assert torch.equal(out[0], out[1])


def test_shared_rows_finds_each_distinct_prompt():
    assert sampler._shared_rows([[1, 2], [3], [1, 2], [3], [4]]) == ([0, 1, 4], [0, 1, 0, 1, 2])
    assert sampler._shared_rows([[1], [2], [3]]) is None  # nothing to share: the plain prefill


def test_a_cache_with_other_state_is_not_shared(caplog):
    """A cache layer that is not plain per-row keys and values (linear attention, quantized) is
    left alone, said once per model class, and the caller prefills every row."""
    class Odd(torch.nn.Module):
        pass

    cache = SimpleNamespace(layers=[object()])
    with caplog.at_level(logging.WARNING, logger="rlhf.rollout.sampler"):
        assert sampler._expand_cache(Odd(), cache, torch.tensor([0, 0])) is False
        assert sampler._expand_cache(Odd(), cache, torch.tensor([0, 0])) is False
    lines = [r for r in caplog.records if "do not share its prefill" in r.getMessage()]
    assert len(lines) == 1 and "Odd" in lines[0].getMessage()
    assert Odd in sampler._UNSHAREABLE  # later batches of this class skip the shared prefill
    sampler._UNSHAREABLE.discard(Odd)


def test_an_unshareable_cache_falls_back_to_the_unshared_prefill(models, monkeypatch):
    """End to end: where the cache is not shareable the sampler prefills every row and draws the
    same tokens (the probe's verdict is kept for the class: one shared try, then none)."""
    model, tok = models["llama"]
    cfg = SamplingConfig(max_new_tokens=6, num_samples=4, temperature=1.3, engine="transformers")
    want, _ = _run(model, tok, cfg, False, monkeypatch)
    monkeypatch.setattr(sampler, "_ROW_LAYERS", (type(None),))  # no layer type is known to be shareable
    try:
        got, n = _run(model, tok, cfg, True, monkeypatch)
        assert type(model) in sampler._UNSHAREABLE
    finally:
        sampler._UNSHAREABLE.discard(type(model))
    assert torch.equal(got.input_ids, want.input_ids)
    assert n["rows"] == len(PROMPTS) + len(PROMPTS) * 4  # the one shared try, then every row
