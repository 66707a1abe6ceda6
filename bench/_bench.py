"""What every side-by-side bench shares, so that none of them can flatter by accident.

* **CPU share** (:func:`throughput`, :class:`CpuWindow`): process CPU seconds / wall seconds /
  threads over a timed window. Below ``CLEAN_SHARE`` the run waited for cores other jobs held:
  its timing is *unclean*.
* **Interleaving** (:func:`interleaved`): repeats run round robin, every other round in reverse
  order (A B, B A, A B, ...), so a drift in the machine's load falls on both sides alike.
* **Medians of clean repeats** (:func:`summarize`) and **ratios only between clean medians**
  (:func:`ratio`): an unclean run is kept in the JSON but never enters a figure; a ratio with no
  clean run on a side is refused (``None`` with the reason), never printed from a loaded run.
* **MFU only with its denominator** (:func:`matmul_rate`, :func:`mfu`): the matmul rate is
  measured in the same process as the run, on the same threads, with its sizes, threads and its
  own CPU share recorded; an MFU against an unclean probe is refused.
* **One JSON header** (:func:`meta`): UTC date, CPU model, cores, the exact command, git commit,
  torch version and threads; :func:`write_json` puts it on every result.

No rlhf import here: the TRL children (run in .venv-trl) import this module too.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLEAN_SHARE = 0.9  # a run whose process got less than this share of its threads' cores is unclean

__all__ = ["CLEAN_SHARE", "cpu_model", "meta", "throughput", "CpuWindow", "interleaved", "median", "summarize",
           "ratio", "matmul_rate", "mfu", "write_json", "reset_peak_rss", "memory_report", "loadavg",
           "trl_python", "smoke_sides", "StepStamps", "run_settings", "settings_prefix"]


# --------------------------------------------------------------------------- machine and command


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                           timeout=10)
        return p.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def meta(argv: Sequence[str] | None = None, script: str | None = None) -> dict[str, Any]:
    """Where and how a result was taken: UTC date, CPU model and count, the command, the commit."""
    script = script or sys.argv[0]
    try:
        script = str(Path(script).resolve().relative_to(REPO))
    except ValueError:
        pass
    args = list(sys.argv[1:] if argv is None else argv)
    out: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "command": shlex.join([".venv/bin/python", script, *args]),
        "git_commit": git_commit(), "python": platform.python_version(), "loadavg": loadavg()}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return out


def run_settings() -> dict[str, Any]:
    """The settings a long bench ran under, for its JSON: threads (OMP_NUM_THREADS), niceness, load."""
    return {"omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "nice": os.nice(0), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "loadavg": loadavg()}


def settings_prefix(settings: dict[str, Any]) -> str:
    """``nice -n 19 env OMP_NUM_THREADS=1`` (what to put before a command to repeat ``settings``)."""
    parts = [f"nice -n {settings['nice']}"] if settings.get("nice") else []
    if settings.get("omp_num_threads"):
        parts.append(f"env OMP_NUM_THREADS={settings['omp_num_threads']}")
    return " ".join(parts)


def write_json(result: dict[str, Any], path: Path | str | None, argv: Sequence[str] | None = None) -> str:
    """``result`` with :func:`meta` as its ``meta`` key, as indented JSON; also written to ``path``."""
    result = {"meta": meta(argv), **result}
    text = json.dumps(result, indent=1)
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")
    return text


def load_state(path: Path) -> dict[str, Any]:
    """A resumable bench's state file (``{}`` before the first save)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def save_state(path: Path, obj: dict[str, Any]) -> None:
    """Write a resumable bench's state atomically (a kill leaves the old file or the new one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def trl_python(venv: str = ".venv-trl") -> Path | None:
    """The TRL environment's python (bench/make_trl_venv.sh), or None where it was not built."""
    p = REPO / venv / "bin" / "python"
    return p if p.exists() else None


def smoke_sides(venv: str = ".venv-trl") -> str:
    """A smoke run's sides: the rlhf side always, the TRL side where its environment exists."""
    return "rlhf,trl" if trl_python(venv) else "rlhf"


def refuse_with_smoke(parser: Any, args: Any, names: Sequence[str]) -> None:
    """``--smoke`` sets the options ``names`` itself: one given on the command line too is refused
    (it would be ignored), so that every accepted option is used or refused."""
    given = [n for n in names if getattr(args, n) != parser.get_default(n)]
    if getattr(args, "smoke", False) and given:
        parser.error(f"--smoke sets {', '.join('--' + n.replace('_', '-') for n in given)} itself: "
                     f"leave {'it' if len(given) == 1 else 'them'} out, or leave out --smoke")


RESULTS = REPO / "bench" / "results"


def json_out(parser: Any, out: str | Path | None, smoke: bool, smoke_default: Path, name: str) -> Path:
    """Where a bench writes its JSON: ``out`` if given, else ``bench/results/<name>`` (a figure
    the README may cite) or, with ``--smoke``, ``smoke_default``. A smoke run is no figure, so
    one aimed into bench/results is refused."""
    path = Path(out) if out else (smoke_default if smoke else RESULTS / name)
    if smoke and path.resolve().parent == RESULTS.resolve():
        parser.error(f"--smoke writes no figure: give --out a file outside {RESULTS.relative_to(REPO)}")
    return path


