"""rlhf/objectives.py: rollouts concatenated from exact token ids, dynamic sampling over rollouts
(fake engine and reward), score shaping by hand; rlhf/envs/teacher.py's vocabulary check."""

import pytest
import torch

from rlhf.config import ConfigError
from rlhf.envs.teacher import Teacher
from rlhf.objectives import concat_rollouts, dynamic_rollout, shaped_scores
from rlhf.rollout import assemble_rollout
from rlhf.rollout.interface import stamp_version


class Tok:
    pad_token_id = 0

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(map(str, r)) for r in rows]


def _rollout(prompt_ids, completions, ended, K=2):
    """Rows i: prompt_ids[i // K] then completions[i]; sampler log-probs -(id / 100) per token."""
    rows_ids = [p for p in prompt_ids for _ in range(K)]
    prompts = [f"p{'-'.join(map(str, p))}" for p in prompt_ids for _ in range(K)]
    lps = [torch.tensor([-t / 100 for t in c]) for c in completions]
    return assemble_rollout(Tok(), prompts, rows_ids, completions, ended, K, torch.device("cpu"),
                            logps=lps, entropy=[x.neg() for x in lps])


def _row(ro, i):
    """(prompt ids, completion ids, ended, log-probs) of row i, read back from the layout."""
    P = ro.prompt_width
    comp = ro.completion_mask[i].bool()
    return (ro.input_ids[i, :P][ro.attention_mask[i, :P].bool()].tolist(), ro.input_ids[i][comp].tolist(),
            bool(ro.ended[i]), ro.logps[i][comp].tolist())


def test_concat_keeps_every_rows_exact_tokens():
    """Two rollouts of different prompt widths (1 vs 3) and completion widths (3 vs 1): the
    rows picked come out with the same prompt ids, completion ids, ended flag and sampler
    log-probs, in the new common layout (prompt width 3, completion width 2: the widest row picked)."""
    a = _rollout([[5], [6]], [[11, 12, 13], [14], [15, 16], [17]], [True, False, True, True])
    b = _rollout([[7, 8, 9], [4, 4]], [[21], [22], [23], [24]], [False, True, True, False])
    a.policy_version = stamp_version(a, 3).policy_version
    b.policy_version = stamp_version(b, 4).policy_version
    out = concat_rollouts([(a, [2, 3]), (b, [0, 1])], pad_id=0, group_size=2)
    assert out.prompt_width == 3 and out.input_ids.shape == (4, 5) and out.group_size == 2
    expected = [_row(a, 2), _row(a, 3), _row(b, 0), _row(b, 1)]
    assert [_row(out, i) for i in range(4)] == expected
    assert expected[0] == ([6], [15, 16], True, pytest.approx([-0.15, -0.16]))
    assert out.prompts == ["p6", "p6", "p7-8-9", "p7-8-9"]
    assert out.completions == ["15 16", "17", "21", "22"]
    # positions count real tokens only, so left padding changes nothing; as assemble_rollout lays them
    assert out.position_ids[0].tolist() == [0, 0, 0, 1, 2]
    direct = assemble_rollout(Tok(), out.prompts, [r[0] for r in expected], [r[1] for r in expected],
                              [r[2] for r in expected], 2, torch.device("cpu"))
    for name in ("input_ids", "attention_mask", "position_ids", "completion_mask"):
        assert torch.equal(getattr(out, name), getattr(direct, name)), name
    # each row's policy version travels with it (-1 off the actions)
    assert out.policy_version[0].tolist() == [-1, -1, -1, 3, 3] and out.policy_version[2].tolist() == [-1] * 3 + [4, -1]
    assert out.policy_mask is None and out.completions == ["15 16", "17", "21", "22"]


def test_concat_keeps_the_holes_of_a_multi_turn_loss_mask():
    """A row whose loss mask has a hole (an observation token the policy did not write) keeps it;
    a single-turn part next to it gets its completion mask as loss mask."""
    a = _rollout([[5]], [[11, 12, 13], [14]], [True, True], K=2)
    a.policy_mask = a.completion_mask.clone()
    a.policy_mask[0, 2] = 0  # token 12 came from the environment
    b = _rollout([[7, 8]], [[21], [22]], [True, True], K=2)
    out = concat_rollouts([(a, [0, 1]), (b, [0, 1])], pad_id=0, group_size=2)
    assert out.loss_mask.tolist() == [[0, 0, 1, 0, 1], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0]]


def test_dynamic_rollout_replaces_degenerate_groups_with_fresh_prompts():
    """Step batch: prompts A (scores 1, 1: degenerate) and B (0, 1). The retry draws from the
    pool (seeded) and the fake reward gives that group (0, 1): the batch becomes B then the new
    group; raw and shaped scores follow the rows; informative all True."""
    pool = [{"prompt": "C", "prompt_input_ids": [3]}, {"prompt": "D", "prompt_input_ids": [4]}]
    examples = [{"prompt": "A", "prompt_input_ids": [1]}, {"prompt": "B", "prompt_input_ids": [2]}]
    table = {"A": [1.0, 1.0], "B": [0.0, 1.0], "C": [0.0, 1.0], "D": [0.5, 0.25]}

    def sample(exs):
        return _rollout([e["prompt_input_ids"] for e in exs], [[10 + j] for j in range(2 * len(exs))],
                        [True] * (2 * len(exs)))

    def score(ro, exs):
        raw = torch.tensor([s for e in exs for s in table[e["prompt"]]])
        return raw, raw * 10

    out = dynamic_rollout(examples, pool, sample, score, pad_id=0, group_size=2, max_retries=3, seed=0)
    new = out.examples[1]["prompt"]
    assert out.examples[0]["prompt"] == "B" and new in ("C", "D")
    assert out.raw_scores.tolist() == table["B"] + table[new]
    assert out.scores.tolist() == [10 * x for x in table["B"] + table[new]]
    assert out.informative.tolist() == [True] * 4
    new_ids = {"C": [3], "D": [4]}[new]
    assert [_row(out.rollout, i)[0] for i in range(4)] == [[2], [2], new_ids, new_ids]
    assert out.metrics == {"dynamic/retries": 1.0, "dynamic/sampled_groups": 3.0,
                           "dynamic/replaced_groups": 1.0, "dynamic/degenerate_kept": 0.0}


