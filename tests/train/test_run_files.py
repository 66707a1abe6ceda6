"""Run-folder helpers (rlhf/train/run.py): publishing a model folder."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from rlhf.train.run import publish_model


def _weights(path, value: float) -> bytes:
    save_file({"w": torch.full((2,), value)}, str(path))
    return path.read_bytes()


def test_publish_model_links_the_files_and_survives_the_source(tmp_path):
    """final/ gets every file of the source (hard-linked: same inode, no extra disk) but not its
    checkpoints or temporary files; republishing replaces it whole; deleting the source later
    leaves final/ loadable."""
    src = tmp_path / "round-2" / "sft" / "final"
    src.mkdir(parents=True)
    _weights(src / "model.safetensors", 2.0)
    (src / "config.json").write_text("{}")
    (src / "checkpoint-10").mkdir()
    (src / "x.tmp-123").write_text("partial")
    dst = publish_model(src, tmp_path / "final")
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    assert os.stat(dst / "model.safetensors").st_ino == os.stat(src / "model.safetensors").st_ino

    other = tmp_path / "round-3" / "final"
    other.mkdir(parents=True)
    w3 = _weights(other / "model.safetensors", 3.0)
    publish_model(other, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["model.safetensors"]
    for p in (other / "model.safetensors", src / "model.safetensors", src / "config.json"):
        p.unlink()
    assert (dst / "model.safetensors").read_bytes() == w3


def test_publish_model_leaves_the_old_folder_when_copying_fails(tmp_path):
    dst = tmp_path / "final"
    dst.mkdir()
    (dst / "model.safetensors").write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        publish_model(tmp_path / "missing", dst)
    assert (dst / "model.safetensors").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]  # no temporary folder left behind
