#!/usr/bin/env python3
"""Generates crates/tandem-engine/tests/chat_templates.rs.

Every expected string in that file is what Python's jinja2 renders for the case, in the
environment transformers' `apply_chat_template` uses (transformers/utils/chat_template_utils.py):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols
extension, `raise_exception`, `strftime_now`, and `tojson` overridden by
`json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`; the render call
passes `messages`, `tools` (None unless given), `documents` (None), `add_generation_prompt`, the
special tokens and the extra kwargs.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install jinja2
    /tmp/venv/bin/python crates/tandem-engine/tests/data/gen_chat_expected.py
    rustfmt --edition 2021 crates/tandem-engine/tests/chat_templates.rs

The templates in tests/data/templates/ are verbatim copies of the models' `chat_template`:
llama-3.1/3.2-instruct, qwen2.5-instruct and qwen3 (Qwen3-0.6B) from llama.cpp's
models/templates/ (fetched from the Hugging Face repositories by its get_chat_template.py);
mistral-instruct-v0.3 (mistralai's "v3" template with tool calling) from llama.cpp's
tests/test-chat-template.cpp; llama-2-chat is meta-llama/Llama-2-7b-chat-hf's template.
"""

import json
import os
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "templates")
OUT = os.path.join(HERE, "..", "chat_templates.rs")


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def compile_template(source):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def render(template_file, messages, add_generation_prompt, bos, eos, kwargs):
    with open(os.path.join(TEMPLATES, template_file), encoding="utf-8") as f:
        template = compile_template(f.read())
    kwargs = dict(kwargs)
    tools = kwargs.pop("tools", None)
    documents = kwargs.pop("documents", None)
    special = {"bos_token": bos or "", "eos_token": eos or ""}
    special.update(kwargs)
    try:
        return ("Ok", template.render(messages=messages, tools=tools, documents=documents,
                                      add_generation_prompt=add_generation_prompt, **special))
    except jinja2.exceptions.TemplateError as e:
        if type(e) is not jinja2.exceptions.TemplateError:
            raise
        return ("Err", str(e))


SYSTEM = "You are a helpful assistant."
CONV = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Hello! Tell me about the café ☕ <here> & now."},
    {"role": "assistant", "content": "  Hi! Sure \u2014 what would you like to know?  "},
    {"role": "user", "content": "What is 2+2?\n"},
]
THINK_CONV = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city (°C) <fast> & 'free'",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Zürich"},
                    "days": {"type": "integer", "default": 1},
                    "scale": {"type": "number", "default": 1.5},
                },
                "required": ["city"],
            },
        },
    }
]

LLAMA3 = ("llama-3.1-instruct.jinja", "<|begin_of_text|>", "<|eot_id|>")
LLAMA32 = ("llama-3.2-instruct.jinja", "<|begin_of_text|>", "<|eot_id|>")
QWEN25 = ("qwen2.5-instruct.jinja", None, "<|im_end|>")
QWEN3 = ("qwen3.jinja", None, "<|im_end|>")
MISTRAL = ("mistral-instruct-v0.3.jinja", "<s>", "</s>")
LLAMA2 = ("llama-2-chat.jinja", "<s>", "</s>")

