"""PPO on the packed layout (``ppo.packed``): sequences back to back, no padding, positions
restarting per sequence, no attention across sequences.

Every packed computation is compared with the padded one it replaces and, where it is cheap, with
an independent float64 reference (each sequence alone, no padding, naive log_softmax):
``rollout_logps`` (both engines, entropies, several chunks), ``LeanLM.score`` with
``sequence_ids`` (no attention across sequences), ``rollout_values`` of a separate critic,
``PolicyAndValue`` (logits, values, and the gradients of a PPO-like loss w.r.t. every
parameter), and short GRPO and GAE runs with ``ppo.packed`` true and false.

The rollout is built by hand in the sampler's layout (rlhf/rollout.py: prompts left-padded to a
common width P, completions right-padded after it) so that it surely has what packing must
handle: prompts of 1 to 7 tokens, completions of 1 to 12 tokens, some ending at EOS (padding
after it) and some cut at the length limit. Tiny models have every parameter redrawn at unit
scale (transformers' init gives near-uniform logits, where a wrong mask barely shows).
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from rlhf.data.collate import PackedLayout
from rlhf.logprobs import shifted_token_logps
from rlhf.models.lean import LeanLM
from rlhf.models.load import score_tokens
from rlhf.models.tiny import build_tiny_model
from rlhf.recipes.ppo import PolicyAndValue, shared_value_head
from rlhf.rollout import Rollout, rollout_logps, rollout_values

V, PAD, EOS = 61, 0, 1
TEMPERATURE = 0.7

# (prompt length, completion length, ended at EOS); max_new_tokens = 12.
EPISODES = [(1, 1, True), (7, 12, False), (3, 4, True), (5, 12, False), (2, 2, True), (6, 7, True),
            (4, 9, True), (7, 3, True)]

# --------------------------------------------------------------------------- tiny models


def _redraw(model, seed: int):
    """Every parameter redrawn (in place) at unit scale: norms around 1, linear layers with
    outputs of the scale of their inputs, embeddings 0.5 (logits of a few units)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.3 * z)
            elif "embed" in name:
                p.copy_(0.5 * z)
            else:
                p.copy_(z / p.shape[-1] ** 0.5)
    return model.eval()


@functools.cache
def _policy():
    """A tiny llama (grouped-query attention); shared, so tests that train use a copy."""
    return _redraw(build_tiny_model("llama", V, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                    max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS), seed=1)


@functools.cache
def _policy64():
    return copy.deepcopy(_policy()).double()


@functools.cache
def _critic():
    """A separate tiny critic: LlamaForSequenceClassification with one output."""
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      num_labels=1, pad_token_id=PAD, eos_token_id=EOS, attention_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(cfg)
    return _redraw(model, seed=2)


def _rollout(episodes=EPISODES, seed: int = 0) -> Rollout:
    """A finished batch in the sampler's layout: prompt i left-padded to width P, its completion
    right-padded to width L after it (EOS as the last token when it ended), PAD after EOS."""
    g = torch.Generator().manual_seed(seed)
    P = max(p for p, _, _ in episodes)
    L = max(c for _, c, _ in episodes)
    B = len(episodes)
    ids = torch.full((B, P + L), PAD, dtype=torch.long)
    attn = torch.zeros((B, P + L), dtype=torch.long)
    comp = torch.zeros((B, P + L), dtype=torch.long)
    for i, (p, c, ended) in enumerate(episodes):
        ids[i, P - p:P] = torch.randint(2, V, (p,), generator=g)
        ids[i, P:P + c] = torch.randint(2, V, (c,), generator=g)
        if ended:
            ids[i, P + c - 1] = EOS
        attn[i, P - p:P + c] = 1
        comp[i, P:P + c] = 1
    return Rollout(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                   completion_mask=comp, ended=torch.tensor([e for _, _, e in episodes]), prompt_width=P,
                   prompts=[""] * B, completions=[""] * B)


