"""Slips a newcomer makes following docs/environments.md and docs/ppo.md: a reward-model folder
given where a causal LM is loaded (policy, teacher: its LM head would start random), a teacher
folder that does not exist (the error must name `teacher`, not `model.name_or_path`), a teacher
with `reward=` and the default critic (the critic must not try to load the empty reward), two
tools with one name, `env.tools=pkg.mod:fn` without the brackets of a list, `rlhf audit grpo`
(an alias); the calculator recipe's result, printed by its last stage; its tool without Python's
SyntaxWarning."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest


def _as_reward_model_folder(src, dst):
    """A copy of a causal-LM folder whose config.json says it is a sequence classifier, as a
    reward model written by `rlhf rm` says (the check reads only config.json)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_reward_model_folder_is_refused_as_a_causal_lm(tmp_path, tiny_llama):
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import ModelError, load_causal_lm

    rm = _as_reward_model_folder(tiny_llama, tmp_path / "rm")
    with pytest.raises(ModelError, match=r"^model.name_or_path: .*rm is a LlamaForSequenceClassification "
                                         r"checkpoint \(a reward model or critic\), not a causal LM"):
        load_causal_lm(ModelConfig(name_or_path=str(rm)), for_training=False)
    with pytest.raises(ModelError, match=r"^teacher: "):
        load_causal_lm(ModelConfig(name_or_path=str(rm)), for_training=False, what="teacher")
    # the causal LM it was copied from still loads
    assert type(load_causal_lm(ModelConfig(name_or_path=str(tiny_llama)), for_training=False)).__name__ \
        == "LlamaForCausalLM"


def test_teacher_errors_name_the_teacher(tmp_path, tiny_llama):
    from rlhf.envs.teacher import Teacher
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import ModelError, load_tokenizer

    cfg = ModelConfig(name_or_path=str(tiny_llama))
    with pytest.raises(ModelError, match=r"^teacher: no such folder"):
        Teacher(str(tmp_path / "nope" / "final"), cfg, load_tokenizer(cfg))
    rm = _as_reward_model_folder(tiny_llama, tmp_path / "rm")
    with pytest.raises(ModelError, match=r"^teacher: .* not a causal LM"):
        Teacher(str(rm), cfg, load_tokenizer(cfg))


def test_empty_reward_gives_a_critic_from_the_policy(tmp_path, monkeypatch):
    """reward='' (distillation only): Path('') is the current folder, which once made the
    critic try to load '' as a reward model (a hub 'Repo id must use alphanumeric chars' error)."""
    from rlhf.recipes.ppo import _value_source

    monkeypatch.chdir(tmp_path)
    assert _value_source(SimpleNamespace(value_model="auto", reward="")) == "policy"  # type: ignore[arg-type]
    assert _value_source(SimpleNamespace(value_model="auto", reward=str(tmp_path))) == str(tmp_path)  # type: ignore[arg-type]
    assert _value_source(SimpleNamespace(value_model="auto", reward="pkg.mod:fn")) == "policy"  # type: ignore[arg-type]


def test_two_tools_with_one_name_is_one_config_line(tmp_path, monkeypatch):
    """The same function from a file and from a copy of it: a ConfigError naming env.tools and
    both references (it was a bare ValueError, printed by the CLI as a traceback)."""
    from rlhf.config import ConfigError
    from rlhf.envs.tools import load_tools

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.py").write_text('def reverse(text):\n    """Reverse."""\n    return text[::-1]\n')
    (tmp_path / "b.py").write_text('def reverse(text):\n    """Reverse."""\n    return text[::-1]\n')
    assert list(load_tools(["a.py:reverse", "rlhf.envs.tools:calculator"])) == ["reverse", "calculator"]
    with pytest.raises(ConfigError, match=r"^env.tools: two tools named 'reverse' \('a.py:reverse' and "
                                          r"'b.py:reverse'\)"):
        load_tools(["a.py:reverse", "b.py:reverse"])


def test_a_string_for_a_list_says_how_to_write_the_list():
    from rlhf.config import ConfigError, apply_overrides, from_dict
    from rlhf.envs.config import EnvConfig

    with pytest.raises(ConfigError, match=r"^env.tools: expected a list, got 'rlhf.envs.tools:calculator' \(a list "
                                          r"of one: env.tools=\[rlhf.envs.tools:calculator\] on the command line\)"):
        from_dict(EnvConfig, apply_overrides({}, ["tools=rlhf.envs.tools:calculator"]), prefix="env")
    ok = from_dict(EnvConfig, apply_overrides({}, ["tools=[rlhf.envs.tools:calculator]"]), prefix="env")
    assert ok.tools == ["rlhf.envs.tools:calculator"]


def test_calculator_eval_stage_prints_its_result(tmp_path, monkeypatch, capsys):
    """The calculator recipe's last stage said nothing: its numbers were only in eval/results.json."""
    import rlhf.testbed.calculator as calc

    fake = {"a": {"success": 0.4, "tool_use": 0.51, "episodes": 400.0},
            "b": {"success": 0.8, "tool_use": 1.0, "episodes": 400.0}}
    monkeypatch.setattr(calc, "success_rate", lambda path, prompts, **kw: fake[path])
    out = calc.eval_stage(tmp_path, {"sft": "a", "grpo": "b"}, "prompts.jsonl")
    assert out == {"sft": fake["a"], "grpo": fake["b"]}
    assert capsys.readouterr().out.splitlines() == [
        "[eval] sft: success 0.40, tool use 0.51 (400 held-out episodes)",
        "[eval] grpo: success 0.80, tool use 1.00 (400 held-out episodes)"]


def test_audit_takes_the_stage_aliases(capsys):
    """`rlhf grpo my.yaml` runs; `rlhf audit grpo my.yaml` was refused ('expected a stage'). The
    alias's setting applies as it does when the alias runs (grpo needs 2 samples per prompt)."""
    from rlhf.tools.audit import main

    assert main(["grpo", "--recipe", "tiny"]) == 3
    assert capsys.readouterr().out.splitlines()[-1] == ("rlhf grpo --recipe tiny: 1 entry runs code (read what "
                                                        "they point to before running it)")
    assert main(["grpo", "--recipe", "tiny", "sampling.num_samples=1"]) == 2
    assert "must be >= 2 for advantage=grpo" in capsys.readouterr().err
    assert main(["ppo", "--recipe", "tiny", "sampling.num_samples=1"]) == 3
    capsys.readouterr()
    assert main(["nosuch"]) == 2
    assert "an alias (grpo, " in capsys.readouterr().err


def test_calculator_tool_prints_no_python_syntax_warning(capfd):
    """'5or 3' (a policy's text) made Python print '<unknown>:1: SyntaxWarning: invalid decimal
    literal' on the console; the call still fails as not integer arithmetic."""
    import warnings

    from rlhf.envs.tools import calculator

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a SyntaxWarning escaping the tool would raise here
        with pytest.raises(ValueError, match="not integer arithmetic"):
            calculator("5or 3")
        assert calculator("37*4") == "148"
    assert "SyntaxWarning" not in capfd.readouterr().err
