"""What a run prints: third-party noise off, one plain line per logged step, warnings repeated at the end.

* :func:`quiet_third_party` turns off transformers' own "Loading weights" / "Writing model
  shards" bars (a run loads and saves models dozens of times; the bars say nothing the run's
  own lines do not). Hub download bars (huggingface_hub) stay: a download is slow and worth
  watching. ``RLHF_HF_PROGRESS=1`` keeps transformers' bars too.
* :func:`step_line` is the grep-able line a trainer prints per logged step, with the stage's
  key numbers (``[ppo] step 5/12  loss -0.0015  reward 0.0995  gold -0.1225  kl 2.4e-07  β 0.02``).
* :func:`warnings_collector` remembers WARNING records of the ``rlhf`` loggers so that a
  trainer can repeat those of its run once at the end, where they are seen.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

__all__ = ["quiet_third_party", "step_line", "bar_postfix", "KEY_METRICS", "WarningCollector", "warnings_collector",
           "pass_progress", "LineProgress"]

# (metric key, label) in the order shown; a step shows those it has. Chosen so that each stage
# shows what tells whether it works: the loss; rewards (proxy "reward", hidden "gold") and the KL
# and its coefficient for the RL stages; accuracy and margin for reward models and DPO.
KEY_METRICS: tuple[tuple[str, str], ...] = (
    ("loss", "loss"), ("eval_loss", "eval_loss"), ("score", "reward"), ("track/gold", "gold"),
    ("kl", "kl"), ("beta", "β"), ("accuracy_mean", "acc"), ("reward_accuracy", "acc"),
    ("eval_accuracy", "eval_acc"), ("eval_reward_accuracy", "eval_acc"), ("reward_margin", "margin"),
    ("kept_fraction", "kept"), ("lr", "lr"),
)


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    return f"{v:.2e}" if a and (a < 1e-3 or a >= 1e5) else f"{v:.4f}".rstrip("0").rstrip(".") if a else "0"


def step_line(stage: str, step: int, total: int | None, metrics: dict[str, Any]) -> str:
    """One plain line for a logged step: the stage, step/total and the key metrics it has."""
    parts = [f"[{stage}] step {step}" + (f"/{total}" if total else "")]
    shown: set[str] = set()
    for key, label in KEY_METRICS:
        v = metrics.get(key)
        if label in shown or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        parts.append(f"{label} {_fmt(float(v))}")
        shown.add(label)
    return "  ".join(parts)


def bar_postfix(metrics: dict[str, Any]) -> dict[str, str]:
    """The live bar's short summary: the key metrics but the learning rate (the line has it)."""
    out: dict[str, str] = {}
    for key, label in KEY_METRICS:
        v = metrics.get(key)
        if label == "lr" or label in out or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[label] = _fmt(float(v))
    return out


def quiet_third_party() -> None:
    """Silence transformers' per-load and per-save progress bars (see the module doc), and every
    progress bar when stderr is not a terminal."""
    import sys

    global _REDIRECTED
    if not sys.stderr.isatty() and "TQDM_DISABLE" not in os.environ:
        # Redirected to a log: a bar's carriage-return redraws would stay there as fragments; the
        # runs' own per-step lines say the same. (tqdm reads TQDM_* variables as its defaults.)
        # A long pass outside the training loop prints a plain line every half minute instead
        # (pass_progress), so that a log never looks hung.
        os.environ["TQDM_DISABLE"] = "1"
        _REDIRECTED = True
    # rlhf never uses tensor parallelism: the tensor-parallel plan check's "layers were not
    # sharded" lines (one per model load) say nothing about a run.
    logging.getLogger("transformers.distributed.tensor_parallel").setLevel(logging.ERROR)
    # rlhf truncates every row to data.max_length itself (and counts what it cut), so the
    # tokenizer's "Token indices sequence length is longer than the specified maximum" is noise.
    tok_log = logging.getLogger("transformers.tokenization_utils_base")
    if not any(isinstance(f, _DropTokenLengthWarning) for f in tok_log.filters):
        tok_log.addFilter(_DropTokenLengthWarning())
    if os.environ.get("RLHF_HF_PROGRESS") == "1":
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_progress_bar()


