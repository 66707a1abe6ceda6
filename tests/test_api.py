"""The Python API (rlhf/api.py): a stage called from Python is the CLI run on the same inputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import rlhf
from rlhf.cli import main as cli_main
from rlhf.config import ConfigError
from rlhf.train.run import RunDirError

_SETTINGS = {"data.max_length": 64, "data.chat_template": "none", "train.batch_size": 8, "train.max_steps": 3,
             "train.lr": 1e-3, "train.progress": False, "train.save_model_in_checkpoints": False, "train.seed": 3}


def _rows(path, n=40):
    return [json.loads(x) for x in path.read_text().splitlines()[:n]]


def test_sft_from_objects_equals_the_cli_run(tmp_path, tiny_llama, instruction_data):
    """Model and tokenizer as loaded objects, data as a list of dicts, overrides as dotted keywords
    and as a nested dict: the final weights equal (bit for bit, same process and machine) those of
    ``rlhf sft`` on the folder and the jsonl file, and the returned model is those weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = _rows(instruction_data["train"])
    data_file = tmp_path / "rows.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [f"{k}={v}" for k, v in _SETTINGS.items()]
    assert cli_main(["sft", f"model.name_or_path={tiny_llama}", f"data.train={data_file}",
                     f"output_dir={tmp_path / 'cli'}", *argv]) == 0

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    over = {k: v for k, v in _SETTINGS.items() if not k.startswith("train.")}
    train = {k.split(".", 1)[1]: v for k, v in _SETTINGS.items() if k.startswith("train.")}
    res = rlhf.sft(model=model, tokenizer=tok, data=rows, output_dir=str(tmp_path / "api"), train=train, **over)

    cli_w = load_file(tmp_path / "cli" / "final" / "model.safetensors")
    api_w = load_file(tmp_path / "api" / "final" / "model.safetensors")
    assert cli_w.keys() == api_w.keys()
    for k in cli_w:
        assert torch.equal(cli_w[k], api_w[k]), k
    cli_summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert res.summary["train_examples"] == cli_summary["train_examples"] == len(rows)
    # The starting weights moved (else equality above would be vacuous) and the returned model holds the result.
    start = load_file(tiny_llama / "model.safetensors")
    assert any(not torch.equal(start[k], api_w[k]) for k in api_w)
    state = res.model.state_dict()
    for k, v in api_w.items():
        assert torch.equal(state[k], v), k
    assert res.output_dir == tmp_path / "api"
    assert res.tokenizer("a b").input_ids == tok("a b").input_ids


def test_dataset_and_list_inputs_give_the_same_file(tmp_path, tiny_llama, instruction_data):
    """A datasets.Dataset is written out as the same jsonl as the equivalent list of dicts, and a
    typed config object works as the base."""
    from datasets import Dataset

    from rlhf.recipes.sft import SFTConfig

    rows = _rows(instruction_data["train"], 16)
    cfg = SFTConfig(output_dir=str(tmp_path / "a"))
    short = {**_SETTINGS, "train.max_steps": 1}
    rlhf.sft(model=str(tiny_llama), data=Dataset.from_list(rows), config=cfg, **short)
    rlhf.sft(model=str(tiny_llama), data=rows, output_dir=str(tmp_path / "b"), **short)
    written = [(tmp_path / d / "inputs" / "train.jsonl").read_text() for d in "ab"]
    assert written[0] == written[1]


def test_errors_are_the_clis(tmp_path, tiny_llama):
    with pytest.raises(ConfigError, match=r"^train.lrr: unknown key"):
        rlhf.sft(model=str(tiny_llama), data="x.jsonl", output_dir=str(tmp_path / "x"), **{"train.lrr": 1.0})
    with pytest.raises(TypeError, match="row 2 is a str"):
        rlhf.sft(model=str(tiny_llama), data=[{"prompt": "a", "completion": "b"}, "oops"],
                 output_dir=str(tmp_path / "y"))
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.json").write_text("{}")
    with pytest.raises(RunDirError, match="finished run"):
        rlhf.sft(model=str(tiny_llama), data=[{"prompt": "a", "completion": "b"}], output_dir=str(tmp_path / "done"))
    assert not (tmp_path / "done" / "inputs").exists()


def test_import_rlhf_stays_light():
    import subprocess
    import sys
    code = "import sys, rlhf; assert callable(rlhf.sft.__call__); print('torch' in sys.modules)"
    # rlhf.sft is looked up lazily: the attribute access imports rlhf.api, which imports nothing heavy itself.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_notebook_rerun_resume_overwrite_eval_none_and_repr(tmp_path, tiny_llama, instruction_data, capsys):
    """Issue 23 item 5: a cell run twice returns the finished run (same config and rows) instead of
    failing; a changed setting is refused; overwrite=True trains again; eval_data=None drops the
    config's eval file; rlhf.run exists; repr(result) is one line, not the whole model."""
    rows = _rows(instruction_data["train"], 16)
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    kw = dict(model=str(tiny_llama), data=rows, output_dir=str(tmp_path / "nb"), **_SETTINGS)
    first = rlhf.run("sft", **kw, eval_data=None, config={"data": {"eval": str(eval_file)}})
    assert "eval_loss" not in json.dumps(first.summary)  # eval_data=None beat the config's data.eval
    again = rlhf.sft(**kw, eval_data=None, config={"data": {"eval": str(eval_file)}})
    assert "already holds this finished run: returning it" in capsys.readouterr().err
    assert again.summary == first.summary
    with pytest.raises(RunDirError, match="another config"):
        rlhf.sft(**{**kw, "train.lr": 2e-3}, eval_data=None)
    with pytest.raises(RunDirError, match="data may differ"):
        rlhf.sft(**{**kw, "data": rows[:8]}, eval_data=None, config={"data": {"eval": str(eval_file)}})
    with pytest.raises(RunDirError, match="overwrite=True"):
        rlhf.sft(**kw, resume=False)
    mtime = (tmp_path / "nb" / "summary.json").stat().st_mtime_ns
    third = rlhf.sft(**{**kw, "train.lr": 2e-3}, overwrite=True)
    assert (tmp_path / "nb" / "summary.json").stat().st_mtime_ns != mtime and third.summary["train_examples"] == 16
    text = repr(third)
    assert "\n" not in text and text.startswith("Result(model=LlamaForCausalLM (") and "parameters)" in text
    assert len(text) < 300 and "'" + str(tmp_path / "nb") + "'" in text
    assert "run" in rlhf.__all__ and rlhf.run is rlhf.api.run
    (tmp_path / "notrun").mkdir()
    with pytest.raises(RunDirError, match="not an rlhf run folder"):
        rlhf.sft(**{**kw, "output_dir": str(tmp_path / "notrun")}, overwrite=True)
