"""Time and memory of a shipped recipe's training step, with a random-weight model of the real
dimensions (rlhf/models/shapes.py: same architecture, layer count, widths and vocabulary size as
the recipe's hub model), on this machine; prints JSON.

    python bench/recipe_step.py --recipe sft/qwen2.5-0.5b-lora-cpu [--micro-batches 1] [--threads 2]
    python bench/recipe_step.py --smoke     # the recipe on a shrunk stand-in, 64 tokens: no figure

It runs the recipe as written (LoRA, dtype, gradient checkpointing, max_length, chat template)
but for ``--micro-batches`` forward/backward passes of full-length sequences (random words, so
every sequence fills max_length), from a local file instead of the hub dataset. A full optimizer
step of the recipe is ``grad_accum`` micro-batches: ``step_s_full`` extrapolates linearly.
Peak memory is the process's peak RSS (CPU) or torch's peak allocation (GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="sft/qwen2.5-0.5b-lora-cpu")
    p.add_argument("--micro-batches", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true",
                   help="a shrunk stand-in (hidden 64, 2 layers) and max_length 64: the bench still runs, no figure")
    a = p.parse_args()
    import torch
    import yaml

    from rlhf.cli import STAGES
    from rlhf.config import load_config
    from rlhf.configs import recipe_path
    from rlhf.models.shapes import stand_in

    torch.set_num_threads(a.threads)
    folder, name = a.recipe.split("/")
    spec = yaml.safe_load(recipe_path(folder, name).read_text())
    stage = STAGES[folder.replace("_", "-")]
    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    long = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        model_id = spec["model"]["name_or_path"]
        t0 = time.perf_counter()
        model_dir = stand_in(model_id, Path(tmp) / "model", [long(200) for _ in range(50)], shrink=a.smoke,
                             max_position_embeddings=4096)
        if a.smoke:
            spec["data"]["max_length"] = 64
        build_s = time.perf_counter() - t0
        micro = spec["train"]["batch_size"] // spec["train"].get("grad_accum", 1)
        n = micro * a.micro_batches
        # Two optimizer steps: the time of the second (elapsed_s difference) excludes loading.
        def chat() -> list[dict[str, str]]:
            return [{"role": "user", "content": long(100)}, {"role": "assistant", "content": long(2000)}]

        def pair() -> dict[str, list[dict[str, str]]]:  # chosen and rejected answer the same user turn
            user = {"role": "user", "content": long(100)}
            return {"chosen": [user, {"role": "assistant", "content": long(2000)}],
                    "rejected": [user, {"role": "assistant", "content": long(2000)}]}
        # SFT trains on chats; the preference stages (rm, dpo) on chosen/rejected chats. (The stage
        # decides, not data.format: the recipes say "auto" there.)
        rows = 2 * ([{"messages": chat()} for _ in range(n)] if folder == "sft"
                    else [pair() for _ in range(n)])
        data = Path(tmp) / "data.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        body = json.loads(json.dumps(spec))
        body["model"]["name_or_path"] = str(model_dir)
        body["data"].update(train=str(data), eval_split=None, eval=None, max_samples=None,
                            completion_truncation="right")
        body["train"].update(batch_size=n, grad_accum=a.micro_batches, max_steps=2, save_every=None, log_every=1,
                             eval_every=None, progress=False, save_model_in_checkpoints=False)
        body["output_dir"] = str(Path(tmp) / "run")
        cfg = load_config(stage.load(stage.config), None, [], base=body)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the run's own lines; stdout is the JSON
            stage.load(stage.run)(cfg)
        run_s = time.perf_counter() - t0
        metrics = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in metrics if "loss" in m]
    step_s = logged[1]["elapsed_s"] - logged[0]["elapsed_s"]
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    smoke = {"smoke": True} if a.smoke else {}
    out = {"bench": "recipe_step", **smoke, "recipe": a.recipe, "model_shape_of": model_id, "weights": "random",
           "device": "cpu", "threads": a.threads, "loadavg_1m": round(os.getloadavg()[0], 2),
           "micro_batch_sequences": micro, "max_length": spec["data"]["max_length"],
           "micro_batches_timed": a.micro_batches, "grad_accum_in_recipe": spec["train"].get("grad_accum", 1),
           "run_wall_s_incl_load": round(run_s, 1), "step_s_timed": round(step_s, 3),
           "peak_rss_gb": round(peak_rss_gb, 2), "build_stand_in_s": round(build_s, 1),
           "python": sys.version.split()[0], "torch": torch.__version__}
    out["step_s_full_estimate"] = round(step_s / a.micro_batches * out["grad_accum_in_recipe"], 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
