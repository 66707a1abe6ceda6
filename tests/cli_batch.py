"""Run many ``rlhf`` command lines in ONE interpreter, as the console script would run each.

    python tests/cli_batch.py CASES.json RESULTS.json

CASES.json: ``[{"id": ..., "argv": [...], "cwd": ...}, ...]``. For each case, file descriptors 1
and 2 are pointed at a capture file (so prints, logging and C-level writes are all caught),
``rlhf.cli.main(argv)`` is called and its exit code recorded; an exception escaping ``main``
is printed with its traceback, as the interpreter would print it, so a test sees "Traceback".
Used by tests/test_bad_inputs.py: one interpreter per worker instead of one per case saves the
~5 s import of torch + transformers per command line (100+ cases).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def _reset_process_state() -> None:
    try:
        from accelerate.state import AcceleratorState, PartialState
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    except Exception:  # noqa: BLE001 - not imported yet
        pass


def run_case(argv: list[str], cwd: str) -> tuple[int, str]:
    from rlhf.cli import main

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as cap:
        os.dup2(cap.fileno(), 1)
        os.dup2(cap.fileno(), 2)
        old = os.getcwd()
        try:
            os.chdir(cwd)
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse errors, sys.exit in a tool
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - what the interpreter would print
                traceback.print_exc()
                rc = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.chdir(old)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            _reset_process_state()
        cap.seek(0)
        return int(rc or 0), cap.read().decode("utf-8", "replace")


def main() -> None:
    cases = json.loads(open(sys.argv[1]).read())
    results = {}
    for case in cases:
        rc, out = run_case(case["argv"], case["cwd"])
        results[case["id"]] = {"rc": rc, "output": out}
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
