"""kill -9 at a chosen moment, then the same command again: the run resumes and ends where an
uninterrupted run ends, byte for byte, and what the killed process left half-written is gone.

The kill is a real SIGKILL (tests/recipes/kill_at.py: no ``finally``, no clean-up), sent by the
process to itself at the N-th call of a chosen function, so each test hits the same moment on
every machine: inside a final/ publish (files written and flushed, not yet renamed), inside a
checkpoint write, before a file's rename. Covers the multi-round recipes the exception-based
crash tests do not (iterative DPO's publish, ReST, hindsight, Constitutional AI, best-of-n) and
two processes. Each run is as small as the recipe allows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config import load_config, save_config

REPO = Path(__file__).resolve().parents[2]
KILL = Path(__file__).with_name("kill_at.py")

pytestmark = pytest.mark.slow

REWARDS = '''
def frac_a(prompts, completions):
    return [c.count("a") / max(1, len(c)) for c in completions]
'''


def _kill(cfg, stage: str, target: str, match: str, n: int = 1, nproc: int = 1, path: tuple = ()) -> str:
    """Run ``rlhf <stage> <cfg as YAML>`` in a subprocess that SIGKILLs itself at the n-th call of
    ``target`` whose arguments contain ``match``; asserts it died that way. Returns its stdout."""
    yaml_file = Path(cfg.output_dir).with_name(Path(cfg.output_dir).name + ".yaml")
    save_config(cfg, yaml_file)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *map(str, path), os.environ.get("PYTHONPATH", "")])}
    cmd = [str(KILL), target, match, str(n), stage, str(yaml_file)]
    if nproc > 1:  # --standalone: a fresh rendezvous on a free port
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(nproc), *cmd]
    else:
        cmd = [sys.executable, *cmd]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    if nproc > 1:
        assert p.returncode != 0 and "Signal 9 (SIGKILL)" in p.stderr, p.stderr[-3000:]
    else:
        assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-3000:])
    return p.stdout


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _same_files(a: Path, b: Path, names: list[str]) -> None:
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def _drop(d: dict, keys=("seconds", "wall_time_s", "elapsed_s", "policy_source")) -> dict:
    return {k: (_drop(v, keys) if isinstance(v, dict) else v) for k, v in d.items() if k not in keys}


def _debris(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or ".old-" in p.name)


# --------------------------------------------------------------------------- the rounds recipes


def test_iterative_dpo_killed_while_publishing_round_2(rounds_setup):
    """Killed with round 2's DPO final/ written and flushed but not renamed: the rerun removes
    the temporary folder, finishes round 2 from its end checkpoint and equals a clean run."""
    from rlhf.recipes.iterative_dpo import IterativeDPOConfig, train
    s = rounds_setup("kill_idpo_rewards", REWARDS, 6)

    def cfg(out):
        return load_config(IterativeDPOConfig, None, [
            f"output_dir={out}", f"model.name_or_path={s['model']}", f"data.train={s['prompts']}",
            "data.chat_template=none", "data.max_length=48", "reward=kill_idpo_rewards:frac_a",
            "samples_per_prompt=3", "sampling.max_new_tokens=8", "progress=false", "rounds=2", "score_final=false",
            "dpo.train.lr=1e-3", "dpo.train.batch_size=2", "dpo.train.max_steps=2", "dpo.train.progress=false",
            "dpo.train.save_model_in_checkpoints=false"])

    ref = train(cfg(s["tmp"] / "ref"))
    out = s["out"]
    _kill(cfg(out), "iterative-dpo", "rlhf.train.run:fsync_tree", "round-2/dpo/final.tmp-", path=(s["tmp"],))
    assert (out / "round-1" / "summary.json").is_file() and not (out / "round-2" / "summary.json").exists()
    assert [d for d in _debris(out) if d.startswith("round-2/dpo/final.tmp-")], _debris(out)
    got = train(cfg(out))
    assert _debris(out) == []
    assert _drop(got) == _drop(ref)
    _same_files(out, s["tmp"] / "ref", ["round-1/samples.jsonl", "round-2/pairs.jsonl", "final/model.safetensors"])
    assert [_drop(r) for r in _jsonl(out / "metrics.jsonl")] == \
        [_drop(r) for r in _jsonl(s["tmp"] / "ref" / "metrics.jsonl")]


def test_rest_killed_inside_a_checkpoint_write(rounds_setup):
    """Killed while the second Improve step's SFT writes checkpoint-2 (checkpoint-1 complete):
    the rerun skips Improve 1, resumes Improve 2 from checkpoint-1, and equals a clean run."""
    from rlhf.recipes.rejection import ReSTConfig, train_rest
    s = rounds_setup("kill_rest_rewards", REWARDS, 6)

    def cfg(out):
        return load_config(ReSTConfig, None, [
            f"output_dir={out}", f"model.name_or_path={s['model']}", f"data.train={s['prompts']}",
            "data.chat_template=none", "data.max_length=48", "reward=kill_rest_rewards:frac_a",
            "samples_per_prompt=4", "sampling.max_new_tokens=8", "progress=false", "require_eos=false",
            "grow_steps=1", "score_final=false", "sft.train.lr=3e-3", "sft.train.batch_size=2",
            "sft.train.max_steps=3", "sft.train.save_every=1", "sft.train.progress=false",
            "sft.train.save_model_in_checkpoints=false"])

    ref = train_rest(cfg(s["tmp"] / "ref"))
    out = s["out"]
    _kill(cfg(out), "rest", "safetensors.torch:save_file", "improve-2/sft/checkpoint-2.tmp/trainable",
          path=(s["tmp"],))
    assert (out / "grow-1" / "improve-1" / "summary.json").is_file()
    assert _debris(out) == ["grow-1/improve-2/sft/checkpoint-2.tmp"]  # holding its RNG file only
    assert [p.name for p in (out / "grow-1/improve-2/sft/checkpoint-2.tmp").iterdir()] == ["rng_0.safetensors"]
    got = train_rest(cfg(out))
    assert _debris(out) == []
    assert _drop(got) == _drop(ref)
    _same_files(out, s["tmp"] / "ref", ["grow-1/samples.jsonl", "grow-1/improve-2/kept.jsonl",
                                        "final/model.safetensors"])
    inner = "grow-1/improve-2/sft/metrics.jsonl"
    assert [_drop(r) for r in _jsonl(out / inner)] == [_drop(r) for r in _jsonl(s["tmp"] / "ref" / inner)]


def test_hindsight_killed_while_publishing_final(tmp_path, tiny_llama):
    """Killed with the outer final/ written but not renamed (both rounds done): the rerun skips
    both rounds, removes final.tmp-<pid>/, publishes final/ and equals a clean run."""
    from rlhf.recipes.hindsight import HindsightConfig, train
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"reverse: {c}\n"}) + "\n" for c in "abcd"))

    def cfg(out):
        return load_config(HindsightConfig, None, [
            f"output_dir={out}", f"model.name_or_path={tiny_llama}", f"data.train={prompts}",
            "data.chat_template=none", "data.max_length=48", "relabel=tests.recipes.test_hindsight:tag",
            "rounds=2", "num_samples=2", "sampling.max_new_tokens=6", "progress=false", "sft.train.batch_size=4",
            "sft.train.max_steps=2", "sft.train.progress=false", "sft.train.save_model_in_checkpoints=false"])

    ref = train(cfg(tmp_path / "ref"))
    out = tmp_path / "hir"
    _kill(cfg(out), "hindsight", "rlhf.train.run:fsync_tree", f"{out}/final.tmp-")
    assert (out / "round-2" / "summary.json").is_file() and not (out / "final").exists()
    assert [d for d in _debris(out) if d.startswith("final.tmp-")]
    got = train(cfg(out))
    assert _debris(out) == []
    assert _drop(got) == _drop(ref, ("seconds", "policy")) | {"rounds": got["rounds"]}
    assert [_drop(r, ("seconds", "policy", "sft")) for r in got["rounds"]] == \
        [_drop(r, ("seconds", "policy", "sft")) for r in ref["rounds"]]
    _same_files(out, tmp_path / "ref", ["round-1/relabeled.jsonl", "round-2/relabeled.jsonl",
                                        "final/model.safetensors"])


def test_constitutional_killed_in_its_sft(tmp_path, tiny_llama):
    """Killed as the inner SFT logs step 3 (checkpoint-2 complete): the rerun reuses the chains,
    resumes SFT from checkpoint-2 and equals a clean run (weights and the loss curve)."""
    from rlhf.recipes.constitutional import ConstitutionalConfig, train
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"reverse: {c}\n"}) + "\n" for c in "abcd"))

    def cfg(out):
        return load_config(ConstitutionalConfig, None, [
            f"output_dir={out}", f"model.name_or_path={tiny_llama}", f"data.train={prompts}",
            "data.chat_template=none", "data.max_length=64", "sampling.max_new_tokens=5", "progress=false",
            "critique_max_new_tokens=4", "sft.train.batch_size=2", "sft.train.max_steps=4", "sft.train.save_every=2",
            "sft.train.lr=3e-3", "sft.train.progress=false", "sft.train.save_model_in_checkpoints=false",
            "critique_template='C[{principle}] {prompt}|{response}'",
            "revision_template='R[{principle}] {prompt}|{response}|{critique}'"],
            base={"principles": ["Be brief."]})

    ref = train(cfg(tmp_path / "ref"))
    out = tmp_path / "cai"
    _kill(cfg(out), "constitutional", "rlhf.train.run:MetricsWriter.write", "'step': 3,")
    assert (out / "chains.jsonl").is_file() and (out / "sft" / "checkpoint-2").is_dir()
    assert not (out / "sft" / "final").exists()
    got = train(cfg(out))
    assert _debris(out) == [] and got.get("reused_chains") is True
    assert _drop(got, ("seconds", "reused_chains", "kept_unrevised", "sft")) == \
        _drop(ref, ("seconds", "reused_chains", "kept_unrevised", "sft"))
    _same_files(out, tmp_path / "ref", ["chains.jsonl", "revisions.jsonl", "final/model.safetensors"])
    assert [_drop(r) for r in _jsonl(out / "sft" / "metrics.jsonl")] == \
        [_drop(r) for r in _jsonl(tmp_path / "ref" / "sft" / "metrics.jsonl")]


def test_best_of_n_killed_before_its_summary(tmp_path, monkeypatch, tiny_llama):
    """Killed with best.jsonl written and summary.json's temporary file complete but not
    renamed: the rerun is not refused, removes the temporary file and equals a clean run."""
    from rlhf.recipes.best_of_n import BestOfNConfig, train
    (tmp_path / "kill_bon_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"count: {c}\n"}) + "\n" for c in "abc"))

    def cfg(out):
        return load_config(BestOfNConfig, None, [
            f"output_dir={out}", f"model.name_or_path={tiny_llama}", f"data.train={prompts}",
            "data.chat_template=none", "reward=kill_bon_rewards:frac_a", "n=3", "sampling.max_new_tokens=6",
            "progress=false", "save_pool=true"])

    ref = train(cfg(tmp_path / "ref"))
    out = tmp_path / "bon"
    _kill(cfg(out), "best-of-n", "pathlib:Path.replace", ".summary.json.tmp-", path=(tmp_path,))
    assert (out / "best.jsonl").is_file() and not (out / "summary.json").exists()
    assert [d for d in _debris(out) if d.startswith(".summary.json.tmp-")]
    got = train(cfg(out))
    assert _debris(out) == []
    assert _drop(got) == _drop(ref)
    _same_files(out, tmp_path / "ref", ["best.jsonl", "pool.jsonl"])


# --------------------------------------------------------------------------- two processes


def test_two_processes_killed_inside_a_checkpoint_write(tiny_llama, instruction_data, tmp_path):
    """torchrun x 2: both processes SIGKILLed while writing checkpoint-4 (their RNG files); the
    rerun (torchrun x 2) resumes from checkpoint-2, removes checkpoint-4.tmp, logs every step
    once, and ends where one uninterrupted process with the same global batch ends (tolerance of
    tests/recipes/test_sft.py::test_two_processes_match_one: losses 1e-5, weights 1e-5/1e-4)."""
    from rlhf.recipes.sft import SFTConfig, train
    common = [f"model.name_or_path={tiny_llama}", f"data.train={instruction_data['train']}",
              "data.chat_template=none", "data.max_length=64", "data.max_samples=200", "train.batch_size=8",
              "train.max_steps=5", "train.save_every=2", "train.lr=1e-3", "train.progress=false",
              "train.save_model_in_checkpoints=false"]
    train(load_config(SFTConfig, None, [f"output_dir={tmp_path / 'one'}", "train.grad_accum=2", *common]))
    two = tmp_path / "two"
    cfg = load_config(SFTConfig, None, [f"output_dir={two}", *common])
    _kill(cfg, "sft", "safetensors.torch:save_file", "checkpoint-4.tmp/rng_", nproc=2)
    assert [p.name for p in sorted(two.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4.tmp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
                        "-m", "rlhf.cli", "sft", str(two.with_name("two.yaml"))],
                       env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stderr[:3000] + "\n...\n" + p.stderr[-3000:]
    assert "resuming after step 2" in p.stdout and "2 process(es)" in p.stdout
    assert _debris(two) == []
    a = {r["step"]: r["loss"] for r in _jsonl(tmp_path / "one" / "metrics.jsonl")}
    b = [(r["step"], r["loss"]) for r in _jsonl(two / "metrics.jsonl")]
    assert [s for s, _ in b] == [1, 2, 3, 4, 5]
    for s, loss in b:
        assert loss == pytest.approx(a[s], abs=1e-5), (s, a, b)
    wa = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    wb = load_file(str(two / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4, msg=k)