# (test name, (template, bos, eos), messages, add_generation_prompt, kwargs, comment)
CASES = [
    ("llama31_conversation", LLAMA3, CONV, True, {}, "system + user + assistant + user; fixed default date"),
    ("llama31_no_system_no_prompt", LLAMA3, CONV[1:], False, {}, "empty system block, no generation prompt"),
    ("llama31_date_string", LLAMA3, CONV, True, {"date_string": "01 Jan 2025"}, "date_string kwarg"),
    ("llama31_tools_in_user_message", LLAMA3, CONV, True, {"tools": TOOLS},
     "tools go into the first user message, `tojson(indent=4)`"),
    ("llama31_tools_in_system", LLAMA3, CONV, True, {"tools": TOOLS, "tools_in_user_message": False},
     "tools_in_user_message=false puts them in the system message"),
    ("llama31_tool_result", LLAMA3, [{"role": "user", "content": "Weather?"}, {"role": "tool", "content": "22 C"}], True, {},
     "a tool message's string content is `iterable`, so it goes through `tojson`"),
    ("llama31_tools_without_user_raises", LLAMA3, CONV[:1], True, {"tools": TOOLS}, "raise_exception"),
    ("llama32_conversation", LLAMA32, CONV, True, {"date_string": "26 Nov 2025"}, "Llama 3.2 (date_string given; else strftime_now)"),
    ("qwen25_conversation", QWEN25, CONV, True, {}, "ChatML with the user's system prompt"),
    ("qwen25_default_system", QWEN25, CONV[1:], True, {}, "Qwen's default system prompt"),
    ("qwen25_tools", QWEN25, CONV, True, {"tools": TOOLS}, "tools branch, `tojson` with default separators"),
    ("qwen25_tools_default_system", QWEN25, CONV[1:], False, {"tools": TOOLS}, "tools branch, default system prompt"),
    ("qwen25_tool_responses", QWEN25,
     [{"role": "user", "content": "Weather in Paris and Rome?"},
      {"role": "tool", "content": "{\"temp\": 18}"},
      {"role": "tool", "content": "{\"temp\": 24}"}], True, {}, "consecutive tool messages share one user turn"),
    ("qwen3_conversation", QWEN3, CONV, True, {}, "no default system prompt"),
    ("qwen3_history_thinking_dropped", QWEN3, THINK_CONV, True, {},
     "<think> of turns before the last user query is removed"),
    ("qwen3_last_turn_keeps_thinking", QWEN3, THINK_CONV[:3], False, {},
     "an assistant turn after the last query keeps its <think> block"),
    ("qwen3_enable_thinking_false", QWEN3, CONV, True, {"enable_thinking": False}, "empty think block"),
    ("qwen3_tools", QWEN3, CONV, True, {"tools": TOOLS}, "tools branch"),
    ("qwen3_multi_step_tool", QWEN3,
     [{"role": "user", "content": "Weather?"},
      {"role": "assistant", "content": "<think>\nCall the tool.\n</think>\n\nLet me check."},
      {"role": "user", "content": "<tool_response>\n22 C\n</tool_response>"},
      {"role": "assistant", "content": "<think>\nGot it.\n</think>\n\nIt is 22 C."}], False, {},
     "namespace + reversed loop: a <tool_response> user turn is not the last query"),
    ("mistral_v03_conversation", MISTRAL, CONV, True, {}, "system prompt joins the last user message"),
    ("mistral_v03_tools", MISTRAL, CONV, True, {"tools": TOOLS}, "[AVAILABLE_TOOLS] before the last user message"),
    ("mistral_v03_roles_must_alternate", MISTRAL, [CONV[1], CONV[3]], True, {}, "raise_exception"),
    ("mistral_v03_unknown_role", MISTRAL, [CONV[1], {"role": "critic", "content": "meh"}], True, {}, "raise_exception"),
    ("llama2_conversation", LLAMA2, CONV, True, {}, "<<SYS>> inside the first [INST]; no generation prompt exists"),
    ("llama2_roles_must_alternate", LLAMA2, [CONV[0], CONV[1], CONV[3]], True, {}, "raise_exception"),
]


def rust_str(s):
    out = ['"']
    for c in s:
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20:
            out.append("\\u{%x}" % ord(c))
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def rust_text(s, indent):
    """A string literal, or concat!() of one literal per line for multi-line text."""
    lines = s.split("\n")
    if len(lines) <= 2:
        return rust_str(s)
    pieces = [rust_str(l + "\n") for l in lines[:-1]]
    if lines[-1]:
        pieces.append(rust_str(lines[-1]))
    pad = " " * (indent + 4)
    return "concat!(\n" + "".join(f"{pad}{p},\n" for p in pieces) + " " * indent + ")"


def rust_opt(s):
    return "None" if s is None else f"Some({rust_str(s)})"


def main():
    parts = [
        "//! Real chat templates, rendered and compared with what transformers produces.\n",
        "//!\n",
        "//! GENERATED by tests/data/gen_chat_expected.py: every expected string below was rendered by\n",
        f"//! Python jinja2 {jinja2.__version__} in transformers' `apply_chat_template` environment (trim_blocks,\n",
        "//! lstrip_blocks, loopcontrols, raise_exception, tojson = json.dumps(ensure_ascii=False)).\n",
        "//! Edit the script and re-run it rather than editing this file.\n",
        "\n",
        "mod chat_support;\n",
        "\n",
        "use chat_support::{check, Case};\n",
    ]
    for name, (template, bos, eos), messages, agp, kwargs, comment in CASES:
        kind, text = render(template, messages, agp, bos, eos, kwargs)
        msgs = "".join(
            f"            ({rust_str(m['role'])}, {rust_str(m['content'])}),\n" for m in messages
        )
        kw = "".join(
            f"            ({rust_str(k)}, r#\"{json.dumps(v, ensure_ascii=False)}\"#),\n"
            for k, v in kwargs.items()
        )
        assert all('"#' not in json.dumps(v, ensure_ascii=False) for v in kwargs.values())
        parts.append(
            "\n"
            f"/// {template}: {comment}.\n"
            "#[test]\n"
            f"fn {name}() {{\n"
            "    check(Case {\n"
            f"        template: {rust_str(template)},\n"
            f"        bos: {rust_opt(bos)},\n"
            f"        eos: {rust_opt(eos)},\n"
            f"        messages: &[\n{msgs}        ],\n"
            f"        add_generation_prompt: {'true' if agp else 'false'},\n"
            f"        kwargs: &[{chr(10) + kw + '        ' if kw else ''}],\n"
            f"        expected: {kind}({rust_text(text, 8)}),\n"
            "    });\n"
            "}\n"
        )
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("".join(parts))
    print(f"wrote {len(CASES)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
