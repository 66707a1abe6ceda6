"""The reward-model stage: learning, one-pass scoring, padding, ranked weights, margins, stats."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rlhf.config import ConfigError, load_config
from rlhf.data.errors import DataError
from rlhf.recipes.rm import RMConfig, train

LETTERS = "bcdefghij"


def _write(rows, path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _synthetic_pairs(n: int, seed: int) -> list[dict]:
    """Pairs whose preference is a known function of the text: the chosen completion holds
    more letters 'a' than the rejected one (1-3 vs 0 to one fewer), the rest random letters."""
    rng = random.Random(seed)

    def completion(n_a: int) -> str:
        xs = [rng.choice(LETTERS) for _ in range(5)]
        for k in rng.sample(range(5), n_a):
            xs[k] = "a"
        return " " + " ".join(xs)

    rows = []
    for _ in range(n):
        ka = rng.randint(1, 3)
        kr = rng.randint(0, ka - 1)
        rows.append({"prompt": "pick: " + " ".join(rng.choice(LETTERS) for _ in range(3)),
                     "chosen": completion(ka), "rejected": completion(kr)})
    return rows


def _cfg(model, train_path, out, *extra):
    return load_config(RMConfig, None, [
        f"output_dir={out}", f"model.name_or_path={model}", f"data.train={train_path}",
        "data.chat_template=none", "data.max_length=48", "train.progress=false", *extra])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm-synth")
    return {"train": _write(_synthetic_pairs(600, 0), d / "train.jsonl"),
            "eval": _write(_synthetic_pairs(200, 1), d / "eval.jsonl")}


@pytest.mark.slow  # ~1-4 s alone, up to 25 s on a loaded 2-core machine
def test_reward_model_learns_the_preference_rule(tiny_llama, synthetic, tmp_path):
    out = tmp_path / "rm"
    s = train(_cfg(tiny_llama, synthetic["train"], out, f"data.eval={synthetic['eval']}",
                   "train.lr=3e-3", "train.batch_size=32", "train.epochs=1", "train.warmup_ratio=0.1"))
    # Chance is 0.5 (an untrained head scores at random). Measured (seed 0): held-out accuracy
    # 1.00, mean margin 9.1, after 1 epoch (18 steps); 0.85 leaves room for other seeds/BLAS.
    assert s["eval_accuracy"] > 0.85, s
    assert s["eval_pairs"] == 200 and s["train_pairs"] == 600
    assert s["eval_margin"] > 0
    assert 0 <= s["eval_ece"] <= 1
    # The run folder: summary, the model and the reward statistics beside it.
    info = json.loads((out / "final" / "reward_stats.json").read_text())
    assert info["reference"] == "train_chosen" and info["encoding"]["max_length"] == 48
    assert (out / "final" / "model.safetensors").exists()


def _tiny_rm_run(tiny_llama, train_path, out, *extra):
    return train(_cfg(tiny_llama, train_path, out, "train.batch_size=8", "train.max_steps=2",
                      "train.lr=1e-3", *extra))


def test_eval_metrics_and_reward_stats_equal_a_direct_computation(tiny_llama, tmp_path):
    """Score the held-out pairs and the reference set (training prompts + chosen) with the saved
    model, one sequence at a time, and recompute accuracy, margin, ECE, mean and std."""
    from rlhf.losses.reward import expected_calibration_error
    from rlhf.rewards import ModelReward

    rows = _synthetic_pairs(40, 3)
    train_path = _write(rows[:32], tmp_path / "train.jsonl")
    eval_path = _write(rows[32:], tmp_path / "eval.jsonl")
    out = tmp_path / "rm"
    s = _tiny_rm_run(tiny_llama, train_path, out, f"data.eval={eval_path}", "ece_bins=5")
    rm = ModelReward(out / "final", batch_size=1)
    assert rm.modules() == [rm.model]  # what PPO's offloading moves
    info = json.loads((out / "final" / "reward_stats.json").read_text())

    ref = torch.stack([rm([r["prompt"]], [r["chosen"]])[0] for r in rows[:32]]).double()  # (32,)
    assert info["count"] == 32 == s["reward_stats_count"]
    assert info["mean"] == pytest.approx(float(ref.mean()), abs=1e-5)
    assert info["std"] == pytest.approx(float(ref.std()), abs=1e-5)  # Bessel-corrected
    assert s["reward_mean"] == info["mean"]

    c = torch.stack([rm([r["prompt"]], [r["chosen"]])[0] for r in rows[32:]]).double()
    r_ = torch.stack([rm([r["prompt"]], [r["rejected"]])[0] for r in rows[32:]]).double()
    d = c - r_
    assert s["eval_accuracy"] == pytest.approx(float((d > 0).double().mean()))
    assert s["eval_margin"] == pytest.approx(float(d.mean()), abs=1e-5)
    p = torch.sigmoid(d)
    ece = expected_calibration_error(torch.cat([p, 1 - p]), torch.cat([torch.ones(8), torch.zeros(8)]), 5)
    assert s["eval_ece"] == pytest.approx(float(ece), abs=1e-5)

    # Normalised rewards use exactly those statistics.
    rmn = ModelReward(out / "final", normalize=True)
    x = rmn([rows[0]["prompt"]], [rows[0]["chosen"]])
    assert float(x[0]) == pytest.approx((float(ref[0]) - info["mean"]) / info["std"], abs=1e-4)


# --------------------------------------------------------------------------- scoring by hand


@pytest.mark.parametrize("side", ["right", "left"])
def test_score_is_head_dot_last_real_hidden_state(tiny_llama, side):
    """score = w · h_last + b, where h_last is the final hidden state of the sequence's last real
    token, computed here on each sequence alone (no padding at all)."""
    from rlhf.data.collate import PreferenceCollator
    from rlhf.data.config import DataConfig
    from rlhf.data.records import PreferenceRecord
    from rlhf.data.tokenize import encode_preference
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_scalar_model, load_tokenizer, score_last_token

    mcfg = ModelConfig(name_or_path=str(tiny_llama))
    tok = load_tokenizer(mcfg)
    torch.manual_seed(0)
    model = load_scalar_model(mcfg, tokenizer=tok, for_training=False)
    with torch.no_grad():
        model.score.weight.normal_()  # make the head clearly non-trivial
    dcfg = DataConfig(chat_template="none", max_length=48)
    recs = [PreferenceRecord("pick: b c", " a a b", " b"), PreferenceRecord("pick: d e f g h", " c", " a c d e f g")]
    ex = [encode_preference(r, tok, dcfg) for r in recs]
    batch = PreferenceCollator(tok.pad_token_id, side)(ex)  # (4, T), chosen rows first
    assert bool((batch["attention_mask"] == 0).any())  # padding really is present
    with torch.no_grad():
        got = score_last_token(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        want = []
        for key in ("chosen", "rejected"):
            for e in ex:
                ids = torch.tensor([e[f"{key}_input_ids"]])
                h = model.model(input_ids=ids).last_hidden_state[0, -1]  # (H,)
                bias = float(model.score.bias[0]) if model.score.bias is not None else 0.0
                want.append(float(h @ model.score.weight[0]) + bias)
    assert got.tolist() == pytest.approx(want, abs=1e-4)


# --------------------------------------------------------------------------- ranked data


def test_ranked_prompt_weighs_one_in_total(tiny_llama, tmp_path):
    """Prompt A has K=3 responses (3 pairs), prompt B K=3 with one tie (2 pairs), prompt C K=2.
    The loss is the mean over prompts of each prompt's mean pair loss:
    L = (mean_A + mean_B + mean_C) / 3, with pair loss -log σ(r_hi - r_lo)."""
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_records
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_scalar_model, load_tokenizer, score_last_token
    from rlhf.recipes.rm import GroupCollator, RewardLossConfig, _make_loss, _units, build_groups

    path = _write([
        {"prompt": "pick: b", "responses": [" a", " b c", " d"], "scores": [3, 1, 2]},
        {"prompt": "pick: c", "responses": [" e", " f", " a a"], "scores": [1, 1, 5]},
        {"prompt": "pick: d", "responses": [" g", " a"], "ranks": [2, 1]},
    ], tmp_path / "ranked.jsonl")
    dcfg = DataConfig(train=str(path), chat_template="none", max_length=32)
    records, report = load_records(dcfg, "preference")
    assert len(records) == 6 and report.skipped_pairs == 1  # the tie is skipped and counted
    mcfg = ModelConfig(name_or_path=str(tiny_llama))
    tok = load_tokenizer(mcfg)
    groups = build_groups(records, tok, dcfg, report)
    assert [len(g) for g in groups] == [3, 2, 1]
    batch = GroupCollator(tok.pad_token_id)(groups)
    assert batch["weights"].tolist() == pytest.approx([1 / 3] * 3 + [1 / 2] * 2 + [1.0])
    assert float(_units(batch)) == 3.0

    torch.manual_seed(0)
    model = load_scalar_model(mcfg, tokenizer=tok, for_training=False)
    calls = []
    hook = model.model.register_forward_hook(lambda m, i, o: calls.append(1))
    loss, extra = _make_loss(RewardLossConfig())(model, batch, _units(batch))
    hook.remove()
    assert len(calls) == 1  # chosen and rejected of all 6 pairs: one forward pass of the trunk

    def r(prompt, completion):
        from rlhf.data.records import SFTRecord
        from rlhf.data.tokenize import encode_sft
        ids = torch.tensor([encode_sft(SFTRecord(prompt, completion), tok, dcfg)["input_ids"]])
        return score_last_token(model, ids, torch.ones_like(ids))[0]

    def pl(p, hi, lo):
        return float(-F.logsigmoid(r(p, hi) - r(p, lo)))

    with torch.no_grad():
        mean_a = (pl("pick: b", " a", " b c") + pl("pick: b", " a", " d") + pl("pick: b", " d", " b c")) / 3
        mean_b = (pl("pick: c", " a a", " e") + pl("pick: c", " a a", " f")) / 2
        mean_c = pl("pick: d", " a", " g")
    assert float(loss) == pytest.approx((mean_a + mean_b + mean_c) / 3, rel=1e-5)
    assert float(extra["pairs"]) == 6

    # per_pair weighting: every pair its own group, the loss is the plain mean over 6 pairs.
    groups_pp = build_groups(records, tok, dcfg, None, per_prompt=False)
    assert [len(g) for g in groups_pp] == [1] * 6
    b2 = GroupCollator(tok.pad_token_id)(groups_pp)
    loss2, _ = _make_loss(RewardLossConfig())(model, b2, _units(b2))
    with torch.no_grad():
        want = (3 * mean_a + 2 * mean_b + mean_c) / 6
    assert float(loss2) == pytest.approx(want, rel=1e-5)


def test_ranked_run_trains_on_prompt_groups(tiny_llama, tmp_path):
    rng = random.Random(0)
    rows = [{"prompt": f"pick: {rng.choice(LETTERS)}",
             "responses": [" a a", " a b", " c d", " e"][: rng.randint(2, 4)],
             "scores": [4, 3, 2, 1]} for _ in range(24)]
    for r in rows:
        r["scores"] = r["scores"][: len(r["responses"])]
    path = _write(rows, tmp_path / "ranked.jsonl")
    s = _tiny_rm_run(tiny_llama, path, tmp_path / "rm", "data.eval_fraction=0.25")
    n_pairs = sum(len(r["responses"]) * (len(r["responses"]) - 1) // 2 for r in rows)
    assert s["train_prompts"] == 18 and s["train_pairs"] + s["eval_pairs"] == n_pairs
    m = json.loads((tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()[0])
    assert m["prompts"] == 8  # batch_size counts prompts, whatever their pair counts


# --------------------------------------------------------------------------- margins


def test_margin_column_is_used_in_the_loss(tiny_llama, tmp_path):
    """With loss.margin=column the pair loss is -log σ(r_c - r_r - m) with m from the data's
    rating column (renamed to margin); checked against that formula on the model's scores."""
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_records
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_scalar_model, load_tokenizer, score_last_token
    from rlhf.recipes.rm import GroupCollator, RewardLossConfig, _make_loss, _resolve_margins, _units, build_groups

    path = _write([{"prompt": "pick: b", "chosen": " a", "rejected": " b", "rating": 3},
                   {"prompt": "pick: c", "chosen": " a a", "rejected": " c", "rating": 0}], tmp_path / "m.jsonl")
    dcfg = DataConfig(train=str(path), chat_template="none", max_length=32, columns={"margin": "rating"})
    records, report = load_records(dcfg, "preference")
    tok = load_tokenizer(ModelConfig(name_or_path=str(tiny_llama)))
    torch.manual_seed(0)
    model = load_scalar_model(ModelConfig(name_or_path=str(tiny_llama)), tokenizer=tok, for_training=False)

    for lcfg, margins in [(RewardLossConfig(margin="column"), [3.0, 0.0]),
                          (RewardLossConfig(margin="mapping", margin_mapping={"3": 1.0, "0": 0.25}), [1.0, 0.25])]:
        recs = _resolve_margins(records, lcfg, dcfg, report)
        batch = GroupCollator(tok.pad_token_id)(build_groups(recs, tok, dcfg, report))
        assert batch["margin"].tolist() == margins
        with torch.no_grad():
            loss, _ = _make_loss(lcfg)(model, batch, _units(batch))
            s = score_last_token(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        d = s[:2] - s[2:]
        want = float(-F.logsigmoid(d - torch.tensor(margins)).mean())
        assert float(loss) == pytest.approx(want, rel=1e-5)
        assert float(loss) != pytest.approx(float(-F.logsigmoid(d).mean()), rel=1e-3)  # the margin matters


def test_text_rating_labels_through_a_mapping(tmp_path):
    """Llama 2-style text labels: mapped (ignoring case/spaces) to margins; a label in 'column'
    mode or one missing from the mapping is an error naming file, row and field."""
    from rlhf.data.config import DataConfig
    from rlhf.data.errors import DataError
    from rlhf.data.load import load_records
    from rlhf.recipes.rm import RewardLossConfig, _resolve_margins

    path = _write([{"prompt": "p1", "chosen": "a", "rejected": "b", "rating": "Significantly better "},
                   {"prompt": "p2", "chosen": "a", "rejected": "c", "rating": "negligibly better"},
                   {"prompt": "p3", "chosen": "a", "rejected": "d", "rating": 2}], tmp_path / "t.jsonl")
    dcfg = DataConfig(train=str(path), chat_template="none", columns={"margin": "rating"})
    records, report = load_records(dcfg, "preference", margin_labels=True)
    assert [r.margin for r in records] == ["Significantly better", "negligibly better", 2.0]
    mapping = {"significantly better": 1.0, "negligibly better": 0.0, "2": 0.5}
    got = _resolve_margins(records, RewardLossConfig(margin="mapping", margin_mapping=mapping), dcfg, report)
    assert [r.margin for r in got] == [1.0, 0.0, 0.5]
    with pytest.raises(DataError) as e:
        _resolve_margins(records, RewardLossConfig(margin="column"), dcfg, report)
    assert f"{path}:1" in str(e.value) and "rating" in str(e.value) and "Significantly better" in str(e.value)
    with pytest.raises(DataError) as e:
        _resolve_margins(records, RewardLossConfig(margin="mapping", margin_mapping={"better": 1.0}), dcfg, report)
    assert f"{path}:1" in str(e.value) and "'better'" in str(e.value)


def test_margin_asked_but_missing(tiny_llama, tmp_path):
    """No rating column at all: an error naming the file and the field. One row without a
    rating: skipped and counted, or (strict) an error naming that row."""
    no_col = _write(_synthetic_pairs(20, 0), tmp_path / "nocol.jsonl")
    with pytest.raises(DataError) as e:
        _tiny_rm_run(tiny_llama, no_col, tmp_path / "a", "loss.margin=column")
    assert str(no_col) in str(e.value) and "margin" in str(e.value)

    rows = _synthetic_pairs(20, 0)
    for i, r in enumerate(rows):
        if i != 4:
            r["margin"] = 1.0
    part = _write(rows, tmp_path / "part.jsonl")
    s = _tiny_rm_run(tiny_llama, part, tmp_path / "b", "loss.margin=column")
    assert s["skipped"] == {"missing field": 1} and s["train_pairs"] == 19
    with pytest.raises(DataError, match=rf"{part.name}:5: margin"):
        _tiny_rm_run(tiny_llama, part, tmp_path / "c", "loss.margin=column", "data.strict=true")


def test_margin_mapping_config_is_validated(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="loss.margin_mapping"):
        load_config(RMConfig, None, [f"model.name_or_path={tiny_llama}", "data.train=x.jsonl",
                                     "loss.margin=mapping"])
    with pytest.raises(ConfigError, match="stats.data"):
        load_config(RMConfig, None, [f"model.name_or_path={tiny_llama}", "data.train=x.jsonl",
                                     "stats.source=file"])


def test_centering_term_adds_its_formula(tiny_llama, tmp_path):
    """Loss with c = 0.5 minus loss with c = 0 equals c·mean((r_c + r_r)^2) over the pairs."""
    from rlhf.data.config import DataConfig
    from rlhf.data.load import load_records
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_scalar_model, load_tokenizer, score_last_token
    from rlhf.recipes.rm import GroupCollator, RewardLossConfig, _make_loss, _units, build_groups

    path = _write(_synthetic_pairs(4, 5), tmp_path / "p.jsonl")
    dcfg = DataConfig(train=str(path), chat_template="none", max_length=32)
    records, report = load_records(dcfg, "preference")
    tok = load_tokenizer(ModelConfig(name_or_path=str(tiny_llama)))
    torch.manual_seed(0)
    model = load_scalar_model(ModelConfig(name_or_path=str(tiny_llama)), tokenizer=tok, for_training=False)
    batch = GroupCollator(tok.pad_token_id)(build_groups(records, tok, dcfg, report))
    with torch.no_grad():
        l0, _ = _make_loss(RewardLossConfig())(model, batch, _units(batch))
        l1, _ = _make_loss(RewardLossConfig(centering_coef=0.5))(model, batch, _units(batch))
        s = score_last_token(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    assert float(l1 - l0) == pytest.approx(0.5 * float(((s[:4] + s[4:]) ** 2).mean()), rel=1e-5)


def test_cli_rm_then_score(tiny_llama, tmp_path):
    """`rlhf rm` trains from the command line; `rlhf score` adds reward columns that equal the
    reward source's values, and refuses to overwrite its output."""
    from rlhf.cli import main
    from rlhf.rewards import ModelReward

    rows = _synthetic_pairs(16, 2)
    path = _write(rows, tmp_path / "p.jsonl")
    out = tmp_path / "rm"
    assert main(["rm", f"output_dir={out}", f"model.name_or_path={tiny_llama}", f"data.train={path}",
                 "data.chat_template=none", "data.max_length=32", "train.progress=false",
                 "train.batch_size=8", "train.max_steps=1"]) == 0
    scored = tmp_path / "scored.jsonl"
    assert main(["score", "--model", str(out / "final"), "--data", str(path), "--output", str(scored)]) == 0
    got = [json.loads(x) for x in scored.read_text().splitlines()]
    rm = ModelReward(out / "final")
    want_c = rm([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    assert [g["prompt"] for g in got] == [r["prompt"] for r in rows]
    assert [g["reward_chosen"] for g in got] == pytest.approx(want_c.tolist(), abs=1e-5)
    before = scored.read_text()
    assert main(["score", "--model", str(out / "final"), "--data", str(path), "--output", str(scored)]) == 1
    assert scored.read_text() == before


def test_bad_ranked_rows_are_counted_skips_or_strict_errors(tiny_llama, tmp_path):
    """K < 2 responses and a NaN score skip their row, a tie skips its pair; all are counted in
    summary.json. In strict mode the first bad row stops the run, naming file, row and field."""
    rows = [{"prompt": f"pick: {c}", "responses": [" a", " b", " c"], "scores": [3, 2, 1]} for c in LETTERS[:8]]
    rows[2] = {"prompt": "pick: x", "responses": [" a"], "scores": [1]}  # K = 1
    rows[5] = {"prompt": "pick: y", "responses": [" a", " b"], "scores": [1, float("nan")]}
    rows[6] = {"prompt": "pick: z", "responses": [" a", " b", " c"], "scores": [2, 2, 1]}  # one tie
    path = _write(rows, tmp_path / "bad.jsonl")
    # 2 bad rows in 8 on purpose: past the default data.max_skip_fraction (1%), so raised here
    s = _tiny_rm_run(tiny_llama, path, tmp_path / "ok", "train.batch_size=4", "train.max_steps=1",
                     "data.max_skip_fraction=0.25")
    assert s["skipped"] == {"fewer than 2 responses": 1, "NaN score": 1, "tie (pair skipped)": 1}
    assert s["train_prompts"] == 6 and s["train_pairs"] == 5 * 3 + 2
    with pytest.raises(DataError, match=rf"{path.name}:3: responses: a list of at least 2 responses"):
        _tiny_rm_run(tiny_llama, path, tmp_path / "strict", "data.strict=true")


def test_margin_column_that_skips_every_update_publishes_nothing(tiny_llama, tmp_path):
    """Issue 22 item 4: with loss.margin=column and margins the loss cannot use (1e39 overflows
    float32 to inf: every pair loss is inf), every update was skipped within
    train.max_skipped_steps and an untrained reward model was published with exit 0."""
    from rlhf.train.guards import NonFiniteError

    rows = [dict(r, margin=1e39) for r in _synthetic_pairs(16, 0)]
    path = _write(rows, tmp_path / "m.jsonl")
    with pytest.raises(NonFiniteError, match=r"\[rm\] the last 2 of 2 optimizer updates were skipped"):
        _tiny_rm_run(tiny_llama, path, tmp_path / "rm", "loss.margin=column")
    assert not (tmp_path / "rm" / "final").exists() and not (tmp_path / "rm" / "summary.json").exists()
