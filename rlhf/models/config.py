"""Config sections for loading models: which checkpoint, which dtype, LoRA or full fine-tuning.

Every stage that holds a model (policy, reference, reward model, critic) has a ``ModelConfig``
section; the loaders in :mod:`rlhf.models.load` read nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.config import ConfigError, opt

__all__ = ["LoraConfig", "ModelConfig"]


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (Hu et al. 2021, "LoRA"): W x + (alpha / r) * B A x, with B = 0 at start."""

    enabled: bool = opt(False, "train low-rank adapters instead of all weights (the frozen base "
                               "doubles as the reference policy, so no second copy is loaded)")
    r: int = opt(8, "adapter rank r (A is r x in, B is out x r)", gt=0)
    alpha: float = opt(16.0, "adapter scale numerator: the update is multiplied by alpha / r", gt=0)
    dropout: float = opt(0.0, "dropout on the adapter input (not affected by model.disable_dropout)",
                         ge=0.0, lt=1.0)
    target_modules: list[str] | None = opt(
        None, "names (or name suffixes) of the linear layers to adapt; null = every linear layer "
              "except the output head (LM head or scalar score head)")

    def validate(self) -> None:
        if self.target_modules is not None:
            if len(self.target_modules) == 0:
                raise ConfigError("target_modules", "must name at least one layer, or be null for "
                                                    "all linear layers (got an empty list)")
            if any(not isinstance(m, str) or not m.strip() for m in self.target_modules):
                raise ConfigError("target_modules", f"must be non-empty layer names "
                                                    f"(got {self.target_modules!r})")


@dataclass(frozen=True)
class ModelConfig:
    """Where a model comes from and how it is prepared for training."""

    name_or_path: str = opt("", "local checkpoint folder, .gguf file (dequantized once into a "
                                    "cached safetensors folder) or Hugging Face Hub id (org/name)")
    tokenizer: str | None = opt(None, "tokenizer folder, .gguf file or hub id; null = same as name_or_path")
    revision: str | None = opt(None, "hub branch, tag or commit to pin (ignored for local folders)")
    dtype: Literal["fp32", "bf16"] = opt("fp32", "parameter dtype: fp32 or bf16")
    trust_remote_code: bool = opt(False, "run Python code shipped with the checkpoint (a security "
                                         "risk: only for checkpoints you trust)")
    attn_implementation: Literal["auto", "sdpa", "eager"] | None = opt(
        "auto", "attention kernel: auto = sdpa (fused) where the architecture supports it, else eager "
                "(transformers' choice; e.g. gemma2, bloom); sdpa; eager (reference); null = auto")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass to save "
                                              "memory (non-reentrant torch.utils.checkpoint)")
    disable_dropout: bool = opt(True, "set every dropout probability in the model to 0, so that "
                                      "log-probs do not depend on train/eval mode (standard in RLHF)")
    lora: LoraConfig = opt(factory=LoraConfig, help="low-rank adapters (LoRA) via peft")

    def validate(self) -> None:
        if not self.name_or_path.strip():
            raise ConfigError("name_or_path", "must name a local checkpoint folder or a hub id "
                                              "such as 'Qwen/Qwen2.5-0.5B' (got an empty string)")

    @property
    def tokenizer_path(self) -> str:
        """Where the tokenizer is loaded from (``tokenizer`` or else ``name_or_path``)."""
        return self.tokenizer or self.name_or_path
