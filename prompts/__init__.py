"""Prompt templates as files: ``<name>.txt`` with ``str.format`` fields, loaded by :func:`load_prompt`.

Example:
    >>> "{profile}" in load_prompt("ranker_user")
    True
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["CHAT_TEMPLATE_PATH", "PROMPTS_DIR", "load_chat_template", "load_json", "load_prompt", "load_tools"]

PROMPTS_DIR = Path(__file__).parent
# Qwen2.5-style ChatML with Hermes <tool_call>s: the format vLLM's `hermes` parser and ollama read. Every base model
# Tandem converts (and the tiny test models) get it, so training, the embedded worker and vLLM render alike.
CHAT_TEMPLATE_PATH = PROMPTS_DIR / "chat_template.jinja"


@cache
def load_prompt(name: str) -> str:
    """The text of ``prompts/<name>.txt`` without its trailing newline."""
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no prompt named {name!r} in {PROMPTS_DIR}")
    return path.read_text(encoding="utf-8").rstrip("\n")


@cache
def _tools_text(name: str) -> str:
    return (PROMPTS_DIR / f"{name}.json").read_text(encoding="utf-8")


def load_json(name: str) -> Any:
    """``prompts/<name>.json``, parsed (the file is read once; each call gets a fresh copy it may edit)."""
    return json.loads(_tools_text(name))


def load_tools(name: str = "ranker_tools") -> list[dict[str, Any]]:
    """OpenAI tool schemas from ``prompts/<name>.json`` (a fresh copy each call: callers may edit it)."""
    tools: list[dict[str, Any]] = load_json(name)
    return tools


@cache
def load_chat_template() -> str:
    """The chat template Tandem gives its base models (tools rendered, Hermes tool calls).

    Example:
        >>> "<tool_call>" in load_chat_template()
        True
    """
    return CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
