"""FSDP2 sharding (``train.distributed=fsdp``, rlhf/train/sharding.py).

Two processes (torchrun, gloo on CPU) sharding the model must compute what one process with
the same global batch computes, for every stage that trains (SFT, reward model, DPO with LoRA
and an online reference, PPO with a separate critic); a sharded checkpoint must resume to the
uninterrupted run's weights after every process was killed with SIGKILL while writing the next
checkpoint, on the same number of processes and on fewer (resharding); ``final/`` must be an
ordinary folder that ``from_pretrained`` loads.

The torchrun runs share one launch (tests/train/fsdp_worker.py): process start-up costs
several seconds on 2 cores. Horizons are 2-3 optimizer steps, short enough that float
rounding (a different reduction order over 2 processes) is not amplified into a different
trajectory; tolerances are the measured differences with a margin, stated at each assert.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config import load_config
from rlhf.train.run import list_checkpoints

WORKER = Path(__file__).with_name("fsdp_worker.py")
REWARD_MODULE = '''
def e_fraction(prompts, completions):
    return [sum(ch == "e" for ch in c) / max(1, len(c)) for c in completions]
'''


# --------------------------------------------------------------------------- helpers


def _metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "samples" not in r}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


def _max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert sorted(wa) == sorted(wb)
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _torchrun(runs: list[dict], tmp: Path, nproc: int = 2) -> None:
    spec = tmp / f"runs-{len(list(tmp.glob('runs-*.json')))}.json"
    spec.write_text(json.dumps(runs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), str(tmp), os.environ.get("PYTHONPATH", "")])}
    torchrun = Path(sys.executable).with_name("torchrun")
    # --standalone: a fresh rendezvous on a free port. A deadlock (processes running different
    # numbers of collectives) shows up as the timeout.
    p = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", str(nproc), str(WORKER), str(spec)],
                       env=env, capture_output=True, text=True, timeout=600)
    # A kill_at_save run ends the launch with an error by design (its folder is checked by the
    # test); every other run must have finished.
    for r in runs:
        out = next(Path(x.split("=", 1)[1]) for x in r["args"] if x.startswith("output_dir="))
        if not r.get("kill_at_save") and not (out / "summary.json").is_file():
            raise AssertionError(f"{out} did not finish:\n" + p.stderr[:3000] + "\n...\n" + p.stderr[-3000:])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_llama, instruction_data) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fsdp-assets")
    rows = [json.loads(x) for x in instruction_data["train"].read_text().splitlines()][:64]
    pref = d / "pref.jsonl"
    n = len(rows)

    def other(i: int) -> str:  # the next row's completion that differs (the data repeats some)
        return next(rows[(i + j) % n]["completion"] for j in range(1, n)
                    if rows[(i + j) % n]["completion"] != rows[i]["completion"])

    pref.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": r["completion"], "rejected": other(i)})
                            + "\n" for i, r in enumerate(rows)))
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows[:16]))
    # 17 held-out rows: with eval_batch_size 8 one process evaluates 2 batches, the other 1.
    ev = d / "eval.jsonl"
    ev.write_text("".join(x + "\n" for x in instruction_data["eval"].read_text().splitlines()[:17]))
    (d / "fsdp_toy_reward.py").write_text(REWARD_MODULE)
    return {"model": tiny_llama, "train": instruction_data["train"], "eval": ev, "pref": pref,
            "prompts": prompts, "dir": d}


def _args(a: dict[str, Path], stage: str, out: Path, *extra: str) -> list[str]:
    common = [f"output_dir={out}", f"model.name_or_path={a['model']}", "train.progress=false",
              "train.batch_size=8", "train.save_model_in_checkpoints=false", "data.chat_template=none",
              "train.lr=1e-3", "train.eval_batch_size=8"]
    per_stage = {
        "sft": [f"data.train={a['train']}", f"data.eval={a['eval']}", "data.max_samples=64",
                "data.max_length=64", "train.max_steps=3", "train.save_every=1",
                "model.gradient_checkpointing=true"],
        "rm": [f"data.train={a['pref']}", "data.max_length=64", "train.max_steps=2"],
        "dpo": [f"data.train={a['pref']}", "data.max_length=64", "train.max_steps=2", "model.lora.enabled=true",
                "model.lora.r=4", "reference=online"],
        "ppo": [f"data.train={a['prompts']}", "reward=fsdp_toy_reward:e_fraction", "advantage=gae",
                "value_model=policy", "sampling.num_samples=2", "sampling.max_new_tokens=8",
                "num_log_samples=0", "train.max_steps=2"],
    }
    return common + per_stage[stage] + list(extra)


@pytest.fixture(scope="module")
def sharded_runs(assets, tmp_path_factory) -> Path:
    """One torchrun launch (2 processes): each stage sharded, PPO also data-parallel, and an SFT
    run whose processes all SIGKILL themselves after writing the shards of checkpoint 2."""
    out = tmp_path_factory.mktemp("fsdp-runs")
    shutil.copy(assets["dir"] / "fsdp_toy_reward.py", out)
    runs = [{"stage": s, "args": _args(assets, s, out / s, "train.distributed=fsdp")}
            for s in ("sft", "rm", "dpo", "ppo")]
    # The reward: the model the rm run just trained (a frozen model to replicate or shard).
    rm = f"reward={out / 'rm' / 'final'}"
    runs[3]["args"].append(rm)
    runs.append({"stage": "ppo", "args": _args(assets, "ppo", out / "ppo-ddp", "train.distributed=ddp", rm)})
    runs.append({"stage": "ppo", "args": _args(assets, "ppo", out / "ppo-frozen", "train.distributed=fsdp",
                                               "train.fsdp.frozen=shard", rm)})
    runs.append({"stage": "dpo", "args": _args(assets, "dpo", out / "dpo-frozen", "train.distributed=fsdp",
                                               "train.fsdp.frozen=shard", "model.lora.enabled=false",
                                               "data.eval_fraction=0.25")})
    runs.append({"stage": "sft", "args": _args(assets, "sft", out / "crash", "train.distributed=fsdp"),
                 "kill_at_save": 2})
    _torchrun(runs, out)
    return out


@pytest.fixture
def one_process_group():
    """In-process FSDP joins a process group of one; leave none behind for other tests."""
    yield
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- fast tests


def test_units_keep_tied_weights_together():
    """Every parameter outside the decoder layers falls in exactly one unit; a tied embedding
    and head share one (FSDP2 cannot shard one parameter in two units); untied, they don't."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.train.sharding import _outer_units, decoder_layers

    for tied in (True, False):
        cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                          num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
        model = LlamaForCausalLM(cfg)
        layers = decoder_layers(model)
        assert layers == list(model.model.layers)
        units = _outer_units(model, layers)
        names = {id(m): n for n, m in model.named_modules()}
        got = sorted(sorted(names[id(m)] for m in u) for u in units)
        expect = [["lm_head", "model.embed_tokens"], ["model.norm"]] if tied else \
            [["lm_head"], ["model.embed_tokens"], ["model.norm"]]
        assert got == expect, got
        in_layers = {id(p) for layer in layers for p in layer.parameters()}
        per_unit = [{id(p) for m in u for p in m.parameters(recurse=False)} for u in units]
        in_units = set().union(*per_unit)
        assert sum(map(len, per_unit)) == len(in_units)  # no parameter in two units
        assert {id(p) for p in model.parameters()} == in_layers | in_units


