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

__all__ = ["PROMPTS_DIR", "load_prompt", "load_tools"]

PROMPTS_DIR = Path(__file__).parent


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


def load_tools(name: str = "ranker_tools") -> list[dict[str, Any]]:
    """OpenAI tool schemas from ``prompts/<name>.json`` (a fresh copy each call: callers may edit it)."""
    tools: list[dict[str, Any]] = json.loads(_tools_text(name))  # read once: the pipeline asks every turn
    return tools
