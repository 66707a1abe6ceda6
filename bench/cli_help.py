"""Wall time of ``rlhf --help`` and ``rlhf <stage> --help`` in fresh processes; prints JSON.

    python bench/cli_help.py [--repeats 5]
    python bench/cli_help.py --smoke        # one run of `rlhf --help` and `rlhf sft --help`: no figure

Each command runs in a new interpreter (what a user's shell does), ``repeats`` times; the JSON
gives the median and the min in seconds, and the machine's load average for context (a busy
machine makes imports slower). The issue's target: every stage's help under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def time_command(args: list[str], repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rlhf.cli", *args], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stages", default="sft,rm,dpo,ppo", help="comma-separated stages to time")
    p.add_argument("--smoke", action="store_true", help="one repeat, one stage: the bench still runs (no figure)")
    p.add_argument("--threads", type=int, default=None, help="ignored (the smoke harness passes it to every bench)")
    a = p.parse_args()
    if a.smoke:
        a.repeats, a.stages = 1, "sft"
    results = {"rlhf --help": time_command(["--help"], a.repeats)}
    for stage in a.stages.split(","):
        results[f"rlhf {stage} --help"] = time_command([stage, "--help"], a.repeats)
    results["rlhf recipes"] = time_command(["recipes"], a.repeats)
    smoke = {"smoke": True} if a.smoke else {}
    print(json.dumps({"bench": "cli_help", **smoke, "repeats": a.repeats, "loadavg_1m": round(os.getloadavg()[0], 2),
                      "python": sys.version.split()[0], "results": results}, indent=1))


if __name__ == "__main__":
    main()
