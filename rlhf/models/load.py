"""Load the models of the RLHF pipeline: policy, reference, reward model and critic.

One code path for every model, whether it comes from a local folder or a hub id:

    from_pretrained(dtype, attention kernel, trust_remote_code)   # step 1
      -> dropout off (config attributes AND modules)                  # step 2
      -> gradient checkpointing (non-reentrant)                       # step 3
      -> LoRA adapters (peft)                                         # step 4

Reward models and critics are "scalar models": ``AutoModelForSequenceClassification`` with one
output, built from a causal-LM checkpoint; for a model type transformers has no such class for
(Bamba, Falcon-H1, LFM2, Mamba, OLMoE, ...: 110 of 196 causal-LM types in transformers 5.24) the
same thing is built from the type's own trunk (:func:`scalar_model_class`); the trunk keeps the
checkpoint's weights and the new head is drawn from N(0, 1/(d_model + 1)), the reward-head init
of OpenAI's lm-human-preferences code (Ziegler et al. 2019, "Fine-Tuning Language Models from
Human Preferences").
:func:`score_tokens` gives the head's output at every position (a critic's ``values``);
:func:`score_last_token` gives it at the last real token of each sequence (a reward model's ``scores``).

The reference policy is a :class:`ReferenceModel`. With LoRA it is the policy itself with its
adapters switched off, so no second copy of the base weights is held; without LoRA it is a
frozen copy. Both are called the same way: ``ref(input_ids=..., attention_mask=...)``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

from rlhf.models.config import LoraConfig, ModelConfig
from rlhf.models.errors import HubError

__all__ = [
    "ReferenceModel",
    "load_tokenizer",
    "load_causal_lm",
    "load_reference",
    "load_scalar_model",
    "save_model",
    "count_parameters",
    "disable_dropout",
    "default_lora_targets",
    "init_scalar_head",
    "scalar_head",
    "scalar_model_class",
    "positions_from_mask",
    "score_tokens",
    "score_last_token",
    "packed_last_token_scores",
    "last_token_index",
    "unwrap_model",
    "position_limit",
    "check_sequence_limit",
]

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Where sequence-classification models keep their output layer (the same names peft checks).
_HEAD_NAMES = ("score", "classifier")


# --------------------------------------------------------------------------- small helpers


def unwrap_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft ``PeftModel`` (adapters stay injected), else ``model``."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def _is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def is_hub_id(name: str) -> bool:
    """``org/name`` or ``name`` that is not an existing path: what from_pretrained would fetch."""
    return bool(_HUB_ID.match(name)) and not os.path.exists(os.path.expanduser(name)) \
        and not name.endswith((".py", ".yaml", ".yml", ".json"))


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _check_hub(name: str, what: str, timeout: float = 5.0) -> None:
    """Fail in one line, at once, when hub id ``name`` is not in the local cache and the Hub
    cannot be used: offline mode, or no connection within ``timeout`` seconds. Otherwise
    transformers would retry for about a minute and end in a long traceback."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return  # cached: from_pretrained can load it without the network
    except Exception:  # noqa: BLE001 - an id the cache helper rejects: let from_pretrained say why
        return
    fix = (f"download it where the Hub is reachable (`hf download {name}`, then give that folder "
           f"or copy the cache) or give a local checkpoint folder")
    if _hub_offline():
        raise HubError(f"{what}: {name!r}: no such folder, and as a hub id it is not in the Hugging Face "
                       f"cache and HF_HUB_OFFLINE is set; {fix}")
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise HubError(f"{what}: {name!r}: no such folder, and as a hub id it is not in the Hugging Face "
                       f"cache and the Hub ({host}:{port}) cannot be reached ({e.strerror or e}); {fix}") from None


