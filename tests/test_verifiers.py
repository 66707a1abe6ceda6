"""rlhf/verifiers.py: the final-number check behind the GSM8K GRPO recipe."""

from __future__ import annotations

import json

import pytest

from rlhf.rewards import load_reward_source
from rlhf.verifiers import final_number, math_answer, write_math_task


@pytest.mark.parametrize("text,expected", [
    ("so 3 + 4 = 7\n#### 7", "7"),            # GSM8K's answer line wins over earlier numbers
    ("#### 1,234", "1234"),                    # thousands separators dropped
    ("She pays 12.50 dollars", "12.5"),        # no ####: the last number; trailing zeros dropped
    ("answer: 18.0", "18"),
    ("it is -3 degrees", "-3"),
    ("no digits here", None),
    ("#### 5 apples, not 6", "5"),             # the first number after the last ####
])
def test_final_number(text, expected):
    assert final_number(text) == expected


def test_math_answer_scores_exact_final_numbers_and_finds_wrapped_prompts(tmp_path):
    answers = {"Q1?": "42", "Q2?": "1000"}
    got = math_answer(["Q1?", "Q2?", "<|user|>Q1?<|assistant|>"], ["... #### 42", "1,000", "41"], answers)
    assert got == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="prompt 0"):
        math_answer(["unknown"], ["1"], answers)


def test_write_math_task_spec_is_a_reward_source(tmp_path):
    src = tmp_path / "g.jsonl"
    src.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"x\n#### {i}"}) + "\n" for i in range(5)))
    out = tmp_path / "task"
    write_math_task(out, source=str(src), config=None, max_eval=2)
    prompts = [json.loads(x)["prompt"] for x in (out / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 5 and "q3" in prompts[3]
    source = load_reward_source(str(out / "reward.json"))
    assert source(prompts[:3], ["#### 0", "#### 7", "2"]).tolist() == [1.0, 0.0, 1.0]
