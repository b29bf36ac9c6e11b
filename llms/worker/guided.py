"""Guided decoding: a required tool call or a JSON answer that can only be written schema-valid.

vLLM answers such requests with guided decoding (the JSON schemas become a grammar); the
embedded worker does the same with xgrammar, the grammar engine vLLM uses, for

- ``tool_choice`` "required" or a named function: one call in the Hermes/Qwen format Tandem's
  chat template renders, to the byte::

      <tool_call>
      {"name": "submit_ranking", "arguments": {"ids": ["C", "A", "B"]}}
      </tool_call>

- ``response_format`` ``{"type": "json_schema", "json_schema": {"schema": …}}`` or
  ``{"type": "json_object"}``: one JSON value.

The JSON is written exactly as ``json.dumps`` (and the template's ``tojson``) writes it:
``", "`` and ``": "`` between items, no other whitespace. That is the text a model trained on
the template has seen, and it makes most of a call **forced**: ``_ranking", "arguments":
{"ids": ["`` after the model chose ``submit``, ``", "`` between ids. :meth:`GuidedRow.forced`
hands such a stretch to the engine, which feeds it to the model in one forward pass instead of
one pass per token (jump-forward decoding, as SGLang does). A call is well-formed and fits its
schema (an ``enum`` included) under greedy decoding and any temperature, top-k or top-p.
``uniqueItems``, which no grammar can express, is enforced on top
(:mod:`llms.worker.unique_items`): a sampled ranking holds each id once.

Example:
    >>> guide = GrammarGuide(tokenizer, vocab_size=49152, stop_token_ids=[2])  # doctest: +SKIP
    >>> row = guide.start(tools, "required", None)  # doctest: +SKIP
    >>> row.mask(logits); token = int(logits.argmax()); row.accept(token)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch

from llms.errors import InvalidChatRequestError
from llms.worker.unique_items import UniqueItemsTracker, unique_arrays

__all__ = ["GrammarGuide", "GuidedRow", "is_guided", "json_schema_of"]

_SEPARATORS = (", ", ": ")  # json.dumps' defaults, which the chat template's tojson writes too
# A forced stretch shorter than this is left to the model: a lone '"' before a choice of '",' or '"]' would
# split a token the model knows as one (training never saw '"' then ',' as two tokens).
_MIN_FORCED_CHARS = 2
_CPP_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # xgrammar's "[09:16:14] /project/cpp/x.cc:4944: " prefix


def is_guided(tools: Sequence[dict[str, Any]] | None, tool_choice: Any) -> bool:
    """Whether a request asks for a tool call the server must guarantee (OpenAI's required / named choice)."""
    return bool(tools) and (tool_choice == "required" or isinstance(tool_choice, dict))


def json_schema_of(response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema an OpenAI ``response_format`` asks for (``{}`` for any JSON object); None: free text.

    Example:
        >>> json_schema_of({"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "array"}}})
        {'type': 'array'}
        >>> json_schema_of({"type": "text"}) is None
        True
    """
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise InvalidChatRequestError("response_format json_schema needs a 'schema' object")
        return dict(schema)
    if kind in (None, "text"):
        return None
    raise InvalidChatRequestError(f"unsupported response_format type {kind!r} (text, json_object, json_schema)")


class GuidedRow:
    """One generation's grammar state: masks the next token's logits, follows the tokens chosen, finds forced ones."""

    def __init__(
        self,
        matcher: Any,
        vocab_size: int,
        tokenizer: Any,
        unique: UniqueItemsTracker | None = None,
        token_texts: Sequence[str] = (),
    ) -> None:
        import xgrammar as xgr  # noqa: PLC0415 - lazy: xgrammar pulls torch; only guided decoding needs it

        self._matcher = matcher
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._unique = unique
        self._texts = token_texts

    @property
    def completed(self) -> bool:
        """The grammar has matched a whole call (or JSON value): only a stop token may follow."""
        return bool(self._matcher.is_completed())

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf (in place; a 1-D row of the vocabulary)."""
        import xgrammar as xgr  # noqa: PLC0415 - lazy: xgrammar pulls torch; only guided decoding needs it

        self._matcher.fill_next_token_bitmask(self._bitmask)
        row = logits.view(1, -1)
        xgr.apply_token_bitmask_inplace(row, self._bitmask.to(logits.device), vocab_size=self._vocab_size)
        if self._unique is not None and self._unique.active:
            allowed = torch.isfinite(logits[: len(self._texts)]).nonzero().flatten().tolist()
            repeats = [t for t in allowed if not self._unique.allows(self._texts[t])]
            # Never a dead end: if every token the grammar allows repeats an item, the grammar alone decides.
            if repeats and len(repeats) < len(allowed):
                logits[repeats] = float("-inf")

    def accept(self, token: int) -> None:
        # Only a masked token can be chosen, so refusal means a bug, not bad input.
        if not self._try_accept(token):
            raise RuntimeError(f"guided decoding: the grammar refused token {token}")

    def _try_accept(self, token: int) -> bool:
        if not self._matcher.is_terminated() and not self._matcher.accept_token(token):
            return False
        if self._unique is not None and token < len(self._texts):
            self._unique.feed(self._texts[token])
        return True

    def forced(self) -> list[int]:
        """The tokens the grammar allows no alternative to from here, accepted already; the engine feeds them.

        The forced text is tokenized as the model would write it on its own; should a token of
        it not fit the grammar (a tokenizer that splits differently), forcing stops before it and
        the model writes the rest.
        """
        text = str(self._matcher.find_jump_forward_string())
        if len(text) < _MIN_FORCED_CHARS:
            return []
        accepted = []
        for token in self._tokenizer.encode(text, add_special_tokens=False):
            if not self._try_accept(int(token)):
                break
            accepted.append(int(token))
        return accepted


class GrammarGuide:
    """Compiles (and caches) the grammars of requests for one tokenizer; see the module doc."""

    def __init__(self, tokenizer: Any, *, vocab_size: int, stop_token_ids: Sequence[int], cache_size: int = 64) -> None:
        import xgrammar as xgr  # noqa: PLC0415 - lazy: xgrammar pulls torch; only guided decoding needs it

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids))
        self._compiler = xgr.GrammarCompiler(info)
        self._vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._texts: list[str] | None = None  # each token's text, decoded once at the first uniqueItems request
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # requests compile on the event loop, rows decode on the worker thread

    def start(
        self, tools: Sequence[dict[str, Any]] | None, tool_choice: Any, response_format: Mapping[str, Any] | None
    ) -> GuidedRow | None:
        """A fresh grammar state for one generation, or None when the request is free text.

        A required or named tool call wins over a ``response_format``; a schema the grammar
        cannot express is the caller's error (:class:`InvalidChatRequestError`).
        """
        import xgrammar as xgr  # noqa: PLC0415 - lazy: xgrammar pulls torch; only guided decoding needs it

        if tools and is_guided(tools, tool_choice):
            key, what = json.dumps(["tools", tools, tool_choice], sort_keys=True), "tool calls with these tools"
            build = partial(_tools_grammar, tools, tool_choice)  # called only on a cache miss
            arrays = unique_arrays(tools)
        else:
            schema = json_schema_of(response_format)
            if schema is None:
                return None
            key, what = json.dumps(["json", schema], sort_keys=True), "a JSON answer with this schema"
            build = partial(_json_grammar, schema)
            arrays = {}
        compiled = self._compiled(key, build, what)
        matcher = xgr.GrammarMatcher(compiled)
        if not arrays:
            return GuidedRow(matcher, self._vocab_size, self._tokenizer)
        return GuidedRow(matcher, self._vocab_size, self._tokenizer, UniqueItemsTracker(arrays), self._token_texts())

    def _compiled(self, key: str, build: Callable[[], Any], what: str) -> Any:
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return compiled
        try:
            compiled = self._compiler.compile_grammar(build())
        except (ValueError, RuntimeError, TypeError, KeyError) as exc:
            reason = _CPP_LOCATION.sub("", str(exc)).strip().splitlines()[0]
            raise InvalidChatRequestError(f"cannot guide {what}: {reason}") from exc
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _token_texts(self) -> list[str]:
        with self._lock:
            if self._texts is None:
                size = min(self._vocab_size, len(self._tokenizer))
                self._texts = [self._tokenizer.decode([i]) for i in range(size)]
            return self._texts


def _literal(text: str) -> Any:
    import xgrammar as xgr  # noqa: PLC0415 - lazy: xgrammar pulls torch; only guided decoding needs it

    return xgr.Grammar.from_ebnf("root ::= " + json.dumps(text))


def _json_grammar(schema: Mapping[str, Any]) -> Any:
    import xgrammar as xgr  # noqa: PLC0415 - lazy: xgrammar pulls torch; only guided decoding needs it

    return xgr.Grammar.from_json_schema(dict(schema), any_whitespace=False, separators=_SEPARATORS)


def _bounded(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments' schema with ``maxItems`` made explicit where ``uniqueItems`` over an ``enum`` implies it.

    A grammar cannot see uniqueness: without the bound, a model that has used every id of the
    enum could only go on repeating them (which :mod:`llms.worker.unique_items` then has to
    allow, never to leave a dead end) until ``max_tokens`` cuts the call off.
    """
    properties = dict(parameters.get("properties") or {})
    for name, schema in properties.items():
        items = schema.get("items") if isinstance(schema, Mapping) else None
        enum = items.get("enum") if isinstance(items, Mapping) else None
        if schema.get("type") == "array" and schema.get("uniqueItems") and isinstance(enum, list):
            bound = min(len(enum), int(schema.get("maxItems", len(enum))))
            properties[name] = {**schema, "maxItems": bound}
    return {**parameters, "properties": properties} if properties else dict(parameters)


def _tools_grammar(tools: Sequence[dict[str, Any]], tool_choice: Any) -> Any:
    """One Hermes call of any offered function ("required") or of the named one."""
    import xgrammar as xgr  # noqa: PLC0415 - lazy: xgrammar pulls torch; only guided decoding needs it

    functions = [t.get("function") or {} for t in tools]
    if isinstance(tool_choice, dict):
        wanted = (tool_choice.get("function") or {}).get("name")
        functions = [f for f in functions if f.get("name") == wanted]
        if not functions:
            raise InvalidChatRequestError(f"tool_choice names {wanted!r}, which is not among the tools")
    calls = [
        xgr.Grammar.concat(
            _literal('<tool_call>\n{"name": ' + json.dumps(f.get("name", "")) + ', "arguments": '),
            _json_grammar(_bounded(f.get("parameters") or {"type": "object"})),
            _literal("}\n</tool_call>"),
        )
        for f in functions
    ]
    return calls[0] if len(calls) == 1 else xgr.Grammar.union(*calls)
