"""Interest expansion for a buyer without history: the base model lists topics to retrieve on as well.

The buyer's profile and request in, a JSON object ``{"topics": [...]}`` out, asked with a
``response_format`` JSON schema so that a server with guided decoding (vLLM, the embedded
worker) can only write a valid list of ``n`` short strings. A small model needs an example
(``prompts/cold_start_examples.json``) and gets one as an earlier turn.

Example:
    >>> parse_topics('{"topics": ["navy formal shirts", "Navy formal shirts", "black belts"]}', 4)
    ['navy formal shirts', 'black belts']
"""

from __future__ import annotations

import json
from typing import Any

from prompts import load_json, load_prompt

__all__ = ["cold_start_messages", "cold_start_payload", "parse_topics", "topics_schema"]

MAX_TOPIC_CHARS = 32


def topics_schema(n: int) -> dict[str, Any]:
    """The JSON schema of the answer: exactly ``n`` topics of 3-32 characters."""
    # Words only: a guided model cannot write control characters or markup into a query.
    topic = {"type": "string", "pattern": f"^[A-Za-z0-9][A-Za-z0-9 '&-]{{2,{MAX_TOPIC_CHARS - 1}}}$"}
    return {"type": "object", "properties": {"topics": {"type": "array", "items": topic, "minItems": n,
                                                        "maxItems": n}}, "required": ["topics"]}  # fmt: skip


def cold_start_messages(profile: str, request: str, n: int) -> list[dict[str, Any]]:
    user = load_prompt("cold_start_user")
    messages: list[dict[str, Any]] = [{"role": "system", "content": load_prompt("cold_start_system")}]
    for example in load_json("cold_start_examples"):
        topics = example["topics"]
        asked = user.format(profile=example["profile"], request=example["request"], n=len(topics))
        messages.append({"role": "user", "content": asked})
        messages.append({"role": "assistant", "content": json.dumps({"topics": topics})})
    messages.append({"role": "user", "content": user.format(profile=profile, request=request or "-", n=n)})
    return messages


def cold_start_payload(model: str, profile: str, request: str, n: int) -> dict[str, Any]:
    """The chat-completions body: greedy, guided by the schema, with room for the longest answer it allows."""
    schema = {"name": "interest_topics", "schema": topics_schema(n)}
    room = n * (MAX_TOPIC_CHARS + 4) + 16  # a token is at least a character: a guided answer is never cut off
    return {"model": model, "messages": cold_start_messages(profile, request, n), "temperature": 0.0,
            "max_tokens": room, "response_format": {"type": "json_schema", "json_schema": schema}}  # fmt: skip


def parse_topics(content: str, n: int) -> list[str] | None:
    """The distinct topics of an answer (case-insensitive), at most ``n``; None when it is not such an object."""
    try:
        data = json.loads(content)
    except json.JSONDecodeError:
        return None
    topics = data.get("topics") if isinstance(data, dict) else data
    if not isinstance(topics, list) or not topics or not all(isinstance(t, str) for t in topics):
        return None
    seen: dict[str, str] = {}
    for topic in topics:
        clean = " ".join(topic.split())[:MAX_TOPIC_CHARS]
        if clean:
            seen.setdefault(clean.lower(), clean)
    return list(seen.values())[:n] or None
