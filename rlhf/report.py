"""The run report: one self-contained ``report.html`` (plus its PNGs) from a pipeline run folder.

    rlhf report runs/quickstart            # -> runs/quickstart/report/report.html (where the pipeline writes it)
    write_report("runs/quickstart")         # the same from Python; returns the HTML's path

What it reads (every input optional; a plot whose inputs are missing is replaced by a note):

    run_dir/pipeline.json         {"stages": [{"name", "type", "output_dir", "status"}, ...]};
                                  without it, every subfolder holding metrics.jsonl or
                                  summary.json is a stage
    run_dir/<stage>/config.yaml   the resolved config, shown as text
    run_dir/<stage>/metrics.jsonl one object per logged step; PPO also logs sample tables
    run_dir/<stage>/summary.json  best-of-n: its "curve" of (n, mean_reward, kl_bound, kl_estimate)
    run_dir/eval/results.json     {"policies": {name: rlhf.eval.evaluate.evaluate(...) result}}

What it shows: a headline table (reward per source, win rate, KL, length per policy); the
reward-vs-KL frontier (the DPO paper's Fig. 2 left: each policy at its KL from the reference,
with the best-of-n curve); the over-optimisation plot (Gao et al. 2022, Fig. 1: proxy and gold
reward against √KL over PPO training); training curves per stage; sample responses; configs.
The reward names "gold" (the true reward) and "proxy" (the reward model) come first when present.

Plots use matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), so
the report can be written from a process with no display and without touching a user's session.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["write_report", "write_comparison", "verdict", "collapse_flags", "main", "load_run", "read_metrics",
           "smooth", "gold_peak",
           "plot_training_curves", "plot_overoptimization", "plot_frontier", "Skipped", "Run", "StageRun"]

GOLD, PROXY = "gold", "proxy"
_ORDER = {"sft": 0, "rm": 1, "ppo": 2, "dpo": 3, "best_of_n": 4, "raft": 5, "rest": 6, "iterative_dpo": 7,
          "constitutional": 8, "hindsight": 9, "eval": 10}
# Training-curve panels: (title, metric names; "track/*" = every tracked reward).
# Proxy and gold rewards get panels (and y axes) of their own: on one axis the one with the
# larger range flattens the other.
_PANELS = (("loss", ("loss", "eval_loss")),
           ("proxy reward", ("score", "kept_score")),
           ("gold reward", ("track/*", "kept_track/*")),
           ("DPO reward margin", ("reward_margin", "eval_reward_margin")),
           ("accuracy", ("accuracy_mean", "accuracy", "eval_accuracy", "reward_accuracy",
                         "eval_reward_accuracy")),
           ("KL to reference (nats)", ("kl",)),
           ("entropy (nats/token)", ("entropy",)),
           ("response length (tokens)", ("response_length",)),
           ("learning rate", ("lr",)),
           ("gradient norm", ("grad_norm",)))
# Stage types whose logged "step" is a round (RAFT, ReST, iterative DPO, hindsight).
_ROUND_KEYS = ("round", "grow")


class Skipped(Exception):
    """A plot's inputs are missing; the message says which (and ends up in the HTML)."""


@dataclass
class StageRun:
    name: str
    type: str  # sft, rm, dpo, ppo, best_of_n, eval, or the folder name
    path: Path
    status: str | None = None
    config: str | None = None  # config.yaml text
    metrics: list[dict[str, float]] = field(default_factory=list)  # numeric rows, by step
    samples: list[dict] = field(default_factory=list)  # {"step": N, "samples": [...]} rows
    summary: dict | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Run:
    path: Path
    stages: list[StageRun]
    policies: dict[str, dict] = field(default_factory=dict)  # eval/results.json "policies"
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def _num(v: Any) -> float | None:
    """A metric value as float: numbers, and the "nan"/"inf" strings MetricsWriter writes."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(v)
    return None


def read_metrics(path: str | Path) -> tuple[list[dict[str, float]], list[dict], list[str]]:
    """(numeric rows sorted by step, sample tables, notes) from a metrics.jsonl.

    Non-numeric fields are dropped; unreadable lines (e.g. one torn by a killed process) are
    skipped and named in the notes rather than stopping the report."""
    rows, tables, bad = [], [], []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad.append(i)
            continue
        if not isinstance(rec, dict) or _num(rec.get("step")) is None:
            bad.append(i)
        elif isinstance(rec.get("samples"), list):
            tables.append(rec)
        else:
            rows.append({k: x for k, v in rec.items() if (x := _num(v)) is not None})
    rows.sort(key=lambda r: r["step"])
    if not bad:
        return rows, tables, []
    return rows, tables, [f"{path}: skipped {len(bad)} unreadable line(s): {', '.join(map(str, bad[:5]))}"]


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        notes.append(f"{path}: could not be read ({e})")
        return None


def _resolve(run_dir: Path, output_dir: str | None, name: str) -> Path:
    """A stage's folder: as recorded, relative to the run folder, or by name inside it (the run
    folder may have been moved since the pipeline wrote its paths)."""
    cands = []
    if output_dir:
        p = Path(output_dir)
        cands += [p] if p.is_absolute() else [run_dir / p, Path.cwd() / p]
        cands.append(run_dir / p.name)
    cands.append(run_dir / name)
    return next((c for c in cands if c.is_dir()), cands[0])


def load_run(run_dir: str | Path) -> Run:
    """Everything the report shows, read from a pipeline run folder (see the module doc)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such run folder")
    notes: list[str] = []
    declared: list[tuple[str, str | None, Path, str | None]] = []
    pipeline = _read_json(root / "pipeline.json", notes) if (root / "pipeline.json").is_file() else None
    if not (isinstance(pipeline, dict) and isinstance(pipeline.get("stages"), list)):
        pipeline = None
    if pipeline is not None:
        for i, s in enumerate(x for x in pipeline["stages"] if isinstance(x, dict)):
            if s.get("type") == "report":
                continue
            name = str(s.get("name") or f"stage{i + 1}")
            declared.append((name, s.get("type"), _resolve(root, s.get("output_dir"), name), s.get("status")))
    else:
        declared = [(d.name, None, d, None) for d in sorted(root.iterdir()) if d.is_dir()
                    and ((d / "metrics.jsonl").is_file() or (d / "summary.json").is_file())]
        if not declared and ((root / "metrics.jsonl").is_file() or (root / "summary.json").is_file()):
            declared = [(root.resolve().name, None, root, None)]  # one stage's own folder (rlhf ppo ...)
    stages = []
    for name, typ, path, status in declared:
        st = StageRun(name, "", path, status)
        if (path / "config.yaml").is_file():
            st.config = (path / "config.yaml").read_text(encoding="utf-8")
        if (path / "metrics.jsonl").is_file():
            st.metrics, st.samples, st.notes = read_metrics(path / "metrics.jsonl")
        if (path / "summary.json").is_file():
            s = _read_json(path / "summary.json", st.notes)
            st.summary = s if isinstance(s, dict) else None
        summary = st.summary or {}
        guess = typ or summary.get("stage") or ("best_of_n" if "curve" in summary else name)
        st.type = str(guess).replace("-", "_")
        if st.type == "report":
            continue  # the report itself: written by this call, not a stage to report on
        stages.append(st)
    if pipeline is None:
        # No record of the run order: the usual RLHF order (stable: ties keep the folder order).
        stages.sort(key=lambda s: _ORDER.get(s.type, 11))
    run = Run(root, stages, notes=notes)
    ev = next((s.path for s in stages if s.type == "eval"), root / "eval") / "results.json"
    if ev.is_file():
        data = _read_json(ev, notes)
        if isinstance(data, dict) and "policy" in data and "policies" not in data:
            data = {"policies": {"policy": data}}  # a single `rlhf eval` result
        if isinstance(data, dict) and isinstance(data.get("policies"), dict):
            run.policies = data["policies"]
        elif data is not None:
            # e.g. a `call` stage's own evaluation (the calculator recipe's success and tool use):
            # not the `rlhf eval` layout the tables read, so shown as it is rather than dropped.
            text = json.dumps(data, separators=(", ", ": "))
            notes.append(f"{_rel(ev, root)} is not an `rlhf eval` result (no \"policies\"), so the headline, "
                         f"frontier and verdict leave it out; it holds: "
                         f"{text if len(text) <= 600 else text[:600] + ' ...'}")
        # The eval stage re-scores best-of-n pools with every reward source (gold included):
        # its curves, with per-source "rewards", replace the stage's own single-source curve.
        for name, entry in ((data or {}).get("best_of_n") or {}).items():
            for st in stages:
                if st.name == name and isinstance(entry, dict) and isinstance(entry.get("curve"), list):
                    st.summary = {**(st.summary or {}), "curve": entry["curve"]}
    return run


