"""The DPO stage (rlhf/recipes/dpo.py) end to end on a tiny Llama: reference caching, the
one-pass forward, exact accumulation, learning, every loss from the CLI, resume.

Synthetic preference task used throughout (``_pairs``): the prompt is an instruction from the
built-in testbed; both completions are 4 letters from a..j. The preference is a known function
of the text: the completion with MORE letters from the low half "abcde" wins (chosen has 3 or 4
of them, rejected 0 or 1). A policy that learned it puts more mass on low-half letters.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.cli import main as cli_main
from rlhf.config import ConfigError, load_config
from rlhf.configs import recipe_path
from rlhf.data.collate import PadCollator, PreferenceCollator
from rlhf.data.config import DataConfig
from rlhf.data.load import load_records
from rlhf.data.tokenize import encode_records
from rlhf.models.config import ModelConfig
from rlhf.models.load import load_causal_lm, load_reference, load_tokenizer
from rlhf.recipes import dpo as dpo_recipe
from rlhf.recipes.dpo import CACHE_FILE, DPOConfig, OnlineReference, sequence_logps, train
from rlhf.testbed.instructions import make_examples, write_jsonl
from rlhf.train.config import TrainConfig
from rlhf.train.run import list_checkpoints
from rlhf.train.trainer import Trainer

LOW, HIGH = "abcde", "fghij"


def _completion(rng: random.Random, n_low: int) -> str:
    letters = [rng.choice(LOW) for _ in range(n_low)] + [rng.choice(HIGH) for _ in range(4 - n_low)]
    rng.shuffle(letters)
    return " ".join(letters)


def _pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    prompts = [e["prompt"] for e in make_examples(n, seed=seed + 100)]
    return [{"prompt": p, "chosen": _completion(rng, rng.choice((3, 4))),
             "rejected": _completion(rng, rng.choice((0, 1)))} for p in prompts]


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pref")
    train_rows, eval_rows = _pairs(256, 0), _pairs(64, 1)
    # KTO's unpaired form of the same training pairs: chosen -> desirable, rejected -> not.
    unpaired = [{"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"}
                for r in train_rows for k in ("chosen", "rejected")]
    return {"train": write_jsonl(train_rows, d / "train.jsonl"), "eval": write_jsonl(eval_rows, d / "eval.jsonl"),
            "unpaired": write_jsonl(unpaired, d / "unpaired.jsonl")}


def _overrides(tiny_llama, data, out, *extra) -> list[str]:
    return [f"output_dir={out}", f"model.name_or_path={tiny_llama}", f"data.train={data['train']}",
            f"data.eval={data['eval']}", "data.chat_template=none", "data.max_length=32",
            "train.progress=false", "train.save_model_in_checkpoints=false", *extra]


def _cfg(tiny_llama, data, out, *extra) -> DPOConfig:
    return load_config(DPOConfig, None, _overrides(tiny_llama, data, out, *extra))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _encoded(tiny_llama, data, n=None):
    tok = load_tokenizer(ModelConfig(name_or_path=str(tiny_llama)))
    dc = DataConfig(train=str(data["train"]), chat_template="none", max_length=32, max_samples=n)
    records, _ = load_records(dc, "preference")
    return tok, encode_records(records, tok, dc)


# --------------------------------------------------------------------------- log-probs and the reference


def test_one_pass_equals_separate_forwards(tiny_llama, pref_data):
    """Chosen and rejected in one (2B, T) batch give each sequence the log-prob it gets alone
    (batch of one, no padding): the concatenated forward is only a speed-up."""
    tok, ex = _encoded(tiny_llama, pref_data, n=6)
    model = load_causal_lm(ModelConfig(name_or_path=str(tiny_llama)), for_training=False)
    with torch.no_grad():
        joint, lengths = sequence_logps(model, PreferenceCollator(tok.pad_token_id)(ex))  # (12,)
        pad = PadCollator(tok.pad_token_id)
        alone = torch.stack([sequence_logps(model, pad([{"input_ids": e[f"{k}_input_ids"],
                                                          "completion_mask": e[f"{k}_completion_mask"]}]))[0][0]
                             for k in ("chosen", "rejected") for e in ex])
    torch.testing.assert_close(joint, alone, atol=1e-5, rtol=0)
    assert lengths.tolist() == [sum(e[f"{k}_completion_mask"]) for k in ("chosen", "rejected") for e in ex]
    # Independent check of one value: a naive log_softmax over the whole vocabulary.
    e = ex[0]
    ids = torch.tensor([e["chosen_input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    naive = sum(logp[t - 1, ids[0, t]].item() for t in range(1, ids.shape[1]) if e["chosen_completion_mask"][t])
    assert joint[0].item() == pytest.approx(naive, abs=1e-4)


@pytest.mark.slow
def test_cached_reference_equals_online(tiny_llama, pref_data, tmp_path):
    """The cache file holds, bit for bit, what the online reference computes for the same
    example whatever batch it sits in; and a cached run trains exactly like an online one."""
    extra = ["train.batch_size=8", "train.max_steps=3", "train.lr=1e-3", "data.max_samples=48"]
    cached = train(_cfg(tiny_llama, pref_data, tmp_path / "cached", *extra))
    online = train(_cfg(tiny_llama, pref_data, tmp_path / "online", *extra, "reference=online"))
    assert not (tmp_path / "online" / CACHE_FILE).exists()
    cache = load_file(str(tmp_path / "cached" / CACHE_FILE))
    # max_samples caps eval too
    assert cache["train/ref_chosen_logps"].shape == (48,) and cache["eval/ref_chosen_logps"].shape == (48,)

    tok, ex = _encoded(tiny_llama, pref_data, n=48)
    ref = load_reference(ModelConfig(name_or_path=str(tiny_llama)),
                         policy=load_causal_lm(ModelConfig(name_or_path=str(tiny_llama))))
    online_ref = OnlineReference(ref, "dpo")
    collate = PreferenceCollator(tok.pad_token_id)
    # Batches unlike the cache's (sizes 1, 5 and 7, shuffled order).
    order = list(range(48))
    random.Random(0).shuffle(order)
    got_c, got_r = torch.zeros(48), torch.zeros(48)
    for start, size in [(0, 1), (1, 5), (6, 7), (13, 35)]:
        idx = order[start:start + size]
        vals = online_ref(collate([ex[i] for i in idx]))
        got_c[idx], got_r[idx] = vals["ref_chosen_logps"], vals["ref_rejected_logps"]
    assert torch.equal(got_c, cache["train/ref_chosen_logps"])
    assert torch.equal(got_r, cache["train/ref_rejected_logps"])

    a, b = _metrics(tmp_path / "cached"), _metrics(tmp_path / "online")
    assert [m["loss"] for m in a] == [m["loss"] for m in b]
    assert cached["eval_reward_accuracy"] == online["eval_reward_accuracy"]
    wa = load_file(str(tmp_path / "cached" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "online" / "final" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_reference_free_loss_loads_no_reference(tiny_llama, pref_data, tmp_path, monkeypatch, loss):
    def refuse(*a, **k):
        raise AssertionError(f"load_reference called for loss={loss}")

    monkeypatch.setattr(dpo_recipe, "load_reference", refuse)
    summary = train(_cfg(tiny_llama, pref_data, tmp_path / loss, f"loss={loss}", "train.batch_size=8",
                         "train.max_steps=2", "data.max_samples=16"))
    assert summary["reference"] == "none"
    assert not (tmp_path / loss / CACHE_FILE).exists()
    # The guard works: a loss that needs the reference does reach it.
    with pytest.raises(AssertionError, match="load_reference called"):
        train(_cfg(tiny_llama, pref_data, tmp_path / "dpo", "loss=dpo", "train.batch_size=8",
                   "train.max_steps=2", "data.max_samples=16"))


def test_grad_accumulation_is_exact(tiny_llama, pref_data, tmp_path):
    """Batch 4 x 1 micro-batch vs 1 x 4 micro-batches: same loss and gradients (1e-5).

    Per-pair losses are summed and divided by the GLOBAL pair count (4) in both cases, so the
    four micro-batch losses add up to the full-batch mean. Reference log-probs are fixed,
    different numbers per pair, so the loss is not at its policy = reference value log 2.
    """
    tok, ex = _encoded(tiny_llama, pref_data, n=4)
    for i, e in enumerate(ex):
        e["ref_chosen_logps"], e["ref_rejected_logps"] = -20.0 - 3 * i, -18.0 + 2 * i
    cfg = _cfg(tiny_llama, pref_data, tmp_path / "cfg")
    collate = dpo_recipe._WithReference(PreferenceCollator(tok.pad_token_id),
                                        ("ref_chosen_logps", "ref_rejected_logps"))
    results = []
    for accum in (1, 4):
        trainer = Trainer(TrainConfig(batch_size=4, grad_accum=accum, progress=False), tmp_path / f"a{accum}",
                          cfg, stage="dpo")
        model = trainer.setup(load_causal_lm(cfg.model), num_examples=4)
        _, micro = next(trainer.steps(ex, collate))
        assert len(micro) == accum
        m = trainer.accumulate(micro, lambda mb: dpo_recipe._units(mb, True),
                               lambda mdl, mb, d: dpo_recipe._paired_loss(cfg, None, mdl, mb, d))
        results.append((m, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (m1, g1), (m4, g4) = results
    assert m1["units"] == m4["units"] == 4
    assert m4["loss"] == pytest.approx(m1["loss"], abs=1e-5)
    assert m4["reward_accuracy_mean"] == pytest.approx(m1["reward_accuracy_mean"], abs=1e-6)
    assert abs(m1["loss"] - 0.6931) > 0.05  # the fixed reference moved the loss off log 2
    for n in g1:
        torch.testing.assert_close(g4[n], g1[n], atol=1e-5, rtol=0, msg=n)
    assert max(g.abs().max().item() for g in g1.values()) > 1e-3  # gradients are not trivially zero


# --------------------------------------------------------------------------- learning


def _low_letter_share(model, tok, prompts: list[str]) -> float:
    """Mean over prompts of P(first completion token is a low-half letter | it is a letter a..j):
    the probability of the preferred pattern relative to the dispreferred one."""
    def ids(letters):
        out = [tok(x, add_special_tokens=False)["input_ids"] for x in letters]
        assert all(len(i) == 1 for i in out), out  # every letter is one token
        return [i[0] for i in out]

    low, high = ids(LOW), ids(HIGH)
    total = 0.0
    with torch.no_grad():
        for p in prompts:
            probs = torch.softmax(model(input_ids=torch.tensor([tok(p)["input_ids"]])).logits[0, -1].double(), -1)
            total += (probs[low].sum() / (probs[low].sum() + probs[high].sum())).item()
    return total / len(prompts)


@pytest.mark.slow
def test_dpo_learns_the_known_preference(tiny_llama, pref_data, tmp_path):
    """DPO raises held-out implicit-reward accuracy from 0 (policy = reference: every implicit
    reward is 0, no pair is strictly ordered) to near 1, and raises the probability of the
    preferred pattern (a low-half letter first) over the untrained model.

    Measured (seed 0, 2 epochs of 256 pairs, 32 steps): held-out accuracy 1.000; share of
    low-half letters in the first-token distribution (over letters) 0.467 -> 0.854.
    """
    out = tmp_path / "learn"
    summary = train(_cfg(tiny_llama, pref_data, out, "train.batch_size=16", "train.epochs=2",
                         "train.lr=1e-3", "beta=0.1"))
    first = _metrics(out)[0]
    assert abs(first["reward_margin"]) < 1e-5 and first["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert summary["eval_reward_accuracy"] >= 0.9, summary
    assert summary["eval_reward_margin"] > 0.5, summary
    tok = load_tokenizer(ModelConfig(name_or_path=str(tiny_llama)))
    prompts = [json.loads(x)["prompt"] for x in pref_data["eval"].read_text().splitlines()][:32]
    before = _low_letter_share(load_causal_lm(ModelConfig(name_or_path=str(tiny_llama)), for_training=False),
                               tok, prompts)
    after = _low_letter_share(load_causal_lm(ModelConfig(name_or_path=str(out / "final")), for_training=False),
                              tok, prompts)
    print(f"low-letter share {before:.3f} -> {after:.3f}; held-out accuracy {summary['eval_reward_accuracy']:.3f}")
    assert after > before + 0.2, (before, after)


LOSS_RUNS = {
    "dpo": ["label_smoothing=0.1"],  # cDPO
    "robust": ["label_smoothing=0.1"],
    "ipo": [],
    "hinge": [],
    "simpo": ["beta=2.0", "gamma=0.5"],
    "orpo": ["beta=1.0"],  # λ = 1: the reward β·mean log-prob moves visibly in 16 steps
    "kto": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("loss", list(LOSS_RUNS))
def test_every_loss_trains_from_the_cli(tiny_llama, pref_data, tmp_path, loss):
    """`rlhf dpo loss=<name>` trains: held-out implicit-reward accuracy ends well above chance
    (0.5) and the chosen-minus-rejected implicit-reward margin grows. KTO trains on unpaired
    data and is evaluated on the pairs of the eval file (read as unpaired: same row = a pair)."""
    out = tmp_path / loss
    extra = [f"loss={loss}", "train.batch_size=16", "train.max_steps=16", "train.lr=1e-3", *LOSS_RUNS[loss]]
    if loss == "kto":
        extra.append(f"data.train={pref_data['unpaired']}")
    args = _overrides(tiny_llama, pref_data, out, *extra)
    if loss == "kto":  # data.train given twice: the later one wins
        args = [a for a in args if a != f"data.train={pref_data['train']}"]
    assert cli_main(["dpo", *args]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss"] == loss and summary["steps"] == 16
    assert summary["eval_reward_accuracy"] >= 0.8, summary
    m = _metrics(out)
    assert m[-1]["reward_margin"] > m[0]["reward_margin"] + 0.05, (m[0], m[-1])
    assert all(k in m[-1] for k in ("loss", "grad_norm", "chosen_rewards", "rejected_rewards",
                                    "chosen_logps", "rejected_logps"))


# --------------------------------------------------------------------------- resume and config


@pytest.mark.slow
def test_resume_reuses_the_cache(tiny_llama, pref_data, tmp_path, monkeypatch, crash_run):
    """A resumed run reads the reference log-probs back (computing them again would raise here)
    and ends exactly where an uninterrupted run ends."""
    extra = ["train.batch_size=8", "train.max_steps=6", "train.save_every=2", "train.lr=1e-3",
             "data.max_samples=48"]
    full = train(_cfg(tiny_llama, pref_data, tmp_path / "full", *extra))
    crash_run(train, _cfg(tiny_llama, pref_data, tmp_path / "crash", *extra), step=3)
    assert [s for s, _ in list_checkpoints(tmp_path / "crash")] == [2]

    def no_recompute(*a, **k):
        raise AssertionError("reference log-probs recomputed on resume")

    monkeypatch.setattr(dpo_recipe, "compute_reference_logps", no_recompute)
    resumed = train(_cfg(tiny_llama, pref_data, tmp_path / "crash", *extra))
    assert resumed["eval_reward_accuracy"] == full["eval_reward_accuracy"]
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], abs=1e-6)
    a = {m["step"]: m["loss"] for m in _metrics(tmp_path / "full")}
    b = {m["step"]: m["loss"] for m in _metrics(tmp_path / "crash")}
    assert sorted(b) == list(range(1, 7))
    assert all(b[s] == pytest.approx(a[s], abs=1e-6) for s in a)


def test_cache_of_other_data_is_refused(tiny_llama, pref_data, tmp_path):
    extra = ["train.batch_size=8", "train.max_steps=2", "train.save_every=1"]
    out = tmp_path / "run"
    train(_cfg(tiny_llama, pref_data, out, *extra, "data.max_samples=16"))
    (out / "summary.json").unlink()  # pretend it is unfinished, then change the data
    from rlhf.train.run import RunDirError
    with pytest.raises(RunDirError, match="data.max_samples: 16 -> 24"):  # the run's config fingerprint
        train(_cfg(tiny_llama, pref_data, out, *extra, "data.max_samples=24"))
    # Even past it (the expert override), the cache of other data is refused.
    with pytest.raises(RunDirError, match="fingerprint mismatch"):
        train(_cfg(tiny_llama, pref_data, out, *extra, "data.max_samples=24", "train.resume_changed_config=true"))


@pytest.mark.parametrize("override, key", [
    (["loss=ipo", "label_smoothing=0.1"], "label_smoothing"),
    (["loss=kto", "rpo_alpha=1.0"], "rpo_alpha"),
    (["data.packing=true"], "data.packing"),
    (["loss=nope"], "loss"),
])
def test_bad_config_names_the_field(tiny_llama, pref_data, tmp_path, override, key):
    with pytest.raises(ConfigError) as e:
        _cfg(tiny_llama, pref_data, tmp_path / "x", *override)
    assert e.value.key == key


def test_shipped_tiny_config_is_valid():
    """rlhf/configs/dpo/tiny.yaml loads and validates, and each loss name can be set on top of it."""
    path = recipe_path("dpo", "tiny")
    cfg = load_config(DPOConfig, str(path), [])
    assert cfg.loss == "dpo" and cfg.reference == "cached" and cfg.data.eval == "runs/quickstart/pairs/eval.jsonl"
    for loss in LOSS_RUNS:
        assert load_config(DPOConfig, str(path), [f"loss={loss}"]).loss == loss
