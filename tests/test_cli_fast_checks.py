"""``rlhf <stage>`` reports a config or path mistake before it imports torch (issue 23 item 3),
and answers a TRL user's habits (aliases, --flags, file typos, tabs) in one line (item 4).

The check runs against rlhf/_stage_schema.json (``make docs``), with look-alike classes rebuilt
from it; the tests below hold the look-alikes to the real classes, so a fast answer is the answer
the real class would give.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.cli import ALIASES, STAGES, main
from rlhf.config import ConfigError, class_from_schema, from_dict, iter_fields, load_data, schema_of

ROOT = Path(__file__).resolve().parents[1]


def test_schema_file_is_current():
    from rlhf.docs import SCHEMA_PATH, render_schema
    assert SCHEMA_PATH.is_file(), "rlhf/_stage_schema.json is missing: run `make docs`"
    assert SCHEMA_PATH.read_text() == render_schema(), "rlhf/_stage_schema.json is stale: run `make docs`"


@pytest.mark.parametrize("name", list(STAGES))
def test_look_alike_class_has_the_real_fields(name):
    st = STAGES[name]
    real = st.load(st.config)
    light = class_from_schema(json.loads(json.dumps(schema_of(real))))
    strip = [(k, t, c) for k, t, _d, _h, c in iter_fields(real)]
    assert [(k, t, c) for k, t, _d, _h, c in iter_fields(light)] == strip


@pytest.mark.parametrize("override", [
    "train.lrr=1", "train.lr=abc", "train.lr=-1", "model.dtype=fp64", "data.max_length=1",
    "data.format=nope", "train.report_to=[3, {}]", "train.fsdp.frozen=x", "nosuch=1", "model=3",
])
def test_look_alike_rejects_with_the_real_message(override):
    """Keys, types, choices and bounds: the same ConfigError text from both classes."""
    st = STAGES["sft"]
    real = st.load(st.config)
    light = class_from_schema(schema_of(real))
    data = load_data(ROOT / "rlhf" / "configs" / "sft" / "tiny.yaml", [override])
    with pytest.raises(ConfigError) as want:
        from_dict(real, data)
    with pytest.raises(ConfigError) as got:
        from_dict(light, data)
    assert str(got.value) == str(want.value)


_PROBE = """
import resource, sys
from rlhf.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "accelerate", "peft", "datasets", "numpy") if m in sys.modules)
print("RC=%d HEAVY=%s" % (rc, ",".join(heavy)), file=sys.stderr)
"""


def _cli(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI in a child process; its CPU seconds (user + system) from getrusage."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_typo_reported_in_under_a_second_of_cpu_without_torch(tmp_path):
    """Issue 23: this took 4.5 s of CPU (the recipe's torch import) before it said anything."""
    r, cpu = _cli(["sft", "--recipe", "tiny", "train.lrr=1"], tmp_path)
    assert "train.lrr: unknown key" in r.stderr and "did you mean 'lr'" in r.stderr, r.stderr
    assert "RC=2 HEAVY=\n" in r.stderr, r.stderr[-2000:]
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"


def test_missing_data_file_named_with_did_you_mean_before_torch(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": " b"}\n')
    r, _ = _cli(["sft", "--recipe", "tiny", "data.train=trian.jsonl"], tmp_path)
    assert "data.train: no such file 'trian.jsonl'" in r.stderr and "did you mean 'train.jsonl'?" in r.stderr
    assert "RC=2 HEAVY=\n" in r.stderr, r.stderr[-2000:]
    r, _ = _cli(["sft", "--recipe", "tiny", "data.train=train.jsonl"], tmp_path)
    assert "model.name_or_path: no such folder 'runs/tiny'" in r.stderr, r.stderr  # the recipe's model
    assert "rlhf tiny-model --out runs/tiny" in r.stderr


def test_tiny_recipes_say_they_need_the_full_demo(tmp_path):
    (tmp_path / "runs" / "quickstart-fast").mkdir(parents=True)
    r, _ = _cli(["ppo", "--recipe", "tiny"], tmp_path)
    assert "run `rlhf quickstart` first" in r.stderr and "runs/quickstart-fast" in r.stderr, r.stderr
    assert "HEAVY=\n" in r.stderr


def test_alias_runs_the_stage_with_its_setting(tmp_path, capsys):
    assert main(["grpo", "--recipe", "tiny", "ppo.epochs=0"]) == 2
    err = capsys.readouterr().err
    assert "rlhf grpo runs as: rlhf ppo advantage=grpo" in err and "ppo.epochs: must be > 0" in err
    assert main(["grpo", "advantage=rloo"]) == 2
    assert "sets advantage=grpo" in capsys.readouterr().err
    assert main(["grpo", "--help"]) == 0
    assert "rlhf grpo is rlhf ppo advantage=grpo" in capsys.readouterr().out
    for stage, setting in ALIASES.values():
        assert stage in STAGES
        if setting:
            key, value = setting.split("=")
            light = class_from_schema(json.loads((ROOT / "rlhf" / "_stage_schema.json").read_text())[stage])
            from_dict(light, {key: value})  # the alias's setting is a valid value of the stage


def test_hf_style_flags_are_answered_with_the_rlhf_command(capsys):
    assert main(["sft", "--model_name_or_path", "Qwen/Qwen2.5-0.5B", "--learning_rate", "2e-5",
                 "--per_device_train_batch_size", "4", "--bf16", "--num_train_epochs=3"]) == 2
    err = capsys.readouterr().err
    assert ("rlhf sft model.name_or_path=Qwen/Qwen2.5-0.5B train.lr=2e-5 train.batch_size=4 model.dtype=bf16 "
            "train.epochs=3") in err, err
    assert main(["ppo", "--recipe", "tiny", "--beta", "0.1"]) == 2
    assert "rlhf ppo --recipe tiny kl.beta=0.1" in capsys.readouterr().err
    assert main(["sft", "--lr", "1"]) == 2
    assert "did you mean train.lr=...?" in capsys.readouterr().err


def test_yaml_tab_says_use_spaces(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: x\ntrain:\n\tlr: 1.0e-3\n")
    assert main(["sft", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "tab character (line 3)" in err and "spaces, not tabs" in err, err


def test_a_stale_schema_defers_to_the_real_class(monkeypatch):
    """A module defining a config class edited after `make docs` (its sha256 differs from the
    schema's _sources): the schema may lack a new key, so it must not refuse; the real class decides."""
    import rlhf.cli as cli
    assert not cli._schema_may_be_stale()  # the committed schema matches the sources
    recipe = ROOT / "rlhf" / "configs" / "sft" / "tiny.yaml"
    args = ["train.lrr=1", f"data.train={recipe}", f"model.name_or_path={ROOT}"]  # paths that exist
    with pytest.raises(ConfigError, match="train.lrr"):
        cli._precheck("sft", str(recipe), args)
    monkeypatch.setattr(cli, "_schema_may_be_stale", lambda: True)
    cli._precheck("sft", str(recipe), args)  # not refused here
    assert main(["sft", "--recipe", "tiny", "train.lrr=1"]) == 2  # ... the real class refuses it
