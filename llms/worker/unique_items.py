"""``uniqueItems`` for tool-call arguments, which the grammar alone cannot express.

xgrammar (like every grammar engine behind guided decoding) ignores JSON Schema's
``uniqueItems``: a context-free grammar cannot remember which items an array already holds.
A sampled ranking therefore repeats ids, and a ranker that drops repeats fills the gaps with
whatever comes next in retrieval order, the least diverse end of its pool. The embedded
worker enforces the keyword on top of the grammar instead, for arrays of strings that are
direct arguments of a function (``{"ids": {"type": "array", "uniqueItems": true, "items":
{"enum": [...]}}}``): while such an array is being written, a token that would close a string
already in it, or (with an ``enum``) start one whose every completion is already in it, is
masked. Sampling then draws a ranking *without replacement*, as listwise rankers decode.

vLLM and ollama ignore the keyword; Tandem's ranker still drops repeats after the call.

Example:
    >>> spec = unique_arrays([{"type": "function", "function": {"name": "rank", "parameters": {
    ...     "type": "object", "properties": {"ids": {"type": "array", "uniqueItems": True,
    ...     "items": {"type": "string", "enum": ["A", "B"]}}}}}}])
    >>> tracker = UniqueItemsTracker(spec)
    >>> tracker.feed('{"name": "rank", "arguments": {"ids": ["A", ')
    >>> tracker.allows('"A"'), tracker.allows('"B"')
    (False, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["UniqueArray", "UniqueItemsTracker", "unique_arrays"]


@dataclass(frozen=True)
class UniqueArray:
    """An argument that must hold distinct strings; ``enum`` lists the strings it may hold (None: any)."""

    enum: frozenset[str] | None = None


def unique_arrays(tools: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], UniqueArray]:
    """``(function name, argument) → UniqueArray`` for every direct string-array argument with ``uniqueItems``."""
    found: dict[tuple[str, str], UniqueArray] = {}
    for tool in tools:
        function = tool.get("function") or {}
        properties = (function.get("parameters") or {}).get("properties") or {}
        for argument, schema in properties.items():
            if not isinstance(schema, Mapping) or schema.get("type") != "array" or not schema.get("uniqueItems"):
                continue
            items = schema.get("items") or {}
            enum = items.get("enum") if isinstance(items, Mapping) else None
            strings = frozenset(v for v in enum if isinstance(v, str)) if isinstance(enum, list) else None
            found[(str(function.get("name", "")), str(argument))] = UniqueArray(strings)
    return found


@dataclass
class _Frame:
    kind: str  # "obj" or "arr"
    parent_key: str | None = None
    key: str | None = None
    expect_key: bool = True
    unique: UniqueArray | None = None
    used: set[str] = field(default_factory=set)


class UniqueItemsTracker:
    """Follows one tool call's JSON as it is written and says which next tokens keep its unique arrays unique.

    It trusts the grammar for everything else (well-formed JSON, the schema), so it only reads
    the structure it needs: the function's name, the argument being written, and its strings.
    """

    def __init__(self, arrays: Mapping[tuple[str, str], UniqueArray]) -> None:
        self._arrays = dict(arrays)
        self._stack: list[_Frame] = []
        self._started = False
        self._name = ""
        self._in_string = False
        self._escape = False
        self._buffer = ""

    @property
    def active(self) -> bool:
        """Whether a unique array is being written now (the only time a token can be refused)."""
        return bool(self._stack) and self._stack[-1].unique is not None

    def feed(self, text: str) -> None:
        """Follow the text of a chosen token."""
        for ch in text:
            self._step(ch)

    def allows(self, text: str) -> bool:
        """Whether writing ``text`` next keeps the current unique array free of repeats (always, outside one)."""
        if not self.active:
            return True
        frame = self._stack[-1]
        assert frame.unique is not None
        used = set(frame.used)
        in_string, escape, buffer = self._in_string, self._escape, self._buffer
        for ch in text:
            if not in_string:
                if ch == '"':
                    in_string, buffer = True, ""
                elif ch == "]":
                    return True  # the array closes; nothing after it in this token can repeat an item of it
                continue
            if escape:
                buffer, escape = buffer + ch, False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                if buffer in used:
                    return False
                used.add(buffer)
                in_string = False
            else:
                buffer += ch
        if in_string and frame.unique.enum is not None:
            return any(v.startswith(buffer) and v not in used for v in frame.unique.enum)
        return True

    def _step(self, ch: str) -> None:
        if not self._started:
            if ch != "{":
                return
            self._started = True
        if self._in_string:
            self._string_char(ch)
            return
        top = self._stack[-1] if self._stack else None
        if ch == '"':
            self._in_string, self._buffer = True, ""
        elif ch in "{[":
            parent_key = top.key if top is not None and top.kind == "obj" else None
            unique = None
            if ch == "[" and top is not None and top.kind == "obj" and self._is_arguments(top):
                unique = self._arrays.get((self._name, top.key or ""))
            self._stack.append(_Frame("obj" if ch == "{" else "arr", parent_key=parent_key, unique=unique))
        elif ch in "}]":
            if self._stack:
                self._stack.pop()
        elif ch == "," and top is not None and top.kind == "obj":
            top.expect_key = True

    def _string_char(self, ch: str) -> None:
        if self._escape:
            self._buffer, self._escape = self._buffer + ch, False
            return
        if ch == "\\":
            self._escape = True
            return
        if ch != '"':
            self._buffer += ch
            return
        self._in_string = False
        top = self._stack[-1] if self._stack else None
        if top is None:
            return
        if top.kind == "obj" and top.expect_key:
            top.key, top.expect_key = self._buffer, False
        elif top.kind == "obj" and len(self._stack) == 1 and top.key == "name":
            self._name = self._buffer
        elif top.kind == "arr" and top.unique is not None:
            top.used.add(self._buffer)

    def _is_arguments(self, frame: _Frame) -> bool:
        # The arguments object is the value of "arguments" (Hermes) or "parameters" in the call's outer object.
        return len(self._stack) == 2 and frame.parent_key in {"arguments", "parameters"}
