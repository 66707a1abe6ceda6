"""The config machinery: loading, overrides, and every kind of rejection, naming the key."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from typing import Literal

import pytest

from rlhf.config import ConfigError, format_help, load_config, opt, reference_markdown, replace_path, to_dict


@dataclass(frozen=True)
class Inner:
    lr: float = opt(1e-3, "learning rate", gt=0)
    steps: int = opt(10, "number of steps", ge=1)
    mode: Literal["a", "b"] = opt("a", "which mode")
    name: str | None = opt(None, "optional name")
    tags: list[str] = opt(factory=list, help="tags")

    def validate(self):
        if self.mode == "b" and self.steps % 2:
            raise ConfigError("steps", f"must be even when mode is 'b' (got {self.steps})")


@dataclass(frozen=True)
class Outer:
    out: str = opt("x", "output folder")
    inner: Inner = opt(factory=Inner, help="inner section")


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("out: run1\ninner:\n  lr: 1.0e-4\n  tags: [p, q]\n")
    cfg = load_config(Outer, f, ["inner.steps=20", "inner.name=abc", "inner.lr=2e-4"])
    assert cfg == Outer(out="run1", inner=Inner(lr=2e-4, steps=20, name="abc", tags=["p", "q"]))
    # YAML reads '2e-4' without a dot as a string: the float field still takes it.
    assert isinstance(cfg.inner.lr, float)


@pytest.mark.parametrize("override, key, words", [
    (["inner.lr=-1"], "inner.lr", "must be > 0"),
    (["inner.steps=0"], "inner.steps", "must be >= 1"),
    (["inner.steps=1.5"], "inner.steps", "expected an integer"),
    (["inner.mode=c"], "inner.mode", "must be one of 'a', 'b'"),
    (["inner.lrr=1"], "inner.lrr", "did you mean 'lr'"),
    (["bogus=1"], "bogus", "unknown key"),
    (["inner.mode=b", "inner.steps=3"], "inner.steps", "must be even"),
    (["inner.lr=abc"], "inner.lr", "expected a number"),
    (["inner=3"], "inner", "expected a mapping"),
    (["inner.tags=notalist"], "inner.tags", "expected a list"),
    (["inner.steps"], "inner.steps", "key=value"),
])
def test_rejections_name_the_key(override, key, words):
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, override)
    assert e.value.key == key
    assert words in str(e.value)
    assert str(e.value).startswith(f"{key}:")


def test_a_mistyped_choice_names_the_closest_one():
    """A value near one of the choices gets it as a hint (both the Literal and the opt(choices=...) paths);
    one near none of them gets no guess."""
    from rlhf.config import _not_one_of
    from rlhf.recipes.ppo import PPOConfig
    with pytest.raises(ConfigError, match=r"\(got 'gpso'\); did you mean 'gspo'\?$"):
        load_config(PPOConfig, None, ["ppo.loss=gpso"])
    with pytest.raises(ConfigError, match=r"\(got 'grop'\); did you mean 'grpo'\?$"):
        load_config(PPOConfig, None, ["advantage=grop"])
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, ["inner.mode=zzz"])
    assert "did you mean" not in str(e.value)
    assert str(_not_one_of("k", ("alpha", 3), "alpah")).endswith("did you mean 'alpha'?")
    assert "did you mean" not in str(_not_one_of("k", ("alpha", 3), 4))


def test_yaml_booleans_map_back_to_string_choices(tmp_path):
    """YAML 1.1 reads `no` as False; a Literal["no", "bf16"] field must still get "no"."""
    from rlhf.train.config import TrainConfig
    assert load_config(TrainConfig, None, ["mixed_precision=no"]).mixed_precision == "no"
    f = tmp_path / "t.yaml"
    f.write_text("mixed_precision: no\n")
    assert load_config(TrainConfig, f).mixed_precision == "no"
    with pytest.raises(ConfigError, match="must be one of 'no', 'bf16' \\(got True\\)"):
        load_config(TrainConfig, None, ["mixed_precision=yes"])


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2:1: not valid YAML \(expected ',' or '\]'") as e:
        load_config(Outer, f)
    assert "\n" not in str(e.value)  # one line, not PyYAML's drawing of the spot
    f.write_bytes(b"inner: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not UTF-8 text \(byte 10"):
        load_config(Outer, f)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_frozen_and_replace():
    cfg = load_config(Outer)
    with pytest.raises(FrozenInstanceError):
        cfg.inner.lr = 5.0  # configs are never mutated while training
    cfg2 = replace_path(cfg, "inner.lr", 5.0)
    assert cfg2.inner.lr == 5.0 and cfg.inner.lr == 1e-3


def test_round_trip_through_yaml(tmp_path):
    from rlhf.config import save_config
    cfg = load_config(Outer, None, ["inner.tags=[x]", "inner.name=n"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(Outer, tmp_path / "c.yaml") == cfg
    assert to_dict(cfg)["inner"]["tags"] == ["x"]


def test_help_and_reference_list_every_field():
    text = format_help(Outer)
    for key in ("out", "inner.lr", "inner.steps", "inner.mode", "inner.name", "inner.tags"):
        assert f"  {key}  (" in text
    assert "default 0.001" in text and "learning rate" in text
    md = reference_markdown({"demo": Outer})
    assert "| `inner.mode` | 'a' \\| 'b' | `a` | which mode |" in md


def test_stage_configs_validate_cross_fields():
    from rlhf.recipes.sft import SFTConfig
    with pytest.raises(ConfigError, match=r"^train.batch_size: must be divisible by train.grad_accum=3"):
        load_config(SFTConfig, None, ["data.train=x.jsonl", "model.name_or_path=m", "train.batch_size=8",
                                      "train.grad_accum=3"])
    with pytest.raises(ConfigError, match=r"^data.train: is required"):
        load_config(SFTConfig, None, ["model.name_or_path=m"])


def test_configuration_reference_is_current():
    """docs/configuration.md must be regenerated (make docs) when a config class changes."""
    from rlhf.docs import DOC_PATH, render
    assert DOC_PATH.exists(), "docs/configuration.md is missing: run `make docs`"
    assert DOC_PATH.read_text() == render(), "docs/configuration.md is stale: run `make docs`"
