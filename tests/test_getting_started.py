"""docs/getting-started.md works literally after a ``pip install``, from an empty folder.

The project is installed (not editable) into a fresh virtual environment whose dependencies come
from the environment running the tests (a ``.pth`` line pointing at its site-packages, so torch
is not downloaded again); ``pip install --no-deps`` of a copy of the project stands for the
page's ``pip install`` lines. Then every fenced block whose info string is ``bash test`` runs,
in order, with ``bash -e`` in an empty folder, and every ``python test`` block with the venv's
python. (``rlhf quickstart --fast`` is left to tests/test_pipeline.py.) Nothing
from the checkout is importable there (no PYTHONPATH, a cwd outside it), so a file that only
exists beside a checkout makes the test fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "getting-started.md"
_BLOCK = re.compile(r"^```(bash|python) test\n(.*?)^```", re.S | re.M)


def doc_blocks(text: str) -> list[tuple[str, str]]:
    """The page's tested blocks in order: (language, code)."""
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


def test_the_page_has_tested_blocks_for_each_step():
    """The harness below would pass vacuously on a page without marked blocks."""
    langs = [lang for lang, _ in doc_blocks(DOC.read_text())]
    assert langs.count("bash") >= 3 and "python" in langs
    code = "\n".join(c for _, c in doc_blocks(DOC.read_text()))
    for needle in ("rlhf sft --recipe", "rlhf tiny-model", "train.jsonl", "rlhf.sft("):
        assert needle in code, needle


def _install(tmp: Path) -> Path:
    venv = tmp / "venv"
    # No pip of its own: pip and setuptools come from the test environment through the .pth line,
    # as torch does (a venv's bundled setuptools may be too old to build the project).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # The test environment's packages (torch, transformers, ...) without reinstalling them. Its own
    # rlhf (an editable install of some checkout) is not picked up: a path listed in a .pth file is
    # appended to sys.path, the .pth files inside it are not run.
    (site / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "rlhf", src / "rlhf", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                   check=True, cwd=tmp, capture_output=True)
    shutil.rmtree(src)
    return venv


@pytest.mark.slow
def test_getting_started_runs_literally_after_pip_install(tmp_path):
    venv = _install(tmp_path)
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    where = subprocess.check_output([str(venv / "bin" / "python"), "-c", "import rlhf; print(rlhf.__file__)"],
                                    cwd=work, env=env, text=True).strip()
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout
    for i, (lang, code) in enumerate(doc_blocks(DOC.read_text()), 1):
        cmd = ["bash", "-e", "-c", code] if lang == "bash" else [str(venv / "bin" / "python"), "-c", code]
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"block {i} ({lang}) failed:\n{code}\n--- stdout\n{r.stdout[-3000:]}\n" \
                                  f"--- stderr\n{r.stderr[-3000:]}"
    assert (work / "runs" / "first-sft" / "summary.json").is_file()


# ChatML, the layout of Qwen2.5's own chat template (written here; a stand-in's tokenizer has none).
_CHATML = ("{%- if messages[0]['role'] != 'system' -%}"
           "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif -%}"
           "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
           "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")


def _page_real_model_commands(text: str) -> list[list[str]]:
    """The page's real-model lines (`rlhf <stage> --recipe <a real recipe> ...`, with or without
    `accelerate launch ... -m rlhf.cli` in front), as rlhf argument lists."""
    import shlex
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "--recipe" not in line or "tiny" in line:
            continue
        words = shlex.split(line)
        if words[0] == "accelerate":
            words = words[words.index("rlhf.cli") + 1:]
        elif words[0] == "rlhf":
            words = words[1:]
        else:
            continue
        out.append(words)
    return out


@pytest.mark.slow
def test_page_real_model_recipes_start_on_the_page_file(tmp_path, monkeypatch):
    """Issue 23: the real-model recipes refused the page's own prompt/completion file (a pinned
    data.format) or stopped in a traceback (12 rows, fewer than one batch of 16). Each command the
    page gives runs here as written, on the page's train.jsonl, with a random-weight stand-in of the
    recipe's model (same architecture, tiny dimensions, a ChatML template) up to its first step.
    The 8-GPU line runs as one process."""
    import json

    import yaml

    from rlhf.cli import main
    from rlhf.configs import recipe_path
    from rlhf.models.shapes import stand_in

    text = DOC.read_text()
    commands = _page_real_model_commands(text)
    assert len(commands) >= 3, commands
    monkeypatch.chdir(tmp_path)
    write = next(code for lang, code in doc_blocks(text) if "cat > train.jsonl" in code)
    subprocess.run(["bash", "-e", "-c", write], check=True)
    rows = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert {"prompt", "completion"} <= set(rows[0]) and len(rows) == 12
    texts = [r["prompt"] + r["completion"] for r in rows]
    for i, words in enumerate(commands):
        stage, recipe = words[0], words[words.index("--recipe") + 1]
        model_id = yaml.safe_load(recipe_path(stage, recipe).read_text())["model"]["name_or_path"]
        folder = stand_in(model_id, tmp_path / f"model-{i}", texts, max_position_embeddings=256)
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(folder)
        tok.chat_template = _CHATML
        tok.save_pretrained(folder)
        out = tmp_path / f"run-{i}"
        rc = main([*words, f"model.name_or_path={folder}", f"output_dir={out}", "train.max_steps=1",
                   "model.dtype=fp32", "train.mixed_precision=no", "data.max_length=128", "train.progress=false"])
        assert rc == 0, words
        steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in steps if "loss" in r] == [1], words
