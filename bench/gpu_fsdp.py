"""GPU check of FSDP2 sharding, prepared for a machine with GPUs (nothing depends on it).

    .venv/bin/python bench/gpu_fsdp.py [--size 45m] [--steps 4] [--batch 16] [--work DIR]

On the GPUs it finds, with a random-weight Qwen2-shaped model (bench/scaling.py's sizes) and
the built-in instruction data, SFT in fp32:

1. one GPU, one process, ``train.distributed=ddp`` (the reference);
2. ``torchrun --nproc_per_node 2`` with ``train.distributed=fsdp`` (NCCL) when two GPUs are
   present, else one process with ``fsdp`` on one GPU;
3. the same sharded run with ``train.fsdp.param_dtype=bf16``.

Prints one JSON object: per run the step time (median of metrics.jsonl's elapsed_s differences
after step 1), peak GPU memory per process (torch.cuda.max_memory_allocated), the losses, and
the largest loss and final-weight differences of each run from run 1. Run 2 should match run 1
to float rounding (GPU reductions are not bit-deterministic: expect ~1e-6 relative, not 0);
run 3 differs by bf16 rounding. Without a CUDA device it prints {"skipped": ...} and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(argv: list[str]) -> int:
    """One CLI stage in this process (one rank of a torchrun launch); then its peak GPU memory."""
    import torch

    from rlhf.cli import main

    rc = main(argv)
    out = next(Path(a.split("=", 1)[1]) for a in argv if a.startswith("output_dir="))
    rank = int(os.environ.get("RANK", "0"))
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    (out / f"gpu_mem_rank{rank}.json").write_text(json.dumps({"max_allocated_gb": peak}))
    return rc


def _summary(out: Path) -> dict:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    el = [r["elapsed_s"] for r in rows]
    mem = [json.loads(p.read_text())["max_allocated_gb"] for p in sorted(out.glob("gpu_mem_rank*.json"))]
    step = statistics.median(b - a for a, b in zip(el, el[1:], strict=False)) if len(el) > 1 else None
    return {"step_s": None if step is None else round(step, 4),
            "losses": [r["loss"] for r in rows], "peak_gpu_gb_per_process": [round(m, 3) for m in mem]}


def _diff(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    la = [json.loads(x)["loss"] for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (b / "metrics.jsonl").read_text().splitlines()]
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    return {"max_loss_diff": max(abs(x - y) for x, y in zip(la, lb, strict=True)),
            "max_weight_diff": max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="45m", help="a size of bench/scaling.py (1m, 8m, 45m, 0.5b)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    sys.path.insert(0, str(ROOT))
    from bench.scaling import _data, _model

    n_gpu = torch.cuda.device_count()
    work = a.work or Path(tempfile.mkdtemp(prefix="rlhf-gpu-fsdp-"))
    work.mkdir(parents=True, exist_ok=True)
    data = _data(work)
    model = _model(a.size, work, data["texts"])
    common = [f"model.name_or_path={model}", "model.dtype=fp32", f"data.train={data['sft']}", "data.chat_template=none",
              "data.max_length=128", f"train.batch_size={a.batch}", f"train.max_steps={a.steps}", "train.lr=1e-4",
              "train.progress=false", "train.save_model_in_checkpoints=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "4"}
    nproc = 2 if n_gpu >= 2 else 1
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(nproc)]
    runs = {
        "one_gpu_ddp": ([sys.executable, __file__, "--child", "sft"], ["train.distributed=ddp"],
                        {"CUDA_VISIBLE_DEVICES": "0"}),
        f"fsdp_x{nproc}": (torchrun + [__file__, "--child", "sft"], ["train.distributed=fsdp"], {}),
        f"fsdp_x{nproc}_bf16_params": (torchrun + [__file__, "--child", "sft"],
                                       ["train.distributed=fsdp", "train.fsdp.param_dtype=bf16"], {}),
    }
    result: dict = {"gpus": n_gpu, "device": torch.cuda.get_device_name(0), "size": a.size, "torch": torch.__version__,
                    "runs": {}}
    for name, (cmd, extra, env_extra) in runs.items():
        out = work / name
        p = subprocess.run(cmd + [f"output_dir={out}", *common, *extra], env={**env, **env_extra},
                           capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            result["runs"][name] = {"error": p.stderr[-2000:]}
            continue
        result["runs"][name] = _summary(out)
        if name != "one_gpu_ddp" and "error" not in result["runs"]["one_gpu_ddp"]:
            result["runs"][name]["vs_one_gpu"] = _diff(work / "one_gpu_ddp", out)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
