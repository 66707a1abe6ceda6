"""Shared set-up for the recipes that sample from a policy in rounds (RAFT, ReST, iterative DPO)."""

import json

import pytest


@pytest.fixture
def rounds_setup(tmp_path, monkeypatch, tiny_llama, instruction_data):
    """``make(module, source, n_prompts)``: writes ``source`` as an importable reward module
    ``module`` and a prompts file of the first ``n_prompts`` instruction prompts; returns the
    dict the tests read (model, prompts, out, tmp)."""

    def make(module: str, source: str, n_prompts: int) -> dict:
        (tmp_path / f"{module}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        rows = [json.loads(x) for x in instruction_data["train"].read_text().splitlines()[:n_prompts]]
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
        return {"model": tiny_llama, "prompts": prompts, "out": tmp_path / "run", "tmp": tmp_path}

    return make
