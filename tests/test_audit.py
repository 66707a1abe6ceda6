"""``rlhf audit`` (issue 22 item 13): every config entry that runs code or trusts remote code,
found by parsing the config as the stage does (YAML escapes defeat a grep), including reward
spec files the config names, and hub ids that follow an unpinned revision."""

from __future__ import annotations

import pytest

SIDEFX = r'''output_dir: runs/x
reward: "sidefx.py:\x6fk"
track:
  gold: "rlhf.testbed.reviews:gold_reward"
  spec: rspec.yaml
model:
  name_or_path: some-org/some-model
  "trust_remote_cod\x65": true
data:
  train: prompts.jsonl
  eval: not_a_spec.json
'''
SPEC = ('type: sum\nsources: [pkg.mod:fn, {type: safety_gated, helpfulness: a/b, safety: c, '
        'unsafe_prompts: "x.py:flag"}]\n')


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sidefx.yaml").write_text(SIDEFX)
    (tmp_path / "rspec.yaml").write_text(SPEC)
    (tmp_path / "not_a_spec.json").write_text('{"reward": "evil.py:f"}')  # data: never opened as a spec
    return tmp_path / "sidefx.yaml"


def test_grep_misses_what_the_audit_finds(config):
    text = config.read_text()
    assert "trust_remote_code" not in text and "sidefx.py:ok" not in text  # the escapes defeat a grep


def test_audit_lists_every_entry_that_runs_code(config, capsys):
    from rlhf.tools.audit import main

    assert main(["ppo", str(config)]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "model.trust_remote_code: remote code: runs the Python files shipped with the model folder or hub repository",
        "model.name_or_path: unpinned: 'some-org/some-model' is not a local folder here, so it names a hub "
        "repository, which follows its latest revision (whoever can push to it changes what runs here); pin it "
        "with model.revision=<commit sha>",
        "reward: code: 'sidefx.py:ok' runs the file sidefx.py (its top-level code), then calls ok()",
        "track.gold: code: 'rlhf.testbed.reviews:gold_reward' imports the module rlhf.testbed.reviews (its "
        "top-level code; found on sys.path, which includes the current folder), then calls gold_reward()",
        "track.spec -> rspec.yaml: sources[0]: code: 'pkg.mod:fn' imports the module pkg.mod (its top-level "
        "code; found on sys.path, which includes the current folder), then calls fn()",
        "track.spec -> rspec.yaml: sources[1].unsafe_prompts: code: 'x.py:flag' runs the file x.py (its "
        "top-level code), then calls flag()",
        f"rlhf ppo {config}: 5 entries run code (read what they point to before running it)",
    ]


def test_audit_applies_overrides_and_pins(config, capsys):
    from rlhf.tools.audit import main

    assert main(["ppo", str(config), "reward=runs/rm", "track={}", "model.trust_remote_code=false",
                 "model.revision=0123abc"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"rlhf ppo {config} reward=runs/rm track={{}} model.trust_remote_code=false model.revision=0123abc: "
        "nothing runs code or trusts remote code"]


def test_audit_of_a_pipeline_and_a_recipe(capsys):
    from rlhf.configs import recipe_path
    from rlhf.tools.audit import main

    assert main(["pipeline", str(recipe_path("pipeline", "arithmetic"))]) == 3
    out = capsys.readouterr().out
    assert "stages.grpo.reward: code: 'rlhf.testbed.arithmetic:exact_answer'" in out
    assert main(["sft", "--recipe", "tiny"]) == 0
    assert "nothing runs code" in capsys.readouterr().out


def test_audit_refuses_what_does_not_parse(tmp_path, capsys):
    from rlhf.tools.audit import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("reward: [\n")
    assert main(["ppo", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["nosuchstage"]) == 2