# The chat format of SmolLM2-135M-Instruct (ChatML), for the real-model benches' smoke model.
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def smoke_chat_model(folder: Path) -> Path:
    """A tiny random Llama with a ChatML template, made once in ``folder``: the real-model
    benches' ``--smoke`` runs their whole path (data, the recipe from the CLI, evaluation, the
    JSON) on it in seconds instead of on SmolLM2-135M. Its tokenizer is trained on the arithmetic
    task's prompts (bytes cover any other text); 2048 positions cover the recipes' lengths and
    the judge's prompts."""
    from rlhf.models.tiny import make_tiny_checkpoint
    from rlhf.testbed.arithmetic import write_chat_task

    if (folder / "config.json").is_file():
        return folder
    task = folder.parent / (folder.name + "-task")
    write_chat_task(task, seed=0)
    rows = [json.loads(x) for x in (task / "prompts.jsonl").read_text().splitlines() if x.strip()]
    corpus = [*(json.dumps(r) for r in rows), "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"] * 2
    return make_tiny_checkpoint(folder, "llama", corpus, vocab_size=400, chat_template=CHATML, hidden_size=64,
                                num_layers=2, num_heads=2, max_position_embeddings=2048, seed=0)


# --------------------------------------------------------------------------- memory, load


def _status(field: str) -> int:
    """A VmXXX field of /proc/self/status in KiB (0 where unavailable)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss() -> float | None:
    """Reset this process's peak RSS (VmHWM, which getrusage's ru_maxrss also reads) to its
    current RSS (Linux: write 5 to /proc/self/clear_refs). Returns the peak before the reset in
    MiB, or None where the reset is unavailable."""
    before = _status("VmHWM") / 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return before
    except OSError:
        return None


def memory_report(peak_before_reset: float | None) -> dict[str, float | None]:
    """Peak RSS of the whole process, and since the reset (steps 2..N) when there was one."""
    now = _status("VmHWM") / 1024 or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if peak_before_reset is None:
        return {"peak_rss_mib": round(now, 1), "peak_rss_steps_2_to_n_mib": None}
    return {"peak_rss_mib": round(max(now, peak_before_reset), 1), "peak_rss_steps_2_to_n_mib": round(now, 1)}


def loadavg() -> list[float]:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return []


# --------------------------------------------------------------------------- timing windows


def throughput(stamps: list[float], batch_size: int, cpu_stamps: list[float] | None = None,
               threads: int = 1) -> dict[str, Any]:
    """items/s (key ``pairs_per_s``) from the end of step 1 to the end of the last step. With
    ``cpu_stamps`` (process CPU time at the same moments) also CPU seconds per step and the share
    of ``threads`` cores the process got (``timing_clean``: at least ``CLEAN_SHARE``)."""
    n = len(stamps)
    if n < 2:
        return {"pairs_per_s": None, "step_s_mean": None, "timed_steps": 0, "timing_clean": False}
    dt = stamps[-1] - stamps[0]
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    out: dict[str, Any] = {"pairs_per_s": round((n - 1) * batch_size / dt, 3), "step_s_mean": round(dt / (n - 1), 4),
                           "step_s_min": round(min(steps), 4), "step_s_max": round(max(steps), 4),
                           "timed_steps": n - 1}
    if cpu_stamps and len(cpu_stamps) == n:
        cpu = cpu_stamps[-1] - cpu_stamps[0]
        out["cpu_s_per_step"] = round(cpu / (n - 1), 4)
        out["cpu_share_of_threads"] = round(cpu / dt / max(1, threads), 3)
        out["timing_clean"] = out["cpu_share_of_threads"] >= CLEAN_SHARE
    else:
        out["timing_clean"] = False  # no CPU record: it cannot be shown clean
    return out


class CpuWindow:
    """``with CpuWindow(threads) as w: ...`` then ``w.wall_s``, ``w.cpu_s``, ``w.share``, ``w.clean``."""

    def __init__(self, threads: int = 1):
        self.threads = max(1, threads)
        self.wall_s = self.cpu_s = self.share = 0.0
        self.clean = False

    def __enter__(self) -> CpuWindow:
        self._t, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t
        self.cpu_s = time.process_time() - self._c
        self.share = self.cpu_s / max(self.wall_s, 1e-9) / self.threads
        self.clean = self.share >= CLEAN_SHARE

    def record(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall_s, 4), "cpu_s": round(self.cpu_s, 4),
                "cpu_share_of_threads": round(self.share, 3), "timing_clean": self.clean}


class StepStamps:
    """Wall and process CPU time at the end of every optimizer step, stamped from outside the
    library by wrapping ``trainer_cls.optimize`` (rlhf.train.trainer.Trainer); the peak RSS is
    reset after step 1 and the peak before that reset kept in ``peak_before`` (for
    :func:`memory_report`)."""

    def __init__(self, trainer_cls: Any):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.peak_before: float | None = None
        orig = trainer_cls.optimize
        stamps = self

        def optimize(trainer: Any, *args: Any, **kw: Any) -> Any:
            out = orig(trainer, *args, **kw)
            stamps.wall.append(time.perf_counter())
            stamps.cpu.append(time.process_time())
            if len(stamps.wall) == 1:
                stamps.peak_before = reset_peak_rss()
            return out

        trainer_cls.optimize = optimize


# --------------------------------------------------------------------------- repeats and ratios


def interleaved(configs: Sequence[Any], repeats: int) -> Iterator[tuple[int, Any]]:
    """(repeat, config) round robin, every other round reversed: A B C, C B A, A B C, ..."""
    for rep in range(repeats):
        for c in (configs if rep % 2 == 0 else list(reversed(configs))):
            yield rep, c


def median(xs: Sequence[float]) -> float | None:
    s = sorted(xs)
    if not s:
        return None
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def summarize(runs: list[dict[str, Any]], rate_key: str, extra_keys: Sequence[str] = ()) -> dict[str, Any]:
    """One entry per configuration from its repeats: the median of ``rate_key`` (and of
    ``extra_keys``) over the CLEAN repeats only, every repeat's value and CPU share kept beside it.
    With no clean repeat the rate is None and ``refused`` says why."""
    ok = [r for r in runs if "error" not in r]
    clean = [r for r in ok if r.get("timing_clean") and r.get(rate_key) is not None]
    out: dict[str, Any] = {
        "repeats": len(runs), "clean_repeats": len(clean),
        "all_repeats": {k: [r.get(k) for r in runs]
                        for k in (rate_key, "cpu_share_of_threads", "peak_rss_mib", *extra_keys)},
        rate_key: None}
    if not ok:
        out["error"] = runs[0].get("error") if runs else "no run"
        return out
    if clean:
        out[rate_key] = round(median([r[rate_key] for r in clean]) or 0.0, 4)
        for k in extra_keys:
            vals = [r[k] for r in clean if r.get(k) is not None]
            out[k] = round(median(vals), 4) if vals else None
    else:
        out["refused"] = (f"no clean repeat (CPU share of threads < {CLEAN_SHARE} in all {len(ok)}): "
                          "timing not reported")
        for k in extra_keys:  # timing-derived too: no figure from an unclean run
            out[k] = None
    mem = [r["peak_rss_mib"] for r in ok if r.get("peak_rss_mib") is not None]
    out["peak_rss_mib"] = median(mem)  # memory does not depend on CPU contention: all repeats
    # everything else (losses, shapes, splits) from the first successful repeat
    for k, v in ok[0].items():
        out.setdefault(k, v)
    return out


def ratio(ours: dict[str, Any] | None, theirs: dict[str, Any] | None, rate_key: str) -> dict[str, Any]:
    """ours / theirs of two :func:`summarize` entries: medians of clean repeats only, or refused."""
    if not ours or not theirs:
        return {"ratio": None, "refused": "a side did not run"}
    for name, s in (("rlhf", ours), ("other", theirs)):
        if s.get("error"):
            return {"ratio": None, "refused": f"{name} side failed"}
        if not s.get(rate_key):
            return {"ratio": None, "refused": f"{name} side has no clean repeat"}
    return {"ratio": round(ours[rate_key] / theirs[rate_key], 3),
            "clean_repeats": [ours.get("clean_repeats"), theirs.get("clean_repeats")],
            "peak_rss_ratio": round(ours["peak_rss_mib"] / theirs["peak_rss_mib"], 3)
            if ours.get("peak_rss_mib") and theirs.get("peak_rss_mib") else None}


# --------------------------------------------------------------------------- matmul rate and MFU


def matmul_rate(dtype_name: str = "fp32", n: int = 1024, repeats: int = 5) -> dict[str, Any]:
    """FLOP/s of an (n, n) @ (n, n) matmul in THIS process on its current torch threads (median of
    ``repeats`` after two warm-ups), with its sizes, threads and the CPU share over the probe."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b, out=out)
    times = []
    threads = torch.get_num_threads()
    with CpuWindow(threads) as w:
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - t0)
    t = median(times) or 1e-9
    return {"dtype": dtype_name, "n": n, "repeats": repeats, "threads": threads, "median_s": round(t, 6),
            "flops_per_s": 2.0 * n ** 3 / t, "cpu_share_of_threads": round(w.share, 3), "timing_clean": w.clean}


def mfu(model_flops_per_s: float | None, rate: dict[str, Any] | None) -> dict[str, Any]:
    """Model FLOPs utilisation against a :func:`matmul_rate` of the same process, or refused."""
    if not model_flops_per_s or not rate:
        return {"mfu": None, "mfu_refused": "no model FLOP/s or no matmul rate"}
    if not rate.get("timing_clean"):
        return {"mfu": None, "mfu_refused": "the matmul probe itself was unclean (CPU share "
                                            f"{rate.get('cpu_share_of_threads')})", "matmul_rate": rate}
    return {"mfu": round(model_flops_per_s / rate["flops_per_s"], 4), "matmul_rate": rate}
