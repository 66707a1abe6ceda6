"""The instruct-model arithmetic task (rlhf.testbed.arithmetic.write_chat_task) and its checker."""

from __future__ import annotations

import json

from rlhf.testbed.arithmetic import chat_problems, final_number_matches, write_chat_task


def test_problems_are_the_sums_and_products_with_right_answers():
    rows = chat_problems()
    assert len(rows) == 100 + 64 and len({r["prompt"] for r in rows}) == 164
    for r in rows:
        a, op, b = r["prompt"].removeprefix("What is ").split("?")[0].split(" ")
        assert int(r["answer"]) == (int(a) + int(b) if op == "+" else int(a) * int(b))


def test_split_is_disjoint_and_fixed_by_the_seed(tmp_path):
    files = write_chat_task(tmp_path / "a", n_heldout=64, n_prompts=200, seed=0)
    again = write_chat_task(tmp_path / "b", n_heldout=64, n_prompts=200, seed=0)
    train = [json.loads(x) for x in files["prompts"].read_text().splitlines()]
    held = [json.loads(x) for x in files["eval_prompts"].read_text().splitlines()]
    assert len(train) == 200 and len(held) == 64
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert files["eval_prompts"].read_text() == again["eval_prompts"].read_text()
    assert files["prompts"].read_text() == again["prompts"].read_text()


def test_checker_reads_the_last_number():
    got = final_number_matches(["q"] * 5, ["7 + 5 = 12.", "The answer is 12", "12", "To solve this, we", "13 or 12?"],
                               ["12"] * 5)
    assert got == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert final_number_matches(["q"], ["12 is wrong, it is 11"], ["12"]) == [0.0]
