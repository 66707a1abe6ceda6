"""GGUF sources without a real model: locating files, the cache key, one-line errors (the real file
is tested in tests/test_real_model.py)."""

from __future__ import annotations

import pytest

from rlhf.models.gguf import GGUFError, cache_root, gguf_folder, is_gguf, locate, resolve
from rlhf.models.load import HubError


def test_is_gguf_and_resolve_leave_other_sources_alone():
    assert is_gguf("a/b/model.Q4_K_M.GGUF") and not is_gguf("runs/sft/final") and not is_gguf(None)
    assert resolve("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


def test_missing_file_is_one_line_naming_it(tmp_path):
    with pytest.raises(GGUFError) as e:
        locate(tmp_path / "nope.gguf")
    assert "nope.gguf" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, HubError)  # the CLI prints HubError as one line


def test_file_inside_an_installed_package_is_found(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "fakepkg_gguf"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never imported')\n")
    (pkg / "m.gguf").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.chdir(tmp_path)
    assert locate("fakepkg_gguf/m.gguf") == pkg / "m.gguf"
    with pytest.raises(GGUFError, match="fakepkg_gguf"):
        locate("fakepkg_gguf/other.gguf")


def test_cache_folder_is_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" / "gguf"
    f = tmp_path / "m.gguf"
    f.write_bytes(b"model bytes")
    import hashlib

    done = cache_root() / hashlib.sha256(b"model bytes").hexdigest()[:16]
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    (done / "model.safetensors").write_bytes(b"")
    assert gguf_folder(f) == done  # a converted folder is reused without reading the file again
