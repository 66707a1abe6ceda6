"""DataConfig: field constraints and cross-field rules, checked through rlhf.config.load_config."""

from __future__ import annotations

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.data import DataConfig


def load(*overrides: str) -> DataConfig:
    return load_config(DataConfig, overrides=overrides)


def test_defaults_are_the_documented_ones():
    cfg = load()
    assert (cfg.format, cfg.max_length, cfg.max_prompt_length, cfg.prompt_truncation,
            cfg.completion_truncation, cfg.chat_template, cfg.strict, cfg.add_eos) == (
        "auto", 512, None, "left", "right", "auto", False, True)
    assert cfg.columns == {}


def test_overrides_reach_nested_types():
    cfg = load("train=x.jsonl", "columns.prompt=question", "max_prompt_length=100", "format=hh")
    assert cfg.columns == {"prompt": "question"} and cfg.max_prompt_length == 100 and cfg.format == "hh"


@pytest.mark.parametrize("overrides, key, fragment", [
    (["max_length=100", "max_prompt_length=100"], "max_prompt_length", "must be < max_length=100"),
    (["eval_fraction=1.0"], "eval_fraction", "must be < 1.0"),
    (["eval_fraction=-0.1"], "eval_fraction", "must be >= 0.0"),
    (["eval_fraction=0.1", "eval=test.jsonl"], "eval_fraction", "not both"),
    (["columns.question=prompt"], "columns.question", "allowed keys"),
    (["columns.prompt=q", "columns.completion=q"], "columns", "one source column"),
    (["format=tsv"], "format", "must be one of"),
    (["max_length=1"], "max_length", "must be >= 2"),
    (["prompt_truncation=middle"], "prompt_truncation", "must be one of"),
])
def test_invalid_values_name_the_field(overrides, key, fragment):
    with pytest.raises(ConfigError) as e:
        load(*overrides)
    assert e.value.key == key
    assert fragment in str(e.value)
