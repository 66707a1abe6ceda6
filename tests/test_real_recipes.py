"""The recipes for real models (Qwen2.5, Llama 3.2): each one's shrunk copy runs one step here.

A shrunk copy keeps everything the recipe says (stage, loss, advantage, LoRA, data format, chat
template, KL, ...) except scale and sources: the model is a random-weight stand-in of the same
architecture family with tiny dimensions (rlhf/models/shapes.py), the data a local file in the
layout of the recipe's hub dataset, one optimizer step, small batches, fp32 without autocast (a
CPU). Without downloads this is what can be checked: the recipe's settings load, fit together
and drive the stage's real code path end to end on that architecture.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf.configs import ROOT, list_recipes
from rlhf.models.shapes import REAL_SHAPES, stand_in

_QUESTIONS = ["What is two plus three?", "Name a colour of the sky.", "How many legs has a cat?",
              "Say hello politely.", "What is the opposite of cold?", "Count to three."]


def _real_recipes() -> list[str]:
    out = []
    for folder, names in list_recipes().items():
        for name in names:
            text = (ROOT / folder / f"{name}.yaml").read_text()
            if any(mid in text for mid in REAL_SHAPES):
                out.append(f"{folder}/{name}")
    return out


def test_real_recipes_exist_for_each_kind():
    """SFT, reward model, DPO, GRPO with a verifiable reward and PPO; a laptop CPU (LoRA), one GPU, 8 GPUs."""
    got = _real_recipes()
    for must in ("sft/qwen2.5-0.5b-lora-cpu", "sft/qwen2.5-0.5b-1gpu", "sft/qwen2.5-1.5b-8gpu",
                 "rm/qwen2.5-0.5b-1gpu", "dpo/qwen2.5-0.5b-lora-cpu", "dpo/qwen2.5-0.5b-1gpu",
                 "dpo/llama-3.2-1b-8gpu", "ppo/qwen2.5-0.5b-1gpu", "pipeline/grpo-gsm8k-qwen2.5-0.5b-1gpu"):
        assert must in got, must
    for r in got:
        head = (ROOT / f"{r}.yaml").read_text().split("\n\n")[0]
        assert "Memory:" in head and "Step time:" in head and ("estimated" in head or "measured" in head), r


# The layout of each hub dataset the recipes name (they read it with data.format=auto).
_HUB_LAYOUTS = {"HuggingFaceH4/no_robots": "messages", "trl-lib/ultrafeedback_binarized": "conversational_preference",
                "Anthropic/hh-rlhf": "hh"}


def _rows(fmt: str, n: int = 12) -> list[dict[str, Any]]:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        q = _QUESTIONS[i % len(_QUESTIONS)]
        good, bad = f"A fine answer number {i}.", f"no {rng.randint(0, 9)}"
        if fmt == "messages":
            rows.append({"prompt": q, "messages": [{"role": "user", "content": q},
                                                   {"role": "assistant", "content": good}]})
        elif fmt == "hh":
            rows.append({"chosen": f"\n\nHuman: {q}\n\nAssistant: {good}",
                         "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}"})
        elif fmt == "conversational_preference":
            user = {"role": "user", "content": q}
            rows.append({"chosen": [user, {"role": "assistant", "content": good}],
                         "rejected": [user, {"role": "assistant", "content": bad}], "score_chosen": 8.0})
        elif fmt == "gsm8k":
            rows.append({"question": f"Tom has {i} apples and gets 2 more. How many?",
                         "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"})
        else:
            raise ValueError(fmt)
    return rows


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("stand-ins")
    texts = [q + " A fine answer number 7. no 3 Human: Assistant:" for q in _QUESTIONS] * 4
    cache: dict[str, Path] = {}
    for mid in sorted(REAL_SHAPES):
        shape = REAL_SHAPES[mid]
        key = f"{shape.arch}-{shape.hidden_size}"
        if key not in cache:
            cache[key] = stand_in(mid, d / key, texts, max_position_embeddings=256)
        cache[mid] = cache[key]
    return cache


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *head, last = dotted.split(".")
    for k in head:
        d = d.setdefault(k, {})
    d[last] = value


def _shrink_stage(cfg: dict[str, Any], stand_ins: dict[str, Path], data_file: Path | None) -> dict[str, Any]:
    cfg = json.loads(json.dumps(cfg))
    cfg["model"]["name_or_path"] = str(stand_ins[cfg["model"]["name_or_path"]])
    cfg["model"]["gradient_checkpointing"] = cfg["model"].get("gradient_checkpointing", False)
    data = cfg["data"]
    if data_file is not None:
        data.update(train=str(data_file), train_split="train", eval_split=None, eval=None)
    data.update(max_samples=None, max_length=96)
    if data.get("max_prompt_length"):
        data["max_prompt_length"] = 48
    train = cfg.setdefault("train", {})
    train.update(max_steps=1, batch_size=4, grad_accum=2, eval_batch_size=2, mixed_precision="no",
                 save_every=None, eval_every=None, progress=False)
    if "sampling" in cfg:
        cfg["sampling"].update(max_new_tokens=6, batch_size=8)
    if "ppo" in cfg:
        cfg["ppo"]["num_minibatches"] = min(cfg["ppo"].get("num_minibatches", 1), 2)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("recipe", _real_recipes())
def test_shrunk_copy_runs_one_step(recipe, stand_ins, tmp_path):
    from rlhf.cli import STAGES
    from rlhf.config import load_config

    folder, name = recipe.split("/")
    spec = yaml.safe_load((ROOT / folder / f"{name}.yaml").read_text())
    if folder == "pipeline":
        from rlhf.pipeline import run_pipeline
        src = tmp_path / "gsm8k.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in _rows("gsm8k")))
        stages = []
        for st in spec["stages"]:
            st = json.loads(json.dumps(st))
            if st["type"] == "call":
                st["args"].update(source=str(src), config=None, max_eval=4)
            elif "config" in st:
                st["config"] = _shrink_stage(st["config"], stand_ins, None)
            elif st["type"] == "eval":
                st["args"].update(reference=str(stand_ins[st["args"]["reference"]]), max_new_tokens=6,
                                  max_prompts=4)
            elif st["type"] == "report":
                continue  # tested on its own (tests/test_report.py)
            stages.append(st)
        status = run_pipeline({"output_dir": str(tmp_path / "run"), "stages": stages}, log=lambda s: None)
        assert all(s["status"] == "done" for s in status["stages"])
        trained = [s for s in spec["stages"] if "config" in s]
        for st in trained:
            m = [json.loads(x) for x in (tmp_path / "run" / st["name"] / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in m if "loss" in r] == [1]
        return
    fmt = spec["data"].get("format", "auto")
    if fmt == "auto":  # the recipes detect the layout (so that a user's own file works): the hub set's
        fmt = _HUB_LAYOUTS[spec["data"]["train"]]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(fmt)))
    body = _shrink_stage(spec, stand_ins, data)
    body["output_dir"] = str(tmp_path / "run")
    if "reward" in body:  # the reward model another recipe trains: a stand-in with a fresh scalar head
        body["reward"] = body["model"]["name_or_path"]
    stage = STAGES[folder.replace("_", "-")]
    cfg = load_config(stage.load(stage.config), None, [], base=body)
    stage.load(stage.run)(cfg)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "loss" in r] == [1]
    assert (tmp_path / "run" / "summary.json").is_file()
