"""Time the demo: ``make demo`` (``rlhf quickstart``) and ``rlhf quickstart --fast``, each in a
fresh folder, into bench/results/demo_time.json with the date, the CPU, the command and the commit.

    .venv/bin/python bench/demo_time.py                 # both; refuses on a busy machine
    .venv/bin/python bench/demo_time.py --only demo_fast
    .venv/bin/python bench/figures.py                   # then rewrite the figures quoted in the docs

A timing taken while other work runs is not a figure: the script refuses when the 1-minute load
average exceeds a quarter of the CPUs (``--force`` records it anyway, with the load beside it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "demo_time.json"
RUNS = {"demo": ["quickstart"], "demo_fast": ["quickstart", "--fast"]}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{os.cpu_count()}-core {model or platform.processor() or platform.machine()}"


def commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(RUNS), action="append", help="time only this one (repeatable)")
    p.add_argument("--force", action="store_true", help="record even on a busy machine (the load is recorded)")
    a = p.parse_args(argv)
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) / 4 and not a.force:
        print(f"demo_time: the machine is busy (load {load:.1f} on {os.cpu_count()} CPUs); a timing now is not a "
              f"figure (--force records it anyway)", file=sys.stderr)
        return 1
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for key in a.only or sorted(RUNS):
        args = RUNS[key]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "rlhf.cli", *args], cwd=tmp, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
        data[key] = {"seconds": round(seconds, 1), "date": datetime.date.today().isoformat(), "cpu": cpu_name(),
                     "command": "rlhf " + " ".join(args), "commit": commit(), "load_at_start": round(load, 2),
                     "python": platform.python_version()}
        print(f"{key}: {seconds:.1f} s")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
