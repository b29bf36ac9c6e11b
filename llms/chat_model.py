"""LangChain's chat-model interface on top of Tandem's :class:`~llms.dispatcher.Dispatcher`.

Every LLM call Tandem makes from LangChain code (the ranker's tool calls, the explainer's
stream, experiments) goes through :class:`TandemChatModel`, so it inherits the dispatcher's
queue, priorities, deadlines, retries and load balancing; the model never talks to a worker.

Messages are sent in the OpenAI chat-completions wire format (assistant ``tool_calls`` with
``function.arguments`` as a JSON *string*, ``tool`` messages with ``tool_call_id``), which
vLLM, ollama's ``/v1`` and Tandem's embedded worker all read.

Example:
    >>> async def main(dispatcher):  # doctest: +SKIP
    ...     llm = TandemChatModel(dispatcher=dispatcher, model="tandem-base", temperature=0.0)
    ...     ranker = llm.bind_tools([SubmitRanking], tool_choice="submit_ranking")
    ...     return (await ranker.ainvoke("Rank these bags: ...")).tool_calls
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, InvalidToolCall, ToolCall, ToolCallChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, field_validator

from llms.dispatcher import Completion, Dispatcher, Priority
from llms.errors import LLMError, MalformedToolCallError, NoWorkerError
from llms.tool_calls import HermesStreamSplitter, normalize_message_tool_calls, parse_hermes

__all__ = ["TandemChatModel"]

T = TypeVar("T")

# Sampling knobs sent only when set, so each server applies its own defaults otherwise.
_SAMPLING = ("temperature", "top_p", "top_k", "max_tokens", "seed")
# Blocks LangChain may keep in AIMessage.content (output_version="v1") that the chat wire format
# carries elsewhere (tool calls) or not at all (reasoning); servers refuse unknown content parts.
_NON_WIRE_BLOCKS = frozenset({"tool_call", "tool_call_chunk", "invalid_tool_call", "reasoning"})
_END = object()


class TandemChatModel(BaseChatModel):
    """LangChain chat model that sends every call through Tandem's LLM dispatcher.

    Sampling knobs set here are defaults; any of them (and ``model``, ``priority``,
    ``deadline_s``, ``stop``, or any other OpenAI request field) can be overridden per call
    with ``invoke(..., temperature=0.2)`` or ``.bind(top_p=0.9)``. Use the async methods
    (``ainvoke``/``astream``) on the dispatcher's event loop; the sync ones work from any
    other thread while that loop runs.

    Example:
        >>> llm = TandemChatModel(dispatcher=dispatcher, model="tandem-ranker", temperature=0.0)  # doctest: +SKIP
        >>> msg = await llm.bind_tools([SubmitRanking]).ainvoke("Rank: ...", top_k=20)  # doctest: +SKIP
        >>> msg.tool_calls[0]["args"]  # doctest: +SKIP
        {'ids': ['12', '7']}
    """

    dispatcher: Any = Field(exclude=True, repr=False)
    """A started :class:`~llms.dispatcher.Dispatcher`; its ``loop`` tells which event loop may call it."""
    model: str = Field(min_length=1)
    """Base model or LoRA adapter name, as the workers list it in ``/v1/models``."""
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    """vLLM's extension, sent as a top-level field (vLLM and Tandem's worker read it there)."""
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: list[str] | None = None
    priority: Priority = Priority.INTERACTIVE
    deadline_s: float | None = Field(default=None, gt=0)
    """Per-request deadline; ``None``: the dispatcher's default for the priority."""

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_by_name(cls, value: Any) -> Any:
        return _priority(value)

    # ------------------------------------------------------------ identity
    @property
    def _llm_type(self) -> str:
        return "tandem-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": self.stop,
            "priority": self.priority.name.lower(),
            "deadline_s": self.deadline_s,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="tandem",
            ls_model_name=str(kwargs.get("model", self.model)),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if stop := stop if stop is not None else self.stop:
            params["ls_stop"] = stop
        return params

    # --------------------------------------------------------------- tools
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` (pydantic models, functions, LangChain tools or OpenAI dicts) to the model.

        ``tool_choice``: ``"auto"``, ``"none"``, ``"required"`` (``"any"`` is LangChain's spelling
        of it), a tool's name to force that tool, or ``True`` to force the only tool.
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        choice = _tool_choice(tool_choice, formatted)
        if choice is not None:
            kwargs["tool_choice"] = choice
        return self.bind(tools=formatted, **kwargs)

    # ------------------------------------------------------------- payload
    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> tuple[dict[str, Any], Priority, float | None, set[str]]:
        params = dict(kwargs)
        params.pop("stream", None)  # the dispatcher decides, by the method called
        priority = _priority(params.pop("priority", self.priority))
        deadline_s = params.pop("deadline_s", self.deadline_s)
        payload: dict[str, Any] = {"model": params.pop("model", self.model), "messages": _wire_messages(messages)}
        for key in _SAMPLING:
            value = params.pop(key, getattr(self, key))
            if value is not None:
                payload[key] = value
        stop = stop if stop is not None else self.stop
        if stop:
            payload["stop"] = [stop] if isinstance(stop, str) else list(stop)
        tools = params.pop("tools", None)
        if tools:
            # Tools passed straight to invoke(tools=[...]) need the same conversion bind_tools does.
            payload["tools"] = [convert_to_openai_tool(tool) for tool in tools]
        # Anything else is an OpenAI request field (tool_choice, response_format, …): pass it on.
        payload.update({key: value for key, value in params.items() if value is not None})
        tool_names = {t["function"]["name"] for t in payload.get("tools", ()) if isinstance(t.get("function"), dict)}
        return payload, priority, deadline_s, tool_names

    # ------------------------------------------------------- event loops
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = getattr(self.dispatcher, "loop", None)
        if loop is None:
            raise LLMError("the dispatcher is not started: await Dispatcher.start() (or `async with`) first")
        return cast(asyncio.AbstractEventLoop, loop)

    def _foreign_loop(self) -> asyncio.AbstractEventLoop | None:
        """The dispatcher's loop if the caller is NOT on it (work must be handed over), else ``None``."""
        loop = self._loop()
        if _running_loop() is loop:
            return None
        if not loop.is_running():
            raise LLMError("the dispatcher's event loop is not running, so nothing can serve this call")
        return loop

    def _sync_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._foreign_loop()
        if loop is None:
            # Blocking here would deadlock: the dispatcher needs this very thread to make progress.
            raise LLMError("sync call on the dispatcher's event-loop thread: use `await ainvoke()` / `astream()`")
        return loop

    # ---------------------------------------------------------- generate
    async def _acomplete(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> ChatResult:
        payload, priority, deadline_s, _ = self._request(messages, stop, kwargs)
        dispatcher = cast(Dispatcher, self.dispatcher)
        done = await dispatcher.complete(payload, priority=priority, deadline_s=deadline_s)
        return ChatResult(generations=[ChatGeneration(message=_ai_message(done, payload["model"]))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        loop = self._foreign_loop()
        if loop is None:
            return await self._acomplete(messages, stop, kwargs)
        future = _submit(self._acomplete(messages, stop, kwargs), loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and not (task is not None and task.cancelling()):
                raise _loop_gone() from None
            raise

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        loop = self._sync_loop()  # before the coroutine exists: a refused call must not leave one unawaited
        return _wait(_submit(self._acomplete(messages, stop, kwargs), loop))

    # ------------------------------------------------------------ stream
    async def _achunks(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> AsyncIterator[ChatGenerationChunk]:
        payload, priority, deadline_s, tool_names = self._request(messages, stop, kwargs)
        payload.setdefault("stream_options", {"include_usage": True})
        assembler = _StreamAssembler(payload["model"], tool_names)
        dispatcher = cast(Dispatcher, self.dispatcher)
        stream = dispatcher.stream(payload, priority=priority, deadline_s=deadline_s)
        try:
            async for raw in stream:
                if (chunk := assembler.feed(raw)) is not None:
                    yield chunk
        finally:
            # Closed now, not whenever the garbage collector gets to it: the stream holds a worker slot.
            await _aclose(stream)
        for chunk in assembler.finish():
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = self._foreign_loop()
        chunks = self._achunks(messages, stop, kwargs)
        if loop is not None:
            chunks = _abridge(chunks, loop)
        try:
            async for chunk in chunks:
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            await _aclose(chunks)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        loop = self._sync_loop()
        # Unbounded on purpose: the producer runs on the dispatcher's loop and must never block it.
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        future = _submit(_forward(self._achunks(messages, stop, kwargs), items.put), loop)
        future.add_done_callback(lambda _: items.put(_END))
        try:
            while (item := items.get()) is not _END:
                chunk = cast(ChatGenerationChunk, item)
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
            _result(future)  # re-raises what ended the stream on the loop
        finally:
            # A consumer that stops early must free the worker slot the stream holds.
            future.cancel()


# ---------------------------------------------------------------- helpers
def _priority(value: Any) -> Priority:
    if isinstance(value, str):
        try:
            return Priority[value.upper()]
        except KeyError:
            raise ValueError(f"unknown priority {value!r}; use one of {[p.name.lower() for p in Priority]}") from None
    return Priority(value)


def _tool_choice(
    choice: str | bool | dict[str, Any] | None, tools: list[dict[str, Any]]
) -> str | dict[str, Any] | None:
    names = [t["function"]["name"] for t in tools]
    if choice is None or choice is False:
        return None
    if choice is True:
        if len(names) != 1:
            raise ValueError(f"tool_choice=True forces the only tool, but {len(names)} tools are bound")
        return "required"
    if isinstance(choice, dict):
        return choice
    if choice == "any":
        return "required"
    if choice in {"auto", "none", "required"}:
        return choice
    if choice in names:
        return {"type": "function", "function": {"name": choice}}
    raise ValueError(f"tool_choice {choice!r} is neither auto/none/required/any nor a bound tool ({', '.join(names)})")


def _wire_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages in the OpenAI chat wire format."""
    wire = convert_to_openai_messages(messages, text_format="string")
    for message in wire:
        content = message.get("content")
        if isinstance(content, list):
            parts = [p for p in content if not (isinstance(p, dict) and p.get("type") in _NON_WIRE_BLOCKS)]
            if all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
                message["content"] = "".join(str(p.get("text", "")) for p in parts)
            else:
                message["content"] = parts
    return wire


def _usage(usage: Any) -> UsageMetadata | None:
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return UsageMetadata(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=int(usage.get("total_tokens") or prompt + completion),
    )


def _ai_message(done: Completion, model: str) -> AIMessage:
    body = done.body
    message = done.message
    tool_calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in message.get("tool_calls") or []:
        try:
            parsed = parse_tool_call(raw, return_id=True)
        except OutputParserException as exc:
            invalid.append(make_invalid_tool_call(raw, str(exc)))
            continue
        if parsed is not None:
            tool_calls.append(cast(ToolCall, parsed))
    content = message.get("content")
    usage = _usage(body.get("usage"))
    return AIMessage(
        content=content if isinstance(content, str) else "",
        tool_calls=tool_calls,
        invalid_tool_calls=invalid,
        id=body.get("id") if isinstance(body.get("id"), str) else None,
        usage_metadata=usage,
        response_metadata={
            "model_name": body.get("model") or model,
            "finish_reason": body["choices"][0].get("finish_reason"),
            "worker": done.worker,
            "attempts": done.attempts,
            "queue_wait_s": done.queue_wait_s,
            "latency_s": done.latency_s,
        },
    )


class _StreamAssembler:
    """OpenAI ``chat.completion.chunk`` dicts → LangChain chunks, with the checks ``complete()`` makes.

    ``Dispatcher.complete`` turns ``<tool_call>`` text (a server without a tool parser) into
    tool calls and refuses malformed or unknown ones; ``Dispatcher.stream`` passes chunks on
    as they come. So the stream holds back everything from ``<tool_call>`` on and checks the
    calls at the end, and streaming and non-streaming calls agree on what a reply means.
    """

    def __init__(self, model: str, tool_names: set[str]) -> None:
        self._model = model
        self._tool_names = tool_names
        self._splitter = HermesStreamSplitter()
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish_reason: str | None = None
        self._usage: Any = None

    def feed(self, raw: Mapping[str, Any]) -> ChatGenerationChunk | None:
        if isinstance(raw.get("model"), str) and raw["model"]:
            self._model = raw["model"]
        if raw.get("usage"):
            self._usage = raw["usage"]
        choices = raw.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        content = delta.get("content")
        text = self._splitter.feed(content) if isinstance(content, str) and content else ""
        calls = [self._remember(position, call) for position, call in enumerate(delta.get("tool_calls") or [])]
        if not text and not calls:
            return None
        return ChatGenerationChunk(message=AIMessageChunk(content=text, tool_call_chunks=calls))

    def _remember(self, position: int, call: Mapping[str, Any]) -> ToolCallChunk:
        function = call.get("function") or {}
        index = call.get("index")
        index = position if not isinstance(index, int) else index
        seen = self._calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
        seen["id"] = seen["id"] or call.get("id")
        seen["name"] += function.get("name") or ""
        seen["arguments"] += function.get("arguments") or ""
        return tool_call_chunk(
            name=function.get("name"), args=function.get("arguments"), id=call.get("id"), index=index
        )

    def finish(self) -> list[ChatGenerationChunk]:
        held, call_text = self._splitter.finish()
        text_calls: list[ToolCallChunk] = []
        if call_text:
            parsed = parse_hermes(call_text)
            if parsed.malformed:
                raise MalformedToolCallError(
                    f"model streamed {len(parsed.malformed)} malformed <tool_call> block(s)", raw=parsed.malformed[0]
                )
            first = max(self._calls, default=-1) + 1
            text_calls = [self._remember(0, c.to_openai(index=first + i)) for i, c in enumerate(parsed.tool_calls)]
        if self._calls:
            calls = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"] or "{}"},
                }
                for _, c in sorted(self._calls.items())
            ]
            normalize_message_tool_calls({"content": None, "tool_calls": calls}, self._tool_names)
        out: list[ChatGenerationChunk] = []
        if held or text_calls:
            out.append(ChatGenerationChunk(message=AIMessageChunk(content=held, tool_call_chunks=text_calls)))
        usage = _usage(self._usage)
        last = AIMessageChunk(
            content="",
            chunk_position="last",
            response_metadata={
                "model_name": self._model,
                "finish_reason": "tool_calls" if text_calls else self._finish_reason,
            },
            usage_metadata=usage,
        )
        out.append(ChatGenerationChunk(message=last))
        return out


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _submit(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> concurrent.futures.Future[T]:
    return asyncio.run_coroutine_threadsafe(coro, loop)


def _loop_gone() -> NoWorkerError:
    return NoWorkerError("the dispatcher's event loop shut down before the call finished")


def _result(future: concurrent.futures.Future[T]) -> T:
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        # Only the dispatcher's loop cancels it while we wait (asyncio.run cancels what is left at exit).
        raise _loop_gone() from None


def _wait(future: concurrent.futures.Future[T]) -> T:
    try:
        return _result(future)
    finally:
        future.cancel()  # a no-op once done; on KeyboardInterrupt it stops the call on the loop


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def _forward(chunks: AsyncIterator[T], put: Callable[[T], None]) -> None:
    try:
        async for chunk in chunks:
            put(chunk)
    finally:
        await _aclose(chunks)


async def _abridge(chunks: AsyncIterator[T], loop: asyncio.AbstractEventLoop) -> AsyncIterator[T]:
    """Iterate ``chunks`` on ``loop`` (the dispatcher's) from another running loop."""
    here = asyncio.get_running_loop()
    items: asyncio.Queue[Any] = asyncio.Queue()

    def put(item: Any) -> None:
        # The consumer's loop may be gone already (it was cancelled and closed): nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            here.call_soon_threadsafe(items.put_nowait, item)

    future = _submit(_forward(chunks, put), loop)
    future.add_done_callback(lambda _: put(_END))
    try:
        while (item := await items.get()) is not _END:
            yield cast(T, item)
        _result(future)
    finally:
        future.cancel()
