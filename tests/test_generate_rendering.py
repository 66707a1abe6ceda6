"""How ``rlhf generate`` renders plain prompts: a user message in the chat template where the
tokenizer has one (instruct models), raw text with --raw or without a template; said in one line."""

from __future__ import annotations

from rlhf.cli import main
from rlhf.tools.generate import rendering_line


def test_rendering_line_names_the_rule():
    assert "user message in the tokenizer's chat template" in rendering_line(True, "auto", False, False)
    assert "default chat template" in rendering_line(True, "default", False, False)
    assert "raw text (--raw)" in rendering_line(False, "auto", False, True)
    assert "raw text (the tokenizer has no chat template)" in rendering_line(False, "auto", False, False)
    assert "raw text (--chat-template none)" in rendering_line(False, "none", True, False)
    assert "message-list prompts still use a chat template" in rendering_line(False, "auto", True, True)


def test_generate_prints_the_rendering_and_raw_keeps_text(capsys, tiny_llama, tmp_path):
    """The tiny model's tokenizer has no chat template: plain prompts stay raw text either way."""
    assert main(["generate", "--model", str(tiny_llama), "--prompt", "count: a\n", "--max-new-tokens", "2"]) == 0
    assert "raw text (the tokenizer has no chat template)" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_llama), "--prompt", "count: a\n", "--max-new-tokens", "2",
                 "--chat-template", "default"]) == 0
    assert "user message in the default chat template" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_llama), "--prompt", "count: a\n", "--max-new-tokens", "2",
                 "--chat-template", "default", "--raw"]) == 0
    assert "raw text (--raw)" in capsys.readouterr().err
