"""Workers die with their launcher.

``kill -9`` of ``torchrun`` (or of ``accelerate launch``, which runs torchrun's agent) gives
the agent no chance to stop its workers: they were re-parented and finished the run alone,
writing ``final/`` while a rerun raced them. :func:`die_with_launcher` asks the Linux kernel to
send the worker SIGKILL when its parent (the agent) dies (``prctl(PR_SET_PDEATHSIG)``); the
run folder's lock (rlhf/train/run.py) goes with the worker, and the rerun resumes from the last
checkpoint as after any kill.

Called by the CLI and by :class:`rlhf.train.trainer.Trainer` in processes started by a torch
launcher (``LOCAL_RANK`` and ``TORCHELASTIC_RUN_ID`` set). Elsewhere (a plain process, macOS,
Windows) it does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

__all__ = ["die_with_launcher"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_armed = False


def _launched_by_torch() -> bool:
    return "LOCAL_RANK" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ


def die_with_launcher(force: bool = False) -> bool:
    """Arm the parent-death signal (SIGKILL) for this process; True when armed. ``force``
    arms it outside a torch launcher too (tests). If the parent is already gone, exit now."""
    global _armed
    if _armed:
        return True
    if not sys.platform.startswith("linux") or not (force or _launched_by_torch()):
        return False
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError) as e:
        rc, err = -1, str(e)
    else:
        err = os.strerror(ctypes.get_errno())
    if rc != 0:
        logging.getLogger("rlhf").warning("could not tie this worker to its launcher (prctl: %s): if the "
                                          "launcher is killed, stop the workers yourself", err)
        return False
    _armed = True
    if parent == 1 or os.getppid() != parent:  # the launcher died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    return True