def test_dynamic_rollout_out_of_retries_keeps_degenerate_groups_flagged():
    examples = [{"prompt": "A", "prompt_input_ids": [1]}, {"prompt": "B", "prompt_input_ids": [2]}]

    def sample(exs):
        return _rollout([e["prompt_input_ids"] for e in exs], [[9]] * (2 * len(exs)), [True] * (2 * len(exs)))

    def score(ro, exs):
        raw = torch.tensor([s for e in exs for s in {"A": [1.0, 1.0], "B": [0.0, 1.0]}[e["prompt"]]])
        return raw, raw

    out = dynamic_rollout(examples, examples, sample, score, pad_id=0, group_size=2, max_retries=0, seed=0)
    assert [e["prompt"] for e in out.examples] == ["B", "A"]  # informative first, the filler last
    assert out.informative.tolist() == [True, True, False, False]
    assert out.raw_scores.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert [_row(out.rollout, i)[0] for i in range(4)] == [[2], [2], [1], [1]]  # rows reordered with them
    assert out.metrics["dynamic/degenerate_kept"] == 1.0 and out.metrics["dynamic/retries"] == 0.0


def test_shaped_scores_by_hand():
    """max_len 8, cache 4 (penalty from 5 tokens: (4 - n)/4), coef 0.5; EOS trick 0.3 on the
    completions that did not end. Lengths 3, 6, 8 (the last cut at the limit)."""
    raw = torch.tensor([1.0, 1.0, 1.0])
    ended = torch.tensor([True, True, False])
    out = shaped_scores(raw, ended, torch.tensor([3, 6, 8]), missing_eos_penalty=0.3, overlong_cache=4,
                        overlong_coef=0.5, max_len=8)
    assert out.tolist() == pytest.approx([1.0, 1.0 - 0.5 * 0.5, 1.0 - 0.3 - 0.5 * 1.0])
    assert raw.tolist() == [1.0, 1.0, 1.0]  # not modified in place
    same = shaped_scores(raw, ended, torch.tensor([3, 6, 8]), missing_eos_penalty=None, overlong_cache=None,
                         overlong_coef=1.0, max_len=8)
    assert same.tolist() == raw.tolist()


def test_teacher_with_another_vocabulary_is_refused(tmp_path, tiny_llama):
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_tokenizer
    from rlhf.models.tiny import make_tiny_checkpoint

    other = make_tiny_checkpoint(tmp_path / "other", "llama", ["completely different words here"] * 20,
                                 vocab_size=270, hidden_size=16, num_layers=1, num_heads=2)
    cfg = ModelConfig(name_or_path=str(tiny_llama))
    with pytest.raises(ConfigError, match="teacher: .* another vocabulary"):
        Teacher(str(other), cfg, load_tokenizer(cfg))


def test_teacher_bonus_enters_advantages_like_a_kl_penalty_in_the_reward():
    """shape_advantages(token_bonus=...): per token for REINFORCE++ (γ = 0: each token's return is
    its own reward, then whitened over the batch), summed per completion for RLOO; in_loss drops
    rows from the loss mask. No KL (β = 0), so the bonus and the score are the only rewards."""
    from rlhf.advantages import reinforce_pp_advantages, rloo_advantages
    from rlhf.masking import masked_whiten
    from rlhf.ppo_update import PolicyLossConfig, shape_advantages

    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.float32)
    bonus = torch.tensor([[0.0, -1.0, -0.5, 0.2], [0.0, 0.3, -2.0, 0.0], [0.0, -0.1, 0.0, 0.0],
                          [0.0, 0.0, -0.4, -0.6]])
    scores = torch.tensor([1.0, 0.0, 0.5, 0.5])
    logps = torch.zeros(4, 4)
    ev = {"old_logps": logps, "ref_logps": logps, "values": None}
    common = dict(beta=0.0, placement="reward", estimator="k1", greedy_scores=None, reduce=None, token_bonus=bonus)

    out = shape_advantages("rloo", ev, mask, scores, cfg=PolicyLossConfig(), group_size=2, **common)
    per_seq = rloo_advantages(scores + bonus.sum(-1), 2)  # score + Σ_t bonus_t per completion
    assert torch.allclose(out["advantages"], per_seq[:, None] * mask, atol=1e-6)

    out = shape_advantages("reinforce_pp", ev, mask, scores, cfg=PolicyLossConfig(gamma=0.0), group_size=2,
                           in_loss=torch.tensor([True, True, False, True]), **common)
    rewards = bonus.clone()
    rewards[torch.arange(4), torch.tensor([3, 2, 1, 3])] += scores  # the score on each last action
    assert torch.allclose(out["advantages"], masked_whiten(rewards, mask), atol=1e-6)
    assert torch.allclose(out["advantages"], reinforce_pp_advantages(rewards, mask, gamma=0.0), atol=1e-6)
    assert out["loss_mask"].tolist() == [mask[0].tolist(), mask[1].tolist(), [0.0] * 4, mask[3].tolist()]
