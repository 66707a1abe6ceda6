"""Constitutional AI, supervised phase: each template filled with the right prompt, latest
response, principle and critique; the chain and SFT data written as they were generated; SFT
raising the likelihood of the revisions; the built-in task's rule-based critic and reviser;
bad config; resume and no overwrite."""

from __future__ import annotations

import json

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.recipes import constitutional as cai
from rlhf.recipes.constitutional import ConstitutionalConfig, train
from rlhf.testbed.feedback import REVIEW_PRINCIPLES
from rlhf.train.run import RunDirError

PROMPTS = [f"reverse: {c} {d}\n" for c, d in zip("abcdefgh", "pqrstuvw")]
PRINCIPLES = ["Be brief.", "Be kind."]


@pytest.fixture
def setup(tmp_path, tiny_llama):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"model": tiny_llama, "prompts": prompts, "out": tmp_path / "cai"}


def _cfg(s, *extra):
    return load_config(ConstitutionalConfig, None, [
        f"output_dir={s['out']}", f"model.name_or_path={s['model']}", f"data.train={s['prompts']}",
        "data.chat_template=none", "data.max_length=64", "sampling.max_new_tokens=6", "progress=false",
        "critique_max_new_tokens=5", "sft.train.batch_size=4", "sft.train.max_steps=24", "sft.train.lr=3e-3",
        "sft.train.progress=false", "sft.train.save_model_in_checkpoints=false",
        "critique_template='C[{principle}] {prompt}|{response}'",
        "revision_template='R[{principle}] {prompt}|{response}|{critique}'", *extra], base={"principles": PRINCIPLES})


