"""Multi-turn episodes (rlhf/envs/episodes.py, tools.py) against hand-built episodes: the trained
ids are the sampled ids plus the observation's own tokens, the loss mask has holes exactly where
the environment wrote, and a failing tool ends its episode, counted, never the run."""

from __future__ import annotations

import time

import jinja2
import pytest
import torch

from rlhf.envs import FunctionTool, ToolEnvironment, ToolError, calculator, parse_tool_call, run_episodes, run_tool
from rlhf.envs.episodes import episode_metrics, episodes_rollout
from rlhf.envs.tools import chat_observation
from rlhf.rollout import SamplingConfig, assemble_rollout

EOS, PAD = 1, 0


class CharTokenizer:
    """One token per character (its code point); EOS = 1, pad = 0."""

    eos_token_id, pad_token_id, eos_token = EOS, PAD, "\x01"

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i in (EOS, PAD)))

    def batch_decode(self, rows, skip_special_tokens=True):
        return [self.decode(r, skip_special_tokens) for r in rows]


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


class ScriptedEngine:
    """Returns the scripted turns in order, one per row per call (ended by EOS or a stop string
    unless it is cut), with log-probs -(k+1)/100 for the k-th token of a call; records contexts."""

    def __init__(self, script: dict[str, list[list[int]]]):
        self.script = {k: list(v) for k, v in script.items()}
        self.contexts: list[list[list[int]]] = []

    def sample(self, tokenizer, prompts, prompt_ids, cfg, *, num_samples=None, generator=None, with_logps=False):
        self.contexts.append([list(p) for p in prompt_ids])
        turns = [self.script[p].pop(0)[:cfg.max_new_tokens] for p in prompts]
        ended = [t[-1] == EOS or any(s in tokenizer.decode(t) for s in cfg.stop_strings) for t in turns]
        lps = [torch.tensor([-(k + 1) / 100 for k in range(len(t))]) for t in turns]
        return assemble_rollout(tokenizer, list(prompts), [list(p) for p in prompt_ids], turns, ended, 1,
                                torch.device("cpu"), logps=lps if with_logps else None,
                                entropy=lps if with_logps else None)


def exact(prompts, completions, answer):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer, strict=True)]


def env(tools=None):
    tools = {"calc": FunctionTool(calculator, name="calc")} if tools is None else tools
    return ToolEnvironment(exact, tools, "plain", timeout_s=0.5)


def run(script, rows, envs, max_turns=4, max_tokens=64, max_new_tokens=16):
    engine = ScriptedEngine(script)
    tok = CharTokenizer()
    eps = run_episodes(engine, tok, rows, [ids(r["prompt"]) for r in rows], envs,
                       SamplingConfig(max_new_tokens=max_new_tokens), max_turns=max_turns, max_tokens=max_tokens,
                       turn_stop_strings=["]"], with_logps=True)
    return engine, tok, eps


def test_tool_episode_is_sampled_ids_plus_observation_ids():
    """Hand-built: the policy calls the calculator, reads ' = 56\\n', answers '56' + EOS."""
    a1, a2 = ids("[calc: 7*8]"), ids("56") + [EOS]
    obs = ids(" = 56\n")
    row = {"prompt": "7*8=", "columns": {"answer": "56"}}
    engine, tok, (ep,) = run({"7*8=": [a1, a2]}, [row], [env()])
    assert ep.tokens == a1 + obs + a2  # never re-tokenized text: the sampled ids, then the observation's own
    assert ep.policy == [1] * len(a1) + [0] * len(obs) + [1] * len(a2)
    assert engine.contexts[1] == [ids("7*8=") + a1 + obs]  # turn 2 sees the exact ids so far
    assert (ep.reward, ep.ended, ep.turns, ep.tool_calls, ep.tool_errors) == (1.0, True, 2, 1, 0)
    ro = episodes_rollout(tok, [ep], 1, torch.device("cpu"), with_logps=True, version=3)
    P = ro.prompt_width
    assert ro.input_ids[0].tolist() == ids("7*8=") + a1 + obs + a2
    want_mask = [0] * P + ep.policy
    assert ro.loss_mask[0].tolist() == want_mask and ro.completion_mask[0].tolist() == [0] * P + [1] * len(ep.tokens)
    assert ro.input_ids[0][ro.loss_mask[0].bool()].tolist() == a1 + a2  # trained actions == sampled ids
    want_lps = [0.0] * P + [-(k + 1) / 100 for k in range(len(a1))] + [0.0] * len(obs) + \
        [-(k + 1) / 100 for k in range(len(a2))]
    assert ro.logps[0].tolist() == torch.tensor(want_lps, dtype=torch.float32).tolist()
    assert ro.policy_version[0].tolist() == [3 if m else -1 for m in want_mask]
    assert ro.extra["rewards"].tolist() == [1.0]