# --------------------------------------------------------------------------- pure helpers


def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over ``window`` points (shrinking at the ends); NaNs are ignored."""
    h = max(window, 1) // 2
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - h):i + h + 1] if math.isfinite(v)]
        out.append(sum(part) / len(part) if part else math.nan)
    return out


def gold_peak(gold: list[float], window: int = 1) -> int | None:
    """Index of the highest (smoothed) gold reward, the first one on ties; None if all are NaN.
    Past it, optimising the proxy makes the true reward worse (Gao et al. 2022)."""
    s = smooth(gold, window)
    finite = [i for i, v in enumerate(s) if math.isfinite(v)]
    return max(finite, key=lambda i: (s[i], -i)) if finite else None


def _series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _keys(rows: list[dict[str, float]], patterns: tuple[str, ...]) -> list[str]:
    """The metric names of ``patterns`` that occur in ``rows``, in pattern order."""
    present = {k for r in rows for k in r}
    out = []
    for p in patterns:
        if p == "track/*":
            out += sorted(k for k in present if k.startswith("track/"))
        elif p in present:
            out.append(p)
    return out


def _sources(policies: dict[str, dict]) -> list[str]:
    """Reward names in the eval results, gold and proxy first."""
    names = {n for r in policies.values() for n in ((r.get("policy") or {}).get("reward") or {})}
    return [n for n in (GOLD, PROXY) if n in names] + sorted(names - {GOLD, PROXY})


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _finite(v: Any) -> float | None:
    x = _num(v)
    return x if x is not None and math.isfinite(x) else None


def _mean(d: Any) -> float | None:
    return _finite(_get(d, "mean"))


def _policy_kl(name: str, res: dict) -> float | None:
    kl = _mean(res.get("kl"))
    if kl is None and (name in ("sft", "reference") or _get(res, "settings", "policy") is not None
                       and _get(res, "settings", "policy") == _get(res, "settings", "reference")):
        return 0.0  # the reference itself
    return kl


# --------------------------------------------------------------------------- plots


def _new_figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(ax: Any) -> None:
    """A legend of the axis's labelled lines only: no entry for a faint raw series, an error bar's
    parts or anything else without a name of its own (a frontier's points are named beside them)."""
    handles = [ln for ln in ax.get_lines() if ln.get_label() and not ln.get_label().startswith("_")]
    if handles:
        ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8, frameon=False)


def _x_axis(rows: list[dict[str, float]]) -> tuple[str, bool]:
    """(x label, integer ticks): stages that log rounds count rounds, not fractional steps."""
    if any(k in r for r in rows for k in _ROUND_KEYS):
        return "round", True
    steps = {r["step"] for r in rows}
    return "step", len(steps) <= 12


def _label(key: str) -> str:
    """A metric key as a legend label."""
    names = {"score": "proxy (reward model)", "kept_score": "proxy, kept samples", "loss": "train loss",
             "eval_loss": "eval loss", "kl": "KL", "entropy": "entropy"}
    if key.startswith("kept_track/"):
        return f"{key.split('/', 1)[1]}, kept samples"
    if key.startswith("track/"):
        return key.split("/", 1)[1]
    return names.get(key, key.replace("_", " "))


