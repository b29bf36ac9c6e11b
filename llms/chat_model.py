"""LangChain's chat-model interface on top of Tandem's :class:`~llms.dispatcher.Dispatcher`.

Every LLM call Tandem makes from LangChain code (the ranker's tool calls, the explainer's
stream, experiments) goes through :class:`TandemChatModel`, so it inherits the dispatcher's
queue, priorities, deadlines, retries and load balancing; the model never talks to a worker.

Messages are sent in the OpenAI chat-completions wire format (assistant ``tool_calls`` with
``function.arguments`` as a JSON *string*, ``tool`` messages with ``tool_call_id``), which
vLLM, ollama's ``/v1`` and Tandem's embedded worker all read; the conversions live in
:mod:`llms.chat_wire`. This module holds the model and the hand-over of sync and foreign-loop
calls to the dispatcher's event loop.

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
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, field_validator

from llms.chat_wire import StreamAssembler, ai_message, openai_tool_choice, wire_messages
from llms.dispatcher import Dispatcher, Priority
from llms.errors import LLMError, NoWorkerError

__all__ = ["TandemChatModel"]

T = TypeVar("T")

# Sampling knobs sent only when set, so each server applies its own defaults otherwise.
_SAMPLING = ("temperature", "top_p", "top_k", "max_tokens", "seed")
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
        choice = openai_tool_choice(tool_choice, formatted)
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
        payload: dict[str, Any] = {"model": params.pop("model", self.model), "messages": wire_messages(messages)}
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
        return ChatResult(generations=[ChatGeneration(message=ai_message(done, payload["model"]))])

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
        assembler = StreamAssembler(payload["model"], tool_names)
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