def test_one_process_sharded_resume_equals_uninterrupted(assets, tmp_path, crash_run, one_process_group):
    """Without a launcher, fsdp runs on a process group of one: equal to the plain run (measured
    difference 0: same arithmetic), and a crash then resume from the sharded checkpoint (DCP)
    gives the uninterrupted run's losses and final weights exactly (measured 0)."""
    from rlhf.recipes.sft import SFTConfig, train

    def cfg(name, *extra):
        return load_config(SFTConfig, None, _args(assets, "sft", tmp_path / name, "train.max_steps=4",
                                                  "train.save_every=2", "data.eval=null", *extra))

    train(cfg("plain"))
    train(cfg("full", "train.distributed=fsdp"))
    crash_run(train, cfg("crash", "train.distributed=fsdp"), step=3)
    assert [s for s, _ in list_checkpoints(tmp_path / "crash")] == [2]
    assert (tmp_path / "crash" / "checkpoint-2" / "sharded" / ".metadata").is_file()
    assert not (tmp_path / "crash" / "checkpoint-2" / "trainable.safetensors").exists()
    train(cfg("crash", "train.distributed=fsdp"))
    a, b, c = (_metrics(tmp_path / n) for n in ("plain", "full", "crash"))
    assert sorted(a) == sorted(b) == sorted(c) == [1, 2, 3, 4]
    for s in a:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], abs=1e-6), s
        assert c[s]["loss"] == b[s]["loss"], s
    assert _max_weight_diff(tmp_path / "plain", tmp_path / "full") <= 1e-6
    assert _max_weight_diff(tmp_path / "full", tmp_path / "crash") == 0.0


