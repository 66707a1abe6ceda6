"""Output permissions (issue 22 item 13): every file a run writes gets the mode the umask gives
a new file; the installed safetensors alone created weights 0600 beside 0644 config files."""

from __future__ import annotations

import os

import pytest


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_saved_model_files_share_one_mode(tiny_llama, tmp_path, umask, mode):
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer, save_model
    from rlhf.train.run import save_safetensors

    cfg = ModelConfig(name_or_path=str(tiny_llama))
    model, tok = load_causal_lm(cfg, for_training=False), load_tokenizer(cfg)
    old = os.umask(umask)
    try:
        out = save_model(model, tok, tmp_path / "m")
        save_safetensors({"x": next(model.parameters()).detach()}, tmp_path / "t.safetensors")
    finally:
        os.umask(old)
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in [*out.iterdir(), tmp_path / "t.safetensors"]}
    assert "model.safetensors" in modes and "config.json" in modes
    assert set(modes.values()) == {oct(mode)}, modes
