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
from typing import Any

from rlhf import __version__
from rlhf.stages import STAGES

__all__ = ["main", "STAGES", "ALIASES", "leaf_keys"]


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
    by_stage: dict[str, list[str]] = {}
    for alias, (stage, setting) in ALIASES.items():
        by_stage.setdefault(f"rlhf {stage}" + (f" {setting.split('=')[0]}=..." if setting else ""), []).append(alias)
    lines += ["", "aliases: " + "; ".join(f"{', '.join(names)} = {target}" for target, names in by_stage.items())]
    lines += ["", "tools:"]
    lines += [f"  {k:<{w}}  {s}" for k, (_, s) in TOOLS.items()]
    lines += ["", "example: rlhf sft --recipe tiny train.lr=1e-4 output_dir=runs/my-sft   (rlhf recipes lists them)"]
    return "\n".join(lines)


# Method names a TRL / paper user types, run as the stage that implements them with one setting.
ALIASES: dict[str, tuple[str, str]] = {
    "grpo": ("ppo", "advantage=grpo"), "dr-grpo": ("ppo", "advantage=dr_grpo"),
    "rloo": ("ppo", "advantage=rloo"), "reinforce++": ("ppo", "advantage=reinforce_pp"),
    "reinforce-pp": ("ppo", "advantage=reinforce_pp"), "remax": ("ppo", "advantage=remax"),
    "ipo": ("dpo", "loss=ipo"), "simpo": ("dpo", "loss=simpo"), "orpo": ("dpo", "loss=orpo"),
    "kto": ("dpo", "loss=kto"), "reward-model": ("rm", ""), "bon": ("best-of-n", ""),
}


def run_stage(name: str, argv: list[str], alias: str = "") -> int:
    from rlhf.config import ConfigError, load_config

    stage = STAGES[name]
    if any(a in ("-h", "--help") for a in argv):
        if alias:
            print(f"rlhf {alias} is rlhf {name} {ALIASES[alias][1]}".rstrip() + "\n")
        print(f"usage: rlhf {name} [CONFIG.yaml | --recipe NAME] [key=value ...]\n\n{stage.summary}.\n"
              f"Options (set them in the YAML file or as dotted key=value overrides):\n")
        print(_stage_help(name))
        return 0
    try:
        _refuse_flags(name, argv)
        path, argv = _config_source(name, argv)
        _precheck(name, path, argv)
    except ConfigError as e:
        print(f"rlhf {name}: config error: {e}", file=sys.stderr)
        return 2
    from rlhf.console import quiet_third_party
    quiet_third_party()
    cls = stage.load(stage.config)  # imports the recipe: torch, transformers (seconds)
    try:
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


def _schema(name: str) -> dict[str, Any] | None:
    """Stage ``name``'s entry in rlhf/_stage_schema.json (``make docs`` writes it; a test keeps it
    current), or None when the file lacks it."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent / "_stage_schema.json"
    if not path.is_file():
        return None
    entry = json.loads(path.read_text()).get(name) if name != "_sources" else None
    return entry if isinstance(entry, dict) else None


def leaf_keys(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Every dotted option key of a stage's schema."""
    out: list[str] = []
    for f in schema["fields"]:
        key = f"{prefix}.{f['name']}" if prefix else f["name"]
        t = f["type"]
        t = t.get("optional", t) if isinstance(t, dict) else t
        out += leaf_keys(t, key) if isinstance(t, dict) and "dataclass" in t else [key]
    return out


def _precheck(name: str, path: str | None, overrides: list[str]) -> None:
    """Check keys, types, choices and bounds (against the schema) and the local data and model
    paths, before the recipe and its torch import: a typo is reported in a fraction of a second.
    The real class checks everything again, cross-field rules included, once it is imported."""
    from rlhf.config import ConfigError, class_from_schema, from_dict, load_data

    schema = _schema(name)
    data = load_data(path, overrides)
    if schema is not None:
        try:
            from_dict(class_from_schema(schema), data)
        except ConfigError:
            if not _schema_may_be_stale():
                raise
            # A source file changed after the schema was generated (a working tree before `make
            # docs`): the schema may lack a new key or choice, so the real class decides.
    _check_paths(data)


def _schema_may_be_stale() -> bool:
    """Whether a module defining a config class differs from when rlhf/_stage_schema.json was
    generated (its ``_sources``: sha256 per file), e.g. a working tree before `make docs`."""
    import hashlib
    import json
    from pathlib import Path

    pkg = Path(__file__).resolve().parent
    try:
        sources = json.loads((pkg / "_stage_schema.json").read_text()).get("_sources") or {}
        return not sources or any(hashlib.sha256((pkg / rel).read_bytes()).hexdigest() != digest
                                  for rel, digest in sources.items())
    except (OSError, ValueError):
        return True


_DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".gz")


def _did_you_mean_file(value: str) -> str:
    """'; did you mean 'train.jsonl'?' when a file or folder next to ``value`` has a close name."""
    import difflib
    import os

    folder = os.path.dirname(os.path.expanduser(value)) or "."
    try:
        names = os.listdir(folder)
    except OSError:
        return ""
    close = difflib.get_close_matches(os.path.basename(value), names, n=1, cutoff=0.6)
    return f"; did you mean {os.path.join(os.path.dirname(value), close[0])!r}?" if close else ""


def _check_paths(data: dict[str, Any]) -> None:
    """A data file or model folder that is clearly local (a data suffix, ./ / ~, more than one /,
    runs/ (where rlhf writes), or a first folder that exists here) must exist; hub ids are left
    to the loaders."""
    import os

    from rlhf.config import ConfigError

    def local(value: str) -> bool:
        first = value.split("/", 1)[0]
        return (value.startswith(("/", ".", "~", "runs/")) or value.count("/") > 1
                or ("/" in value and os.path.isdir(first)))

    checks: list[tuple[str, Any, str]] = []
    section = data.get("data")
    if isinstance(section, dict):
        checks += [(f"data.{k}", section.get(k), "file") for k in ("train", "eval")]
    model = data.get("model")
    if isinstance(model, dict):
        checks += [(f"model.{k}", model.get(k), "folder") for k in ("name_or_path", "tokenizer")]
    checks += [(k, data.get(k), "folder") for k in ("reference_model", "value_model")]
    reward = data.get("reward")
    if isinstance(reward, str) and ":" not in reward:  # not a module:function spec
        checks.append(("reward", reward, "folder"))
    for key, value, kind in checks:
        if not isinstance(value, str) or not value or os.path.exists(os.path.expanduser(value)):
            continue
        if kind == "file" and not (value.lower().endswith(_DATA_SUFFIXES) or local(value)):
            continue  # a hub dataset id
        if kind == "folder" and not local(value):
            continue  # a hub model id
        hint = _did_you_mean_file(value)
        if value.startswith("runs/quickstart/"):
            hint = ("; the tiny recipes start from the full demo's outputs: run `rlhf quickstart` first"
                    + (" (`rlhf quickstart --fast` wrote runs/quickstart-fast/: point this key there)"
                       if os.path.isdir("runs/quickstart-fast") else ""))
        elif not hint and kind == "folder" and value.startswith("runs/"):
            hint = ("; an earlier stage writes it (e.g. `rlhf tiny-model --out runs/tiny --texts train.jsonl`, "
                    "or an earlier `rlhf sft`), or point the key at your own folder")
        raise ConfigError(key, f"no such {kind} {value!r} (in {os.getcwd()}){hint}")


# TRL / transformers.TrainingArguments flags -> the rlhf key (None: the value is implied, a switch);
# per stage where the key differs. Recognised to say what to write instead, never read silently:
# their meanings differ in places (per-device vs total batch size).
_HF_FLAGS: dict[str, tuple[str, str | None]] = {
    "model_name_or_path": ("model.name_or_path", None), "model": ("model.name_or_path", None),
    "tokenizer_name": ("model.tokenizer", None), "output_dir": ("output_dir", None),
    "dataset_name": ("data.train", None), "train_file": ("data.train", None),
    "dataset_train_split": ("data.train_split", None), "validation_file": ("data.eval", None),
    "dataset_test_split": ("data.eval_split", None), "learning_rate": ("train.lr", None),
    "per_device_train_batch_size": ("train.batch_size", None), "train_batch_size": ("train.batch_size", None),
    "per_device_eval_batch_size": ("train.eval_batch_size", None),
    "gradient_accumulation_steps": ("train.grad_accum", None), "num_train_epochs": ("train.epochs", None),
    "max_steps": ("train.max_steps", None), "warmup_ratio": ("train.warmup_ratio", None),
    "warmup_steps": ("train.warmup_steps", None), "lr_scheduler_type": ("train.scheduler", None),
    "weight_decay": ("train.weight_decay", None), "max_grad_norm": ("train.max_grad_norm", None),
    "seed": ("train.seed", None), "logging_steps": ("train.log_every", None),
    "save_steps": ("train.save_every", None), "eval_steps": ("train.eval_every", None),
    "save_total_limit": ("train.save_total_limit", None), "report_to": ("train.report_to", None),
    "bf16": ("model.dtype", "bf16"), "torch_dtype": ("model.dtype", None), "dtype": ("model.dtype", None),
    "gradient_checkpointing": ("model.gradient_checkpointing", "true"),
    "use_peft": ("model.lora.enabled", "true"), "lora_r": ("model.lora.r", None),
    "lora_alpha": ("model.lora.alpha", None), "lora_dropout": ("model.lora.dropout", None),
    "lora_target_modules": ("model.lora.target_modules", None),
    "max_length": ("data.max_length", None), "max_seq_length": ("data.max_length", None),
    "max_prompt_length": ("data.max_prompt_length", None), "packing": ("data.packing", "true"),
    "trust_remote_code": ("model.trust_remote_code", "true"), "beta": ("beta", None),
    "loss_type": ("loss", None), "num_generations": ("sampling.num_samples", None),
    "max_completion_length": ("sampling.max_new_tokens", None), "temperature": ("sampling.temperature", None),
    "kl_coef": ("kl.beta", None), "resume_from_checkpoint": ("train.resume_from", None),
}
_HF_FLAGS_BY_STAGE: dict[str, dict[str, str]] = {"ppo": {"beta": "kl.beta"}}