class FakeGenerate:
    """Stands in for the sampler: records every request and answers with a text naming the
    call and the row, so the test knows exactly what each template must have received."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, tok, texts, sampling, *, seed, data_cfg, num_samples=1, progress=False, desc=""):
        self.calls.append({"desc": desc, "texts": list(texts), "max_new_tokens": sampling.max_new_tokens})
        word = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"][len(self.calls) - 1]
        return [f" {word} {i}" for i in range(len(texts))]


def _completion_logps(path, prompts, completions):
    from rlhf.eval.evaluate import completion_logps
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    cfg = ModelConfig(name_or_path=str(path))
    model, tok = load_causal_lm(cfg, for_training=False), load_tokenizer(cfg)
    rows = [{"prompt_ids": tok(p, add_special_tokens=False)["input_ids"],
             "completion_ids": tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]}
            for p, c in zip(prompts, completions)]
    return completion_logps(model, rows, pad_token_id=tok.pad_token_id)


def test_chain_fills_every_template_and_sft_learns_the_revisions(setup, monkeypatch):
    fake = FakeGenerate()
    monkeypatch.setattr(cai, "generate_texts", fake)
    summary = train(_cfg(setup))
    out = setup["out"]
    # Calls: responses, then (critique, revision) per principle, each on the latest text.
    assert [c["desc"].split(":")[-1].strip() for c in fake.calls] == [
        "responses", "critiques 1/2", "revisions 1/2", "critiques 2/2", "revisions 2/2"]
    assert [c["max_new_tokens"] for c in fake.calls] == [6, 5, 6, 5, 6]
    assert fake.calls[0]["texts"] == PROMPTS
    w = ["alpha", "bravo", "charlie", "delta", "echo"]
    latest = [f" alpha {i}" for i in range(8)]
    for k, principle in enumerate(PRINCIPLES):
        crit, rev = fake.calls[1 + 2 * k], fake.calls[2 + 2 * k]
        critiques = [f" {w[1 + 2 * k]} {i}" for i in range(8)]
        assert crit["texts"] == [f"C[{principle}] {p}|{r}" for p, r in zip(PROMPTS, latest)]
        assert rev["texts"] == [f"R[{principle}] {p}|{r}|{c}" for p, r, c in zip(PROMPTS, latest, critiques)]
        latest = [f" {w[2 + 2 * k]} {i}" for i in range(8)]
    chains = [json.loads(x) for x in (out / "chains.jsonl").read_text().splitlines()]
    assert [c["final"] for c in chains] == latest
    assert [c["response"] for c in chains] == [f" alpha {i}" for i in range(8)]
    assert chains[3]["steps"][1] == {"principle": "Be kind.", "critique": " delta 3", "revision": " echo 3",
                                     "critique_request": f"C[Be kind.] {PROMPTS[3]}| charlie 3",
                                     "revision_request": f"R[Be kind.] {PROMPTS[3]}| charlie 3| delta 3"}
    sft_rows = [json.loads(x) for x in (out / "revisions.jsonl").read_text().splitlines()]
    assert sft_rows == [{"prompt": p, "completion": r} for p, r in zip(PROMPTS, latest)]
    assert summary["revised"] == 8 and json.loads((out / "summary.json").read_text()) == summary
    # SFT trained on the final revisions: their log-likelihood rose, far more than that of the
    # discarded first responses, which share only the row number and EOS with them
    # (measured: +22.4 nats per sequence against +7.3).
    final = (out / "final" / "model.safetensors").read_bytes()
    assert final == (out / "sft" / "final" / "model.safetensors").read_bytes()
    base = _completion_logps(setup["model"], PROMPTS, latest)
    tuned = _completion_logps(out / "final", PROMPTS, latest)
    first = [c["response"] for c in chains]
    gain_first = (_completion_logps(out / "final", PROMPTS, first) - _completion_logps(setup["model"], PROMPTS, first))
    assert float((tuned - base).mean()) > 10.0
    assert float((tuned - base).mean()) > 2 * float(gain_first.mean())
    # A finished run is never overwritten.
    with pytest.raises(RunDirError, match="finished run"):
        train(_cfg(setup))


def test_a_killed_run_reuses_its_chains(setup, monkeypatch):
    monkeypatch.setattr(cai, "generate_texts", FakeGenerate())
    real_sft = cai.run_inner_sft
    monkeypatch.setattr(cai, "run_inner_sft", lambda cfg: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(setup))
    before = (setup["out"] / "chains.jsonl").read_text()

    def no_sampling(*a, **k):
        raise AssertionError("the chains were written: nothing is sampled again")
    monkeypatch.setattr(cai, "generate_texts", no_sampling)
    monkeypatch.setattr(cai, "run_inner_sft", real_sft)
    summary = train(_cfg(setup, "sft.train.max_steps=2"))
    assert summary["reused_chains"] and (setup["out"] / "chains.jsonl").read_text() == before


def test_function_critic_and_reviser_on_the_built_in_task(tmp_path, tiny_llama, monkeypatch):
    """With the rule-based critic and reviser, every final revision is a well-formed review of
    the asked polarity: gold > 0 on each (rlhf.testbed.reviews.gold)."""
    from rlhf.testbed import reviews
    prompts = reviews.make_prompts(8, seed=0) + reviews.make_prompts(8, seed=1, instruct=True)
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    # First responses: a mix of bad texts (invalid, wrong polarity); the reviser fixes them.
    bad = [" the food was terrible . never again .", " the food was great and the food", " amazing amazing",
           " the view was not good but the staff was fine ."]
    monkeypatch.setattr(cai, "generate_texts", lambda *a, **k: [bad[i % 4] for i in range(len(prompts))])
    cfg = load_config(ConstitutionalConfig, None, [
        f"output_dir={tmp_path / 'cai'}", f"model.name_or_path={tiny_llama}", f"data.train={f}",
        "data.chat_template=none", "progress=false", "critic=rlhf.testbed.feedback:reviews_critic",
        "reviser=rlhf.testbed.feedback:reviews_reviser", "sft.train.batch_size=4", "sft.train.max_steps=1",
        "sft.train.progress=false"], base={"principles": REVIEW_PRINCIPLES})
    train(cfg)
    chains = [json.loads(x) for x in (tmp_path / "cai" / "chains.jsonl").read_text().splitlines()]
    for ch in chains:
        assert reviews.parse(ch["final"]).valid, ch
        assert reviews.gold(ch["prompt"], ch["final"]) > 0, ch
        assert "critique_request" not in ch["steps"][0]  # functions get no template
    assert chains[1]["steps"][0]["critique"].startswith("not well-formed: ")
    assert chains[1]["steps"][0]["revision"] == " the food was great ."


@pytest.mark.parametrize("extra,base,key", [
    ([], {"principles": []}, "principles"),
    ([], {"principles": ["ok", " "]}, "principles[1]"),
    (["critique_template='{prompt} {response}'"], {"principles": ["x"]}, "critique_template"),
    (["revision_template='{response} {nope}'"], {"principles": ["x"]}, "revision_template"),
])
def test_bad_configs_are_config_errors(tmp_path, extra, base, key):
    with pytest.raises(ConfigError) as e:
        load_config(ConstitutionalConfig, None, ["data.train=x.jsonl", "model.name_or_path=m", *extra], base=base)
    assert e.value.key == key


def test_a_critic_function_that_returns_the_wrong_count_is_an_error(setup, monkeypatch):
    monkeypatch.setattr(cai, "generate_texts", FakeGenerate())
    cfg = _cfg(setup, "critic=tests.recipes.test_constitutional:one_critique")
    with pytest.raises(ValueError, match="returned 1 texts for 8 responses"):
        train(cfg)
    assert not (setup["out"] / "chains.jsonl").exists()


def one_critique(prompts, responses, principle):
    return ["only one"]