# --------------------------------------------------------------------------- torchrun tests


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_two_sharded_processes_match_one_process(stage, assets, sharded_runs, tmp_path):
    """FSDP x 2 (gloo) equals 1 process with the same global batch of 8: losses of every step
    and the final weights. SFT runs with gradient checkpointing on the sharded side only and
    evaluates 17 held-out rows (2 batches on one process, 1 on the other: the gathered
    evaluation must not deadlock); DPO trains LoRA adapters with the reference = the policy
    with adapters off, run inside the sharded training step; final/ holds merged weights.
    Measured over 2-3 steps: losses equal to 5e-7 (eval loss 1.3e-7), weights to 4.6e-6 (SFT;
    RM 2.3e-6, DPO 7.8e-7: Adam divides tiny gradient differences by tiny second moments);
    tolerances 1e-5 and 2e-5."""
    from rlhf.recipes import dpo, rm, sft

    module = {"sft": sft, "rm": rm, "dpo": dpo}[stage]
    cls = {"sft": sft.SFTConfig, "rm": rm.RMConfig, "dpo": dpo.DPOConfig}[stage]
    one = tmp_path / "one"
    module.train(load_config(cls, None, _args(assets, stage, one, "model.gradient_checkpointing=false")))
    two = sharded_runs / stage
    a, b = _metrics(one), _metrics(two)
    assert sorted(a) == sorted(b) and len(a) >= 2
    for s in a:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], abs=1e-5), (s, a[s], b[s])
    if stage == "sft":
        assert b[3]["eval_loss"] == pytest.approx(a[3]["eval_loss"], abs=1e-5)
    assert _max_weight_diff(one, two) <= 2e-5
    # final/ is an ordinary model folder.
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    auto = AutoModelForSequenceClassification if stage == "rm" else AutoModelForCausalLM
    loaded = auto.from_pretrained(two / "final")
    w = _weights(two)
    for k, v in loaded.state_dict().items():
        if k in w:
            assert torch.equal(v, w[k]), k


@pytest.mark.slow
def test_sharded_ppo_matches_data_parallel(sharded_runs):
    """PPO (GAE, a separate critic from the policy, the reward model the rm run trained)
    sharded x 2 against data parallel x 2: the same prompts, sampling streams and hence
    rollouts (generation runs on the gathered policy), so scores are equal exactly and losses
    to float rounding. Measured: scores equal, losses 1.1e-7, value losses 8e-7, final weights
    1.0e-6 (1.1e-5 in a run with another reward); tolerances 1e-6, 1e-5 and 1e-4."""
    a, b = _metrics(sharded_runs / "ppo-ddp"), _metrics(sharded_runs / "ppo")
    assert sorted(a) == sorted(b) == [1, 2]
    for s in a:
        assert b[s]["score"] == a[s]["score"], s
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], abs=1e-6), s
        assert b[s]["value_loss"] == pytest.approx(a[s]["value_loss"], abs=1e-5), s
    assert _max_weight_diff(sharded_runs / "ppo-ddp", sharded_runs / "ppo") <= 1e-4