def _refuse_flags(stage: str, argv: list[str]) -> None:
    """``--learning_rate 2e-5`` and friends (TRL, transformers) are refused in one line that gives
    the same command in rlhf keys; other ``--flags`` get a did-you-mean over the stage's keys."""
    import difflib

    from rlhf.config import ConfigError

    flags = [a for a in argv if a.startswith("--") and not a.startswith("--recipe")]
    if not flags:
        return
    schema = _schema(stage)
    keys = set(leaf_keys(schema)) if schema is not None else set()
    rewritten: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--") or a.startswith("--recipe"):
            if a.startswith("--recipe") and "=" not in a and i + 1 < len(argv):
                rewritten += [a, argv[i + 1]]
                i += 2
                continue
            rewritten.append(a)
            i += 1
            continue
        flag, eq, value = a[2:].partition("=")
        flag = flag.replace("-", "_")
        key, implied = _HF_FLAGS.get(flag, (None, None))
        key = _HF_FLAGS_BY_STAGE.get(stage, {}).get(flag, key)
        if not eq and implied is None and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 1
        i += 1
        if key is None or (keys and key not in keys):
            dotted = flag.replace("__", ".")
            close = difflib.get_close_matches(dotted, sorted(keys), n=1, cutoff=0.6) or \
                difflib.get_close_matches(dotted, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.8)
            match = next((k for k in sorted(keys) if close and k.endswith(close[0])), None)
            unknown.append(f"--{flag}" + (f" (did you mean {match}=...?)" if match else ""))
            continue
        rewritten.append(f"{key}={implied if implied is not None and not value else value}")
    if unknown:
        raise ConfigError("", f"rlhf takes options as key=value, not --flags: {', '.join(unknown)} "
                              f"(rlhf {stage} --help lists every key)")
    raise ConfigError("", f"rlhf takes TRL/transformers-style flags as key=value options; the same "
                          f"command in rlhf keys: rlhf {stage} {' '.join(rewritten)}")


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
        finally:  # the run's folders are free once the command ends, however it ends
            if "rlhf.train.run" in sys.modules:
                sys.modules["rlhf.train.run"].release_all_run_locks()
    except ConfigError as e:  # a value only checkable at run time (a reward spec, a folder)
        say(f"rlhf {name}: config error: {e}")
        return 2
    except RunDirError as e:
        if e.echo:  # False on a torchrun rank > 0 told of rank 0's refusal (rlhf/train/trainer.py)
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
    from rlhf.train.launcher import die_with_launcher
    die_with_launcher()  # a torchrun worker dies with torchrun (kill -9 of it left orphans)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name in STAGES:
        return run_stage(name, rest)
    if name in ALIASES:
        stage, setting = ALIASES[name]
        if setting and any(a.startswith(setting.split("=")[0] + "=") for a in rest):
            print(f"rlhf {name}: sets {setting}; to choose another, run rlhf {stage} {setting.split('=')[0]}=...",
                  file=sys.stderr)
            return 2
        if not any(a in ("-h", "--help") for a in rest):
            print(f"rlhf {name} runs as: rlhf {stage} {setting}".rstrip(), file=sys.stderr)
        return run_stage(stage, rest + ([setting] if setting else []), alias=name)
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
    close = difflib.get_close_matches(name, list(STAGES) + list(TOOLS) + list(ALIASES), n=1)
    print(f"rlhf: unknown stage or tool {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
          + "\n\n" + _top_help(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
