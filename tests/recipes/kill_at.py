"""``python kill_at.py MODULE:ATTR MATCH N ARGS...``: run ``rlhf ARGS...`` and SIGKILL this process
at the start of the N-th call of ``MODULE:ATTR`` whose arguments, as text, contain MATCH.

A real kill -9 (no ``finally``, no clean-up, no flush), at a chosen moment instead of a random
one, so that a test of resuming after it is deterministic. Every ``rlhf`` module that imported
the function by name gets the wrapper too. Under torchrun every process runs this script and
kills itself at its own N-th matching call.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Any


def main() -> None:
    target, match, n, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    mod_name, attr = target.split(":")
    owner: Any = importlib.import_module(mod_name)
    *path, name = attr.split(".")
    for p in path:
        owner = getattr(owner, p)
    real = getattr(owner, name)
    seen = [0]

    def wrapper(*a: Any, **k: Any) -> Any:
        if match in " ".join(str(x) for x in (*a, *k.values())):
            seen[0] += 1
            if seen[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)

    import rlhf.cli
    stage = rlhf.cli.STAGES.get(args[0])
    if stage is not None:  # import the recipe now, so its by-name imports can be patched
        importlib.import_module(stage.run.split(":")[0])
    importlib.import_module("rlhf.train.trainer")
    setattr(owner, name, wrapper)
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("rlhf") and getattr(mod, name, None) is real:
            setattr(mod, name, wrapper)
    sys.exit(rlhf.cli.main(args))


if __name__ == "__main__":
    main()
