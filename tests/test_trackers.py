"""train.report_to: a name or a list; a tracker that is not installed stops the run before any work."""

from __future__ import annotations

import importlib.util

import pytest

from rlhf.cli import main
from rlhf.config import ConfigError, load_config
from rlhf.recipes.sft import SFTConfig

_BASE = ["model.name_or_path=m", "data.train=d.jsonl"]
# These two name tensorboard as the tracker that is installed (the dev extra has it; the vLLM venv,
# which runs the fast suite against an older transformers, does not).
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard is not installed (the dev extra has it)")


@needs_tensorboard
def test_a_single_tracker_name_is_a_one_item_list():
    assert load_config(SFTConfig, None, [*_BASE, "train.report_to=tensorboard"]).train.report_to == ["tensorboard"]
    assert load_config(SFTConfig, None, [*_BASE, "train.report_to=[tensorboard]"]).train.report_to == ["tensorboard"]
    assert load_config(SFTConfig, None, _BASE).train.report_to == []
    with pytest.raises(ConfigError, match="unknown tracker 'mlflow'"):
        load_config(SFTConfig, None, [*_BASE, "train.report_to=mlflow"])


@needs_tensorboard
def test_missing_tracker_stops_before_training_with_the_pip_command(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    monkeypatch.chdir(tmp_path)  # data.train must exist: the CLI checks paths before anything else
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "m").mkdir()
    code = main(["sft", *_BASE, "train.report_to=[tensorboard, wandb]", f"output_dir={tmp_path / 'x'}"])
    assert code == 2
    assert "train.report_to: wandb is not installed: pip install wandb" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
