"""``rlhf <stage> [config.yaml | --recipe NAME] [key=value ...]``: parse, validate, then call the recipe.

Training stages take a YAML config (a file, or a recipe shipped in rlhf/configs/) plus dotted
overrides; everything is validated before any work starts. Tools (generate, tiny-model,
quickstart, recipes) take ordinary flags.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlhf import __version__

__all__ = ["main", "STAGES"]


@dataclass(frozen=True)
class Stage:
    config: str  # "module:Class"
    run: str  # "module:function"
    summary: str

    def load(self, ref: str) -> Any:
        mod, name = ref.split(":")
        return getattr(importlib.import_module(mod), name)


# Training stages: one typed config class and one recipe each.
STAGES: dict[str, Stage] = {
    "sft": Stage("rlhf.recipes.sft:SFTConfig", "rlhf.recipes.sft:train",
                 "supervised (instruction) fine-tuning of a causal LM"),
    "rm": Stage("rlhf.recipes.rm:RMConfig", "rlhf.recipes.rm:train",
                "reward model from pairwise or ranked preferences (Bradley-Terry, margin)"),
    "dpo": Stage("rlhf.recipes.dpo:DPOConfig", "rlhf.recipes.dpo:train",
                 "offline preference optimisation: DPO, IPO, hinge, SimPO, ORPO, KTO"),
    "ppo": Stage("rlhf.recipes.ppo:PPOConfig", "rlhf.recipes.ppo:train",
                 "online RL against a reward source: PPO (GAE + critic), GRPO, Dr. GRPO, RLOO, REINFORCE++, ReMax"),
    "best-of-n": Stage("rlhf.recipes.best_of_n:BestOfNConfig", "rlhf.recipes.best_of_n:train",
                       "best-of-n sampling: keep the highest-reward of n completions per prompt; reward curve and KL"),
    "raft": Stage("rlhf.recipes.rejection:RAFTConfig", "rlhf.recipes.rejection:train",
                  "rejection-sampling fine-tuning (RAFT / Llama 2): sample K, keep the best, SFT; R rounds"),
    "rest": Stage("rlhf.recipes.rejection:ReSTConfig", "rlhf.recipes.rejection:train_rest",
                  "ReST: Grow (sample from the policy) then Improve (SFT above rising reward thresholds)"),
    "iterative-dpo": Stage("rlhf.recipes.iterative_dpo:IterativeDPOConfig", "rlhf.recipes.iterative_dpo:train",
                           "iterative / online DPO: sample pairs from the current policy, label, DPO; per round"),
    "constitutional": Stage("rlhf.recipes.constitutional:ConstitutionalConfig", "rlhf.recipes.constitutional:train",
                            "Constitutional AI (supervised): critique and revise against principles, "
                            "SFT on the revisions"),
    "hindsight": Stage("rlhf.recipes.hindsight:HindsightConfig", "rlhf.recipes.hindsight:train",
                       "hindsight instruction relabeling: sample, relabel with an instruction it satisfies, "
                       "SFT; rounds"),
}

# Tools: their own argparse flags.
TOOLS: dict[str, tuple[str, str]] = {
    "generate": ("rlhf.tools.generate:main", "sample completions from any checkpoint for a quick look"),
    "eval": ("rlhf.tools.eval:main",
             "a policy against a reference: reward, win rate, KL, length, diversity (JSON out)"),
    "report": ("rlhf.report:main", "turn a run folder into a self-contained report.html: reward-vs-KL "
                                   "frontier, over-optimisation, training curves, samples, configs"),
    "pipeline": ("rlhf.pipeline:main", "run stages declared in one YAML (sft -> rm -> ppo / dpo / best-of-n "
                                       "-> eval -> report), resuming where it stopped"),
    "score": ("rlhf.tools.score:main", "add a reward column to a file with any reward source"),
    "label": ("rlhf.tools.label:main", "turn prompts + two responses into a preference file with a judge "
                                       "(an LM asked A or B, both orders, or any reward source)"),
    "audit": ("rlhf.tools.audit:main", "list every entry of a config that runs code or trusts remote code "
                                       "(parsed as the stage parses it)"),
    "recipes": ("rlhf.configs:main", "list the configs shipped with rlhf (rlhf <stage> --recipe NAME "
                                     "starts from one)"),
    "tiny-model": ("rlhf.tools.tiny:main", "build a tiny random-weight model + tokenizer for tests and demos"),
    "quickstart": ("rlhf.tools.quickstart:main",
                   "the built-in demo, end to end on a laptop CPU (what `make demo` runs)"),
}


# Methods that are options of a stage, not stages: `rlhf grpo` must point at `rlhf ppo
# advantage=grpo`, not at whatever stage name is spelled alike (difflib offered `report`).
METHODS: dict[str, str] = {
    **{m: f"rlhf ppo: rlhf ppo CONFIG advantage={m}" for m in
       ("grpo", "dr_grpo", "rloo", "reinforce_pp", "remax", "gae")},
    "reinforce++": "rlhf ppo: rlhf ppo CONFIG advantage=reinforce_pp",
    "reinforce_plus_plus": "rlhf ppo: rlhf ppo CONFIG advantage=reinforce_pp",
    **{m: f"rlhf dpo: rlhf dpo CONFIG loss={m}" for m in ("ipo", "hinge", "simpo", "orpo", "kto")},
    "reward_model": "rlhf rm: rlhf rm CONFIG",
    "bon": "rlhf best-of-n: rlhf best-of-n CONFIG",
    "best_of_n": "rlhf best-of-n: rlhf best-of-n CONFIG",
}


def _top_help() -> str:
    lines = [f"rlhf {__version__}: align language models with human and AI feedback", "",
             "usage: rlhf <stage> [CONFIG.yaml | --recipe NAME] [key=value ...]", "       rlhf <tool> [flags]", "",
             "stages (rlhf <stage> --help lists every option with its default):"]
    w = max(map(len, [*STAGES, *TOOLS]))
    lines += [f"  {k:<{w}}  {s.summary}" for k, s in STAGES.items()]
    lines += ["", "tools:"]
    lines += [f"  {k:<{w}}  {s}" for k, (_, s) in TOOLS.items()]
    lines += ["", "example: rlhf sft --recipe tiny train.lr=1e-4 output_dir=runs/my-sft   (rlhf recipes lists them)"]
    return "\n".join(lines)


def run_stage(name: str, argv: list[str]) -> int:
    from rlhf.config import ConfigError, load_config

    stage = STAGES[name]
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: rlhf {name} [CONFIG.yaml | --recipe NAME] [key=value ...]\n\n{stage.summary}.\n"
              f"Options (set them in the YAML file or as dotted key=value overrides):\n")
        print(_stage_help(name))
        return 0
    from rlhf.console import quiet_third_party
    quiet_third_party()
    cls = stage.load(stage.config)
    try:
        path, argv = _config_source(name, argv)
        cfg = load_config(cls, path, argv)
    except ConfigError as e:
        print(f"rlhf {name}: config error: {e}", file=sys.stderr)
        return 2
    run: Callable[[Any], Any] = stage.load(stage.run)
    return _run_guarded(name, lambda: run(cfg))


def _stage_help(name: str) -> str:
    """The options list, from rlhf/_stage_help.json (generated by ``make docs``; a test keeps it
    current): importing the config class means importing the recipe, hence torch and
    transformers, seconds before anything prints. A stage missing from the file is formatted
    from its class."""
    import json
    from pathlib import Path

    cache = Path(__file__).resolve().parent / "_stage_help.json"
    if cache.is_file():
        text = json.loads(cache.read_text()).get(name)
        if text is not None:
            return str(text)
    from rlhf.config import format_help
    stage = STAGES[name]
    return format_help(stage.load(stage.config))


def _config_source(stage: str, argv: list[str]) -> tuple[str | None, list[str]]:
    """Split ``[CONFIG.yaml | --recipe NAME] key=value ...`` into the YAML path and the overrides."""
    from rlhf.config import ConfigError
    from rlhf.configs import RecipeNotFound, recipe_path

    path: str | None = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--recipe" or a.startswith("--recipe="):
            value = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in a else 2
            if not value:
                raise ConfigError("--recipe", "needs a name (rlhf recipes lists them)")
            if path is not None:
                raise ConfigError("--recipe", f"give a config file or a recipe, not both (got {path})")
            try:
                path = str(recipe_path(stage, value))
            except RecipeNotFound as e:
                raise ConfigError("--recipe", str(e)) from None
            continue
        if i == 0 and "=" not in a:
            path = a
        else:
            rest.append(a)
        i += 1
    return path, rest


def os_error_line(e: OSError) -> str:
    """An OSError as one line: the path(s), the cause (strerror) and the errno's name."""
    import errno as errno_mod

    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    if not paths and e.errno is None:
        return " ".join(str(e).split())  # an OSError raised with a message only: it is the line
    paths = paths or "(path not known)"
    code = f" [{errno_mod.errorcode.get(e.errno, e.errno)}]" if e.errno is not None else ""
    return f"{paths}: {e.strerror or e}{code}"


