"""Reward functions get the row: every other column of a prompt's data row reaches them as a
batched keyword argument (TRL's convention); rewards named by file path; hub ids that cannot be
fetched fail in one line."""

from __future__ import annotations

import json
import socket
import sys

import pytest
import torch

from rlhf.data import DataConfig, load_records
from rlhf.models.load import HubError
from rlhf.rewards import (
    CallableReward,
    RewardSource,
    WeightedSum,
    accepted_columns,
    call_reward,
    load_reward_source,
    row_columns,
)


def test_prompt_records_carry_the_rows_other_columns_by_source_name(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"question": "2+2=", "answer": "4", "level": 1}) + "\n")
    (rec,), _ = load_records(DataConfig(train=str(p), columns={"prompt": "question"}), "prompt")
    assert rec.prompt == "2+2=" and rec.columns == {"answer": "4", "level": 1}


def test_row_columns_repeat_each_prompts_values_for_its_k_samples():
    rows = [{"answer": "4"}, {"answer": "7", "level": 2}]
    assert row_columns(rows, repeat=2) == {"answer": ["4", "4", "7", "7"], "level": [None, None, 2, 2]}
    assert row_columns([{"prompts": 1, "completions": 2, "x": 3}]) == {"x": [3]}  # positional names left out


def test_a_function_gets_the_columns_it_names_or_all_with_kwargs_and_old_ones_still_work():
    seen = {}

    def named(prompts, completions, answer):
        seen["named"] = answer
        return [float(c == a) for c, a in zip(completions, answer)]

    def kw_only(prompts, completions, *, level=None):
        seen["kw_only"] = level
        return [0.0] * len(prompts)

    def anything(prompts, completions, **kwargs):
        seen["anything"] = sorted(kwargs)
        return [0.0] * len(prompts)

    def old(prompts, completions):
        return [1.0] * len(prompts)

    cols = {"answer": ["4", "7"], "level": [1, 2]}
    assert CallableReward(named)(["2+2=", "3+4="], ["4", "8"], **cols).tolist() == [1.0, 0.0]
    assert seen["named"] == ["4", "7"]
    CallableReward(kw_only)(["a", "b"], ["c", "d"], **cols)
    assert seen["kw_only"] == [1, 2]
    CallableReward(anything)(["a", "b"], ["c", "d"], **cols)
    assert seen["anything"] == ["answer", "level"]
    assert CallableReward(old)(["a", "b"], ["c", "d"], **cols).tolist() == [1.0, 1.0]
    assert accepted_columns(named) == {"answer"} and accepted_columns(anything) is None
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2 prompts"):
        CallableReward(named)(["a", "b"], ["c", "d"], answer=["x"])


def test_combinations_pass_columns_on_and_legacy_sources_are_spared_them():
    class Legacy(RewardSource):  # written before row columns existed
        def __call__(self, prompts, completions):
            return torch.ones(len(prompts))

    def match(prompts, completions, answer):
        return [float(c == a) for c, a in zip(completions, answer)]

    total = WeightedSum([Legacy(), CallableReward(match)], [1.0, 2.0])
    assert total(["p", "q"], ["4", "5"], answer=["4", "6"]).tolist() == [3.0, 1.0]
    assert call_reward(Legacy(), ["p"], ["c"], answer=["x"]).tolist() == [1.0]


def test_reward_named_by_file_path_loads_without_pythonpath(tmp_path, monkeypatch):
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "helpers.py").write_text("def norm(s):\n    return s.strip()\n")
    (tmp_path / "rewards" / "my_reward.py").write_text(
        "from helpers import norm\n\n"
        "def check(prompts, completions, answer):\n"
        "    return [float(norm(c) == a) for c, a in zip(completions, answer)]\n")
    monkeypatch.chdir(tmp_path)
    src = load_reward_source("rewards/my_reward.py:check")
    assert isinstance(src, CallableReward)
    assert src(["2+2="], [" 4 "], answer=["4"]).tolist() == [1.0]
    with pytest.raises(ValueError, match="no such file 'rewards/nope.py'"):
        load_reward_source("rewards/nope.py:check")
    with pytest.raises(ValueError, match="file 'rewards/my_reward.py' has no callable 'missing'"):
        load_reward_source("rewards/my_reward.py:missing")
    # A module name for a file in the current folder says how to load the file instead.
    (tmp_path / "local_reward.py").write_text("def f(prompts, completions):\n    return [0.0] * len(prompts)\n")
    # (python -m puts the current folder on sys.path; a console script such as `rlhf` does not)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    with pytest.raises(ValueError, match="to load the file in this folder, write 'local_reward.py:f'"):
        load_reward_source("local_reward:f")


