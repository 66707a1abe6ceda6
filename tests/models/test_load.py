"""Loading policies, references and scalar models; LoRA; saving. All on tiny local checkpoints."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import rlhf.models.load as load_mod
from rlhf.models.config import LoraConfig, ModelConfig
from rlhf.models.load import (
    count_parameters,
    init_scalar_head,
    load_causal_lm,
    load_reference,
    load_scalar_model,
    load_tokenizer,
    save_model,
    scalar_head,
)
from rlhf.models.tiny import TINY_ARCHITECTURES, train_tokenizer

TEXTS = ["The cat likes a red ball.", "Our teacher builds", "A dog sees the answer again!"]


def _batch(path, texts=TEXTS, side="right"):
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = side
    return dict(tok(texts, padding=True, return_tensors="pt"))


def _cfg(path, **kw) -> ModelConfig:
    lora = kw.pop("lora", None)
    cfg = ModelConfig(name_or_path=str(path), **kw)
    return dataclasses.replace(cfg, lora=lora) if lora is not None else cfg


def _perturb_adapters(model, seed=0, std=0.3):
    """Give LoRA's B (zero at init) and A random values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


# --------------------------------------------------------------------------- dtype, flags


def test_bf16_is_honoured(tiny_checkpoint):
    """bf16 loading gives exactly the fp32 weights rounded to bf16, and bf16 activations."""
    path = tiny_checkpoint("llama")
    fp32 = load_causal_lm(_cfg(path), for_training=False)
    bf16 = load_causal_lm(_cfg(path, dtype="bf16"), for_training=False)
    ref = dict(fp32.named_parameters())
    for name, p in bf16.named_parameters():
        assert p.dtype == torch.bfloat16, name
        assert torch.equal(p, ref[name].to(torch.bfloat16)), name
    with torch.no_grad():
        assert bf16(**_batch(path)).logits.dtype == torch.bfloat16


def test_trust_remote_code_defaults_off_and_is_passed_through(tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint("llama")
    seen: dict[str, list[dict]] = {"causal": [], "scalar": [], "tok": []}

    def spy(kind, cls):
        original = cls.from_pretrained  # bound classmethod

        def fake(name, **kwargs):
            seen[kind].append(kwargs)
            return original(name, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", fake)

    spy("causal", AutoModelForCausalLM)
    spy("scalar", AutoModelForSequenceClassification)
    spy("tok", AutoTokenizer)
    for trust in (None, True):
        cfg = _cfg(path) if trust is None else _cfg(path, trust_remote_code=True, revision="main",
                                                    attn_implementation="eager", dtype="bf16")
        load_causal_lm(cfg)
        load_scalar_model(cfg)  # also loads the tokenizer
    expected = [False, True]
    for kind in seen:
        assert [kw["trust_remote_code"] for kw in seen[kind]] == expected, kind
    c0, c1 = seen["causal"]
    assert (c0["dtype"], c0.get("attn_implementation"), c0["revision"]) == (torch.float32, None, None)  # auto
    assert (c1["dtype"], c1["attn_implementation"], c1["revision"]) == (torch.bfloat16, "eager", "main")
    assert c0["use_safetensors"] is True
    assert seen["scalar"][0]["num_labels"] == 1


def test_missing_local_folder_is_named(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_causal_lm(_cfg(missing))


def test_tokenizer_without_pad_gets_eos(tmp_path, corpus):
    tok = train_tokenizer(corpus, 300)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(_cfg(tmp_path))
    assert loaded.pad_token == "<|endoftext|>" and loaded.pad_token_id == loaded.eos_token_id == 1
    # A tokenizer that has a pad token keeps it (pad != eos).
    tok2 = train_tokenizer(corpus, 300)
    tok2.save_pretrained(tmp_path / "with_pad")
    assert load_tokenizer(_cfg(tmp_path / "with_pad")).pad_token_id == 0


def test_count_parameters_counts_tied_weights_once_and_trainable(tiny_checkpoint):
    model = load_causal_lm(_cfg(tiny_checkpoint("gpt2")))  # tied embeddings
    n_unique = sum(p.numel() for p in {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}.values())
    counts = count_parameters(model)
    assert counts == {"total": n_unique, "trainable": n_unique}
    wte = model.get_input_embeddings().weight
    wte.requires_grad_(False)
    assert count_parameters(model) == {"total": n_unique, "trainable": n_unique - wte.numel()}


# --------------------------------------------------------------------------- dropout, checkpointing


_DROPOUT_KEYS = ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")


def _checkpoint_with_dropout(src, dst, p=0.3):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    keys = [k for k in _DROPOUT_KEYS if k in cfg]
    assert keys, "the architecture should have at least one dropout setting"
    cfg.update({k: p for k in keys})
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "phi"])
def test_dropout_is_really_off_in_train_mode(arch, tiny_checkpoint, tmp_path):
    """Two train-mode passes agree (and equal eval mode) only when dropout is disabled.

    llama keeps attention dropout as a float attribute passed to SDPA, gpt2 uses nn.Dropout
    modules, gpt_neox and phi both: each way of storing dropout is covered.
    """
    path = _checkpoint_with_dropout(tiny_checkpoint(arch), tmp_path / "drop")
    batch = _batch(path)
    on = load_causal_lm(_cfg(path, disable_dropout=False))
    off = load_causal_lm(_cfg(path))
    assert on.training and off.training
    with torch.no_grad():
        torch.manual_seed(0)
        a, b = off(**batch).logits, off(**batch).logits
        c, d = on(**batch).logits, on(**batch).logits
        e = off.eval()(**batch).logits
    assert torch.equal(a, b) and torch.equal(a, e)
    assert not torch.allclose(c, d)  # control: the checkpoint's dropout is live when kept


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(lora, tiny_checkpoint):
    path = tiny_checkpoint("llama")
    lcfg = LoraConfig(enabled=lora, r=4)
    plain = load_causal_lm(_cfg(path, lora=lcfg))
    ckpt = load_causal_lm(_cfg(path, lora=lcfg, gradient_checkpointing=True))
    if lora:
        _perturb_adapters(plain)
        _perturb_adapters(ckpt)
    batch = _batch(path)
    grads, calls = [], []
    for model in (plain, ckpt):
        n = [0]
        # Count calls of one layer's MLP by wrapping its forward (module hooks do not fire
        # during the recompute, so a forward hook cannot see it).
        mlp = load_mod.unwrap_model(model).model.layers[0].mlp
        mlp_forward = mlp.forward

        def counting_forward(*args, _f=mlp_forward, _n=n, **kwargs):
            _n[0] += 1
            return _f(*args, **kwargs)
        mlp.forward = counting_forward
        out = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
        out.loss.backward()
        del mlp.forward  # back to the class's forward
        calls.append(n[0])
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad})
    # With checkpointing the layer runs again during backward (recompute): proof it is active.
    assert calls == [1, 2]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-5, rtol=0), k