def test_empty_tool_list_and_direct_answers():
    """No tools: a call is an unknown-tool error that ends that episode (counted, reward 0, the
    loss mask covers its one turn, not nothing); a direct answer is one turn."""
    rows = [{"prompt": "a", "columns": {"answer": "5"}}, {"prompt": "b", "columns": {"answer": "9"}}]
    script = {"a": [ids("[calc: 2+3]")], "b": [ids("9") + [EOS]]}
    _, tok, eps = run(script, rows, [env({}), env({})])
    assert [e.tool_errors for e in eps] == [1, 0] and [e.reward for e in eps] == [0.0, 1.0]
    assert "unknown tool 'calc'" in eps[0].errors[0]
    ro = episodes_rollout(tok, eps, 1, torch.device("cpu"))
    assert ro.loss_mask.sum(-1).tolist() == [len(ids("[calc: 2+3]")), 2]
    assert episode_metrics(eps) == {"env/turns": 1.0, "env/tool_calls": 0.0, "env/tool_errors": 0.5,
                                    "env/ended_fraction": 0.5}


def test_failing_tools_end_their_episode_only():
    def boom(x):
        raise RuntimeError("tool bug")

    def hang(x):
        time.sleep(5)
        return "late"

    def garbage(x):
        return {"not": "text"}

    tools = {f.__name__: FunctionTool(f) for f in (boom, hang, garbage)} | {"calc": FunctionTool(calculator, "calc")}
    rows = [{"prompt": p, "columns": {"answer": "4"}} for p in "wxyz"]
    script = {"w": [ids("[boom: 1]")], "x": [ids("[hang: 1]")], "y": [ids("[garbage: 1]")],
              "z": [ids("[calc: 2+2]"), ids("4") + [EOS]]}
    t0 = time.perf_counter()
    _, _, eps = run(script, rows, [env(tools) for _ in rows])
    assert time.perf_counter() - t0 < 4  # the hung tool timed out (0.5 s), it did not hold the batch
    assert [e.tool_errors for e in eps] == [1, 1, 1, 0] and [e.reward for e in eps] == [0, 0, 0, 1.0]
    assert "raised RuntimeError: tool bug" in eps[0].errors[0]
    assert "did not return within 0.5 s" in eps[1].errors[0] and "returned dict" in eps[2].errors[0]


def test_length_limits_per_episode():
    """max_tokens counts every token after the prompt; max_turns the policy's turns. A cut
    episode has ended=False (the EOS trick treats it as cut)."""
    row = {"prompt": "q", "columns": {"answer": "1"}}
    a1, a2, obs = ids("[calc: 1+1]"), ids("[calc: 2+2]"), ids(" = 2\n")
    _, _, (ep,) = run({"q": [a1, a2]}, [row], [env()], max_tokens=14)  # 11 + 5 > 14: no room to act after it
    assert (ep.tokens, ep.turns, ep.tool_calls, ep.ended) == (a1, 1, 1, False)
    _, _, (ep,) = run({"q": [a1, a2]}, [row], [env()], max_tokens=20)  # turn 2 cut to the 4 tokens left
    assert (ep.tokens, ep.policy, ep.turns, ep.ended) == (a1 + obs + a2[:4], [1] * 11 + [0] * 5 + [1] * 4, 2, False)
    _, _, (ep,) = run({"q": [ids("[calc: 1+1]")] * 3}, [row], [env()], max_turns=2)
    assert ep.turns == 2 and ep.tool_calls == 2 and not ep.ended


def test_tool_call_formats_and_the_calculator():
    assert parse_tool_call("so [calc: 37*4] then", "plain").name == "calc"
    assert parse_tool_call("so [calc: 37*4] then", "plain").arguments == {"": "37*4"}
    assert parse_tool_call("no call here", "plain") is None
    call = parse_tool_call('x <tool_call>{"name": "calc", "arguments": {"expression": "6*7"}}</tool_call>', "chat")
    assert (call.name, call.arguments) == ("calc", {"expression": "6*7"})
    with pytest.raises(ToolError, match="not JSON"):
        parse_tool_call("<tool_call>{calc}</tool_call>", "chat")
    assert run_tool({"calc": FunctionTool(calculator, "calc")}, call, 1.0) == "42"
    assert calculator("37*4") == "148" and calculator("(10-3)//2") == "3"
    for bad in ("2**100", "__import__('os')", "1.5*2"):
        with pytest.raises(ValueError):
            calculator(bad)


class TemplateTokenizer:
    eos_token = "<|im_end|>"
    chat_template = ("{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n"
                     "{{ m.content }}\n</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n"
                     "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return jinja2.Template(self.chat_template).render(messages=messages,
                                                          add_generation_prompt=add_generation_prompt)


