"""A run's summary.json records the process's peak memory (rlhf.train.trainer.peak_memory)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from rlhf.train.trainer import peak_memory


def test_peak_rss_follows_a_known_allocation():
    """In a fresh process, touching a 400 MB tensor raises the recorded peak by about 0.4 GB
    (1e9-byte GB): ru_maxrss is in kB on Linux, so a unit slip (bytes or MiB) lands far outside
    [0.38, 0.55]. The upper end leaves room for the allocator's own pages."""
    code = ("import json, torch\n"
            "from rlhf.train.trainer import peak_memory\n"
            "a = peak_memory()['peak_rss_gb']\n"
            "x = torch.ones(100_000_000)\n"  # 4e8 bytes, every page written
            "b = peak_memory()['peak_rss_gb']\n"
            "print(json.dumps([a, b, float(x[-1])]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    a, b, _ = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.38 <= b - a <= 0.55, (a, b)


def test_peak_memory_matches_getrusage_and_has_no_gpu_key_on_cpu():
    got = peak_memory("cpu")
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert set(got) == {"peak_rss_gb"}
    assert got["peak_rss_gb"] == pytest.approx(kb * 1024 / 1e9, abs=2e-3)  # rounded to 1 MB; may grow between the calls