def plot_training_curves(stages: list[StageRun], window: int = 5) -> Figure:
    """Small multiples: for each stage, in run order, one panel per quantity it logged (loss,
    proxy reward, gold reward, margin, accuracy, KL, entropy), wrapped three to a row with no
    empty cells. Raw values faint, their centred moving average (``window`` points) solid when
    a series has more than ``2 * window`` points; eval points as markers; rounds as integers."""
    cells = []
    for st in (s for s in stages if s.metrics):
        for title, pats in _PANELS:
            keys = [k for k in _keys(st.metrics, pats) if _series(st.metrics, k)[0]]
            if keys:
                cells.append((st, title, keys))
    if not cells:
        raise Skipped("no stage has a metrics.jsonl with numeric rows")
    ncols = min(3, len(cells))
    nrows = math.ceil(len(cells) / ncols)
    fig = _new_figure(4.2 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(a for row in axes for a in row):
        if i >= len(cells):
            ax.remove()  # fewer cells than the grid holds: no blank frame
            continue
        st, title, keys = cells[i]
        xlabel, integer = _x_axis(st.metrics)
        for j, k in enumerate(keys):
            x, y = _series(st.metrics, k)
            color = f"C{j}"
            if len(x) <= 2:  # two points are not a trend: markers only, no line between them
                ax.plot(x, y, "o", ms=5, color=color, label=_label(k))
            elif k.startswith("eval_") or len(x) <= 2 * window:
                ax.plot(x, y, "o-" if k.startswith("eval_") or len(x) <= 12 else "-", ms=4, lw=1.5,
                        color=color, label=_label(k))
            else:
                ax.plot(x, y, "-", lw=0.8, color=color, alpha=0.3)
                ax.plot(x, smooth(y, window), "-", lw=1.8, color=color, label=f"{_label(k)} (smoothed)")
        ax.set_title(f"{st.name}: {title}", fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(title, fontsize=9)
        ax.tick_params(labelsize=8)
        if integer:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.25)
        _legend(ax)
    return fig


def _overopt_stages(stages: list[StageRun]) -> list[tuple[StageRun, str]]:
    out = []
    for s in stages:
        tracked = _keys(s.metrics, ("track/*",))
        gold = f"track/{GOLD}" if f"track/{GOLD}" in tracked else (tracked[0] if tracked else None)
        if gold and _keys(s.metrics, ("score", "kl")) == ["score", "kl"]:
            out.append((s, gold))
    return out


def plot_overoptimization(stages: list[StageRun], sqrt_kl: bool = True, window: int = 5) -> Figure:
    """Proxy reward ("score") and gold reward ("track/gold") against KL from the reference over
    PPO training (Gao et al. 2022), twin y axes since the two rewards have their own scales.
    Points are the logged steps; lines are their centred moving average in step order; the star
    marks where the smoothed gold reward peaks."""
    found = _overopt_stages(stages)
    if not found:
        raise Skipped("no stage logged 'score', 'kl' and a tracked reward 'track/<name>' together "
                      "(set track: {gold: ...} in the PPO config to log the gold reward of each rollout)")
    fig = _new_figure(5.5 * len(found), 3.8)
    for ax, (st, gold_key) in zip(fig.subplots(1, len(found), squeeze=False)[0], found):
        need = ("kl", "score", gold_key)
        rows = [r for r in st.metrics if all(math.isfinite(r.get(k, math.nan)) for k in need)]
        steps = [r["step"] for r in rows]
        xs = [math.sqrt(max(r["kl"], 0.0)) if sqrt_kl else r["kl"] for r in rows]
        proxy, gold = [r["score"] for r in rows], [r[gold_key] for r in rows]
        xs_s, proxy_s, gold_s = smooth(xs, window), smooth(proxy, window), smooth(gold, window)
        ax2 = ax.twinx()
        ax.scatter(xs, proxy, s=10, color="C0", alpha=0.35)
        ax.plot(xs_s, proxy_s, color="C0", lw=2, label="proxy reward (score)")
        ax2.scatter(xs, gold, s=10, color="C3", alpha=0.35)
        ax2.plot(xs_s, gold_s, color="C3", lw=2, label=f"gold reward ({gold_key})")
        i = gold_peak(gold, window)
        if i is not None:
            ax2.plot([xs_s[i]], [gold_s[i]], "*", ms=14, color="k", label=f"gold peak (step {steps[i]:g})")
            ax.axvline(xs_s[i], color="k", ls=":", lw=1)
        ax.set_xlabel("√KL(π ‖ π_ref)  (√nats)" if sqrt_kl else "KL(π ‖ π_ref)  (nats)")
        ax.set_ylabel("proxy reward", color="C0")
        ax2.set_ylabel(f"{gold_key.removeprefix('track/')} reward", color="C3")
        ax.set_title(f"{st.name}: over-optimisation", fontsize=10)
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=8, ncol=3, frameon=False,
                  loc="upper center", bbox_to_anchor=(0.5, -0.15))
    return fig


def gao_fits(stages: list[StageRun], policies: dict[str, dict]) -> list[dict[str, Any]]:
    """Gao et al. (2022)'s functional forms fitted to this run (rlhf.eval.overoptimization), in
    terms of the gold reward's gain over the start: the RL form d(α − β·log d) to every stage that
    logged KL and a tracked gold reward per step (gain over its first 5 steps), the best-of-n form
    d(α − β·d) to every best-of-n curve judged by gold (gain over n = 1); d = √KL."""
    from rlhf.eval.overoptimization import gao_fit, peak_of_fit

    out: list[dict[str, Any]] = []
    for st, gold_key in _overopt_stages(stages):
        rows = [r for r in st.metrics if all(math.isfinite(r.get(k, math.nan)) for k in ("kl", gold_key))]
        if len(rows) < 8:
            continue
        g0 = sum(r[gold_key] for r in rows[:5]) / 5
        try:
            fit = gao_fit("rl", [max(r["kl"], 0.0) for r in rows], [r[gold_key] - g0 for r in rows])
        except ValueError:
            continue
        out.append({"stage": st.name, "form": "RL: d(α − β·log d)", **fit,
                    "peak": peak_of_fit("rl", fit["alpha"], fit["beta"])})
    for name, pts in _bon_curves(stages, policies, GOLD):
        xy = [(p["bound"], p["y"]) for p in pts if p["bound"] is not None]
        base = next((y for k, y in xy if k == 0), None)
        if base is None or len(xy) < 3:
            continue
        try:
            fit = gao_fit("bon", [k for k, _ in xy], [y - base for _, y in xy])
        except ValueError:
            continue
        out.append({"stage": name, "form": "best-of-n: d(α − β·d)", **fit,
                    "peak": peak_of_fit("bon", fit["alpha"], fit["beta"])})
    return out


