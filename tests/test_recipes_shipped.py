"""The recipes shipped inside the package (rlhf/configs/): every one validates, and the CLI finds them."""

from __future__ import annotations

import pytest

from rlhf.cli import STAGES, main
from rlhf.config import load_config
from rlhf.configs import ROOT, list_recipes, recipe_path

_STAGE_OF_FOLDER = {name.replace("-", "_"): name for name in STAGES}


def _all_recipes() -> list[tuple[str, str]]:
    return [(folder, name) for folder, names in list_recipes().items() for name in names]


def test_every_folder_is_a_stage_or_pipeline():
    assert set(list_recipes()) <= set(_STAGE_OF_FOLDER) | {"pipeline"}
    assert ("sft", "tiny") in _all_recipes()


@pytest.mark.parametrize("folder,name", _all_recipes())
def test_every_shipped_recipe_validates(folder, name):
    """Each file loads into its stage's typed config (or, for pipelines, every stage of it does)."""
    path = ROOT / folder / f"{name}.yaml"
    if folder == "pipeline":
        from rlhf.pipeline import load_pipeline
        _, stages = load_pipeline(path)
        assert stages
    else:
        st = STAGES[_STAGE_OF_FOLDER[folder]]
        load_config(st.load(st.config), path)


def test_recipe_flag_reads_the_shipped_file(tmp_path, capsys):
    """``--recipe`` resolves inside the package from any working folder; overrides still apply on top;
    a config error (the recipe's data file missing is a run-time error, so use a bad value) stops first."""
    code = main(["sft", "--recipe", "tiny", f"output_dir={tmp_path / 'x'}", "train.lr=-1"])
    assert code == 2
    assert "train.lr: must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_recipe_lists_the_shipped_ones(capsys):
    assert main(["sft", "--recipe", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no recipe 'nope' for sft" in err and "tiny" in err


def test_recipe_and_file_together_are_refused(capsys, tmp_path):
    assert main(["sft", str(tmp_path / "a.yaml"), "--recipe", "tiny"]) == 2
    assert "not both" in capsys.readouterr().err


def test_recipes_tool_lists_and_shows(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for folder, name in _all_recipes():
        assert f"  {folder}/{name} " in out
    assert main(["recipes", "--show", "ppo/tiny"]) == 0
    assert capsys.readouterr().out == recipe_path("ppo", "tiny").read_text()


def test_pipeline_recipe_flag(capsys):
    assert main(["pipeline", "--recipe", "nope"]) == 2
    assert "no recipe 'nope' for pipeline" in capsys.readouterr().err
