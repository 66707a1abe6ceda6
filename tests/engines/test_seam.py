"""The rollout-engine seam (rlhf/rollout/engines.py) without vLLM: the built-in engine is the sampler, the
core never imports vLLM, a missing vLLM is one clear error, a hung sync fails on time, and the
PPO options for the engine mismatch are checked."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from rlhf.config import ConfigError, load_config
from rlhf.rollout import BuiltinEngine, SamplingConfig, forward_engine, param_versions, rollout_engine, sample


@pytest.fixture
def llama(tiny_llama):
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer

    mc = ModelConfig(name_or_path=str(tiny_llama))
    tok = load_tokenizer(mc)
    return load_causal_lm(mc, for_training=False), tok


def test_builtin_engine_is_the_sampler(llama):
    """rollout_engine(engine=auto) samples exactly what rlhf.rollout.sample samples (same
    seed, same tensors and log-probs); its sync has nothing to copy."""
    model, tok = llama
    prompts = ["Hello there", "Tell me a story"]
    ids = [tok(p)["input_ids"] for p in prompts]
    cfg = SamplingConfig(max_new_tokens=6, num_samples=2)
    engine = rollout_engine(model, tok, cfg)
    assert isinstance(engine, BuiltinEngine)
    a = engine.sample(tok, prompts, ids, cfg, generator=torch.Generator().manual_seed(3), with_logps=True)
    b = sample(model, tok, prompts, ids, cfg, generator=torch.Generator().manual_seed(3), with_logps=True)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.logps, b.logps)
    assert engine.sync(model) == {}
    assert forward_engine("vllm") == "auto" and forward_engine("lean") == "lean"


def test_core_imports_without_vllm():
    """Every rlhf module that a stage uses imports without vLLM (house rule 7): importing them
    with vllm made unimportable succeeds, and vllm never lands in sys.modules."""
    code = ("import sys; sys.modules['vllm'] = None\n"
            "import rlhf.engines, rlhf.engines.vllm, rlhf.rollout, rlhf.rollout.vllm, rlhf.envs, rlhf.recipes.ppo, "
            "rlhf.ppo_update, rlhf.recipes.best_of_n, rlhf.recipes.rejection, rlhf.recipes.iterative_dpo, "
            "rlhf.eval.evaluate, rlhf.tools.generate, rlhf.cli\n"
            "assert sys.modules['vllm'] is None\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_missing_vllm_is_one_clear_error(llama, monkeypatch):
    """sampling.engine=vllm without vLLM installed fails with one ImportError naming the extra
    to install (and the built-in alternative), before anything is sampled."""
    model, tok = llama
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"rlhf\[vllm\].*sampling.engine=auto"):
        rollout_engine(model, tok, SamplingConfig(engine="vllm"))


def test_with_timeout_fails_loudly_and_passes_errors_through():
    from rlhf.rollout.vllm import EngineSyncError, with_timeout

    t0 = time.perf_counter()
    with pytest.raises(EngineSyncError, match="weight sync did not finish within 0.2 s"):
        with_timeout(lambda: time.sleep(5), 0.2, "weight sync")
    assert time.perf_counter() - t0 < 2.0
    assert with_timeout(lambda: 7, 5, "x") == 7
    with pytest.raises(KeyError):
        with_timeout(lambda: {}["missing"], 5, "x")


def test_param_versions_see_an_optimizer_step(llama):
    """The cached engine re-syncs when the model's parameter version counters move: an
    optimizer step moves them, a forward pass does not."""
    model, tok = llama
    model.requires_grad_(True)
    before = param_versions(model)
    x = torch.tensor([tok("Hello there")["input_ids"]])
    loss = model(input_ids=x, labels=x).loss
    assert param_versions(model) == before
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert param_versions(model) != before


def test_engine_weights_merge_lora_out_of_place(llama):
    """The weights handed to the engine for a LoRA policy are W + (α/r)·B·A under the plain
    model's names (checked against the product computed here), and the policy is untouched."""
    import copy

    from peft import LoraConfig, get_peft_model

    from rlhf.rollout.vllm import engine_weights

    model, _ = llama
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    layer = lora.get_base_model().model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(generator=torch.Generator().manual_seed(0))
    base = layer.base_layer.weight.detach().clone()
    w = engine_weights(lora)
    expected = base + (4 / 2) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(w["model.layers.0.self_attn.q_proj.weight"], expected)
    assert not any("lora_" in k or "base_layer" in k for k in w)
    assert set(w) == set(model.state_dict())
    assert torch.equal(layer.base_layer.weight, base)