def gao_table(stages: list[StageRun], policies: dict[str, dict]) -> str:
    fits = gao_fits(stages, policies)
    if not fits:
        return _note("Skipped: no stage logged KL and a tracked gold reward, and no best-of-n curve was "
                     "judged by gold.")
    rows = [[f["stage"], f["form"], _fmt(f["alpha"]), _fmt(f["beta"]), _fmt(f["r2"], 2), str(f["n"]),
             _fmt(f["peak"]["kl"], 2) if f["peak"] else "no peak (β ≤ 0)"] for f in fits]
    return _table(["stage", "form", "α", "β", "R²", "points", "KL at the fitted peak"], rows, num_from=2)


def _bon_curves(stages: list[StageRun], policies: dict[str, dict], source: str
                ) -> list[tuple[str, list[dict]]]:
    """Best-of-n curves in terms of reward ``source``: a point's ``rewards[source]`` when given,
    else its ``mean_reward`` if the stage's reward source is the one eval calls ``source``."""
    eval_names = {spec: n for r in policies.values()
                  for n, spec in (_get(r, "settings", "rewards") or {}).items()}
    out = []
    for st in stages:
        summary = st.summary or {}
        curve = summary.get("curve")
        if not isinstance(curve, list):
            continue
        own = summary.get("reward_name") or eval_names.get(summary.get("reward_source"))
        pts = []
        for p in curve:
            y = _num(_get(p, "rewards", source)) if isinstance(p.get("rewards"), dict) else (
                _num(p.get("mean_reward")) if own == source else None)
            if y is not None and math.isfinite(y):
                pts.append({"n": p.get("n"), "y": y, "bound": _finite(p.get("kl_bound")),
                            "estimate": _finite(p.get("kl_estimate"))})
        if pts:
            out.append((st.name, pts))
    return out


def plot_frontier(policies: dict[str, dict], stages: Sequence[StageRun] = ()) -> Figure:
    """Reward under each source (gold first) against KL to the reference, one point per
    evaluated policy (± standard errors) and the best-of-n curves (KL = log n - (n-1)/n, the
    tie-free value; dashed: the KL measured on the pool), as in the DPO paper's Fig. 2 (left)."""
    sources = _sources(policies)[:3]
    panels = []
    for src in sources:
        pts: list[tuple[str, float, float | None, float | None, float | None]] = []
        for name, res in policies.items():
            y, x = _mean(_get(res, "policy", "reward", src)), _policy_kl(name, res)
            if y is not None and x is not None:
                pts.append((name, x, _finite(_get(res, "kl", "stderr")), y,
                            _finite(_get(res, "policy", "reward", src, "stderr"))))
        ref = next((_get(r, "reference", "reward", src) for r in policies.values()
                    if _get(r, "reference", "reward", src)), None)
        if "sft" not in policies and _mean(ref) is not None:
            pts.insert(0, ("reference", 0.0, None, _mean(ref), _finite(_get(ref, "stderr"))))
        curves = _bon_curves(list(stages), policies, src)
        if pts or curves:
            panels.append((src, pts, curves))
    if not panels:
        raise Skipped("no policy in eval/results.json has both a reward and a KL, and no best-of-n "
                      "curve is in terms of an evaluated reward")
    fig = _new_figure(5.0 * len(panels), 3.8)
    for ax, (src, pts, curves) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for name, pts_bon in curves:
            ns = [p["n"] for p in pts_bon]
            if all(p["bound"] is not None for p in pts_bon):
                ax.plot([p["bound"] for p in pts_bon], [p["y"] for p in pts_bon], "-", color="C7",
                        label=f"{name} (n = {min(ns)}..{max(ns)})")
            if all(p["estimate"] is not None for p in pts_bon):
                ax.plot([p["estimate"] for p in pts_bon], [p["y"] for p in pts_bon], "--", color="C7",
                        lw=1, label=f"{name}, measured KL")
        for k, (name, x, xe, y, ye) in enumerate(pts):
            # Named beside the point, so not in the legend (which keeps the curves only).
            ax.errorbar([x], [y], xerr=None if xe is None else [xe], yerr=None if ye is None else [ye],
                        fmt="o", ms=7, capsize=3, color=f"C{k % 7}", label=name)
        _place_labels(ax, [(name, x, y) for name, x, _xe, y, _ye in pts if y is not None])
        ax.set_xlabel("KL(π ‖ π_ref)  (nats)")
        ax.set_ylabel(f"{src} reward")
        ax.set_title(f"{src} reward vs KL", fontsize=10)
        ax.grid(alpha=0.25)
        _legend(ax)
    return fig


