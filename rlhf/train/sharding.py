"""Parameter sharding with torch FSDP2 (``train.distributed: fsdp``), beside the trainer.

A recipe reads the same under data parallelism and under sharding: the Trainer calls this
module where the two differ, and recipes only say where a model runs forward passes outside
the training step (:meth:`rlhf.train.trainer.Trainer.gathered`).

* **Wrapping** (:func:`shard`). ``fully_shard`` on every decoder layer (the classes a
  transformers model names in ``_no_split_modules``), then on each other module that holds
  parameters (embeddings, final norm, heads; tied ones together), so that any part a recipe
  calls by itself (a trunk without its head, PPO's policy inside its container) gathers its
  own weights, then on the root. Each process keeps 1/W of every parameter (dim-0 shards, DTensors), of its gradient
  and of the AdamW state built over them; a unit's parameters are all-gathered for its forward
  and again for its backward (unless ``fsdp.reshard_after_forward`` is false), and gradients
  are reduce-scattered, averaged over processes as DDP does, so the trainer's loss scaling
  (loss x W, see trainer.accumulate) is the same for both.
* **Forward passes outside the step** (:func:`gathered`): sampling, evaluation and scoring run
  a different number of forward passes on each process (each has its own share of the data, and
  generation stops when its own sequences end). Per-layer all-gathers would then wait for each
  other forever, so these passes run with every unit gathered once beforehand (one collective
  per unit, entered by all processes together) and released afterwards: the full model lives on
  every process for the duration, which is what generation with FSDP costs elsewhere too.
* **Checkpoints** (:func:`save_sharded`, :func:`load_sharded`): ``torch.distributed.checkpoint``
  (DCP) writes each process's shards of the trainable parameters and of the optimizer state
  into ``checkpoint-<step>/sharded/`` (one file per process + ``.metadata``, fsynced). DCP
  stores global shapes and offsets, so a checkpoint loads on any number of processes
  (resharding on load).
* **Whole weights** (:func:`full_weights`): the exact full tensors (all-gathered from the
  shards in their own dtype, no mixed-precision cast) are put on the modules for the duration,
  so the ordinary ``save_model`` writes ``final/`` as a safetensors folder that
  ``from_pretrained`` loads.

One process started without torchrun gets a process group of one (:func:`ensure_process_group`),
so the same code path runs, and is tested, without a launcher.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rlhf.train.config import FSDPConfig

__all__ = ["shard", "is_sharded", "gathered", "full_weights", "no_grad_sync", "grad_norm_and_clip",
           "save_sharded", "load_sharded", "decoder_layers", "ensure_process_group", "SHARDED_DIR"]

SHARDED_DIR = "sharded"  # inside checkpoint-<step>/: DCP's files
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def ensure_process_group(device: torch.device) -> None:
    """Join a process group of one when no launcher started one, so that FSDP2 and DCP (which
    need a group) run the same code in a single process."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    # modules() order is the same on every process: collectives entered per module stay matched.
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: nn.Module) -> bool:
    return bool(_fsdp_modules(model))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of every transformers model inside ``model`` (e.g. LlamaDecoderLayer),
    found by the class names the models list in ``_no_split_modules``."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def _outer_units(model: nn.Module, layers: list[nn.Module]) -> list[list[nn.Module]]:
    """Every module outside the decoder layers that holds parameters of its own (embeddings,
    final norm, LM or scalar head, a value head), one unit each, except modules sharing a
    parameter (tied embedding and head), which form one unit together as FSDP2 requires.

    Small units because recipes call parts of a model directly: the trunk without its head
    (reward and value scores), the head on the trunk's output, the policy inside PPO's
    container. Each called module must gather its own parameters in its own forward hook."""
    inside = {id(m) for layer in layers for m in layer.modules()}
    owners = [m for m in model.modules()
              if m is not model and id(m) not in inside and next(m.parameters(recurse=False), None) is not None]
    units: list[list[nn.Module]] = []
    unit_of_param: dict[int, list[nn.Module]] = {}
    for m in owners:
        shared = [unit_of_param[id(p)] for p in m.parameters(recurse=False) if id(p) in unit_of_param]
        unit = shared[0] if shared else []
        if not shared:
            units.append(unit)
        unit.append(m)
        for p in m.parameters(recurse=False):
            unit_of_param[id(p)] = unit
    return units


def mixed_precision(cfg: FSDPConfig) -> Any:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=_DTYPES.get(cfg.param_dtype), reduce_dtype=_DTYPES.get(cfg.reduce_dtype))