@functools.cache
def _naive(temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 log-probs and entropies (B, T) of the completion tokens, each sequence run alone
    (padding removed) through the float64 copy of the policy; 0 where completion_mask is 0."""
    ro = _rollout()
    logps = torch.zeros(ro.input_ids.shape, dtype=torch.float64)
    ent = torch.zeros_like(logps)
    for i in range(len(ro)):
        cols = ro.attention_mask[i].bool().nonzero().flatten()
        seq = ro.input_ids[i, cols]
        with torch.no_grad():
            logits = _policy64()(input_ids=seq[None]).logits[0] / temperature  # (n, V)
        lp = torch.log_softmax(logits[:-1], -1)  # predicts tokens 1..n-1
        target = ro.completion_mask[i, cols[1:]].bool()
        logps[i, cols[1:][target]] = lp.gather(-1, seq[1:, None]).squeeze(-1)[target]
        ent[i, cols[1:][target]] = -(lp.exp() * lp).sum(-1)[target]
    return logps, ent


def test_the_rollout_has_what_packing_must_handle():
    """Guards the fixture: left-padded prompts of several lengths, completions ending at EOS
    early and cut at the limit, PAD (attention 0) after EOS, and a layout that really packs."""
    ro = _rollout()
    P = ro.prompt_width
    assert sorted(set(ro.attention_mask[:, :P].sum(-1).tolist())) == [1, 2, 3, 4, 5, 6, 7]
    assert ro.lengths.tolist() == [c for _, c, _ in EPISODES]
    for i, (_, c, ended) in enumerate(EPISODES):
        assert (ro.input_ids[i, P + c - 1] == EOS) == ended
        assert ro.attention_mask[i, P + c:].eq(0).all()
    layout = PackedLayout(ro.attention_mask)
    assert layout.shape[0] < len(ro)


# --------------------------------------------------------------------------- rollout_logps


@pytest.mark.parametrize("batch_size", [64, 3])
@pytest.mark.parametrize("engine", ["lean", "transformers"])
def test_packed_rollout_logps_equal_padded_and_naive(engine, batch_size):
    """rollout_logps(packed=True) == packed=False == float64 per-sequence log_softmax, log-probs
    and entropies at T = 0.7, in one chunk and in chunks of 3 rows (3 + 3 + 2); both exactly 0
    wherever completion_mask is 0 (prompt, padding after EOS).

    Measured max |diff| (both engines alike): packed vs padded 0.0 in one chunk, 9.5e-7 for
    log-probs and 1.2e-6 for entropies in chunks of 3; each vs float64 at most 1.6e-6 for
    log-probs (of -9 to -2) and 2.9e-6 for entropies. A token attending across sequences or a
    position off by one moves log-probs by >= 1e-2."""
    ro = _rollout()
    kw = dict(temperature=TEMPERATURE, batch_size=batch_size, with_entropy=True, engine=engine)
    packed, packed_ent = rollout_logps(_policy(), ro, packed=True, **kw)
    padded, padded_ent = rollout_logps(_policy(), ro, packed=False, **kw)
    naive, naive_ent = _naive(TEMPERATURE)
    mask = ro.completion_mask.bool()
    for t in (packed, packed_ent, padded, padded_ent):
        assert t.shape == ro.input_ids.shape and t.dtype == torch.float32
        assert t[~mask].eq(0).all()
    torch.testing.assert_close(packed[mask], padded[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed_ent[mask], padded_ent[mask], atol=1e-5, rtol=0)
    for lp, ent in ((packed, packed_ent), (padded, padded_ent)):
        torch.testing.assert_close(lp.double()[mask], naive[mask], atol=1e-5, rtol=0)
        torch.testing.assert_close(ent.double()[mask], naive_ent[mask], atol=1e-5, rtol=0)
    # Without with_entropy: the same log-probs alone.
    torch.testing.assert_close(rollout_logps(_policy(), ro, TEMPERATURE, batch_size, engine=engine, packed=True),
                               packed, atol=0, rtol=0)


# --------------------------------------------------------------------------- LeanLM.score


def _packed_scores(engine: str, ids: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """Logits (N, T, V) of the padded batch ``ids`` computed on its packed layout."""
    p_ids = layout.pack(ids, PAD)
    with torch.no_grad():
        if engine == "lean":
            out = LeanLM(_policy()).score(p_ids, None, layout.position_ids, sequence_ids=layout.sequence)
        else:  # transformers derives the block-diagonal mask from the restarting positions
            out = _policy()(input_ids=p_ids, position_ids=layout.position_ids, use_cache=False).logits
    return layout.unpack(out)


@pytest.mark.parametrize("engine", ["lean", "transformers"])
def test_packed_forward_equals_each_sequence_alone(engine):
    """Logits of every token of a packed batch == the transformers forward of its sequence alone
    (no padding, positions 0..n-1); and changing the tokens of the sequences that have another
    after them in their packed row leaves every other sequence's logits unchanged (no attention
    across sequences), while their own do change.

    Measured max |diff| vs each sequence alone: 1.5e-6 for both engines (logits up to ~4); the
    other sequences after the change: 0.0 (bit-identical) for both; the changed ones move by 4.9 to 6."""
    ro = _rollout()
    am = ro.attention_mask.bool()
    layout = PackedLayout(ro.attention_mask)
    got = _packed_scores(engine, ro.input_ids, layout)
    for i in range(len(ro)):
        with torch.no_grad():
            alone = _policy()(input_ids=ro.input_ids[i, am[i]][None]).logits[0]
        torch.testing.assert_close(got[i, am[i]], alone, atol=1e-5, rtol=0)
    # Change every sequence that has a later one in its packed row (causal attention could only
    # leak forward): the sequences after them must not notice.
    W = layout.shape[1]
    last = layout.last.tolist()  # flat (R*W) index of each sequence's last token
    followed = [i for i in range(len(ro)) if any(j != i and last[j] // W == last[i] // W and last[j] > last[i]
                                                 for j in range(len(ro)))]
    assert len(followed) >= 2
    changed = ro.input_ids.clone()
    g = torch.Generator().manual_seed(5)
    for i in followed:
        changed[i, am[i]] = torch.randint(2, V, (int(am[i].sum()),), generator=g)
    again = _packed_scores(engine, changed, layout)
    others = am.clone()
    others[followed] = False
    torch.testing.assert_close(again[others], got[others], atol=1e-6, rtol=0)
    for i in followed:
        assert (again[i, am[i]] - got[i, am[i]]).abs().max() > 0.1


# --------------------------------------------------------------------------- rollout_values


@pytest.mark.parametrize("batch_size", [64, 3])
def test_packed_rollout_values_equal_padded(batch_size):
    """A separate critic's V(s_t) on every action (completion_mask == 1): packed == padded ==
    the critic's head on each sequence alone, shifted to the actions.

    Measured max |diff|: packed vs padded 0.0 in one chunk, 6.0e-7 in chunks of 3; vs each
    sequence alone 6.6e-7 (values of std 1)."""
    ro = _rollout()
    packed = rollout_values(_critic(), ro, batch_size, packed=True)
    padded = rollout_values(_critic(), ro, batch_size, packed=False)
    mask = ro.completion_mask.bool()
    assert packed.shape == ro.input_ids.shape
    torch.testing.assert_close(packed[mask], padded[mask], atol=5e-6, rtol=0)
    am = ro.attention_mask.bool()
    for i in range(len(ro)):
        cols = am[i].nonzero().flatten()
        with torch.no_grad():
            h = _critic().model(input_ids=ro.input_ids[i, cols][None]).last_hidden_state
            raw = _critic().score(h)[0, :, 0]  # (n,) V of the prefix ending at each token
        want = torch.zeros(ro.input_ids.shape[1])
        want[cols[1:]] = raw[:-1]
        torch.testing.assert_close(packed[i][mask[i]], want[mask[i]], atol=5e-6, rtol=0)
    assert abs(float(packed[mask].std())) > 0.1  # values that vary, not a constant head


def test_score_tokens_needs_a_mask_or_positions():
    ro = _rollout()
    with pytest.raises(ValueError, match="attention_mask or position_ids"):
        score_tokens(_critic(), ro.input_ids, None, None)


# --------------------------------------------------------------------------- PolicyAndValue


def _ppo_like_loss(logits, values, ids, mask, advantages):
    """sum over completion tokens of logp * A + V^2: every output and every real position counts."""
    logps = shifted_token_logps(logits, ids, TEMPERATURE)  # (B, T)
    return -(logps * advantages * mask).sum() + (values.square() * mask).sum()


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_policy_and_value_packed_equals_padded_with_gradients(critic):
    """PolicyAndValue(packed=True) vs packed=False on the same padded micro-batch: logits equal on
    real positions (0 on padding when packed), values equal wherever they read a real token
    (values[t] is the critic at t-1), and the gradient of a PPO-like masked loss w.r.t. every
    parameter (policy, critic or shared head) agrees.

    Measured max |diff|: logits 9.5e-7 (of up to ~4), values 8.3e-7 (separate critic) and 6e-8
    (shared head); gradients: max |diff| 7.6e-6 on tensors whose largest entry is 3 to 78, at
    most 3.6e-7 of that largest entry. Tolerance on gradients: 2e-6 of each tensor's largest
    entry (+1e-5 relative); a 0.1% error in the gradient of the logits fails it."""
    torch.manual_seed(0)
    policy = copy.deepcopy(_policy()).train()
    value = copy.deepcopy(_critic()).train() if critic == "separate" else None
    head = shared_value_head(policy) if critic == "shared" else None
    model = PolicyAndValue(policy, value, head)
    ro = _rollout(seed=3)
    ids, am, pos = ro.input_ids, ro.attention_mask, ro.position_ids
    mask = ro.completion_mask.float()
    advantages = torch.randn(ids.shape, generator=torch.Generator().manual_seed(4))
    out, grads = {}, {}
    for packed in (False, True):
        model.packed = packed
        model.zero_grad(set_to_none=True)
        logits, values = model(ids, am, pos)
        _ppo_like_loss(logits, values, ids, mask, advantages).backward()
        out[packed] = (logits.detach(), values.detach())
        grads[packed] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    real = am.bool()
    (lg0, v0), (lg1, v1) = out[False], out[True]
    assert lg1.shape == lg0.shape and v1.shape == v0.shape == ids.shape
    torch.testing.assert_close(lg1[real], lg0[real], atol=5e-6, rtol=0)
    assert lg1[~real].eq(0).all()
    reads_real = torch.zeros_like(real)
    reads_real[:, 1:] = real[:, :-1]
    torch.testing.assert_close(v1[reads_real], v0[reads_real], atol=5e-6, rtol=0)
    assert float(v0[ro.completion_mask.bool()].std()) > 0.1
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads[False]) == set(grads[True]) == names  # every parameter gets a gradient
    assert any(n.startswith("value" if critic == "separate" else "value_head") for n in names)
    for n in names:
        a, b = grads[True][n], grads[False][n]
        scale = float(b.abs().max())
        assert scale > 0, n
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6 * scale, msg=n)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("critic", ["none", "separate", "shared"])
def test_policy_and_value_target_logps_equal_the_logits_path(monkeypatch, critic, packed, chunked):
    """``PolicyAndValue(..., targets=mask)`` (the LM head only where an action is predicted: what
    the policy loss uses) against the logits path it replaces, on the same micro-batch: log-probs
    equal at every target and 0 elsewhere, the independent float64 reference (each sequence
    alone, naive log_softmax) met at every target, values unchanged, and the gradient of a
    PPO-like masked loss equal for every parameter. ``chunked``: CHUNK_ELEMENTS small enough that
    the head runs in slices of 3 rows, each recomputed in the backward.

    The targets leave out one whole row (a dropped group) and each row's first completion token.
    Measured max |diff| against the logits path: 0 (the same bits) in one piece, 9.5e-7 in slices
    (log-probs of std 1.6); 1.8e-6 against float64; gradients in slices at most 5.6e-7 of each
    tensor's largest entry. Tolerances as in the test above."""
    import rlhf.logprobs as LP

    if chunked:
        monkeypatch.setattr(LP, "CHUNK_ELEMENTS", 3 * V)
    torch.manual_seed(0)
    policy = copy.deepcopy(_policy()).train()
    value = copy.deepcopy(_critic()).train() if critic == "separate" else None
    head = shared_value_head(policy) if critic == "shared" else None  # (the whole logits: the same bits)
    model = PolicyAndValue(policy, value, head, packed=packed)
    ro = _rollout()
    ids, am, pos = ro.input_ids, ro.attention_mask, ro.position_ids
    targets = ro.completion_mask.bool().clone()
    targets[3] = False  # a row without targets
    first = targets.float().cumsum(-1) == 1
    targets &= ~first  # not each row's first completion token
    mask = targets.float()
    advantages = torch.randn(ids.shape, generator=torch.Generator().manual_seed(4))

    def loss(logps, values):
        out = -(logps * advantages * mask).sum()
        return out if values is None else out + (values.square() * mask).sum()

    out, grads = {}, {}
    for path in ("logits", "targets"):
        model.zero_grad(set_to_none=True)
        if path == "logits":
            logits, values = model(ids, am, pos)
            logps = shifted_token_logps(logits, ids, TEMPERATURE)
        else:
            logps, values = model(ids, am, pos, targets=targets, temperature=TEMPERATURE)
        loss(logps, values).backward()
        out[path] = (logps.detach(), None if values is None else values.detach())
        grads[path] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    (lp0, v0), (lp1, v1) = out["logits"], out["targets"]
    assert lp1.shape == ids.shape and lp1.dtype == torch.float32
    torch.testing.assert_close(lp1[targets], lp0[targets], atol=5e-6, rtol=0)
    if critic == "shared":  # the whole logits: log-probs at every position, as the logits path's
        torch.testing.assert_close(lp1, lp0, atol=0, rtol=0)
    else:
        assert lp1[~targets].eq(0).all()
    naive, _ = _naive(TEMPERATURE)
    torch.testing.assert_close(lp1[targets].double(), naive[targets], atol=1e-5, rtol=0)
    assert float(lp1[targets].std()) > 0.5  # log-probs of a few nats that differ: a shift would show
    if critic != "none":
        torch.testing.assert_close(v1, v0, atol=0, rtol=0)
    else:
        assert v0 is None and v1 is None
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads["logits"]) == set(grads["targets"]) == names
    for n in names:
        a, b = grads["targets"][n], grads["logits"][n]
        scale = float(b.abs().max())
        assert scale > 0, n
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6 * scale, msg=n)


