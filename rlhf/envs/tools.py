"""Tools the policy calls from its text: the two call formats, and running a call safely.

Two formats, chosen by ``env.tool_format``:

* ``chat`` (models whose chat template has a tool format; Qwen2.5 / Hermes style): a call is
  ``<tool_call>{"name": "calc", "arguments": {"expression": "37*4"}}</tool_call>`` in the
  policy's turn; the result is appended as the template's own tool turn (:func:`chat_observation`).
* ``plain`` (any model, e.g. the testbed's tiny ones): a call is ``[name: text]``, the text
  after the colon up to the closing bracket passed as the tool's one argument; the result is
  appended as `` = result\\n`` (:data:`PLAIN_RESULT`). The policy's turn ends at the closing
  bracket (a stop string), so the call is the last thing in it.

A call runs :func:`run_tool`: the function in a thread of its own with a time limit. A tool
that raises, passes its time limit, or returns something that is not a string (or a number,
turned into one) is a :class:`ToolError`: the episode that made the call ends there, the error
is counted, and the run goes on (a hung tool's thread is left behind as a daemon: Python cannot
stop a thread; a tool that can hang for good should time itself out).
"""

from __future__ import annotations

import ast
import json
import operator
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ToolCall", "ToolError", "FunctionTool", "parse_tool_call", "run_tool", "load_tools", "calculator",
           "chat_observation", "PLAIN_RESULT", "TOOL_FORMATS"]

TOOL_FORMATS = ("chat", "plain")
PLAIN_RESULT = " = {result}\n"  # what a plain-format call's result appends
_PLAIN = re.compile(r"\[(\w+):([^\]]*)\]")
_CHAT = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
MAX_RESULT_CHARS = 2000


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


class ToolError(RuntimeError):
    """A tool call that could not give a result: unknown tool, bad arguments, raised, timed out,
    returned garbage. Ends the episode; counted, never fatal to the run."""


@dataclass
class FunctionTool:
    """A Python function as a tool: ``name`` (the function's name unless given), ``description``
    (its docstring's first line). Called with keyword arguments; a plain-format call passes its
    text as the first parameter."""

    fn: Callable[..., Any]
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.fn.__name__
        self.description = self.description or (self.fn.__doc__ or "").strip().split("\n")[0]

    def __call__(self, **arguments: Any) -> Any:
        return self.fn(**arguments)

    def first_parameter(self) -> str:
        import inspect
        params = list(inspect.signature(self.fn).parameters)
        return params[0] if params else "input"


def parse_tool_call(text: str, fmt: str) -> ToolCall | None:
    """The tool call in one turn of the policy's text, or None when it makes none (then the turn
    is its answer). Raises ToolError for a call that is there but malformed (chat format: not a
    JSON object with a string ``name`` and an object ``arguments``)."""
    if fmt == "plain":
        m = _PLAIN.search(text)
        return ToolCall(m.group(1), {"": m.group(2).strip()}) if m else None
    if fmt != "chat":
        raise ValueError(f"tool format {fmt!r}; expected one of {', '.join(TOOL_FORMATS)}")
    m = _CHAT.search(text)
    if m is None:
        return None
    try:
        obj = json.loads(m.group(1))
    except json.JSONDecodeError as e:
        raise ToolError(f"tool call is not JSON ({e.msg}): {m.group(1)[:80]!r}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or \
            not isinstance(obj.get("arguments", {}), dict):
        raise ToolError(f"tool call needs a string 'name' and an object 'arguments': {m.group(1)[:80]!r}")
    return ToolCall(obj["name"], dict(obj.get("arguments", {})))


def run_tool(tools: dict[str, FunctionTool], call: ToolCall, timeout_s: float) -> str:
    """The result text of ``call``, or ToolError (unknown tool, raised, timed out, garbage)."""
    tool = tools.get(call.name)
    if tool is None:
        raise ToolError(f"unknown tool {call.name!r} (known: {', '.join(tools) or 'none'})")
    args = dict(call.arguments)
    if "" in args:  # plain format: the text goes to the first parameter
        args = {tool.first_parameter(): args.pop("")}
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = tool(**args)
        except BaseException as e:  # noqa: BLE001 -- any failure of user code is the episode's, not the run's
            box["error"] = e

    worker = threading.Thread(target=target, name=f"rlhf-tool-{call.name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ToolError(f"tool {call.name!r} did not return within {timeout_s:g} s (env.tool_timeout_s)")
    if "error" in box:
        e = box["error"]
        raise ToolError(f"tool {call.name!r} raised {type(e).__name__}: {e}")
    result = box.get("result")
    if isinstance(result, bool) or not isinstance(result, (str, int, float)):
        raise ToolError(f"tool {call.name!r} returned {type(result).__name__}, not text")
    text = str(result)
    if len(text) > MAX_RESULT_CHARS:
        raise ToolError(f"tool {call.name!r} returned {len(text)} characters (more than {MAX_RESULT_CHARS})")
    return text


def load_tools(refs: list[str]) -> dict[str, FunctionTool]:
    """``package.module:function`` references -> tools by name (names must differ)."""
    from rlhf.config import ConfigError
    from rlhf.rewards import import_callable

    out: dict[str, FunctionTool] = {}
    refs_by_name: dict[str, str] = {}
    for ref in refs:
        tool = FunctionTool(import_callable(ref, "tool"))
        if tool.name in out:  # a user's config: one line, not a traceback
            raise ConfigError("env.tools", f"two tools named {tool.name!r} ({refs_by_name[tool.name]!r} and "
                                           f"{ref!r}): a call names its tool by the function's name, so the "
                                           f"names must differ")
        out[tool.name] = tool
        refs_by_name[tool.name] = ref
    return out


_OPS: dict[type, Callable[..., Any]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                                        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
                                        ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> str:
    """Integer arithmetic: + - * // % and parentheses, e.g. '37*4' -> '148'."""

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Mult) and abs(left) * abs(right) > 10**12:
                raise ValueError("result too large")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not integer arithmetic: {ast.dump(node)[:60]}")

    if len(expression) > 200:
        raise ValueError("expression too long")
    with warnings.catch_warnings():  # '5or 3' from a policy: Python's SyntaxWarning on stderr, not ours to print
        warnings.simplefilter("ignore", SyntaxWarning)
        tree = ast.parse(expression.strip(), mode="eval")
    return str(ev(tree.body))


def chat_observation(tokenizer: Any, result: str) -> str:
    """The text the chat template puts between the end of an assistant turn (its EOS included,
    which the policy sampled) and the start of the next assistant turn, around a tool message
    holding ``result``: the turn separators exactly as the template writes them (a dropped
    separator is the classic multi-turn train/inference mismatch). Read off the template by
    rendering a conversation with and without the tool turn."""
    eos = tokenizer.eos_token or ""
    base = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    head = tokenizer.apply_chat_template(base, tokenize=False)
    full = tokenizer.apply_chat_template(base + [{"role": "tool", "content": result}], tokenize=False,
                                         add_generation_prompt=True)
    end = head.rfind("A") + 1  # the assistant content's end in both renderings
    if full[:end] != head[:end]:
        raise ValueError("the chat template renders the conversation differently with a tool turn after it; "
                         "use env.tool_format=plain")
    rest = full[end:]
    return rest[len(eos):] if eos and rest.startswith(eos) else rest
