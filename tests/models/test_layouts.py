"""rlhf.models.layouts helpers that need no model zoo (the probes themselves: tests/conformance/test_layouts.py)."""

from __future__ import annotations


def test_cache_keyword_of_a_lora_wrapper_is_its_base_models():
    """peft's PeftModel.forward takes **kwargs and hands them to the base model: the cache
    keyword comes from the base model's signature, so a LoRA policy is not sent the deprecated
    ``past_key_values`` (transformers' FutureWarning in the real-model GRPO step)."""
    import inspect

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.models.layouts import cache_kwarg

    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    expected = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    assert "cache" not in inspect.signature(type(lora).forward).parameters  # the wrapper alone says nothing
    assert cache_kwarg(lora) == expected == cache_kwarg(base)