def test_policy_and_value_without_targets_falls_back_to_the_logits_path():
    """A micro-batch whose loss mask is empty (every group dropped) still runs the model (every
    process takes part in the backward): the logits path's log-probs, not an empty head."""
    model = PolicyAndValue(copy.deepcopy(_policy()), None, None, packed=True)
    ro = _rollout()
    none = torch.zeros_like(ro.attention_mask, dtype=torch.bool)
    logps, _ = model(ro.input_ids, ro.attention_mask, ro.position_ids, targets=none, temperature=TEMPERATURE)
    logits, _ = model(ro.input_ids, ro.attention_mask, ro.position_ids)
    torch.testing.assert_close(logps, shifted_token_logps(logits, ro.input_ids, TEMPERATURE), atol=0, rtol=0)
    assert logps.requires_grad
    assert float(logps[ro.completion_mask.bool()].std()) > 0.5  # log-probs, not zeros or logits


# --------------------------------------------------------------------------- end to end

REWARD_MODULE = '''
def e_fraction(prompts, completions):
    return [sum(ch == "e" for ch in c) / max(1, len(c)) for c in completions]
'''


@pytest.mark.parametrize("advantage", [["advantage=grpo"], ["advantage=gae", "value_model=policy"],
                                       ["advantage=gae", "value_model=shared"]], ids=["grpo", "gae", "gae_shared"])