@pytest.mark.slow
def test_sharded_frozen_models_match_replicated(assets, sharded_runs, tmp_path):
    """train.fsdp.frozen=shard: PPO's reference copy and reward model, and DPO's online reference,
    sharded like the policy (their passes in step on both processes, or gathered for
    evaluation and the reference's log-probs). PPO against the same run with them replicated:
    measured scores, KL, losses and weights equal (same arithmetic; tolerances as for PPO
    above); DPO against one process with a whole reference: losses 9e-8, eval loss 1e-8,
    weights 6.8e-6 (tolerances 1e-5, 1e-5, 2e-5)."""
    a, b = _metrics(sharded_runs / "ppo"), _metrics(sharded_runs / "ppo-frozen")
    assert sorted(a) == sorted(b) == [1, 2]
    for s in a:
        assert b[s]["score"] == a[s]["score"], s
        assert b[s]["kl"] == pytest.approx(a[s]["kl"], abs=1e-6), s
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], abs=1e-6), s
    assert _max_weight_diff(sharded_runs / "ppo", sharded_runs / "ppo-frozen") <= 1e-4

    from rlhf.recipes.dpo import DPOConfig, train
    one = tmp_path / "one"
    train(load_config(DPOConfig, None, _args(assets, "dpo", one, "model.lora.enabled=false",
                                             "data.eval_fraction=0.25")))
    a, b = _metrics(one), _metrics(sharded_runs / "dpo-frozen")
    assert sorted(a) == sorted(b) == [1, 2]
    for s in a:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], abs=1e-5), s
    assert b[2]["eval_loss"] == pytest.approx(a[2]["eval_loss"], abs=1e-5)
    assert _max_weight_diff(one, sharded_runs / "dpo-frozen") <= 2e-5


@pytest.mark.slow
def test_kill9_resume_same_and_fewer_processes(assets, sharded_runs, tmp_path, one_process_group):
    """Every process SIGKILLed after writing its shards of checkpoint 2, before the rename: the
    folder holds checkpoint-1 and an ignored checkpoint-2.tmp. Resuming on 2 processes gives the
    uninterrupted run exactly (same arithmetic; measured 0); resuming on 1 process (DCP
    reshards 2 shards into 1) gives it to float rounding (measured 4.8e-7 loss, 3.3e-8 weights;
    tolerances 1e-5 and 2e-5)."""
    crashed = sharded_runs / "crash"
    assert [s for s, _ in list_checkpoints(crashed)] == [1]
    assert (crashed / "checkpoint-2.tmp" / "sharded").is_dir()
    assert not (crashed / "summary.json").exists()
    fewer = tmp_path / "crash-1"
    shutil.copytree(crashed, fewer)

    _torchrun([{"stage": "sft", "args": _args(assets, "sft", crashed, "train.distributed=fsdp")}], tmp_path)
    full, resumed = _metrics(sharded_runs / "sft"), _metrics(crashed)
    assert sorted(resumed) == sorted(full) == [1, 2, 3]
    for s in full:
        assert resumed[s]["loss"] == full[s]["loss"], s
    assert _max_weight_diff(sharded_runs / "sft", crashed) == 0.0

    from rlhf.recipes.sft import SFTConfig, train
    train(load_config(SFTConfig, None, _args(assets, "sft", fewer, "train.distributed=fsdp")))  # this process alone
    one = _metrics(fewer)
    for s in full:
        assert one[s]["loss"] == pytest.approx(full[s]["loss"], abs=1e-5), s
    assert _max_weight_diff(sharded_runs / "sft", fewer) <= 2e-5


def test_mixed_precision_policy_computes_in_bf16_keeps_fp32_weights(assets, tmp_path, one_process_group):
    """fsdp.param_dtype=bf16 on an fp32 model: the forward runs on bf16 copies of the weights, so
    the first step's loss is that of the same model loaded in bf16 (measured: equal to the last
    bit, same arithmetic), and differs from the fp32 loss by bf16 rounding (measured 1.1e-4);
    the sharded weights AdamW steps and final/ stay fp32."""
    from rlhf.recipes.sft import SFTConfig, train

    def run(name, *extra):
        train(load_config(SFTConfig, None, _args(assets, "sft", tmp_path / name, "train.max_steps=1",
                                                 "data.eval=null", "model.gradient_checkpointing=false", *extra)))
        return _metrics(tmp_path / name)[1]["loss"]

    mixed = run("mixed", "train.distributed=fsdp", "train.fsdp.param_dtype=bf16")
    assert mixed == run("bf16", "model.dtype=bf16")
    assert 1e-6 < abs(mixed - run("fp32")) < 1e-2
    assert {v.dtype for v in _weights(tmp_path / "mixed").values()} == {torch.float32}