def _place_labels(ax: Any, pts: list[tuple[str, float, float]], fontsize: int = 9) -> None:
    """Name each point beside it, choosing for each label the first of a few positions around the
    point whose box (estimated from the text length, in display pixels once the axes are laid
    out) overlaps no label placed before it and no other point."""
    if not pts:
        return
    fig = ax.figure
    fig.canvas.draw()  # lay out (constrained) and autoscale, so that data -> pixels is final
    to_px = ax.transData.transform
    scale = fig.dpi / 72.0  # points -> pixels
    char_w, h = 0.6 * fontsize * scale, 1.2 * fontsize * scale
    centres = [tuple(to_px((x, y))) for _, x, y in pts]
    placed: list[tuple[float, float, float, float]] = []
    offsets = [(5, 5), (5, -14), (-5, 5), (-5, -14), (5, 16), (5, -25), (-5, 16), (-5, -25), (5, 27), (5, -36)]

    def hits(box: tuple[float, float, float, float]) -> bool:
        x0, y0, x1, y1 = box
        if any(not (x1 < a or x0 > c or y1 < b or y0 > d) for a, b, c, d in placed):
            return True
        return any(x0 - 4 < cx < x1 + 4 and y0 - 4 < cy < y1 + 4 for cx, cy in centres)

    for (name, x, y), (px, py) in zip(pts, centres):
        w = char_w * len(name)
        choice = offsets[0]
        for dx, dy in offsets:
            ox, oy = dx * scale, dy * scale
            x0 = px + ox if dx > 0 else px + ox - w
            box = (x0, py + oy, x0 + w, py + oy + h)
            if not hits(box):
                choice = (dx, dy)
                break
        dx, dy = choice
        ox, oy = dx * scale, dy * scale
        x0 = px + ox if dx > 0 else px + ox - w
        placed.append((x0, py + oy, x0 + w, py + oy + h))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                    ha="left" if dx > 0 else "right", va="bottom")


# --------------------------------------------------------------------------- verdict and flags

# A policy's response length or distinct-2 below this fraction of the reference's is flagged.
COLLAPSE_FRACTION = 0.6


def _ranked(policies: dict[str, dict], source: str) -> list[tuple[str, float, float | None]]:
    """(name, mean, stderr) under ``source`` for every evaluated policy and the reference, best first."""
    out: list[tuple[str, float, float | None]] = []
    for name, res in policies.items():
        m = _mean(_get(res, "policy", "reward", source))
        if m is not None:
            out.append((name, m, _finite(_get(res, "policy", "reward", source, "stderr"))))
    ref = next((_get(r, "reference", "reward", source) for r in policies.values()
                if _get(r, "reference", "reward", source)), None)
    if "sft" not in policies and _mean(ref) is not None:
        out.append(("reference (SFT)", _mean(ref) or 0.0, _finite(_get(ref, "stderr"))))
    return sorted(out, key=lambda t: -t[1])


def _gap(a: tuple[str, float, float | None], b: tuple[str, float, float | None]) -> tuple[float, float | None]:
    """(difference of means, two standard errors of the difference, the two taken as independent)."""
    se = math.sqrt(a[2] ** 2 + b[2] ** 2) if a[2] is not None and b[2] is not None else None
    return a[1] - b[1], (2 * se if se is not None else None)


def verdict(policies: dict[str, dict]) -> list[str]:
    """Plain sentences: which method scored highest under the first reward (gold when present), by
    how much over the next and over the reference, and whether each gap exceeds two standard
    errors of the difference (resolved) or not; then a warning when several gaps are within it."""
    sources = _sources(policies)
    if not sources:
        return []
    src = sources[0]
    ranked = _ranked(policies, src)
    if len(ranked) < 2:
        return []
    n = next((_get(r, "policy", "reward", src, "n") for r in policies.values()
              if _get(r, "policy", "reward", src, "n")), None)

    def pm(t: tuple[str, float, float | None]) -> str:
        return f"{t[1]:.3f}" + (f" ± {t[2]:.3f}" if t[2] is not None else "")

    def judged(a: tuple[str, float, float | None], b: tuple[str, float, float | None]) -> str:
        d, two_se = _gap(a, b)
        if two_se is None:
            return f"by {d:.3f} (no standard errors: not judged)"
        word = "resolved" if d > two_se else "not resolved"
        return f"by {d:.3f}: {word} (two standard errors of the difference: {two_se:.3f})"

    best, second = ranked[0], ranked[1]
    on = f" on {int(n)} prompts" if isinstance(n, (int, float)) else ""
    out = [f"Verdict ({src} reward{on}): {best[0]} scored highest, {pm(best)}; it leads {second[0]} "
           f"({pm(second)}) {judged(best, second)}."]
    ref = next((t for t in ranked if t[0] == "reference (SFT)"), None)
    if ref is not None and ref is not best and ref is not second:
        out.append(f"Over the reference ({pm(ref)}): {judged(best, ref)}.")
    close = [(a[0], b[0]) for a, b in zip(ranked, ranked[1:])
             if (g := _gap(a, b))[1] is not None and g[0] <= g[1]]
    if len(close) >= 2 or (close and len(ranked) == 2):
        names = sorted({x for pair in close for x in pair}, key=[t[0] for t in ranked].index)
        out.append(f"Warning: {len(close)} of the {len(ranked) - 1} gaps between neighbours in this ranking are "
                   f"within two standard errors (the ± is as large as the gaps): the order of "
                   f"{', '.join(names)} is not resolved; more evaluation prompts narrow the ±.")
    return out


