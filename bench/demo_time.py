"""Time the demo: ``make demo`` (``rlhf quickstart``) and ``rlhf quickstart --fast``, each in a
fresh folder, into bench/results/demo_time.json with the date, the CPU, the command and the commit.

    .venv/bin/python bench/demo_time.py                 # both; refuses on a busy machine
    .venv/bin/python bench/demo_time.py --only demo_fast
    .venv/bin/python bench/demo_time.py --smoke --out /tmp/t.json   # times `rlhf quickstart --print-config`
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
# --smoke: this script's whole path (fresh folder, child process, the record) around a command of
# a second, so that the test suite runs it; the demo itself is tested in tests/test_pipeline.py.
SMOKE = {"smoke": ["quickstart", "--print-config"]}


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
    p.add_argument("--smoke", action="store_true", help="time `rlhf quickstart --print-config` instead (no figure: "
                   "checks this script; needs --out)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON file, updated in place (default {OUT.relative_to(ROOT)})")
    a = p.parse_args(argv)
    if a.smoke and a.out is None:
        p.error("--smoke writes no figure: give --out a file outside bench/results")
    sys.path.insert(0, str(ROOT))
    from bench._bench import json_out

    a.out = json_out(p, a.out, a.smoke, a.out, OUT.name)
    if a.smoke and a.only:
        p.error("--smoke times its own command; --only names the demo runs")
    runs = SMOKE if a.smoke else RUNS
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) / 4 and not a.force and not a.smoke:
        print(f"demo_time: the machine is busy (load {load:.1f} on {os.cpu_count()} CPUs); a timing now is not a "
              f"figure (--force records it anyway)", file=sys.stderr)
        return 1
    data = json.loads(a.out.read_text()) if a.out.is_file() else {}
    for key in a.only or sorted(runs):
        args = runs[key]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "rlhf.cli", *args], cwd=tmp, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
        data[key] = {"seconds": round(seconds, 1), "date": datetime.date.today().isoformat(), "cpu": cpu_name(),
                     "command": "rlhf " + " ".join(args), "commit": commit(), "load_at_start": round(load, 2),
                     "python": platform.python_version(), **({"smoke": True} if a.smoke else {})}
        print(f"{key}: {seconds:.1f} s")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