def _loaded_errors() -> tuple[type[BaseException], ...]:
    found = []
    for module, cls in (("rlhf.data.errors", "DataError"), ("rlhf.models.load", "HubError"),
                        ("rlhf.models.load", "ModelError"), ("rlhf.train.guards", "NonFiniteError"),
                        ("rlhf.rewards", "RewardError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], cls))
    return tuple(found)


def _close_progress_bars() -> None:
    """End any open progress bar's line, so that an error starts on a line of its own (not glued
    to the bar's ``... loss=5.72]``)."""
    tqdm_std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm_std, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - cosmetic only
            pass


def _rank() -> int:
    """This process's rank in a multi-process run (torchrun / accelerate launch set RANK); 0 alone."""
    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        return 0


# A collective that failed because another process of the run exited (it printed why).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
              "remote worker crashing", "ProcessGroup", "Socket Timeout")


def _peer_failure(e: BaseException) -> bool:
    dist_errors = tuple(c for c in (getattr(sys.modules.get("torch.distributed"), n, None)
                                    for n in ("DistError", "DistBackendError", "DistNetworkError"))
                        if isinstance(c, type))
    return (isinstance(e, dist_errors) if dist_errors else False) or \
        (isinstance(e, RuntimeError) and any(m in str(e) for m in _PEER_GONE))


def _run_guarded(name: str, fn: Callable[[], Any]) -> int:
    """Turn the errors a user can fix (bad data, unusable output folder, a full or read-only
    disk, a diverged run) into one clear line.

    In a multi-process run every process reads the same config and data, so an error about them
    is printed by rank 0 only (not once per process); the other ranks exit with the same code.
    A rank whose collective fails because another process exited says so in one line instead
    of the backend's traceback (gloo's 'Connection closed by peer')."""
    from rlhf.config import ConfigError
    from rlhf.train.run import RunDirError

    rank = _rank()

    def say(line: str, same_everywhere: bool = True) -> None:
        if rank == 0:
            print(line, file=sys.stderr)
        elif not same_everywhere:
            print(line.replace(f"rlhf {name}: ", f"rlhf {name}: [rank {rank}] ", 1), file=sys.stderr)

    try:
        try:
            fn()
        except BaseException:
            _close_progress_bars()
            raise
    except ConfigError as e:  # a value only checkable at run time (a reward spec, a folder)
        say(f"rlhf {name}: config error: {e}")
        return 2
    except RunDirError as e:
        say(f"rlhf {name}: error: {e}")
        return 1
    except OSError as e:  # read-only, full, permission: every publish is atomic, so nothing is half-written
        if isinstance(e, _loaded_errors()):  # e.g. a model path that does not exist: its message says it all
            say(f"rlhf {name}: error: {e}")
            return 1
        # Only a training stage has checkpoints to resume from; a tool just needs rerunning.
        then = ("rerun to resume from the last checkpoint once this is fixed" if name in STAGES
                else "rerun once this is fixed")
        say(f"rlhf {name}: error: {os_error_line(e)}; nothing half-written was left ({then})", same_everywhere=False)
        return 1
    except Exception as e:
        # DataError, HubError and NonFiniteError live in packages that import torch: looked up once
        # something failed (a module that raised one of them is loaded by then), so that
        # `rlhf <tool> --help` stays free of heavy imports.
        if isinstance(e, _loaded_errors()):
            # A reward or a non-finite value comes from this rank's own batch: every rank says its own.
            say(f"rlhf {name}: error: {e}",
                same_everywhere=type(e).__name__ not in ("RewardError", "NonFiniteError"))
            return 1
        if rank > 0 and _peer_failure(e):
            print(f"rlhf {name}: [rank {rank}] stopped: another process of this run exited (its message says why)",
                  file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        if rank == 0:
            print(f"\nrlhf {name}: interrupted; rerun the same command to resume from the last checkpoint",
                  file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name in STAGES:
        return run_stage(name, rest)
    if name in TOOLS:
        mod, fn = TOOLS[name][0].split(":")
        if name != "recipes" and not any(a in ("-h", "--help") for a in rest):
            from rlhf.console import quiet_third_party
            quiet_third_party()
        codes: list[int] = []
        rc = _run_guarded(name, lambda: codes.append(int(getattr(importlib.import_module(mod), fn)(rest) or 0)))
        return codes[0] if codes else rc
    import difflib
    method = METHODS.get(name.lower().replace("-", "_"))
    if method is not None:
        print(f"rlhf: unknown stage or tool {name!r}: {name} is a method of {method}\n\n{_top_help()}",
              file=sys.stderr)
        return 2
    close = difflib.get_close_matches(name, list(STAGES) + list(TOOLS), n=1)
    print(f"rlhf: unknown stage or tool {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
          + "\n\n" + _top_help(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