def _resolve_gguf(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with a ``.gguf`` name_or_path / tokenizer replaced by its cached safetensors folder
    (rlhf.models.gguf: converted on first use), so every loader reads an ordinary checkpoint."""
    from dataclasses import replace

    from rlhf.models.gguf import is_gguf, resolve

    if not (is_gguf(cfg.name_or_path) or is_gguf(cfg.tokenizer)):
        return cfg
    return replace(cfg, name_or_path=resolve(cfg.name_or_path),
                   tokenizer=None if cfg.tokenizer is None else resolve(cfg.tokenizer))


class ModelError(ValueError):
    """A local model folder that cannot be loaded (no config, no tokenizer, corrupt or missing
    weights, an unknown model type). Its message is one line naming the folder or file; the CLI
    prints it without a traceback."""


class ModelNotFound(ModelError, FileNotFoundError):
    """A model path that does not exist (or is a file): a ModelError that is also the
    FileNotFoundError callers may expect."""


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                    "spiece.model", "vocab.txt", "tiktoken.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


def _did_you_mean(path: str) -> str:
    """``; did you mean 'runs/tiny'?`` from the folders beside a mistyped path (or '')."""
    import difflib

    p = Path(os.path.expanduser(path))
    parent = p.parent if str(p.parent) else Path(".")
    try:
        names = [c.name for c in parent.iterdir() if c.is_dir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(p.name, names, n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {str(p.with_name(close[0]))!r}?"


def _check_folder(folder: Path, what: str, need: str) -> None:
    """A local folder has what ``need`` ("model" or "tokenizer") reads, else one line saying what
    is missing or broken, naming the file: transformers' own errors blame unrelated things (a
    missing tokenizer reads as 'install sentencepiece or tiktoken'; a corrupt weights file as a
    safetensors header error without the file name)."""
    config = folder / "config.json"
    try:
        settings = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
        if not isinstance(settings, dict):
            raise ValueError(f"got a {type(settings).__name__}")
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelError(f"{what}: {config}: not a valid JSON object ({' '.join(str(e).split())})") from None
    if any(folder.glob("*.gguf")):
        return  # a GGUF file holds its own config, tokenizer and weights: transformers reads it
    if need == "tokenizer":
        if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
            raise ModelError(f"{what}: {folder} has no tokenizer files (none of {', '.join(_TOKENIZER_FILES[:3])}, "
                             f"...); copy them from the model it was trained from, or set model.tokenizer "
                             f"to a folder that has them")
        return
    if not config.is_file():
        raise ModelError(f"{what}: {folder} has no config.json, so it is not a model checkpoint folder "
                         f"(expected one written by rlhf or save_pretrained)")
    model_type = settings.get("model_type")
    from transformers import CONFIG_MAPPING

    if not model_type:
        raise ModelError(f"{what}: {config} has no model_type")
    if model_type not in CONFIG_MAPPING and "auto_map" not in settings:  # auto_map: remote code decides
        import transformers
        raise ModelError(f"{what}: {config}: model_type {model_type!r} is not known to the installed "
                         f"transformers {transformers.__version__} (a newer release may add it; "
                         f"trust_remote_code is off)")
    files = [f for f in folder.iterdir() if f.is_file()]
    if not any(f.name.endswith(_WEIGHT_SUFFIXES) for f in files):
        raise ModelError(f"{what}: {folder} has no weights file (model.safetensors or similar)")
    for f in sorted(files):
        if f.suffix == ".safetensors":
            _check_safetensors(f, what)


def _check_safetensors(path: Path, what: str) -> None:
    """The header of a safetensors file parses and its tensors fit in the file (cheap: the
    header and the file size only; the data is not read)."""
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            if size < 8:
                raise ValueError(f"{size} bytes, shorter than a header")
            n = struct.unpack("<Q", f.read(8))[0]
            if 8 + n > size:
                raise ValueError(f"the header claims {n} bytes, the file has {size}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"truncated: the tensors need {8 + n + end} bytes, the file has {size}")
    except (ValueError, KeyError, TypeError, IndexError, struct.error) as e:
        raise ModelError(f"{what}: {path}: corrupt or truncated weights file ({e}); copy or download it "
                         f"again") from None


def _check_source(name_or_path: str, what: str, need: str = "model") -> None:
    """Fail early, naming the path, when something that is clearly a path does not exist, when
    a local folder lacks what ``need`` reads (:func:`_check_folder`), or when a hub id cannot be
    fetched (:func:`_check_hub`).

    A missing folder would otherwise be sent to the hub as a repo id and fail with an
    unrelated network error.
    """
    p = os.path.expanduser(name_or_path)
    first = name_or_path.split("/", 1)[0]
    # A path, not a hub id: it starts like one, has several parts, or its first part is a local
    # folder (runs/tinyy when runs/ exists).
    looks_like_path = (name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
                       or os.sep != "/" and os.sep in name_or_path
                       or "/" in name_or_path and bool(first) and os.path.isdir(first))
    if looks_like_path and not os.path.isdir(p):
        what_is = "a file, not a folder" if os.path.isfile(p) else "no such folder"
        raise ModelNotFound(f"{what}: {what_is}: {name_or_path!r} (expected a local checkpoint folder "
                                f"or a hub id such as 'org/name'){_did_you_mean(name_or_path)}")
    if os.path.isdir(p):
        _check_folder(Path(p), what, need)
    elif os.path.isfile(p):
        raise ModelNotFound(f"{what}: {name_or_path!r} is a file; expected a checkpoint folder or a hub id")
    elif is_hub_id(name_or_path):
        try:
            _check_hub(name_or_path, what)
        except HubError as e:
            hint = _did_you_mean(name_or_path)
            if not hint:
                raise
            # A near-miss of a local folder is a typo far more often than a hub id.
            raise HubError(f"{what}: no such folder {name_or_path!r}{hint} (as a hub id it cannot be loaded "
                           f"either: {str(e).split(': no such folder, and as a hub id ', 1)[-1]})") from None


def _pretrained_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """kwargs shared by every ``from_pretrained`` call; trust_remote_code is always explicit."""
    kwargs: dict[str, Any] = {
        "revision": cfg.revision,
        "dtype": _DTYPES[cfg.dtype],
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.attn_implementation not in (None, "auto"):  # auto: transformers picks sdpa, else eager
        kwargs["attn_implementation"] = cfg.attn_implementation
    # Prefer safetensors (no pickle, memory-mapped); a local folder holding only pickled
    # weights still loads, with a warning.
    path = Path(os.path.expanduser(cfg.name_or_path))
    if path.is_dir():
        if any(path.glob("*.safetensors")):
            kwargs["use_safetensors"] = True
        else:
            logger.warning("%s has no .safetensors weights; loading pickled weights", path)
    return kwargs


@contextlib.contextmanager
def _attn_errors(cfg: ModelConfig) -> Iterator[None]:
    """transformers' refusal of an attention kernel the architecture lacks, as one clear line."""
    try:
        yield
    except ValueError as e:
        if cfg.attn_implementation in (None, "auto") or "attention implementation" not in str(e):
            raise
        from rlhf.config import ConfigError

        raise ConfigError("model.attn_implementation",
                          f"{cfg.attn_implementation!r} is not supported by the architecture of "
                          f"{cfg.name_or_path} ({str(e).split('.')[0]}); use auto (sdpa where "
                          f"supported, else eager) or eager") from None


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total": n, "trainable": m}``; tied (shared) tensors are counted once."""
    params = list(model.parameters())  # nn.Module.parameters() already skips duplicates
    return {"total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad)}


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout probability in ``model`` to 0; returns how many places were changed.

    Architectures store dropout in three ways, so all three are cleared: ``nn.Dropout``
    modules (``p``), float attributes on modules that are passed to functional dropout or to
    SDPA (``self.attention_dropout`` in llama/gpt_neox attention), and config fields (read
    when modules are rebuilt, e.g. by peft or a copy made from the config).
    """
    changed = 0
    configs = [getattr(model, "config", None)]
    if configs[0] is not None and hasattr(configs[0], "get_text_config"):
        configs.append(configs[0].get_text_config())
    for config in {id(c): c for c in configs if c is not None}.values():
        for key, value in list(vars(config).items()):
            if _is_dropout_name(key) and isinstance(value, float) and value != 0.0:
                setattr(config, key, 0.0)
                changed += 1
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            if module.p != 0.0:
                module.p = 0.0
                changed += 1
            continue
        for key, value in list(vars(module).items()):
            if _is_dropout_name(key) and isinstance(value, float) and value != 0.0:
                setattr(module, key, 0.0)
                changed += 1
    return changed


def _is_dropout_name(key: str) -> bool:
    key = key.lower()
    return "dropout" in key or key.endswith("pdrop")


def _enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    # Non-reentrant checkpointing: works with frozen inputs (LoRA) and with autograd hooks;
    # the reentrant variant silently drops gradients when no checkpoint input requires grad.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def default_lora_targets(model: nn.Module) -> list[str]:
    """Names of the layers LoRA adapts when ``target_modules`` is null.

    Every ``nn.Linear`` and transformers ``Conv1D`` (GPT-2) except the output layer: the LM
    head of a causal LM (tied to the embeddings in many models) or the scalar head of a
    reward model (which peft trains in full instead). Returns leaf names (``q_proj``) when
    they pick out exactly these layers, else full dotted names.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = unwrap_model(model)
    if any(isinstance(m, BaseTunerLayer) for m in base.modules()):
        raise ValueError("default_lora_targets needs the model before adapters are added")
    excluded: set[int] = set()
    out_emb = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if out_emb is not None:
        excluded.add(id(out_emb))
    for name in _HEAD_NAMES:
        head = getattr(base, name, None)
        if isinstance(head, nn.Module):
            excluded.update(id(m) for m in head.modules())
    targets: list[str] = []
    others: list[str] = []
    for name, module in base.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)):
            (others if id(module) in excluded else targets).append(name)
    if not targets:
        raise ValueError(f"{type(base).__name__} has no linear layers for LoRA to adapt; "
                         f"set model.lora.target_modules explicitly")
    leaves = sorted({n.rsplit(".", 1)[-1] for n in targets})
    if not {n.rsplit(".", 1)[-1] for n in others} & set(leaves):
        return leaves
    return targets