# --------------------------------------------------------------------------- hub ids


def test_hub_id_reward_model_offline_fails_in_one_line(monkeypatch):
    """A hub id is accepted as a reward model (as `rlhf score --model` does); under
    HF_HUB_OFFLINE=1 an id that is not cached fails at once, naming it, without network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*a, **k):
        raise AssertionError("the network was asked")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(HubError) as e:
        load_reward_source("fake-org/fake-reward-model")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("model.name_or_path: 'fake-org/fake-reward-model': no such folder, and as a hub id "
                          "it is not in the Hugging Face cache and HF_HUB_OFFLINE is set")


def test_hub_unreachable_fails_in_one_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.invalid")
    calls = []

    def unreachable(addr, timeout=None):
        calls.append((addr, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(HubError) as e:
        load_reward_source("fake-org/fake-reward-model")
    assert calls == [(("hub.example.invalid", 443), 5.0)]  # one short probe, no retries
    assert "the Hub (hub.example.invalid:443) cannot be reached (Network is unreachable)" in str(e.value)


def test_cli_ppo_with_unreachable_hub_reward_prints_one_line(tmp_path, tiny_llama, monkeypatch, capsys):
    from rlhf.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    rc = main(["ppo", f"model.name_or_path={tiny_llama}", f"data.train={prompts}",
               "reward=fake-org/fake-reward-model", "advantage=grpo", "sampling.num_samples=2",
               f"output_dir={tmp_path / 'run'}", "train.progress=false"])
    err = capsys.readouterr().err
    assert rc == 1
    assert [line for line in err.splitlines() if line.startswith("rlhf ppo:")] == [
        "rlhf ppo: error: model.name_or_path: 'fake-org/fake-reward-model': no such folder, and as a "
        "hub id it is not in the Hugging Face cache and HF_HUB_OFFLINE is set; download it where the "
        "Hub is reachable (`hf download fake-org/fake-reward-model`, then give that folder or copy the "
        "cache) or give a local checkpoint folder"]
    assert "Traceback" not in err


def test_rounds_recipes_score_with_each_samples_row_columns():
    """Rejection sampling / iterative DPO (rlhf.recipes.rejection.RoundRun.score) look a sample's
    row up by its prompt; batches cut across prompts keep each sample with its own row."""
    from types import SimpleNamespace

    from rlhf.config import ConfigError
    from rlhf.data.records import PromptRecord
    from rlhf.recipes.rejection import RoundRun, _columns_by_prompt

    def check(prompts, completions, answer):
        return [float(c == a) for c, a in zip(completions, answer)]

    records = [PromptRecord("2+2=", ("q.jsonl", 1), {"answer": "4"}),
               PromptRecord("3+4=", ("q.jsonl", 2), {"answer": "7"})]
    run = object.__new__(RoundRun)  # only what score() reads
    run.cfg, run.stage = SimpleNamespace(reward_batch_size=3), "raft"
    run.source, run.tracked = CallableReward(check), {"also": CallableReward(check)}
    run.columns = _columns_by_prompt(records)
    prompts = ["2+2=", "2+2=", "3+4=", "3+4="]
    rewards, tracked = run.score(prompts, ["4", "5", "7", "4"], "round 1")
    assert rewards == [1.0, 0.0, 1.0, 0.0] and tracked == {"also": [1.0, 0.0, 1.0, 0.0]}
    with pytest.raises(ConfigError, match="q.jsonl:2: the prompt '2\\+2=' appears twice with different"):
        _columns_by_prompt([records[0], PromptRecord("2+2=", ("q.jsonl", 2), {"answer": "5"})])


def test_score_tool_passes_row_columns_and_reads_sharegpt(tmp_path, monkeypatch):
    """`rlhf score --reward file.py:fn` prepares rows as training does and gives the function the
    row's columns."""
    from rlhf.cli import main

    (tmp_path / "chk.py").write_text("def check(prompts, completions, answer):\n"
                                     "    return [float(c[-1]['content'] == a) for c, a in zip(completions, answer)]\n")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"conversations": [{"from": "human", "value": "2+2="}, {"from": "gpt", "value": "4"}], "answer": "4"},
        {"conversations": [{"from": "human", "value": "3+4="}, {"from": "gpt", "value": "8"}], "answer": "7"}]))
    monkeypatch.chdir(tmp_path)
    assert main(["score", "--reward", "chk.py:check", "--data", str(data), "--output", "out.jsonl"]) == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in out] == [1.0, 0.0] and out[0]["answer"] == "4"