def test_chat_observation_keeps_the_turn_separators():
    """After the assistant's EOS (sampled by the policy): the newline the template writes after
    it, the tool turn, and the next assistant header: nothing dropped, nothing doubled."""
    obs = chat_observation(TemplateTokenizer(), "42")
    assert obs == "\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


class FixedObservation:
    """Three turns; after each of the first two the observation ' ok, go on:'; reward 1 at the end."""

    def reset(self, row):
        self.turn = 0
        return row["prompt"]

    def step(self, action):
        from rlhf.envs import Step

        self.turn += 1
        return Step(observation=None if self.turn == 3 else " ok, go on:", reward=float(self.turn == 3),
                    done=self.turn == 3)


def episode_logps_against_the_forward(engine, model, tok, seed=0):
    """Run tool-free 3-turn episodes with ``engine``; return the largest |sampler log-prob - the
    trainer's forward log-prob| over the policy's tokens of the assembled sequences, and the rollout."""
    from rlhf.rollout import rollout_logps

    prompts = ["Hello there", "Tell me a story", "Why"]
    rows = [{"prompt": p, "columns": {}} for p in prompts]
    ids_ = [tok(p)["input_ids"] for p in prompts]
    eps = run_episodes(engine, tok, rows, ids_, [FixedObservation() for _ in rows], SamplingConfig(max_new_tokens=5),
                       max_turns=3, max_tokens=40, with_logps=True, generator=torch.Generator().manual_seed(seed))
    ro = episodes_rollout(tok, eps, 1, torch.device("cpu"), with_logps=True)
    obs = tok(" ok, go on:", add_special_tokens=False)["input_ids"]
    for e in eps:  # the holes hold exactly the observation's own ids
        holes = [t for t, p in zip(e.tokens, e.policy, strict=True) if not p]
        assert holes == obs * (len(holes) // len(obs)) and len(holes) in (len(obs), 2 * len(obs))
    forward = rollout_logps(model, ro)
    m = ro.loss_mask.bool()
    assert bool(m.any()) and bool(((forward != 0) | ~m).all())
    return float((forward - ro.logps)[m].abs().max()), ro


def test_multi_turn_sampler_log_probs_equal_the_training_forward(tiny_llama):
    """The strongest check that the trained sequence is the sampled one: every action's log-prob
    as the sampler drew it (its context: the exact ids so far) equals the training forward's over
    the assembled episode (one sequence, observations in the holes), up to float rounding
    (measured max 5e-7 in fp32, also under ATEN_CPU_CAPABILITY=default; tolerance 1e-4). A
    re-tokenized or misplaced turn would be off by
    whole nats."""
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.rollout import BuiltinEngine

    mc = ModelConfig(name_or_path=str(tiny_llama))
    tok = load_tokenizer(mc)
    model = load_causal_lm(mc, for_training=False)
    diff, ro = episode_logps_against_the_forward(BuiltinEngine(model), model, tok)
    assert diff < 1e-4, f"max |Δ log-prob| {diff}"


class ChatCharTokenizer(CharTokenizer, TemplateTokenizer):
    """Characters as tokens, a Qwen-style template with a tool turn; EOS is the text '<|im_end|>'
    sampled as one id (1)."""

    eos_token = "<|im_end|>"

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.eos_token if i == EOS and not skip_special_tokens else chr(i) for i in ids
                       if not (skip_special_tokens and i in (EOS, PAD)))


def test_chat_format_episode_appends_the_templates_tool_turn():
    """tool_format auto -> chat for a template that writes <tool_call>; the call turn ends at the
    policy's EOS, then the template's own tool turn (separators included) is appended as exact ids."""
    from rlhf.envs.episodes import tool_format_for

    tok = ChatCharTokenizer()
    tok.chat_template = tok.chat_template + "{# <tool_call> #}"
    assert tool_format_for(tok, "auto") == "chat" and tool_format_for(CharTokenizer(), "auto") == "plain"
    call = ids('<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>') + [EOS]
    answer = ids("42") + [EOS]
    envs = [ToolEnvironment(exact, {"calculator": FunctionTool(calculator)}, "chat", tokenizer=tok)]
    engine = ScriptedEngine({"q": [call, answer]})
    (ep,) = run_episodes(engine, tok, [{"prompt": "q", "columns": {"answer": "42"}}], [ids("q")], envs,
                         SamplingConfig(max_new_tokens=99), max_turns=3, max_tokens=300)
    obs = ids("\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert ep.tokens == call + obs + answer and ep.policy == [1] * len(call) + [0] * len(obs) + [1] * len(answer)
    assert (ep.reward, ep.tool_calls, ep.ended) == (1.0, 1, True)
