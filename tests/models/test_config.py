"""ModelConfig / LoraConfig: defaults, bounds and cross-field rules, through rlhf.config."""

from __future__ import annotations

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.models.config import LoraConfig, ModelConfig


def test_defaults_are_the_safe_ones():
    cfg = load_config(ModelConfig, overrides=["name_or_path=some/model"])
    assert cfg.trust_remote_code is False
    assert cfg.dtype == "fp32" and cfg.attn_implementation == "auto"
    assert cfg.disable_dropout is True and cfg.gradient_checkpointing is False
    assert cfg.lora == LoraConfig() and cfg.lora.enabled is False and cfg.lora.target_modules is None
    assert cfg.tokenizer_path == "some/model"


def test_tokenizer_path_overrides_model_path():
    cfg = load_config(ModelConfig, overrides=["name_or_path=a/b", "tokenizer=c/d"])
    assert cfg.tokenizer_path == "c/d"


def test_empty_name_or_path_is_rejected_naming_the_field():
    with pytest.raises(ConfigError) as err:
        load_config(ModelConfig, overrides=[])
    assert err.value.key == "name_or_path"


@pytest.mark.parametrize("override, key", [
    ("lora.r=0", "lora.r"),
    ("lora.dropout=1.0", "lora.dropout"),
    ("lora.dropout=-0.1", "lora.dropout"),
    ("lora.target_modules=[]", "lora.target_modules"),
    ("dtype=fp16", "dtype"),
    ("attn_implementation=flash", "attn_implementation"),
])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(ModelConfig, overrides=["name_or_path=x/y", override])
    assert err.value.key == key


def test_lists_and_null_parse():
    cfg = load_config(ModelConfig, overrides=["name_or_path=x/y", "lora.enabled=true",
                                              "lora.target_modules=[q_proj, v_proj]",
                                              "attn_implementation=null", "dtype=bf16"])
    assert cfg.lora.enabled and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.attn_implementation is None and cfg.dtype == "bf16"
