"""``rlhf <stage> --help`` prints without importing the heavy stack (torch, transformers).

A property, not a timing (timings live in bench/cli_help.py): the help text comes from
rlhf/_stage_help.json, which ``make docs`` generates from the config classes and which must
be current.
"""

from __future__ import annotations

import json
import subprocess
import sys

from rlhf.cli import STAGES
from rlhf.config import format_help


def test_stage_help_file_is_current():
    """rlhf/_stage_help.json must be regenerated (make docs) when a config class changes."""
    from rlhf.docs import HELP_PATH, render_help
    assert HELP_PATH.exists(), "rlhf/_stage_help.json is missing: run `make docs`"
    assert HELP_PATH.read_text() == render_help(), "rlhf/_stage_help.json is stale: run `make docs`"
    assert set(json.loads(HELP_PATH.read_text())) == set(STAGES)


def test_help_equals_the_class_formatting(capsys):
    from rlhf.cli import main
    for name in ("sft", "ppo"):
        assert main([name, "--help"]) == 0
        st = STAGES[name]
        assert format_help(st.load(st.config)) in capsys.readouterr().out


_PROBE = """
import sys
from rlhf.cli import main
for args in (["--help"], ["sft", "--help"], ["ppo", "--help"], ["recipes"]):
    assert main(args) == 0
heavy = sorted(m for m in ("torch", "transformers", "accelerate", "peft", "datasets", "numpy") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def test_help_imports_no_heavy_module():
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in r.stderr, r.stderr[-2000:]