def test_short_run_packed_equals_padded(tmp_path, monkeypatch, tiny_llama, advantage):
    """rlhf ppo for 3 steps (4 prompts x 4 samples) with ppo.packed true and false. π_old comes
    from a forward pass, so the packed rollout_logps runs for the policy as well as the
    reference; prompts of very different lengths and a stop string (completions of 1 to 10
    tokens) make the packed layouts put several sequences in one row (checked). GRPO, and GAE
    with a separate critic (packed rollout_values) and with the shared value head.

    The optimizer is made linear in the gradient (AdamW with adam_eps = 1 and lr = 1: the step is
    lr·m̂/(√v̂ + 1) ≈ m̂ for these gradients, i.e. SGD with momentum), so that the weights of the two
    runs differ by the accumulated rounding of the gradients and nothing more. With the default
    eps = 1e-8, Adam divides each entry by its own gradient scale and turns rounding noise in a
    near-zero gradient entry into a full-size step: the two runs' weights then differed by 0.2% in
    L2 (0.7x the largest update in one entry) after a single rollout step under
    ATEN_CPU_CAPABILITY=avx512, and the 3-step version of this test failed on AVX-512 and default
    kernels while passing on AVX2 — a comparison of chaotic trajectories, not of the layouts.

    Expected: the same samples at every step (same score and lengths: the weights differ by
    rounding only, too little to move a sampled token); KL, loss, entropy, approx_kl, clip
    fraction (and value loss) equal to float rounding; the final weights equal to rounding.

    Measured (3 steps, ATEN_CPU_CAPABILITY default / avx2 / avx512, AMD EPYC): identical samples at
    every step; max relative metric difference 7.3e-6 (kl, a sum of log-prob differences), <= 3.8e-6
    for the rest; ||θ_packed - θ_padded|| / ||Δθ_padded|| <= 4.4e-7; the largest single entry
    differs by <= 7.5e-7 of the largest update (0.08-0.18). Bounds: rel 1e-4 for metrics, 1e-5
    for the weights (>= 13x the largest measured)."""
    import math

    from safetensors.torch import load_file

    import rlhf.data.collate
    from rlhf.config import load_config
    from rlhf.recipes.ppo import PPOConfig, train

    (tmp_path / "ppo_packed_reward.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "Hi" if i % 2 else f"Question {i}: please tell me something "
                                                                         "long about the weather today."}) + "\n"
                               for i in range(8)))
    layouts = []  # (padded rows, packed rows) of every PackedLayout built
    real_init = rlhf.data.collate.PackedLayout.__init__

    def spy(self, attention_mask, capacity=None):
        real_init(self, attention_mask, capacity)
        layouts.append((self.batch_shape[0], self.shape[0]))

    monkeypatch.setattr(rlhf.data.collate.PackedLayout, "__init__", spy)
    rows = {}
    for packed in (True, False):
        out = tmp_path / f"packed_{packed}"
        cfg = load_config(PPOConfig, None, [
            f"model.name_or_path={tiny_llama}", f"data.train={prompts}", "reward=ppo_packed_reward:e_fraction",
            f"output_dir={out}", "train.batch_size=4", "sampling.num_samples=4", "sampling.max_new_tokens=10",
            "sampling.stop_strings=[e]", "train.max_steps=3", "train.lr=1", "train.adam_eps=1", "train.progress=false",
            "num_log_samples=0", "train.save_model_in_checkpoints=false", "kl.beta=0.05",
            "train.scheduler=constant", "ppo.old_logps=forward", f"ppo.packed={str(packed).lower()}", *advantage])
        assert cfg.ppo.packed is packed
        n_before = len(layouts)
        train(cfg)
        rows[packed] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"score"' in x]
        if packed:  # several sequences shared rows in every packed pass (16 rows -> 9 to 13)
            assert len(layouts) > n_before and all(r < n for n, r in layouts[n_before:]), layouts
        else:
            assert len(layouts) == n_before  # ppo.packed=false builds no packed layout at all
    assert len(rows[True]) == len(rows[False]) == 3
    assert 0 < rows[True][0]["eos_fraction"] < 1  # some completions ended early, some were cut
    keys = ["kl", "loss", "entropy", "approx_kl", "clip_fraction"] + (["value_loss"] if "gae" in advantage[0] else [])
    for a, b in zip(rows[True], rows[False]):
        assert a["score"] == b["score"] and a["response_length"] == b["response_length"], a["step"]
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    init = load_file(str(tiny_llama / "model.safetensors"))
    a = load_file(str(tmp_path / "packed_True" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "packed_False" / "final" / "model.safetensors"))
    update = max(float((b[k] - init[k]).abs().max()) for k in b)
    assert update > 0.05  # the runs really moved the weights (measured 0.08-0.18)
    l2_diff = math.sqrt(sum(float((a[k] - b[k]).square().sum()) for k in a))
    l2_update = math.sqrt(sum(float((b[k] - init[k]).square().sum()) for k in b))
    assert l2_diff < 1e-5 * l2_update, (l2_diff, l2_update)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5 * update