def test_tis_with_sampler_logps_is_a_config_error(tmp_path):
    from rlhf.recipes.ppo import PPOConfig

    with pytest.raises(ConfigError, match="ppo.tis"):
        load_config(PPOConfig, None, ["model.name_or_path=org/m", "data.train=x.jsonl", "reward=m:f",
                                            "ppo.tis=token", "ppo.old_logps=sampler"])


def test_builtin_engine_stamps_the_policy_version(llama):
    """Every action of a rollout carries the engine's weight version (syncs so far), every other
    token -1; the loss mask of a one-turn rollout is its completion mask."""
    model, tok = llama
    prompts = ["Hello there", "Tell me a story"]
    ids = [tok(p)["input_ids"] for p in prompts]
    cfg = SamplingConfig(max_new_tokens=5, num_samples=2)
    engine = rollout_engine(model, tok, cfg)
    ro = engine.sample(tok, prompts, ids, cfg, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ro.loss_mask, ro.completion_mask) and ro.policy_mask is None
    actions = ro.loss_mask.bool()
    assert ro.policy_version is not None and bool(actions.any())
    assert bool((ro.policy_version[actions] == 0).all()) and bool((ro.policy_version[~actions] == -1).all())
    engine.sync(model)
    engine.sync(model)
    ro = engine.sample(tok, prompts, ids, cfg, generator=torch.Generator().manual_seed(0))
    assert set(ro.policy_version[ro.loss_mask.bool()].tolist()) == {2}


def test_one_registry_names_every_engine(llama):
    """sampling.engine names an ENGINES entry (auto/lean/transformers are the built-in sampler's
    forwards); an unknown name is one error listing the known ones."""
    from types import SimpleNamespace

    from rlhf.rollout import ENGINES, engine_kind

    assert set(ENGINES) == {"builtin", "vllm"}
    assert [engine_kind(e) for e in ("auto", "lean", "transformers", "vllm")] == ["builtin"] * 3 + ["vllm"]
    model, tok = llama
    with pytest.raises(ValueError, match="unknown rollout engine 'nope'.*vllm"):
        rollout_engine(model, tok, SimpleNamespace(engine="nope"))


class _CharTokenizer:
    """ids are characters' code points; decode joins them (no special tokens)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


@pytest.mark.parametrize("text, stops, stop_strings, want, ended", [
    ("ab\x00cd", {0}, [], "ab\x00", True),          # first EOS id, kept
    ("ab\x00c\x00", {0}, ["b"], "ab", True),        # whichever comes first: the stop string here
    ("a\x00b.", {0}, ["."], "a\x00", True),          # ... and the EOS id here
    ("[c: 3*4] = 9\x00", {0}, ["]"], "[c: 3*4]", True),  # a plain tool call ends its turn at "]"
    ("abc. de", set(), ["."], "abc.", True),        # shortest prefix holding a stop string, kept
    ("abc. de", set(), [". d", "c."], "abc.", True),  # the earliest of several
    ("abcde", set(), ["x"], "abcde", False),        # neither: cut at the length limit
    ("", {0}, ["."], "", False),
])
def test_end_of_completion_rule(text, stops, stop_strings, want, ended):
    """The end-of-episode rule every engine applies (built-in and vLLM call this one function)."""
    from rlhf.rollout import end_of_completion

    toks, end = end_of_completion(_CharTokenizer(), [ord(c) for c in text], stops, stop_strings)
    assert "".join(chr(t) for t in toks) == want and end is ended
