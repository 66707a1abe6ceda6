"""GRPO with a verifiable reward that checks a ground-truth column of the prompt's row: the
column reaches the reward function through the rollout, K copies per prompt, aligned with the
completions; the reward is named by its file path (no PYTHONPATH)."""

from __future__ import annotations

import json

from rlhf.config import load_config
from rlhf.recipes.ppo import PPOConfig, train
from rlhf.testbed.arithmetic import matches_answer

REWARD_FILE = '''
import json, os

def check(prompts, completions, answer, level):
    with open(os.environ["REWARD_LOG"], "a") as f:
        f.write(json.dumps({"prompts": list(prompts), "answer": list(answer), "level": list(level)}) + "\\n")
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]
'''


def test_matches_answer_reads_the_answer_column():
    assert matches_answer(["2+2=", "2+2=", "3+4="], [" 4", "5", "7 "], answer=["4", "4", "7"]) == [1.0, 0.0, 1.0]


def test_grpo_reward_gets_each_prompts_answer_column(tmp_path, tiny_llama, monkeypatch):
    rows = [{"question": f"{a}+{b}=", "answer": str(a + b), "level": i % 3}
            for i, (a, b) in enumerate([(1, 2), (3, 4), (5, 1), (2, 2), (6, 3), (0, 7), (8, 1), (4, 4)])]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "my_reward.py").write_text(REWARD_FILE)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("REWARD_LOG", str(log))
    monkeypatch.chdir(tmp_path)  # the reward is named relative to the current folder
    K = 2
    cfg = load_config(PPOConfig, None, [
        f"model.name_or_path={tiny_llama}", f"data.train={data}", "data.columns={prompt: question}",
        "reward=my_reward.py:check", "advantage=grpo", f"sampling.num_samples={K}", "sampling.max_new_tokens=3",
        "train.batch_size=4", "train.max_steps=2", "ppo.epochs=1", "train.progress=false", "num_log_samples=0",
        f"output_dir={tmp_path / 'run'}", "train.save_model_in_checkpoints=false"])
    train(cfg)
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(calls) == 2  # one scoring call per step
    truth = {r["question"]: (r["answer"], r["level"]) for r in rows}
    seen = []
    for c in calls:
        assert len(c["prompts"]) == len(c["answer"]) == len(c["level"]) == 4 * K
        for i, p in enumerate(c["prompts"]):
            assert (c["answer"][i], c["level"][i]) == truth[p]  # the row of THIS completion's prompt
            assert p == c["prompts"][i - i % K]  # K consecutive samples per prompt
        seen += c["prompts"][::K]
    assert sorted(seen) == sorted(truth)  # 2 steps x 4 prompts: every row once