def _apply_lora(model: PreTrainedModel, lora: LoraConfig, task_type: str) -> nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = list(lora.target_modules) if lora.target_modules is not None else default_lora_targets(model)
    # GPT-2's Conv1D stores weights as (in, out); peft needs to know to transpose B A.
    conv1d = any(isinstance(m, Conv1D) and any(n == t or n.endswith("." + t) for t in targets)
                 for n, m in model.named_modules())
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        fan_in_fan_out=conv1d,
        task_type=task_type,  # SEQ_CLS makes peft train the whole scalar head (modules_to_save)
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` alias; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, peft_cfg)


def _prepare(model: PreTrainedModel, cfg: ModelConfig, for_training: bool, task_type: str) -> nn.Module:
    """Steps 2-4 of the module docstring, shared by causal LMs and scalar models."""
    if cfg.disable_dropout:
        # Before LoRA, so that lora.dropout keeps the value the config asked for.
        disable_dropout(model)
    if not for_training:
        model.requires_grad_(False)
        return model.eval()
    if cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    if cfg.lora.enabled:
        model = _apply_lora(model, cfg.lora, task_type)
    return model.train()


# --------------------------------------------------------------------------- loaders


def load_tokenizer(cfg: ModelConfig, *, what: str = "model.name_or_path") -> PreTrainedTokenizerBase:
    """The tokenizer of ``cfg.tokenizer`` (or ``cfg.name_or_path``), with a pad token. ``what``
    names the setting that gave ``name_or_path`` in error messages (e.g. ``teacher``).

    Pad rule: a tokenizer without a pad token gets ``pad = eos`` (logged). This is safe in
    this library because attention and completion masks, never token ids, decide which
    positions are attended to, trained on, or scored (see :func:`score_last_token`). A
    tokenizer with neither pad nor eos is rejected. ``cfg.revision`` applies only when the
    tokenizer comes from ``name_or_path``.
    """
    cfg = _resolve_gguf(cfg)
    source = cfg.tokenizer_path
    _check_source(source, "model.tokenizer" if cfg.tokenizer else what, need="tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(
        source,
        revision=cfg.revision if cfg.tokenizer is None else None,
        trust_remote_code=cfg.trust_remote_code,
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {source!r} has neither a pad token nor an eos token; "
                             f"add a pad token to the tokenizer files")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer %s has no pad token: using eos %r (id %d) for padding; masks, "
                    "not token ids, mark the real tokens", source, tokenizer.eos_token,
                    tokenizer.eos_token_id)
    return tokenizer


def _refuse_scalar_checkpoint(name_or_path: str, what: str) -> None:
    """A local folder whose config.json says it holds only a classifier (a reward model or
    critic, ``...ForSequenceClassification``) is refused as a causal LM: it has no LM head, and
    transformers would start one at random (a load report, then a policy or teacher that
    predicts noise)."""
    config = Path(os.path.expanduser(name_or_path)) / "config.json"
    if not config.is_file():
        return
    try:
        archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, AttributeError):
        return  # _check_folder reports a broken config.json
    heads = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
    if archs and all(isinstance(a, str) and a.endswith(heads) for a in archs):
        raise ModelError(f"{what}: {name_or_path} is a {archs[0]} checkpoint (a reward model or critic), not a "
                         f"causal LM: it has no language-model head, which would start random; give a "
                         f"policy's folder (e.g. an SFT run's final/)")


def load_causal_lm(cfg: ModelConfig, *, for_training: bool = True, what: str = "model.name_or_path") -> nn.Module:
    """A causal LM (policy) from a local folder or hub id, prepared as ``cfg`` says.

    ``for_training=True``: train mode, gradient checkpointing and LoRA as configured (with
    LoRA a peft ``PeftModel`` is returned, only the adapters trainable). ``for_training=False``:
    eval mode, every parameter frozen, no checkpointing and no adapters (a LoRA run saves
    merged weights, see :func:`save_model`). Dropout is off in both when ``disable_dropout``.
    A reward-model or critic folder is refused (no LM head). ``what`` names the setting in
    error messages.
    """
    cfg = _resolve_gguf(cfg)
    _check_source(cfg.name_or_path, what)
    _refuse_scalar_checkpoint(cfg.name_or_path, what)
    with _attn_errors(cfg):
        model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **_pretrained_kwargs(cfg))
    return _prepare(model, cfg, for_training, task_type="CAUSAL_LM")


class ReferenceModel:
    """The frozen reference policy pi_ref, called like a model: ``ref(**inputs) -> outputs``.

    Calls run under ``torch.no_grad()`` in eval mode. Two ways to hold it, one interface:

    * ``adapters_disabled=True``: ``module`` is the LoRA policy itself and each call runs it
      inside peft's ``disable_adapter()``, i.e. with the base weights only. No second copy of
      the weights exists (``shares_policy_weights`` is True). The policy's train/eval flags
      are restored after the call.
    * ``adapters_disabled=False``: ``module`` is a separate frozen copy.

    Use :meth:`context` to run other code (e.g. :func:`score_tokens`, generation) on the
    reference: ``with ref.context() as m: ...``.
    """

    def __init__(self, module: nn.Module, *, adapters_disabled: bool):
        if adapters_disabled and not _is_peft(module):
            raise TypeError("adapters_disabled=True needs a peft PeftModel (the LoRA policy), "
                            f"got {type(module).__name__}")
        self.module: Any = module  # a transformers or peft model (their methods are called)
        self.adapters_disabled = adapters_disabled

    @property
    def shares_policy_weights(self) -> bool:
        return self.adapters_disabled

    @property
    def config(self):
        return unwrap_model(self.module).config

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @contextlib.contextmanager
    def context(self) -> Iterator[nn.Module]:
        """Yield the module set up as the reference: no grad, eval mode, adapters off."""
        modes = [(m, m.training) for m in self.module.modules()]
        adapters = self.module.disable_adapter() if self.adapters_disabled else contextlib.nullcontext()
        try:
            self.module.eval()
            with torch.no_grad(), adapters:
                yield self.module
        finally:
            for m, training in modes:
                m.training = training

    def __call__(self, **inputs: Any) -> Any:
        with self.context() as module:
            return module(**inputs)


def load_reference(cfg: ModelConfig, policy: nn.Module | None = None) -> ReferenceModel:
    """The reference policy for ``cfg`` (the policy's own config section).

    With ``cfg.lora.enabled`` the reference is ``policy`` (required, a LoRA ``PeftModel``)
    run with its adapters disabled: the base weights are exactly the reference weights,
    since only adapters train. Without LoRA it is a frozen copy of ``policy`` when given
    (so it equals the policy at the start of training), else loaded from ``cfg``.
    """
    if cfg.lora.enabled:
        if policy is None:
            raise ValueError("model.lora.enabled: the reference is the LoRA policy with its "
                             "adapters disabled, so load_reference needs policy=")
        if not _is_peft(policy):
            raise TypeError(f"model.lora.enabled but the policy is a {type(policy).__name__}, "
                            f"not a peft PeftModel; load it with load_causal_lm(cfg)")
        return ReferenceModel(policy, adapters_disabled=True)
    if policy is not None:
        if _is_peft(policy):
            raise TypeError("the policy has LoRA adapters but model.lora.enabled is false")
        module = copy.deepcopy(policy)
        module.requires_grad_(False)
        module.eval()
    else:
        module = load_causal_lm(cfg, for_training=False)
    return ReferenceModel(module, adapters_disabled=False)


def init_scalar_head(head: nn.Linear, generator: torch.Generator | None = None) -> None:
    """Draw the head weights from N(0, std = 1/sqrt(d_model + 1)), bias 0 (Ziegler et al. 2019).

    With unit-scale hidden states this makes the initial scores roughly unit-variance, the
    scale the Bradley-Terry loss and the PPO value loss are tuned for.
    """
    std = 1.0 / math.sqrt(head.in_features + 1)
    with torch.no_grad():
        # Sample in fp32 on the CPU and cast, so the draw depends on the seed only (not on
        # the head's dtype or device).
        w = torch.randn(head.weight.shape, generator=generator, dtype=torch.float32)
        head.weight.copy_(w * std)
        if head.bias is not None:
            head.bias.zero_()


def scalar_head(model: nn.Module) -> nn.Module:
    """The output layer of a sequence-classification (scalar) model (``score`` or ``classifier``)."""
    base = unwrap_model(model)
    for name in _HEAD_NAMES:
        head = getattr(base, name, None)
        if isinstance(head, nn.Module):
            return head
    raise AttributeError(f"{type(base).__name__} has no scalar head (looked for "
                         f"{', '.join(_HEAD_NAMES)})")


# A causal LM's output layer, which a scalar model built from it does not use.
_LM_HEADS = {"lm_head", "embed_out"}


_GENERIC_SCALAR: dict[type, type] = {}


def scalar_model_class(config: Any) -> Any:
    """The class that loads a scalar model for ``config``: ``AutoModelForSequenceClassification``
    where transformers has a sequence-classification class for the model type; else one built
    here from the type's own pieces: transformers' ``GenericForSequenceClassification`` (the
    trunk as ``AutoModel`` builds it, under the causal LM's ``base_model_prefix``, and a linear
    ``score`` head) on the type's ``PreTrainedModel`` base. Its checkpoint keys are the causal
    LM's trunk keys plus ``score.weight``, so it loads from a causal-LM checkpoint (the LM head
    dropped) and from a scalar model it saved (``architectures: [<Type>ForScalarHead]``).
    A configuration that is no causal LM raises ValueError saying so."""
    from transformers.modeling_layers import GenericForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    if type(config) in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        return AutoModelForSequenceClassification
    causal = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if causal is None:
        raise ValueError(f"model_type {getattr(config, 'model_type', type(config).__name__)!r} is neither a "
                         "causal LM nor a sequence-classification model in this transformers version: a "
                         "reward model or critic needs a causal-LM checkpoint (a folder with a "
                         "*ForCausalLM config)")
    if causal not in _GENERIC_SCALAR:
        base: Any = next(c for c in causal.__mro__[1:] if isinstance(c, type)
                         and issubclass(c, PreTrainedModel) and c is not PreTrainedModel)
        name = causal.__name__.removesuffix("ForCausalLM") + "ForScalarHead"
        _GENERIC_SCALAR[causal] = type(name, (GenericForSequenceClassification, base), {
            # transformers' own module: its loader treats a class from any other module as custom
            # code and skips the trunk's _init_weights, leaving non-persistent buffers (Falcon-H1's
            # mup_vector) as torch.empty garbage (values ~3e26 here; the RM's first update non-finite).
            "__module__": causal.__module__, "base_model_prefix": base.base_model_prefix,
            "__doc__": f"{base.__name__}'s trunk and a scalar head (no transformers class for it)."})
    return _GENERIC_SCALAR[causal]


def load_scalar_model(
    cfg: ModelConfig,
    *,
    init_head: bool | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    for_training: bool = True,
) -> nn.Module:
    """A reward model or critic: ``AutoModelForSequenceClassification`` with ``num_labels=1``
    (:func:`scalar_model_class`: a generic trunk + head for types without such a class).

    Built from any checkpoint of a causal LM (trunk weights kept, LM head dropped) or from a
    saved scalar model. ``init_head``: None (default) initialises the head with
    :func:`init_scalar_head` only when the checkpoint has none, so a trained reward model
    keeps its head (and a critic can start from a reward model); True always re-initialises
    it; False never does. ``config.pad_token_id`` is set to the tokenizer's pad id
    (``tokenizer`` or :func:`load_tokenizer`), which transformers' own pooling needs; prefer
    :func:`score_last_token`, which uses the attention mask. Dropout, checkpointing and LoRA
    as in :func:`load_causal_lm`; with LoRA the whole head is trained too.
    """
    cfg = _resolve_gguf(cfg)
    _check_source(cfg.name_or_path, "model.name_or_path")
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg)
    # transformers prints a LOAD REPORT table whenever keys differ; building a scalar model from
    # a causal LM always drops the LM head and adds a new scalar head, which is expected, so the
    # report is silenced here and only what is *not* expected is reported below.
    report_log = logging.getLogger("transformers.modeling_utils")  # where from_pretrained logs it
    level = report_log.level
    report_log.setLevel(logging.ERROR)
    try:
        with _attn_errors(cfg):
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                                trust_remote_code=cfg.trust_remote_code)
            model, info = scalar_model_class(config).from_pretrained(
                cfg.name_or_path, num_labels=1, output_loading_info=True, **_pretrained_kwargs(cfg))
    finally:
        report_log.setLevel(level)
    head = scalar_head(model)
    head_names = {n for n, m in model.named_modules() if m is head}
    head_missing = any(k.rsplit(".", 1)[0] in head_names for k in info.get("missing_keys", ()))
    odd_missing = [k for k in info.get("missing_keys", ()) if k.rsplit(".", 1)[0] not in head_names]
    odd_unexpected = [k for k in info.get("unexpected_keys", ()) if k.split(".", 1)[0] not in _LM_HEADS]
    if odd_missing or odd_unexpected:
        logger.warning("%s: weights not in the checkpoint (left at their initialisation): %s; weights in the "
                       "checkpoint the scalar model does not use: %s", cfg.name_or_path,
                       ", ".join(odd_missing[:8]) or "none", ", ".join(odd_unexpected[:8]) or "none")
    if init_head or (init_head is None and head_missing):
        init_scalar_head(head)  # type: ignore[arg-type]  # scalar_head finds a Linear in these models
    elif head_missing:
        logger.warning("%s has no scalar head weights and init_head=False: the head keeps "
                       "transformers' default initialisation", cfg.name_or_path)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer for {cfg.name_or_path!r} has no pad token id")
    model.config.pad_token_id = tokenizer.pad_token_id
    return _prepare(model, cfg, for_training, task_type="SEQ_CLS")


# --------------------------------------------------------------------------- sequence limits


def position_limit(cfg: ModelConfig) -> int | None:
    """The most positions the checkpoint's model has (``max_position_embeddings``, GPT-2's
    ``n_positions``), read from its config.json only; None for models without a table or rotary
    range (ALiBi: BLOOM, MPT)."""
    from transformers import AutoConfig

    cfg = _resolve_gguf(cfg)
    _check_source(cfg.name_or_path, "model.name_or_path")
    config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                        trust_remote_code=cfg.trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def check_sequence_limit(cfg: ModelConfig, length: int, key: str) -> None:
    """Stop before any work when sequences of ``length`` tokens would pass the model's position
    limit: a learned position table (GPT-2, OPT) fails with an IndexError deep inside, a rotary
    model (Llama...) runs on silently outside the positions it was trained for. ``key`` names the
    config field to lower."""
    limit = position_limit(cfg)
    if limit is not None and length > limit:
        from rlhf.config import ConfigError

        raise ConfigError(key, f"{length} tokens is above the position limit of {cfg.name_or_path}: "
                               f"{limit} (max_position_embeddings); lower it to at most {limit}")


# --------------------------------------------------------------------------- scoring


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens: (B, T) -> (B, T), pads get 0 (left) or repeat.

    Without them transformers numbers positions 0..T-1 whatever the padding, so a left-padded
    sequence is seen at shifted positions (GPT-2's learned position embeddings then give
    different hidden states than for the same sequence right-padded).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def score_tokens(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scalar head applied at every position: (B, T) ids -> (B, T) float (a critic's values).

    Runs the trunk (with LoRA adapters if any are active) and the head on the final hidden
    states. ``position_ids`` default to :func:`positions_from_mask`, so left and right padding
    give the same numbers. Packed rows (rlhf.data.collate.PackedLayout) pass
    ``attention_mask=None`` and their restarting ``position_ids``.
    """
    base = unwrap_model(model)
    trunk = getattr(base, base.base_model_prefix)
    if position_ids is None:
        if attention_mask is None:
            raise ValueError("score_tokens needs attention_mask or position_ids")
        position_ids = positions_from_mask(attention_mask)
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).last_hidden_state  # (B, T, H)
    return scalar_head(model)(hidden).squeeze(-1)  # (B, T)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with attention_mask == 1 in each row: (B, T) -> (B,)."""
    from rlhf.masking import last_index

    idx = last_index(attention_mask)
    if bool((idx < 0).any()):
        rows = (idx < 0).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask rows {rows} have no real token to score")
    return idx


def score_last_token(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """A reward model's ``scores``: the head at the last real token of each row, (B, T) -> (B,).

    "Last real" means the last position with ``attention_mask == 1``. transformers'
    ``ForSequenceClassification.forward`` instead takes the last token whose id differs from
    ``pad_token_id``, which is wrong when pad == eos and a sequence ends with eos, and it
    numbers positions from 0 regardless of left padding; this function avoids both.
    """
    values = score_tokens(model, input_ids, attention_mask, position_ids)  # (B, T)
    idx = last_token_index(attention_mask)  # (B,)
    return values.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def packed_last_token_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """:func:`score_last_token` computed on the batch's packed layout (sequences back to back,
    no padding: :class:`rlhf.data.collate.PackedLayout`), (B, T) -> (B,). Equal up to float
    rounding, without compute on padding; needs an architecture that derives the block-diagonal
    mask from restarting position ids (rlhf/data/collate.py)."""
    from rlhf.data.collate import PackedLayout

    layout = PackedLayout(attention_mask)
    base = unwrap_model(model)
    trunk = getattr(base, base.base_model_prefix)
    ids = layout.pack_ids(input_ids)  # (R, W)
    hidden = trunk(input_ids=ids, position_ids=layout.position_ids, use_cache=False).last_hidden_state  # (R, W, H)
    last = hidden.reshape(-1, hidden.shape[-1])[layout.last]  # (B, H)
    return scalar_head(model)(last).squeeze(-1)  # (B,)


# --------------------------------------------------------------------------- saving


def _merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a LoRA ``PeftModel`` with adapters merged, built out of place.

    W' = W + (alpha/r) B A for every adapted layer, computed into new tensors: the training
    model is not touched (merging in place and unmerging would not restore bf16 weights
    exactly). Keys are those of the plain transformers model.
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()  # type: ignore[operator]  # a PeftModel (nn.Module's getattr is typed)
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    d = module.get_delta_weight(adapter)
                    deltas[name] = deltas[name] + d if name in deltas else d
    out: dict[str, torch.Tensor] = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key or ".original_module." in key:
            continue  # adapter factors; the head's pre-training copy (modules_to_save)
        if ".modules_to_save." in key:  # score.modules_to_save.default.weight -> score.weight
            owner, rest = key.split(".modules_to_save.", 1)
            key = f"{owner}.{rest.split('.', 1)[1]}"
        elif ".base_layer." in key:
            owner, param = key.split(".base_layer.", 1)
            key = f"{owner}.{param}"
            if param == "weight" and owner in deltas:
                tensor = tensor + deltas[owner].to(tensor.dtype)
        out[key] = tensor.detach()
    return out


def save_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """Write weights (safetensors), config and tokenizer so that ``from_pretrained(out_dir)`` loads them.

    A LoRA ``PeftModel`` is saved as merged weights (a plain checkpoint of its class, e.g.
    ``AutoModelForCausalLM`` or ``...ForSequenceClassification``) plus the adapter alone in
    ``out_dir/adapter/``; the training model is left unchanged. Everything is written to a
    temporary sibling folder and renamed into place when complete, so a crash never leaves a
    half-written checkpoint, and an existing non-empty ``out_dir`` is refused unless
    ``overwrite=True`` (house rule 9). Returns ``Path(out_dir)``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; refusing to overwrite a "
                              f"checkpoint (pass overwrite=True or choose another folder)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        try:
            if _is_peft(model):
                # peft / transformers methods: nn.Module.__getattr__ is typed Tensor | Module.
                model.get_base_model().save_pretrained(  # type: ignore[operator]
                    tmp, state_dict=_merged_state_dict(model))
                model.save_pretrained(tmp / "adapter")  # type: ignore[operator]
            else:
                model.save_pretrained(tmp)  # type: ignore[operator]
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        except Exception as e:  # a full disk inside safetensors: an OSError naming the folder
            from rlhf.train.run import as_os_error
            err = as_os_error(e, out_dir)
            if err is None:
                raise
            raise err from None
        from rlhf.train.run import normalize_modes
        normalize_modes(tmp)  # weights as readable as the config beside them (safetensors writes 0600)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir
