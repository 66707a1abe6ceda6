"""The command line: help, config errors before any work, user-fixable errors as one clear line."""

from __future__ import annotations

from rlhf.cli import STAGES, main


def test_top_help_lists_stages_and_tools(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in list(STAGES) + ["generate", "tiny-model", "quickstart"]:
        assert f"  {name} " in out


def test_stage_help_lists_every_option(capsys):
    from rlhf.config import iter_fields
    from rlhf.recipes.sft import SFTConfig
    assert main(["sft", "--help"]) == 0
    out = capsys.readouterr().out
    keys = [k for k, *_ in iter_fields(SFTConfig)]
    assert len(keys) > 40
    for k in keys:
        assert f"  {k}  (" in out, k


def test_config_errors_stop_before_work(capsys, tmp_path):
    code = main(["sft", f"output_dir={tmp_path / 'x'}", "model.name_or_path=m", "data.train=d.jsonl",
                 "train.lr=-1"])
    assert code == 2
    assert "config error: train.lr: must be > 0 (got -1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_stage_suggests(capsys):
    assert main(["sfft"]) == 2
    assert "did you mean 'sft'" in capsys.readouterr().err


def test_bad_data_is_one_clear_line(capsys, tmp_path, tiny_llama):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n{not json\n')
    code = main(["sft", f"output_dir={tmp_path / 'out'}", f"model.name_or_path={tiny_llama}",
                 f"data.train={f}", "data.strict=true", "train.batch_size=1", "train.progress=false"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{f}:2:" in err


def test_generate_from_a_checkpoint(capsys, tiny_llama, tmp_path):
    out = tmp_path / "samples.jsonl"
    assert main(["generate", "--model", str(tiny_llama), "--prompt", "reverse: a b\n", "--prompt", "count: a\n",
                 "--num-samples", "2", "--max-new-tokens", "5", "--chat-template", "none",
                 "--output", str(out)]) == 0
    import json
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["reverse: a b\n"] * 2 + ["count: a\n"] * 2
    assert all(r["num_tokens"] <= 5 for r in rows)
    # never overwrites
    assert main(["generate", "--model", str(tiny_llama), "--prompt", "x", "--output", str(out)]) == 1