def collapse_flags(policies: dict[str, dict], stages: Sequence[StageRun] = ()) -> list[str]:
    """Length and diversity collapse: a policy whose mean response length or distinct-2 is below
    COLLAPSE_FRACTION of the reference's on the same prompts, and a training run whose logged
    response length ends below that fraction of where it started."""
    out = []
    for name, res in policies.items():
        for key, what in (("length", "response length"), ("distinct_2", "distinct-2 (diversity)")):
            pol = _mean(_get(res, "policy", key)) if key == "length" else _finite(_get(res, "policy", key))
            ref = _mean(_get(res, "reference", key)) if key == "length" else _finite(_get(res, "reference", key))
            if pol is not None and ref and pol < COLLAPSE_FRACTION * ref:
                out.append(f"{what} collapse: {name} {pol:.3g} against the reference's {ref:.3g} "
                           f"({pol / ref - 1:+.0%}); read its samples before trusting its reward.")
    for st in stages:
        x, y = _series(st.metrics, "response_length") if st.metrics else ([], [])
        if len(y) >= 4:
            k = max(1, len(y) // 5)
            first, last = sum(y[:k]) / k, sum(y[-k:]) / k
            if first > 0 and last < COLLAPSE_FRACTION * first:
                out.append(f"length collapse in training: {st.name}'s responses went from {first:.3g} to "
                           f"{last:.3g} tokens (mean of the first and last {k} logged steps).")
    return out


def _stage_seconds(st: StageRun) -> float | None:
    s = st.summary or {}
    return _finite(s.get("wall_time_s", s.get("seconds")))


def _duration(sec: float | None) -> str:
    if sec is None:
        return "-"
    return f"{sec:.1f} s" if sec < 120 else f"{sec / 60:.1f} min"


def _environment() -> str:
    """Where the report was written: CPU, GPU name when torch is already loaded, and versions."""
    import os
    import platform
    from importlib import metadata

    vers = []
    for pkg in ("rlhf", "torch", "transformers", "accelerate", "peft"):
        try:
            vers.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            continue
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()}, Python {platform.python_version()}, {cpu}, "
            f"{os.cpu_count()} CPUs; " + ", ".join(vers))


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;
border-bottom:1px solid #ddd;padding-bottom:.2em}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top;white-space:pre-wrap}
th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}tr.prompt td{background:#fafafa;
font-style:italic}img{max-width:100%;height:auto}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
.caption{color:#444;font-size:.92em;max-width:60em}dl.gloss{display:grid;grid-template-columns:max-content 1fr;
gap:.2em 1em;font-size:.9em}dl.gloss dt{font-weight:600}dl.gloss dd{margin:0}
.note{color:#8a5a00;background:#fff8e6;border-left:3px solid #e0b040;padding:.4em .8em}.muted{color:#777}
.verdict{font-size:1.05em;background:#eef6ee;border-left:3px solid #4a4;padding:.4em .8em}
"""

_e = html.escape


def _fmt(v: Any, digits: int = 3) -> str:
    x = _finite(v)
    return "-" if x is None else f"{x:.{digits}f}"


def _pm(d: Any, digits: int = 3) -> str:
    m, se = _mean(d), _finite(_get(d, "stderr"))
    return "-" if m is None else f"{m:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def _rows(rows: list[list[str]], num_from: int = 1) -> str:
    """Table rows, every cell escaped; columns from ``num_from`` on are right-aligned numbers."""
    return "".join("<tr>" + "".join(f"<td{' class=num' if j >= num_from else ''}>{_e(str(c))}</td>"
                                    for j, c in enumerate(r)) + "</tr>" for r in rows)


def _table(header: list[str], body: str | list[list[str]], num_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>{body if isinstance(body, str) else _rows(body, num_from)}</table>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _bon_rows(stages: list[StageRun], policies: dict[str, dict], sources: list[str]) -> list[list[str]]:
    """One headline row per best-of-n stage: the reward at its largest n under each source it was
    scored with, and the KL bound log n - (n-1)/n (no win rate, length or diversity: only scores
    are kept)."""
    found: dict[str, dict[str, dict]] = {}  # stage -> source -> the point at the largest n
    for src in sources:
        for name, pts in _bon_curves(stages, policies, src):
            found.setdefault(name, {})[src] = max(pts, key=lambda p: _num(p["n"]) or 0)
    own_n = {st.name: _num((st.summary or {}).get("n")) for st in stages}
    for name, by_src in found.items():  # the n the stage ran with (its curve may go further, to its pool size)
        n = own_n.get(name)
        for src in list(by_src):
            at_n = [p for p in dict(_bon_curves([s for s in stages if s.name == name], policies, src)).get(name, [])
                    if n is not None and _num(p["n"]) == n]
            if at_n:
                by_src[src] = at_n[0]
    rows = []
    for name, by_src in found.items():
        top = max(by_src.values(), key=lambda p: _num(p["n"]) or 0)
        rows.append([f"{name} (n = {int(_num(top['n']) or 0)})",
                     *[_fmt(by_src[s]["y"]) if s in by_src else "-" for s in sources],
                     "-", _fmt(top["bound"]) + " (bound)" if top["bound"] is not None else "-", "-", "-"])
    return rows


def headline_table(policies: dict[str, dict], stages: Sequence[StageRun] = ()) -> str:
    """Per policy: reward ± standard error per source, win rate against the reference under the
    first source (gold when present), KL, length, distinct-2; then the best-of-n stages."""
    if not policies:
        return _note("Skipped: no eval/results.json with evaluated policies.")
    sources = _sources(policies)
    first = sources[0] if sources else None
    header = ["policy"] + [f"{s} reward" for s in sources] + [f"win rate vs ref ({first})", "KL (nats)",
                                                               "length (tokens)", "distinct-2"]
    rows = []
    ref = next((r["reference"] for r in policies.values() if isinstance(r.get("reference"), dict)), None)
    if ref is not None and "sft" not in policies:
        rows.append(["reference"] + [_pm(_get(ref, "reward", s)) for s in sources] +
                    ["-", "0", _pm(ref.get("length"), 1), _fmt(ref.get("distinct_2"))])
    for name, res in policies.items():
        kl = res.get("kl")
        rows.append([name] + [_pm(_get(res, "policy", "reward", s)) for s in sources] +
                    [_fmt(_get(res, "win_rate", first, "win_rate")) if first else "-",
                     _pm(kl) if _mean(kl) is not None else _fmt(_policy_kl(name, res)),
                     _pm(_get(res, "policy", "length"), 1), _fmt(_get(res, "policy", "distinct_2"))])
    rows += _bon_rows(list(stages), policies, sources)
    return _table(header, rows)


def samples_table(policies: dict[str, dict]) -> str:
    """Eval example rows grouped by prompt: the reference's response, then each policy's."""
    sources = _sources(policies)
    by_prompt: dict[str, list[list[str]]] = {}
    for name, res in policies.items():
        for ex in res.get("examples") or []:
            rows = by_prompt.setdefault(str(ex.get("prompt", "")), [])
            if "reference" in ex and not rows:
                rows.append(["reference", str(ex["reference"])] +
                            [_fmt(_get(ex, "rewards", s, "reference")) for s in sources])
            rows.append([name, str(ex.get("policy", ""))] +
                        [_fmt(_get(ex, "rewards", s, "policy")) for s in sources])
    if not by_prompt:
        return _note("Skipped: the eval results hold no example rows.")
    header = ["model", "response"] + sources
    body = "".join(f'<tr class="prompt"><td colspan="{len(header)}">prompt: {_e(p)}</td></tr>'
                   + _rows(rows, num_from=2) for p, rows in by_prompt.items())
    return _table(header, body)


def _training_samples(stages: list[StageRun]) -> str:
    parts = []
    for st in stages:
        for tab in (st.samples[:1] + st.samples[-1:]) if len(st.samples) > 1 else st.samples:
            rows = [r for r in tab["samples"] if isinstance(r, dict)]
            cols = sorted({k for r in rows for k in r} - {"prompt", "completion"},
                          key=lambda k: (k != "score", k))
            cells = [[str(r.get("prompt", "")), str(r.get("completion", ""))] + [_fmt(r.get(c)) for c in cols]
                     for r in rows]
            parts.append(f"<h3>{_e(st.name)}, step {_e(str(tab['step']))}</h3>"
                         + _table(["prompt", "completion"] + cols, cells, num_from=2))
    return "<details><summary>first and last sample tables logged in training</summary>" + "".join(parts) + \
        "</details>" if parts else ""


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


_GLOSSARY = (
    ("gold reward", "the true reward: on the built-in task a hidden function that plays the human "
                    "(rlhf/testbed); no training stage ever sees it, it is only measured."),
    ("proxy reward", "the reward model's score: what PPO, best-of-n and the rejection-sampling "
                     "methods optimise. Over-optimisation is the proxy rising while gold falls."),
    ("± (after a number)", "one standard error of the mean over the evaluated prompts (the samples of "
                           "one prompt are averaged first, so it is not overstated by repeated samples)."),
    ("KL (nats)", "KL(π ‖ π_ref) of the policy from the reference (the SFT model), estimated on the "
                  "policy's own samples as the mean of log π(y) − log π_ref(y) per completion (the k1 "
                  "estimator, unbiased); larger means the policy moved further from where it started."),
    ("KL (bound) for best-of-n", "log n − (n−1)/n, the KL of the best-of-n distribution when no two "
                                 "samples tie (Stiennon et al. 2020); the measured value is usually lower."),
    ("win rate vs ref", "how often the policy's sample beats the reference's sample for the same "
                        "prompt under that reward (ties count half)."),
    ("length (tokens)", "completion length, generated tokens."),
    ("distinct-2", "distinct bigrams / all bigrams over the policy's completions: low values mean "
                   "repetitive, collapsed outputs."),
)


def _glossary() -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _GLOSSARY)
    return f'<details open><summary>How to read this report</summary><dl class="gloss">{items}</dl></details>'


def _caption(text: str) -> str:
    return f'<p class="caption">{_e(text)}</p>'


def _rel(path: Path, root: Path) -> str:
    """A stage folder as the reader needs it: relative to the run folder when inside it."""
    try:
        return str(path.resolve().relative_to(root.resolve())) or "."
    except ValueError:
        return str(path)


def _verdict_html(run: Run) -> str:
    lines = verdict(run.policies)
    flags = collapse_flags(run.policies, run.stages)
    if not lines and not flags:
        return ""
    body = "".join(f'<p class="{"note" if ln.startswith("Warning") else "verdict"}">{_e(ln)}</p>' for ln in lines)
    body += "".join(_note(f"Flag: {f}") for f in flags)
    return f'<div class="summary">{body}</div>'


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, title: str | None = None, *,
                 sqrt_kl: bool = True, window: int = 5) -> Path:
    """Write ``report.html`` (images embedded as base64 PNG) and the PNGs into ``out_dir``
    (default: ``<run folder>/report``, where ``rlhf pipeline`` writes it too). Returns the HTML's
    path. ``sqrt_kl``: the over-optimisation x axis is √KL as in Gao et al.; ``window``: points
    in the moving averages."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"RLHF run report: {run.path.resolve().name}"

    def figure(name: str, alt: str, draw) -> str:
        png = out / name
        try:
            data = _png(draw())
        except Skipped as e:
            png.unlink(missing_ok=True)  # no stale image from an earlier report
            return _note(f"Skipped: {e}")
        except Exception as e:  # a report should survive one bad input; say what went wrong
            print(f"rlhf report: {name}: {type(e).__name__}: {e}", file=sys.stderr)
            png.unlink(missing_ok=True)
            return _note(f"Could not draw this plot: {type(e).__name__}: {e}")
        png.write_bytes(data)
        return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'

    stage_rows = [[str(i), s.name, s.type, s.status or "-", _rel(s.path, run.path),
                   _fmt(s.metrics[-1]["step"], 0) if s.metrics else "-", _duration(_stage_seconds(s))]
                  for i, s in enumerate(run.stages, 1)]
    total = sum(t for s in run.stages if (t := _stage_seconds(s)) is not None)
    configs = "".join(f"<details><summary>{_e(s.name)} ({_e(s.type)}): config.yaml</summary>"
                      f"<pre>{_e(s.config)}</pre></details>" for s in run.stages if s.config)
    now = datetime.datetime.now().isoformat(timespec="seconds")
    notes = run.notes + [n for s in run.stages for n in s.notes]
    parts = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">run folder {_e(run.path.resolve().name)} · written {_e(now)} · folders below '
        f'are relative to the run folder</p>',
        f'<p class="muted">report written on: {_e(_environment())}</p>',
        _verdict_html(run),
        _glossary(),
        "<h2>Stages, in run order</h2>",
        _table(["#", "stage", "type", "status", "folder", "last step", "time"], stage_rows, num_from=5)
        + _caption(f"Time: each stage's own wall-clock time (summary.json); {_duration(total)} in all.")
        if stage_rows else _note("No stages found in this folder."),
        "".join(_note(n) for n in notes),
        "<h2>Headline</h2>",
        _caption("Every method on the same held-out prompts, against the reference (the SFT policy). "
                 "Higher gold reward at lower KL is better; best-of-n rows keep the highest-proxy of n samples."),
        headline_table(run.policies, run.stages),
        "<h2>Reward vs KL frontier</h2>",
        _caption("Each point is one method: its reward (± standard error) against how far it moved from the "
                 "reference. The grey curve is best-of-n at n = 1, 2, 4, ... (solid: the KL bound; dashed: "
                 "the KL measured on the sample pool). Up and to the left is better."),
        figure("frontier.png", "reward against KL to the reference per policy",
               lambda: plot_frontier(run.policies, run.stages)),
        "<h2>Over-optimisation</h2>",
        _caption("Over PPO training: proxy reward (left axis) and gold reward (right axis, its own scale) "
                 "against √KL; faint dots are logged steps, lines their moving average, the star the gold "
                 "peak. Past the peak the policy exploits the reward model."),
        figure("overoptimization.png", "proxy and gold reward against KL over PPO training",
               lambda: plot_overoptimization(run.stages, sqrt_kl, window)),
        _caption("Gao et al. (2022)'s functional forms fitted to this run, d = √KL, in gain of gold reward "
                 "over the start (RL: a stage's own logged steps; best-of-n: its curve judged by gold). α is "
                 "the initial slope, β how fast over-optimisation eats it; the fitted curve peaks at the KL "
                 "in the last column."),
        gao_table(run.stages, run.policies),
        "<h2>Training curves</h2>",
        _caption(f"Per stage, in run order, one panel per quantity it logged. Faint: raw values; solid: "
                 f"their {window}-point moving average; markers: evaluation points or short series. "
                 f"Rejection-sampling and iterative methods count rounds."),
        figure("training_curves.png", "training curves per stage",
               lambda: plot_training_curves(run.stages, window)),
        "<h2>Sample responses</h2>", samples_table(run.policies), _training_samples(run.stages),
        "<h2>Configs</h2>", configs or _note("Skipped: no stage folder holds a config.yaml."),
    ]
    return _write_page(out / "report.html", title, parts)


def _write_page(path: Path, title: str, parts: list[str]) -> Path:
    """One self-contained HTML page at ``path``, written to a hidden temporary file first and
    renamed, so that a reader never sees half a page."""
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
           f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(path)
    return path


def write_comparison(run_a: str | Path, run_b: str | Path, out_dir: str | Path | None = None) -> Path:
    """``compare.html``: two runs side by side: each one's verdict, then per policy evaluated in
    both, its reward under each shared source in A and in B, B − A and whether that difference
    exceeds two standard errors (resolved). Default folder: ``<run_a>/report``."""
    a, b = load_run(run_a), load_run(run_b)
    out = Path(out_dir) if out_dir is not None else a.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    na, nb = a.path.resolve().name, b.path.resolve().name
    if na == nb:
        na, nb = str(a.path), str(b.path)
    sources = [x for x in _sources(a.policies) if x in _sources(b.policies)]
    rows = []
    for name in [p for p in a.policies if p in b.policies]:
        for src in sources:
            ra, rb = _get(a.policies[name], "policy", "reward", src), _get(b.policies[name], "policy", "reward", src)
            ma, mb = _mean(ra), _mean(rb)
            if ma is None or mb is None:
                continue
            sa, sb = _finite(_get(ra, "stderr")), _finite(_get(rb, "stderr"))
            two_se = 2 * math.sqrt(sa ** 2 + sb ** 2) if sa is not None and sb is not None else None
            d = mb - ma
            rows.append([name, src, _pm(ra), _pm(rb), f"{d:+.3f}",
                         "-" if two_se is None else ("yes" if abs(d) > two_se else "no") + f" (2 se {two_se:.3f})"])
    stage_rows = []
    times = {s.name: _stage_seconds(s) for s in b.stages}
    for s in a.stages:
        if s.name in times:
            stage_rows.append([s.name, _duration(_stage_seconds(s)), _duration(times[s.name])])

    def side(run: Run, label: str) -> str:
        lines = verdict(run.policies) + [f"Flag: {f}" for f in collapse_flags(run.policies, run.stages)]
        return f"<h2>{_e(label)}</h2>" + ("".join(f"<p>{_e(x)}</p>" for x in lines) or _note("no evaluated policies"))

    title = f"RLHF runs compared: {na} (A) and {nb} (B)"
    parts = [f"<h1>{_e(title)}</h1>", f'<p class="muted">report written on: {_e(_environment())}</p>',
             side(a, f"A: {na}"), side(b, f"B: {nb}"),
             "<h2>Per policy, A against B</h2>",
             _caption("Resolved: |B − A| exceeds two standard errors of the difference (the two runs' "
                      "evaluations taken as independent)."),
             _table(["policy", "reward", f"A: {na}", f"B: {nb}", "B − A", "resolved"], rows, num_from=2)
             if rows else _note("No policy is evaluated under the same reward in both runs."),
             "<h2>Time per stage</h2>",
             _table(["stage", f"A: {na}", f"B: {nb}"], stage_rows) if stage_rows else _note("No stage in common.")]
    return _write_page(out / "compare.html", title, parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rlhf report", description="Turn a pipeline run folder into a "
                                "self-contained report.html (plots embedded) plus the PNGs; with two "
                                "folders, compare.html with the two runs side by side.")
    p.add_argument("run_dir", help="the run folder (pipeline.json, stage folders, eval/results.json)")
    p.add_argument("other", nargs="?", help="a second run folder: write compare.html, the two side by side")
    p.add_argument("--out", default=None, help="folder for report.html and the PNGs (default: RUN_DIR/report, "
                                               "where rlhf pipeline writes it)")
    p.add_argument("--title", default=None, help="the report's title")
    p.add_argument("--linear-kl", action="store_true", help="over-optimisation plot against KL, not √KL")
    p.add_argument("--smooth", type=int, default=5, help="points in the moving average (default 5)")
    a = p.parse_args(argv)
    try:
        if a.other:
            path = write_comparison(a.run_dir, a.other, a.out)
        else:
            path = write_report(a.run_dir, a.out, a.title, sqrt_kl=not a.linear_kl, window=a.smooth)
    except FileNotFoundError as e:
        print(f"rlhf report: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