def shard(model: nn.Module, cfg: FSDPConfig, device: torch.device) -> nn.Module:
    """Apply FSDP2 to ``model`` in place (layers, whole models, root) and return it.

    Build the optimizer *after* this call: it must hold the sharded parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    ensure_process_group(device)
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"train.distributed=fsdp: found no decoder layers to shard in {type(model).__name__} "
                         f"(no transformers model with _no_split_modules inside it)")
    model.to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kw = {"mesh": mesh, "mp_policy": mixed_precision(cfg), "reshard_after_forward": cfg.reshard_after_forward}
    for layer in layers:
        fully_shard(layer, **kw)
    for unit in _outer_units(model, layers):
        fully_shard(unit if len(unit) > 1 else unit[0], **kw)
    fully_shard(model, **kw)
    # Make ``model`` the root now. FSDP2 otherwise picks as root the first unit whose forward
    # runs, and recipes call parts directly (a reward model's trunk, never its own forward).
    model._get_fsdp_state()._lazy_init()  # type: ignore[operator]
    return model


@contextlib.contextmanager
def no_grad_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally (no reduce-scatter) inside the block: FSDP2's ``no_sync``."""
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]


def grad_norm_and_clip(params: Iterable[nn.Parameter], max_norm: float | None) -> float:
    """The global L2 norm of the gradients over all shards and processes; clip to ``max_norm``
    (same rule as torch.nn.utils.clip_grad_norm_, which handles DTensor gradients: the norm
    of each process's shards is all-reduced)."""
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.grad is not None]
    if max_norm is not None:
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        total = torch.nn.utils.get_total_norm([p.grad for p in params])  # type: ignore[misc]  # None filtered above
    if isinstance(total, DTensor):
        total = total.full_tensor()
    return float(total)


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Every FSDP unit of ``model`` gathered for the block: forward passes inside it (any number,
    different on each process) run without collectives. All processes must enter and leave it
    together. A no-op for a model that is not sharded, and for units already gathered by an
    enclosing block (which releases them)."""
    mods = [m for m in _fsdp_modules(model) if not getattr(m, "_rlhf_gathered", False)]
    if not mods:
        yield
        return
    keep = []
    for m in mods:
        m._rlhf_gathered = True  # type: ignore[assignment]  # a plain flag (nn.Module types attributes as Tensor | Module)
        group = m._get_fsdp_state()._fsdp_param_group  # type: ignore[operator]
        keep.append(group._reshard_after_forward if group is not None else False)
        # Keep the gathered weights through each forward's end instead of freeing them.
        m.set_reshard_after_forward(False, recurse=False)  # type: ignore[operator]
        m.unshard()  # type: ignore[operator]
    try:
        yield
    finally:
        for m, k in zip(mods, keep, strict=True):
            m._rlhf_gathered = False  # type: ignore[assignment]  # as above
            m.reshard()  # type: ignore[operator]
            m.set_reshard_after_forward(k, recurse=False)  # type: ignore[operator]


@contextlib.contextmanager
def full_weights(model: nn.Module) -> Iterator[None]:
    """The exact full parameters (gathered from the shards, in the sharded copy's own dtype) set
    on the modules for the block, e.g. to save them with ``save_pretrained``. All processes must
    enter together. Run no forward pass inside: FSDP's hooks would swap the shards back."""
    mods = _fsdp_modules(model)
    groups = [g for m in mods if (g := m._get_fsdp_state()._fsdp_param_group) is not None]  # type: ignore[operator]
    params = [fp for g in groups for fp in g.fsdp_params]
    for fp in params:
        full = fp.sharded_param.full_tensor()  # an all-gather of this parameter's shards
        fp._setattr_on_modules(nn.Parameter(full, requires_grad=fp.sharded_param.requires_grad))
    try:
        yield
    finally:
        # The groups never left their sharded state, so the state-dict hooks stayed no-ops;
        # put the sharded parameters back where the full ones were.
        for fp in params:
            fp._setattr_on_modules(fp.sharded_param)


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Trainable parameters only, as in a data-parallel checkpoint: frozen weights (LoRA's base
    # model) come back from the model's source.
    return StateDictOptions(ignore_frozen_params=True)


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every process writes its shards of the trainable parameters and the optimizer state into
    ``folder/sharded/`` (DCP, files fsynced). Collective: all processes call it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_options())
    writer = dcp.FileSystemWriter(str(folder / SHARDED_DIR), sync_files=True)
    dcp.save({"model": msd, "optimizer": osd}, storage_writer=writer)


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Load ``folder/sharded/`` into the sharded model and optimizer, whatever the number of
    processes that wrote it (DCP reads the slices this process's shards cover)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_options())
    state: dict[str, Any] = {"model": msd, "optimizer": osd}
    dcp.load(state, checkpoint_id=str(folder / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=_options())


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX: the directory entry is data too)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
