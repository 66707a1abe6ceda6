"""Runs several stages one after the other in the processes of one ``torchrun`` launch, so a test
pays the launcher's start-up (several seconds on 2 cores) once for many runs.

``torchrun --standalone --nproc_per_node 2 tests/train/fsdp_worker.py runs.json``, where
runs.json is a list of ``{"stage": "sft", "args": ["key=value", ...], "kill_at_save": N}``.
``kill_at_save`` (optional) makes every process SIGKILL itself right after writing its shards
of checkpoint N, before that checkpoint is renamed into place: what ``kill -9`` of the job
while it writes a checkpoint leaves behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)


def main(spec_file: str) -> None:
    from accelerate.state import AcceleratorState, PartialState

    from rlhf.cli import main as cli_main
    from rlhf.train import sharding

    real_save = sharding.save_sharded
    for run in json.loads(Path(spec_file).read_text()):
        kill_at = run.get("kill_at_save")

        def save(model, optimizer, folder, _kill_at=kill_at):
            real_save(model, optimizer, folder)
            if _kill_at is not None and folder.name == f"checkpoint-{_kill_at}.tmp":
                os.kill(os.getpid(), signal.SIGKILL)

        sharding.save_sharded = save
        rc = cli_main([run["stage"], *run["args"]])
        if rc:
            sys.exit(rc)
        # The next run builds a fresh Accelerator (the process group stays up).
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()


if __name__ == "__main__":
    main(sys.argv[1])