class _DropTokenLengthWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token indices sequence length is longer than")


class WarningCollector(logging.Handler):
    """Records every WARNING (and worse) message of the ``rlhf`` loggers, in order.

    One per process (:func:`warnings_collector`); a trainer notes ``len(messages)`` when it
    starts and repeats the distinct messages after that at its end. When nothing else would
    show the records (no handler configured: Python's last-resort handler would print them),
    it prints each one to stderr as it comes, as that handler would have.
    """

    def __init__(self, echo: bool) -> None:
        super().__init__(level=logging.WARNING)
        self.echo = echo
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        self.messages.append(msg)
        if self.echo:
            import sys
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    def since(self, start: int) -> list[str]:
        """The distinct messages recorded after the first ``start``, in order."""
        return list(dict.fromkeys(self.messages[start:]))


_COLLECTOR: WarningCollector | None = None


def warnings_collector() -> WarningCollector:
    """The process's collector, attached to the ``rlhf`` logger on first use."""
    global _COLLECTOR
    if _COLLECTOR is None:
        log = logging.getLogger("rlhf")
        _COLLECTOR = WarningCollector(echo=not log.hasHandlers())
        log.addHandler(_COLLECTOR)
    return _COLLECTOR


# True once quiet_third_party has turned the bars off because stderr is not a terminal (not when a
# user set TQDM_DISABLE: then a pass prints nothing).
_REDIRECTED = False


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


class LineProgress:
    """A long pass's progress as plain lines for a log: ``update(n)`` after each batch prints
    ``<desc>: 96/512 examples (19%), 0.71 example/s, ETA 9 min 45 s`` when at least ``every``
    seconds have passed since the start or the last line (a short pass prints nothing), and
    ``close()`` prints how long the pass took if it printed anything before."""

    def __init__(self, desc: str, total: int, unit: str = "seq", every: float = 30.0,
                 clock: Any = None, stream: Any = None) -> None:
        import sys
        import time

        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.clock = clock or time.monotonic
        self.stream = stream or sys.stderr
        self.n, self.printed = 0, False
        self.t0 = self.last = self.clock()

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self.printed = True

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last < self.every or self.n >= self.total:
            return
        self.last = now
        rate = self.n / max(now - self.t0, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        self._print(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f}%), "
                    f"{rate:.3g} {self.unit}/s, ETA {_duration(eta) if math.isfinite(eta) else '?'}")

    def close(self) -> None:
        if self.printed:
            self._print(f"{self.desc}: {self.n}/{self.total} {self.unit}s in {_duration(self.clock() - self.t0)}")
            self.printed = False

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pass_progress(desc: str, total: int, unit: str = "seq", enabled: bool = True) -> Any:
    """A progress bar with rate and ETA (tqdm) for a long pass outside the training loop: the
    cached reference pass, evaluation, a reward model scoring many sequences. Call ``update(n)``
    after each batch and ``close()`` at the end (or use it as a context manager). Disabled (a
    no-op bar) when ``enabled`` is false or there is nothing to count; cleared when done, so a
    finished pass leaves no line behind. When stderr is a log (quiet_third_party turned the bars
    off), a :class:`LineProgress` prints a plain line every half minute instead."""
    from tqdm.auto import tqdm

    # An explicit ``disable`` overrides tqdm's TQDM_DISABLE default, which quiet_third_party sets
    # when stderr is not a terminal (a redirected log keeps no bar fragments): honour it here.
    off = not enabled or total <= 0 or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    if off and enabled and total > 0 and _REDIRECTED:
        return LineProgress(desc, total, unit)  # a log: plain lines every half minute, no bar fragments
    return tqdm(total=total, desc=desc, unit=unit, disable=off, leave=False, dynamic_ncols=True, mininterval=1.0)
