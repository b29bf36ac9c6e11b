"""Hermes ``<tool_call>`` parsing, stream splitting and response normalisation."""

from __future__ import annotations

import json
import random

import pytest

from llms.errors import MalformedToolCallError
from llms.tool_calls import HermesStreamSplitter, normalize_message_tool_calls, parse_hermes

CALL = '<tool_call>\n{"name": "search_catalog", "arguments": {"query": "linen shirts"}}\n</tool_call>'


def test_parses_several_calls_and_keeps_leading_prose() -> None:
    two = CALL + '\n<tool_call>{"name": "get_products", "arguments": {"ids": ["1"]}}</tool_call>'
    parsed = parse_hermes("Let me look. " + two)
    assert parsed.content == "Let me look."
    assert [c.name for c in parsed.tool_calls] == ["search_catalog", "get_products"]
    assert parsed.tool_calls[1].arguments == {"ids": ["1"]}
    assert parsed.malformed == []
    assert parsed.tool_calls[0].id != parsed.tool_calls[1].id


def test_unterminated_last_call_and_double_encoded_arguments() -> None:
    parsed = parse_hermes('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}')
    assert parsed.tool_calls[0].arguments == {"a": 1}


@pytest.mark.parametrize(
    "raw",
    [
        '<tool_call>{"name": "f", "arguments": {"a": </tool_call>',
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
        "<tool_call>not json</tool_call>",
    ],
)
def test_malformed_blocks_are_reported_not_dropped(raw: str) -> None:
    parsed = parse_hermes(raw)
    assert parsed.tool_calls == []
    assert len(parsed.malformed) == 1


def test_no_marker_is_plain_content() -> None:
    assert parse_hermes("just words").content == "just words"


@pytest.mark.parametrize("seed", range(20))
def test_splitter_streams_prose_and_holds_every_call_byte(seed: int) -> None:
    text = "Here are linen <b>shirts</b> < 5 items. " + CALL
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), 8))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    splitter = HermesStreamSplitter()
    streamed = "".join(splitter.feed(p) for p in pieces)
    held, call_text = splitter.finish()
    assert "<tool_call" not in streamed
    assert streamed + held == text[: text.index("<tool_call>")]
    assert call_text == CALL


def test_splitter_without_a_call_returns_everything() -> None:
    splitter = HermesStreamSplitter()
    streamed = splitter.feed("a < b <tool") + splitter.feed("box")
    held, call_text = splitter.finish()
    assert streamed + held == "a < b <toolbox"
    assert call_text == ""


def test_normalize_moves_text_calls_and_checks_names_and_arguments() -> None:
    message = {"role": "assistant", "content": CALL}
    assert normalize_message_tool_calls(message, {"search_catalog"})
    assert message["content"] is None
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"query": "linen shirts"}
    with pytest.raises(MalformedToolCallError, match="unknown tool"):
        normalize_message_tool_calls({"content": CALL}, {"submit_ranking"})
    bad_args = {"tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}
    with pytest.raises(MalformedToolCallError, match="not valid JSON"):
        normalize_message_tool_calls(bad_args, {"f"})
    assert not normalize_message_tool_calls({"content": "no calls"}, {"f"})