# --------------------------------------------------------------------------- LoRA


def _lora_hand_count(arch, config, r):
    """Trainable LoRA parameters: r * (in + out) for each adapted linear layer.

    Default targets = every linear layer of the blocks (not the LM head). Shapes (in, out)
    from the architecture's definition; kv = num_key_value_heads * head_dim.
    """
    h, layers = config.hidden_size, config.num_hidden_layers
    inter = config.n_inner if arch == "gpt2" else config.intermediate_size
    if arch in ("llama", "qwen2", "mistral", "gemma"):
        kv = config.num_key_value_heads * config.head_dim
        shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]
    elif arch == "gpt2":  # c_attn (fused qkv), attn c_proj, c_fc, mlp c_proj
        shapes = [(h, 3 * h), (h, h), (h, inter), (inter, h)]
    elif arch == "gpt_neox":  # query_key_value, dense, dense_h_to_4h, dense_4h_to_h
        shapes = [(h, 3 * h), (h, h), (h, inter), (inter, h)]
    elif arch == "phi":  # q, k, v, dense, fc1, fc2
        shapes = [(h, h)] * 4 + [(h, inter), (inter, h)]
    else:
        raise AssertionError(arch)
    return layers * sum(r * (i + o) for i, o in shapes)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_lora_trainable_count_matches_hand_computation(arch, tiny_checkpoint):
    path = tiny_checkpoint(arch)
    plain = AutoModelForCausalLM.from_pretrained(path)
    model = load_causal_lm(_cfg(path, lora=LoraConfig(enabled=True, r=4)))
    assert isinstance(model, PeftModel)
    counts = count_parameters(model)
    assert counts["trainable"] == _lora_hand_count(arch, plain.config, r=4)
    assert counts["total"] == count_parameters(plain)["total"] + counts["trainable"]
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_lora_explicit_targets_and_scalar_head(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    config = AutoModelForCausalLM.from_pretrained(path).config
    h, kv, layers = config.hidden_size, config.num_key_value_heads * config.head_dim, config.num_hidden_layers
    model = load_causal_lm(_cfg(path, lora=LoraConfig(enabled=True, r=2, target_modules=["q_proj", "v_proj"])))
    assert count_parameters(model)["trainable"] == layers * 2 * ((h + h) + (h + kv))
    # A LoRA reward model trains the adapters plus the whole (h -> 1) head.
    rm = load_scalar_model(_cfg(path, lora=LoraConfig(enabled=True, r=4)))
    assert count_parameters(rm)["trainable"] == _lora_hand_count("llama", config, r=4) + h


def test_lora_alpha_scales_the_update(tiny_checkpoint):
    """Policy logits = logits of a plain model whose W became W + (alpha/r) B A."""
    path = tiny_checkpoint("llama")
    policy = load_causal_lm(_cfg(path, lora=LoraConfig(enabled=True, r=2, alpha=6.0,
                                                       target_modules=["q_proj"])))
    _perturb_adapters(policy)
    manual = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        for i, layer in enumerate(manual.model.layers):
            q = policy.get_base_model().model.layers[i].self_attn.q_proj
            layer.self_attn.q_proj.weight += 3.0 * q.lora_B["default"].weight @ q.lora_A["default"].weight
        batch = _batch(path)
        torch.testing.assert_close(policy.eval()(**batch).logits, manual(**batch).logits,
                                   atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- reference


def test_lora_reference_is_the_base_model_and_shares_its_weights(tiny_checkpoint):
    path = tiny_checkpoint("qwen2")
    cfg = _cfg(path, lora=LoraConfig(enabled=True, r=4))
    policy = load_causal_lm(cfg)
    ref = load_reference(cfg, policy)
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    batch = _batch(path)
    _perturb_adapters(policy)  # "after training": adapters no longer zero
    with torch.no_grad():
        base_logits = base(**batch).logits
        policy_before = policy(**batch).logits
    ref_logits = ref(**batch).logits
    assert not torch.allclose(policy_before, base_logits, atol=1e-3)  # adapters do matter
    torch.testing.assert_close(ref_logits, base_logits, atol=1e-6, rtol=0)
    assert ref_logits.grad_fn is None
    # No second copy: the reference's parameters are the policy's own tensors.
    assert ref.shares_policy_weights and ref.module is policy
    assert {p.data_ptr() for p in ref.module.parameters()} == {p.data_ptr() for p in policy.parameters()}
    # The policy is left as it was: train mode, adapters on, gradients flowing.
    assert policy.training and all(m.training for m in policy.modules())
    out = policy(**batch).logits
    torch.testing.assert_close(out.detach(), policy_before, atol=0, rtol=0)
    assert out.requires_grad


def test_reference_runs_in_eval_mode_even_with_dropout_kept(tiny_checkpoint, tmp_path):
    """With dropout left on (disable_dropout=False) the shared LoRA reference must still be
    deterministic: it runs the policy in eval mode, then puts train mode back."""
    path = _checkpoint_with_dropout(tiny_checkpoint("llama"), tmp_path / "drop", p=0.5)
    cfg = _cfg(path, disable_dropout=False, lora=LoraConfig(enabled=True, r=4))
    policy = load_causal_lm(cfg)
    ref = load_reference(cfg, policy)
    batch = _batch(path)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(path).eval()(**batch).logits
    torch.testing.assert_close(ref(**batch).logits, base, atol=1e-6, rtol=0)
    assert policy.training


def test_lora_reference_needs_the_policy(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint("llama"), lora=LoraConfig(enabled=True))
    with pytest.raises(ValueError, match="policy="):
        load_reference(cfg)
    with pytest.raises(TypeError, match="PeftModel"):
        load_reference(cfg, load_causal_lm(_cfg(cfg.name_or_path)))


def test_full_reference_is_a_frozen_copy(tiny_checkpoint):
    path = tiny_checkpoint("gpt2")
    cfg = _cfg(path)
    policy = load_causal_lm(cfg)
    ref, ref_from_disk = load_reference(cfg, policy), load_reference(cfg)
    batch = _batch(path)
    with torch.no_grad():
        start = policy(**batch).logits
    for r in (ref, ref_from_disk):
        assert not r.shares_policy_weights and not r.module.training
        assert not any(p.requires_grad for p in r.module.parameters())
        assert not {p.data_ptr() for p in r.module.parameters()} & {p.data_ptr() for p in policy.parameters()}
        assert torch.equal(r(**batch).logits, start)
    with torch.no_grad():  # a "training step" on the policy leaves the reference unchanged
        for p in policy.parameters():
            p.add_(0.01)
    assert not torch.allclose(policy(**batch).logits, start)
    assert torch.equal(ref(**batch).logits, start)


# --------------------------------------------------------------------------- scalar models


def test_init_scalar_head_std_is_one_over_sqrt_d_plus_one():
    """N(0, 1/(d+1)) on d = 40000 weights: the sample std has relative standard error
    1/sqrt(2 n) = 0.35 %, the sample mean standard error std/sqrt(n); allow 5 of each."""
    d = 40_000
    head = torch.nn.Linear(d, 1, bias=True)
    torch.nn.init.constant_(head.bias, 3.0)
    init_scalar_head(head, generator=torch.Generator().manual_seed(0))
    std = 1 / (d + 1) ** 0.5
    w = head.weight.detach().double()
    assert abs(w.std().item() / std - 1) < 5 / (2 * d) ** 0.5
    assert abs(w.mean().item()) < 5 * std / d ** 0.5
    assert torch.equal(head.bias, torch.zeros(1))
    # The exact formula, which no sample size could separate from 1/sqrt(d): same draw, scaled.
    small = torch.nn.Linear(3, 1, bias=False)
    init_scalar_head(small, generator=torch.Generator().manual_seed(1))
    expected = torch.randn((1, 3), generator=torch.Generator().manual_seed(1)) / 2.0  # 1/sqrt(3+1)
    assert torch.equal(small.weight.detach(), expected)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_scalar_model_keeps_the_trunk_and_inits_the_head(arch, tiny_checkpoint):
    path = tiny_checkpoint(arch)
    causal = AutoModelForCausalLM.from_pretrained(path)
    rm = load_scalar_model(_cfg(path))
    prefix = causal.base_model_prefix
    trunk_lm, trunk_rm = getattr(causal, prefix).state_dict(), getattr(rm, prefix).state_dict()
    assert trunk_lm.keys() == trunk_rm.keys()
    assert all(torch.equal(trunk_lm[k], trunk_rm[k]) for k in trunk_lm)
    head = scalar_head(rm)
    d = rm.config.hidden_size
    assert head.weight.shape == (1, d) and rm.config.num_labels == 1
    # 64 draws: relative standard error of the std is 1/sqrt(128) = 9 %; transformers'
    # default init (std 0.02) is 6x smaller, so 4 standard errors separate the two.
    assert abs(head.weight.std().item() * (d + 1) ** 0.5 - 1) < 4 / (2 * d) ** 0.5
    assert rm.config.pad_token_id == 0
    assert rm.training  # for_training=True by default


# Model types transformers 5.24 has no ...ForSequenceClassification for: a state-space model
# (trunk "backbone") and a mixture-of-experts one (trunk "model").
_NO_SEQ_CLS = {
    "mamba": dict(hidden_size=32, num_hidden_layers=2, state_size=8, expand=2),
    "olmoe": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, num_experts=4, num_experts_per_tok=2, max_position_embeddings=128),
}


@pytest.mark.parametrize("arch", sorted(_NO_SEQ_CLS))
def test_a_scalar_model_for_a_type_without_a_classification_class(arch, corpus, tmp_path):
    """Issue 22 item 8: `rlhf rm` / PPO's critic on such a type was a raw `ValueError:
    Unrecognized configuration class`. Now: the type's trunk with the checkpoint's weights and a
    scalar head; its score equals head(trunk's final hidden state at the last token) computed on
    the causal LM loaded by transformers; saved and loaded back, the same score."""
    from transformers import AutoConfig

    from rlhf.models.load import scalar_model_class, score_last_token
    from rlhf.models.tiny import train_tokenizer

    tok = train_tokenizer(corpus, 300, model_max_length=128)
    config = AutoConfig.for_model(arch, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **_NO_SEQ_CLS[arch])
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    assert arch not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES  # else this test tests nothing
    torch.manual_seed(0)
    save_model(AutoModelForCausalLM.from_config(config), tok, tmp_path / "lm")
    causal = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    rm = load_scalar_model(_cfg(tmp_path / "lm"), tokenizer=tok, for_training=False)
    assert type(rm) is scalar_model_class(config) and type(rm).__name__.endswith("ForScalarHead")
    prefix = causal.base_model_prefix
    trunk_lm, trunk_rm = getattr(causal, prefix).state_dict(), getattr(rm, prefix).state_dict()
    assert trunk_lm.keys() == trunk_rm.keys() and all(torch.equal(trunk_lm[k], trunk_rm[k]) for k in trunk_lm)
    d = config.hidden_size
    head = scalar_head(rm)
    assert head.weight.shape == (1, d)
    assert abs(head.weight.std().item() * (d + 1) ** 0.5 - 1) < 4 / (2 * d) ** 0.5  # as for llama above
    ids = torch.tensor([tok("the cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        hidden = getattr(causal, prefix)(input_ids=ids).last_hidden_state[0, -1]  # (d,)
        want = float(hidden.double() @ head.weight[0].double())
        got = float(score_last_token(rm, ids, torch.ones_like(ids)))
    assert got == pytest.approx(want, abs=1e-5)  # fp32 vs the same numbers summed in fp64
    save_model(rm, tok, tmp_path / "rm")
    again = load_scalar_model(_cfg(tmp_path / "rm"), tokenizer=tok, for_training=False)
    assert torch.equal(scalar_head(again).weight, head.weight)
    with torch.no_grad():
        assert float(score_last_token(again, ids, torch.ones_like(ids))) == got


def test_a_config_that_is_no_causal_lm_is_one_clear_error():
    from transformers import ViTConfig

    from rlhf.models.load import scalar_model_class
    with pytest.raises(ValueError, match="model_type 'vit' is neither a causal LM nor a sequence-classification"):
        scalar_model_class(ViTConfig())


def test_scalar_model_pad_id_comes_from_the_tokenizer(tiny_checkpoint, tmp_path):
    """A checkpoint with no pad id anywhere (like many base models): the tokenizer falls back
    to pad = eos, and the scalar model's config must carry that id."""
    path = tmp_path / "nopad"
    shutil.copytree(tiny_checkpoint("llama"), path)
    config = json.loads((path / "config.json").read_text())
    config["pad_token_id"] = None
    (path / "config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = None
    tok.save_pretrained(path)
    assert AutoModelForCausalLM.from_pretrained(path).config.pad_token_id is None
    rm = load_scalar_model(_cfg(path))
    assert rm.config.pad_token_id == tok.eos_token_id == 1


def _hand_scores(model, texts, tok):
    """head . h_last for each text run alone (batch of 1, no padding at all)."""
    base = load_mod.unwrap_model(model)
    trunk, head = getattr(base, base.base_model_prefix), scalar_head(model)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            h = trunk(input_ids=ids).last_hidden_state[0, -1]  # (H,)
            s = head.weight[0] @ h + (head.bias[0] if head.bias is not None else 0.0)
            out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_score_last_token_equals_hand_computation(arch, side, tiny_checkpoint):
    """Padding side must not matter: gpt2 has absolute positions, so this also checks that
    position ids are derived from the attention mask (transformers' own forward does not)."""
    path = tiny_checkpoint(arch)
    rm = load_scalar_model(_cfg(path), for_training=False)
    tok = AutoTokenizer.from_pretrained(path)
    batch = _batch(path, side=side)
    assert (batch["attention_mask"] == 0).any()  # there is padding
    expected = _hand_scores(rm, TEXTS, tok)
    with torch.no_grad():
        scores = load_mod.score_last_token(rm, batch["input_ids"], batch["attention_mask"])
        values = load_mod.score_tokens(rm, batch["input_ids"], batch["attention_mask"])
    assert scores.shape == (len(TEXTS),) and values.shape == batch["input_ids"].shape
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    # Values at the last real token are the scores.
    last = batch["attention_mask"].cumsum(-1).argmax(-1)
    torch.testing.assert_close(values[torch.arange(len(TEXTS)), last], scores, atol=0, rtol=0)
    if side == "right":  # transformers' pooling is right for right padding with pad != eos
        with torch.no_grad():
            torch.testing.assert_close(rm(**batch).logits[:, 0], expected, atol=1e-5, rtol=0)


def test_score_last_token_uses_the_mask_when_pad_is_eos(tiny_checkpoint):
    """With pad == eos (the load_tokenizer fallback) a completion ending in eos must be
    scored at its eos; looking for the last non-pad id would pick the token before it."""
    path = tiny_checkpoint("llama")
    rm = load_scalar_model(_cfg(path), for_training=False)
    tok = AutoTokenizer.from_pretrained(path)
    eos = tok.eos_token_id
    seqs = [tok("The cat likes")["input_ids"] + [eos], tok("A dog")["input_ids"] + [eos]]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [eos] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    expected = []
    base = rm.model
    with torch.no_grad():
        for s in seqs:
            h = base(input_ids=torch.tensor([s])).last_hidden_state[0, -1]
            expected.append(rm.score.weight[0] @ h)
        scores = load_mod.score_last_token(rm, ids, mask)
    torch.testing.assert_close(scores, torch.stack(expected), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        load_mod.score_last_token(rm, ids, torch.tensor([[1] * width, [0] * width]))


def test_saved_reward_model_keeps_its_head(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("llama")
    rm = load_scalar_model(_cfg(path))
    with torch.no_grad():
        scalar_head(rm).weight.fill_(0.5)  # a "trained" head
    tok = AutoTokenizer.from_pretrained(path)
    out = save_model(rm, tok, tmp_path / "rm")
    batch = _batch(path)
    with torch.no_grad():
        expected = load_mod.score_last_token(rm, batch["input_ids"], batch["attention_mask"])
    kept = load_scalar_model(_cfg(out))  # init_head=None: the checkpoint has a head
    assert torch.equal(scalar_head(kept).weight, torch.full_like(scalar_head(kept).weight, 0.5))
    hf = AutoModelForSequenceClassification.from_pretrained(out)
    assert hf.config.pad_token_id == 0
    with torch.no_grad():
        assert torch.equal(load_mod.score_last_token(hf, batch["input_ids"], batch["attention_mask"]), expected)
    fresh = load_scalar_model(_cfg(out), init_head=True)
    assert not torch.allclose(scalar_head(fresh).weight, scalar_head(kept).weight)


# --------------------------------------------------------------------------- saving


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # inside peft
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_save_merges_without_touching_the_policy(arch, tiny_checkpoint, tmp_path):
    path = tiny_checkpoint(arch)
    policy = load_causal_lm(_cfg(path, lora=LoraConfig(enabled=True, r=4)))
    _perturb_adapters(policy)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    tok = load_tokenizer(_cfg(path))
    out = save_model(policy, tok, tmp_path / "out")
    after = policy.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    batch = _batch(path)
    with torch.no_grad():
        expected = policy.eval()(**batch).logits
        merged, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        torch.testing.assert_close(merged.eval()(**batch).logits, expected, atol=1e-5, rtol=0)
        adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), out / "adapter")
        torch.testing.assert_close(adapter.eval()(**batch).logits, expected, atol=1e-6, rtol=0)
    assert AutoTokenizer.from_pretrained(out)("The cat")["input_ids"] == tok("The cat")["input_ids"]


def test_lora_reward_model_saves_its_trained_head(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("gpt2")
    rm = load_scalar_model(_cfg(path, lora=LoraConfig(enabled=True, r=4)))
    _perturb_adapters(rm)
    with torch.no_grad():
        scalar_head(rm).modules_to_save["default"].weight.add_(1.0)  # the trained copy
    out = save_model(rm, None, tmp_path / "rm")
    batch = _batch(path)
    with torch.no_grad():
        expected = load_mod.score_last_token(rm, batch["input_ids"], batch["attention_mask"])
        saved = AutoModelForSequenceClassification.from_pretrained(out)
        got = load_mod.score_last_token(saved, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_save_refuses_to_overwrite_and_leaves_no_temp_files(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("llama")
    model = AutoModelForCausalLM.from_pretrained(path)
    out = save_model(model, None, tmp_path / "ckpt")
    stamp = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="ckpt"):
        save_model(model, None, out)
    assert (out / "model.safetensors").read_bytes() == stamp
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    save_model(model, None, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() != stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_last_token_scores_equal_padded(side):
    """Packed scoring equals score_last_token on the padded batch (and each row scored alone)."""
    import transformers

    from rlhf.data.collate import PadCollator
    from rlhf.models.load import packed_last_token_scores, score_last_token

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                                   max_position_embeddings=64, pad_token_id=0)
    model = transformers.LlamaForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(1)
    seqs = [{"input_ids": torch.randint(1, 97, (n,), generator=g).tolist(), "completion_mask": [0] * n}
            for n in (4, 19, 7, 30, 2, 11)]
    b = PadCollator(0, side)(seqs)
    packed = packed_last_token_scores(model, b["input_ids"], b["attention_mask"])
    padded = score_last_token(model, b["input_ids"], b["attention_mask"], b["position_ids"])
    alone = torch.stack([model(input_ids=torch.tensor([s["input_ids"]])).logits[0, 0] for s in seqs])
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)
