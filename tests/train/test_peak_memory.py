"""A run's summary.json records the process's peak memory (rlhf.train.trainer.peak_memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.train.trainer import peak_memory

_CHILD = """
import json, torch
from rlhf.train.trainer import peak_memory
a = peak_memory()["peak_rss_gb"]
x = torch.ones(100_000_000)  # 4e8 bytes, every page written
b = peak_memory()["peak_rss_gb"]
print(json.dumps([a, b, float(x[-1])]))
"""


def test_peak_rss_follows_a_known_allocation_in_a_fresh_process():
    """Touching a 400 MB tensor raises the recorded peak by about 0.4 GB (1e9-byte GB): a unit slip
    (bytes, MiB, GiB) lands far outside [0.38, 0.55]. The child starts from pytest, a process larger
    than the child before its allocation: getrusage's ru_maxrss keeps the parent's size across exec
    on Linux (measured here: 1.27 GB before and after), so a peak read from it would not move at all."""
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True)
    a, b, one = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.38 <= b - a <= 0.55 and one == 1.0, (a, b)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_peak_memory_is_at_least_the_current_rss_and_has_no_gpu_key_on_cpu():
    got = peak_memory("cpu")
    rss_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    assert set(got) == {"peak_rss_gb"}
    assert got["peak_rss_gb"] >= rss_kb * 1024 / 1e9 - 5e-3
