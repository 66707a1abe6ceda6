"""Shared fixtures: a tiny model and the built-in instruction data, built once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Tests never touch the network: any attempt to reach the hub fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tiny models are bound by per-op overhead; with intra-op threads on a busy 2-core machine a
# forward pass was measured ~100x slower (threads wait for each other). One thread is fast and
# deterministic everywhere; benchmarks (bench/) set their own thread counts.
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def load_bench():
    """Import a script of bench/ (not a package) by name: ``load_bench("render_real")``."""
    import importlib.util

    loaded: dict[str, object] = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            loaded[name] = mod
        return loaded[name]

    return load


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerator state is a process-wide singleton: reset it so tests do not leak settings."""
    yield
    from accelerate.state import AcceleratorState, PartialState
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


@pytest.fixture(scope="session")
def instruction_data(tmp_path_factory) -> dict[str, Path]:
    from rlhf.testbed.instructions import make_examples, write_jsonl
    d = tmp_path_factory.mktemp("instructions")
    return {"train": write_jsonl(make_examples(1200, seed=0), d / "train.jsonl"),
            "eval": write_jsonl(make_examples(200, seed=1), d / "eval.jsonl")}


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, instruction_data) -> Path:
    """A tiny random-weight Llama whose tokenizer was trained on the instruction data. 512
    positions, the stages' default data.max_length (a longer max_length is refused); rotary
    positions have no weights, so the model is the same as with fewer."""
    from rlhf.models.tiny import make_tiny_checkpoint
    rows = [json.loads(x) for x in instruction_data["train"].read_text().splitlines()]
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama",
                                [r["prompt"] + r["completion"] for r in rows], vocab_size=300,
                                hidden_size=64, num_layers=2, num_heads=4,
                                max_position_embeddings=512, seed=0)


@pytest.fixture(scope="session")
def quickstart_fast(tmp_path_factory) -> Path:
    """``rlhf quickstart --fast`` (seed 0) run once per session, in ``<tmp>/seed-0`` (bench/demo_seeds.py's
    layout): tests/test_pipeline.py checks what it learned, tests/test_bench_smoke.py runs the demo
    benches on it (bench/demo_seeds.py resumes it, the others add runs of their own)."""
    from rlhf.tools.quickstart import main

    out = tmp_path_factory.mktemp("seeds") / "seed-0"
    assert main(["--fast", "--seed", "0", "--out", str(out)]) == 0
    return out


@pytest.fixture
def crash_run():
    """``crash_run(train, cfg, step)`` runs ``train(cfg)`` and kills it right after step ``step``
    was logged (and checkpointed if a save was due before it), as a crash would: no clean-up,
    no summary. Asserts that it did crash."""
    from rlhf.train.trainer import Trainer

    def run(train, cfg, step: int) -> None:
        real_log = Trainer.log

        def log_then_crash(self, s, metrics, force=False):
            real_log(self, s, metrics, force)
            if s == step:
                raise RuntimeError(f"simulated crash after step {step}")

        Trainer.log = log_then_crash
        try:
            with pytest.raises(RuntimeError, match="simulated crash"):
                train(cfg)
        finally:
            Trainer.log = real_log

    return run
