"""TandemChatModel against real embedded workers (uvicorn in process) through a real Dispatcher."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import operator
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import httpx
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, ConfigDict, Field

from llms.chat_model import TandemChatModel
from llms.chat_wire import wire_messages
from llms.config import DispatcherConfig, WorkerConfig
from llms.dispatcher import Dispatcher, Priority
from llms.errors import LLMError, MalformedToolCallError, ModelNotFoundError, NoWorkerError
from llms.worker.delay import DelayModel
from llms.worker.engine import SamplingParams
from tests.llms.conftest import EmbeddedWorker

T = TypeVar("T")

PLAIN = "These leather loafers suit a spring office order."
CALL = {"name": "submit_ranking", "arguments": {"ids": ["12", "7"], "reason": "closest match"}}
TOOLS_REPLY = f"Ranking now. <tool_call>{json.dumps(CALL)}</tool_call>"
BROKEN_REPLY = 'Ranking now. <tool_call>{"name": "submit_ranking", "arguments": {"ids": ["12",</tool_call>'
ADAPTER = "tandem-plain-lora"
HEALTH = "tandem-llm-health"  # the dispatcher's health-check task


class SubmitRanking(BaseModel):
    """Submit the ranked product ids."""

    model_config = ConfigDict(title="submit_ranking")
    ids: list[str] = Field(description="Product ids, best first.")
    reason: str


def submit_ranking(ids: list[str], reason: str) -> str:
    """Submit the ranked product ids.

    Args:
        ids: Product ids, best first.
        reason: Why this order.
    """
    return "stored"


def other_tool(query: str) -> str:
    """A tool the simulated model never calls.

    Args:
        query: Anything.
    """
    return query


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., EmbeddedWorker]) -> dict[str, EmbeddedWorker]:
    """One worker per behaviour; the dispatcher routes by model name, so each test picks one by model."""
    return {
        "tandem-plain": start_worker(model_name="tandem-plain", reply=PLAIN, adapters=[ADAPTER]),
        "tandem-tools": start_worker(model_name="tandem-tools", reply=TOOLS_REPLY),
        "tandem-broken": start_worker(model_name="tandem-broken", reply=BROKEN_REPLY),
    }


class SpyTransport(httpx.AsyncBaseTransport):
    """Real HTTP, plus a copy of every chat-completions body the dispatcher sends (the wire format)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/chat/completions"):
            self.bodies.append(json.loads(request.content))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def with_dispatcher(workers: dict[str, EmbeddedWorker], body: Callable[[Dispatcher, SpyTransport], Awaitable[T]]) -> T:
    async def main() -> T:
        spy = SpyTransport()
        config = DispatcherConfig(health_interval_s=0.2, interactive_deadline_s=10.0)
        async with Dispatcher(config, [WorkerConfig(url=w.url) for w in workers.values()], transport=spy) as d:
            return await body(d, spy)

    return asyncio.run(main())


def merged(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    return functools.reduce(operator.add, chunks)


def the_call(id_: Any = None) -> dict[str, Any]:
    return {"name": CALL["name"], "args": CALL["arguments"], "id": id_, "type": "tool_call"}


# ----------------------------------------------------------------- plain calls
def test_ainvoke_returns_text_and_metadata(workers: dict[str, EmbeddedWorker]) -> None:
    async def body(d: Dispatcher, spy: SpyTransport) -> AIMessage:
        return await TandemChatModel(dispatcher=d, model="tandem-plain").ainvoke("Which shoes?")

    msg = with_dispatcher(workers, body)
    assert isinstance(msg, AIMessage)
    assert msg.content == PLAIN
    assert msg.tool_calls == []
    meta = msg.response_metadata
    assert meta["model_name"] == "tandem-plain"
    assert meta["finish_reason"] == "stop"
    assert meta["worker"] == workers["tandem-plain"].url.split("//")[1].removesuffix("/v1")
    assert meta["attempts"] == 1
    assert meta["queue_wait_s"] >= 0 and meta["latency_s"] > 0
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["output_tokens"] == len(PLAIN.split())
    assert msg.usage_metadata["total_tokens"] == msg.usage_metadata["input_tokens"] + len(PLAIN.split())


def test_sampling_knobs_reach_the_worker(workers: dict[str, EmbeddedWorker]) -> None:
    engine = workers["tandem-plain"].engine

    async def body(d: Dispatcher, spy: SpyTransport) -> None:
        llm = TandemChatModel(dispatcher=d, model="tandem-plain", temperature=0.7, max_tokens=64)
        await llm.ainvoke("hi")
        sent = spy.bodies[-1]
        # Unset knobs are left out, so each server applies its own defaults.
        assert {"top_p", "top_k", "seed", "stop"}.isdisjoint(sent)
        assert engine.requests[-1].sampling == SamplingParams(temperature=0.7, max_tokens=64)

        await llm.bind(top_p=0.9).ainvoke("hi", temperature=0.2, top_k=5, seed=7, stop=["END"])
        assert spy.bodies[-1]["top_k"] == 5  # a top-level field, where vLLM and the worker read it
        assert engine.requests[-1].sampling == SamplingParams(
            temperature=0.2, top_p=0.9, top_k=5, max_tokens=64, seed=7, stop=("END",)
        )

        # The model name per call: a LoRA adapter the same worker serves.
        await llm.ainvoke("hi", model=ADAPTER, priority="batch", deadline_s=5.0)
        assert engine.requests[-1].adapter == ADAPTER

    with_dispatcher(workers, body)


def test_astream_yields_the_text_token_by_token(workers: dict[str, EmbeddedWorker]) -> None:
    async def body(d: Dispatcher, spy: SpyTransport) -> list[AIMessageChunk]:
        return [c async for c in TandemChatModel(dispatcher=d, model="tandem-plain").astream("Which shoes?")]

    chunks = with_dispatcher(workers, body)
    assert len([c for c in chunks if c.content]) == len(PLAIN.split())
    whole = merged(chunks)
    assert whole.content == PLAIN
    assert whole.response_metadata["finish_reason"] == "stop"
    assert whole.usage_metadata is not None
    assert whole.usage_metadata["output_tokens"] == len(PLAIN.split())


# ------------------------------------------------------------------ tool calls
@pytest.mark.parametrize("tool", [SubmitRanking, submit_ranking], ids=["pydantic", "function"])
def test_bind_tools_gives_parsed_tool_calls(workers: dict[str, EmbeddedWorker], tool: Any) -> None:
    async def body(d: Dispatcher, spy: SpyTransport) -> tuple[AIMessage, list[AIMessageChunk]]:
        bound = TandemChatModel(dispatcher=d, model="tandem-tools").bind_tools([tool], tool_choice="submit_ranking")
        msg = await bound.ainvoke("Rank 7 and 12")
        assert spy.bodies[-1]["tool_choice"] == {"type": "function", "function": {"name": "submit_ranking"}}
        assert spy.bodies[-1]["tools"][0]["function"]["name"] == "submit_ranking"
        return msg, [cast(AIMessageChunk, c) async for c in bound.astream("Rank 7 and 12")]

    msg, chunks = with_dispatcher(workers, body)
    assert msg.tool_calls == [the_call(msg.tool_calls[0]["id"])]
    assert msg.tool_calls[0]["id"]
    assert msg.content == "Ranking now."
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    assert workers["tandem-tools"].engine.requests[-1].tools is not None

    assert any(c.tool_call_chunks for c in chunks)
    whole = merged(chunks)
    assert whole.tool_calls == [the_call(whole.tool_calls[0]["id"])]
    assert str(whole.content).strip() == "Ranking now."
    assert "<tool_call>" not in str(whole.content)
    assert whole.response_metadata["finish_reason"] == "tool_calls"


def test_with_structured_output(workers: dict[str, EmbeddedWorker]) -> None:
    async def body(d: Dispatcher, spy: SpyTransport) -> Any:
        ranked = (
            await TandemChatModel(dispatcher=d, model="tandem-tools")
            .with_structured_output(SubmitRanking)
            .ainvoke("Rank")
        )
        assert spy.bodies[-1]["tool_choice"] == "required"  # LangChain asks for "any" tool
        return ranked

    assert with_dispatcher(workers, body) == SubmitRanking.model_validate(CALL["arguments"])


def test_tool_call_text_from_a_server_without_a_parser(workers: dict[str, EmbeddedWorker]) -> None:
    # No tools in the request: the worker returns the <tool_call> block as plain text, as a
    # server started without a tool parser does; streamed and non-streamed calls must agree.
    async def body(d: Dispatcher, spy: SpyTransport) -> tuple[AIMessage, list[AIMessageChunk]]:
        llm = TandemChatModel(dispatcher=d, model="tandem-tools")
        return await llm.ainvoke("Rank"), [c async for c in llm.astream("Rank")]

    msg, chunks = with_dispatcher(workers, body)
    whole = merged(chunks)
    for message in (msg, whole):
        assert message.tool_calls == [the_call(message.tool_calls[0]["id"])]
        assert str(message.content).strip() == "Ranking now."
        assert message.response_metadata["finish_reason"] == "tool_calls"
    assert all("<" not in str(c.content) for c in chunks)


@pytest.mark.parametrize(
    ("model", "tools"),
    [("tandem-broken", [SubmitRanking]), ("tandem-tools", [other_tool])],
    ids=["invalid-json", "unknown-tool"],
)
def test_malformed_tool_calls_raise(workers: dict[str, EmbeddedWorker], model: str, tools: list[Any]) -> None:
    async def body(d: Dispatcher, spy: SpyTransport) -> list[str]:
        bound = TandemChatModel(dispatcher=d, model=model).bind_tools(tools)
        with pytest.raises(MalformedToolCallError):
            await bound.ainvoke("Rank")
        texts: list[str] = []

        async def consume() -> None:
            async for chunk in bound.astream("Rank"):
                texts.append(str(chunk.content))

        with pytest.raises(MalformedToolCallError):
            await consume()
        return texts

    texts = with_dispatcher(workers, body)
    assert "".join(texts).strip() == "Ranking now."  # the prose came; the broken call never passed as text


def test_tool_calling_round_trip_is_sent_in_openai_wire_format(workers: dict[str, EmbeddedWorker]) -> None:
    engine = workers["tandem-plain"].engine

    async def body(d: Dispatcher, spy: SpyTransport) -> None:
        for output_version in (None, "v1"):  # v1 keeps tool calls as content blocks too
            tools_llm = TandemChatModel(dispatcher=d, model="tandem-tools", output_version=output_version)
            question = HumanMessage("Rank 7 and 12")
            call = await tools_llm.bind_tools([SubmitRanking]).ainvoke([question])
            call_id = call.tool_calls[0]["id"]
            history = [
                SystemMessage("You rank products."),
                question,
                call,
                ToolMessage("ranking stored", tool_call_id=call_id),
            ]
            answer = (
                await TandemChatModel(dispatcher=d, model="tandem-plain").bind_tools([SubmitRanking]).ainvoke(history)
            )
            assert answer.content == PLAIN

            sent = spy.bodies[-1]["messages"]
            assistant = sent[2]
            assert assistant["role"] == "assistant"
            assert assistant["tool_calls"] == [
                {
                    "type": "function",
                    "id": call_id,
                    "function": {"name": "submit_ranking", "arguments": json.dumps(CALL["arguments"])},
                }
            ]
            assert isinstance(assistant["content"], str)
            assert sent[3] == {"role": "tool", "tool_call_id": call_id, "content": "ranking stored"}
            # The worker decoded the JSON-string arguments for its chat template.
            seen = engine.requests[-1].messages
            assert seen[2]["tool_calls"][0]["function"]["arguments"] == CALL["arguments"]
            assert seen[3]["tool_call_id"] == call_id

    with_dispatcher(workers, body)


def test_wire_messages_drop_v1_tool_call_blocks() -> None:
    msg = AIMessage(
        content=[{"type": "text", "text": "Ranking now."}, {"type": "tool_call", "id": "c1", "name": "f", "args": {}}],
        tool_calls=[{"name": "f", "args": {"x": "é"}, "id": "c1"}],
    )
    (wire,) = wire_messages([msg])
    assert wire == {
        "role": "assistant",
        "content": "Ranking now.",
        "tool_calls": [{"type": "function", "id": "c1", "function": {"name": "f", "arguments": '{"x": "é"}'}}],
    }


def test_tool_choice_spellings() -> None:
    llm = TandemChatModel(dispatcher=None, model="m")

    def choice(tools: list[Any], tool_choice: Any) -> Any:
        return llm.bind_tools(tools, tool_choice=tool_choice).kwargs.get("tool_choice")  # type: ignore[attr-defined]

    assert choice([SubmitRanking], "auto") == "auto"
    assert choice([SubmitRanking], "none") == "none"
    assert choice([SubmitRanking], "required") == "required"
    assert choice([SubmitRanking], "any") == "required"
    assert choice([SubmitRanking], True) == "required"
    assert choice([SubmitRanking], None) is None
    assert choice([SubmitRanking, other_tool], "other_tool") == {"type": "function", "function": {"name": "other_tool"}}
    with pytest.raises(ValueError, match="only tool"):
        choice([SubmitRanking, other_tool], True)
    with pytest.raises(ValueError, match="neither"):
        choice([SubmitRanking], "nope")


def test_identity_and_serialization() -> None:
    llm = TandemChatModel.model_validate(
        {"dispatcher": object(), "model": "tandem-ranker", "temperature": 0.0, "top_k": 20, "priority": "batch"}
    )
    assert llm.priority is Priority.BATCH
    assert llm._llm_type == "tandem-chat"
    assert llm._identifying_params["model"] == "tandem-ranker"
    assert llm._identifying_params["top_k"] == 20
    assert "dispatcher" not in llm.model_dump()
    assert llm._get_ls_params(model="other")["ls_model_name"] == "other"


# ---------------------------------------------------------------------- errors
def test_unknown_model_is_model_not_found(workers: dict[str, EmbeddedWorker]) -> None:
    async def body(d: Dispatcher, spy: SpyTransport) -> None:
        llm = TandemChatModel(dispatcher=d, model="no-such-model")
        with pytest.raises(ModelNotFoundError, match="no-such-model"):
            await llm.ainvoke("hi")
        with pytest.raises(ModelNotFoundError):
            _ = [c async for c in llm.astream("hi")]

    with_dispatcher(workers, body)


# -------------------------------------------------------------- event loops
def test_sync_calls_from_another_thread(workers: dict[str, EmbeddedWorker]) -> None:
    async def body(d: Dispatcher, spy: SpyTransport) -> None:
        llm = TandemChatModel(dispatcher=d, model="tandem-plain")
        msg = await asyncio.to_thread(llm.invoke, "hi")
        assert msg.content == PLAIN
        chunks = await asyncio.to_thread(lambda: list(llm.stream("hi")))
        assert merged(chunks).content == PLAIN
        tools = llm.bind_tools([SubmitRanking])
        call = await asyncio.to_thread(tools.invoke, "hi", model="tandem-tools")
        assert call.tool_calls == [the_call(call.tool_calls[0]["id"])]

        # An async caller on another event loop is handed over to the dispatcher's loop too.
        async def elsewhere() -> tuple[AIMessage, list[AIMessageChunk]]:
            return await llm.ainvoke("hi"), [c async for c in llm.astream("hi")]

        other_msg, other_chunks = await asyncio.to_thread(asyncio.run, elsewhere())
        assert other_msg.content == PLAIN
        assert merged(other_chunks).content == PLAIN

    with_dispatcher(workers, body)


def test_sync_calls_on_the_loop_thread_raise(workers: dict[str, EmbeddedWorker]) -> None:
    async def body(d: Dispatcher, spy: SpyTransport) -> None:
        llm = TandemChatModel(dispatcher=d, model="tandem-plain")
        with pytest.raises(LLMError, match="ainvoke"):
            llm.invoke("hi")
        with pytest.raises(LLMError, match="astream"):
            list(llm.stream("hi"))

    with_dispatcher(workers, body)
    with pytest.raises(LLMError, match="not started"):
        TandemChatModel(dispatcher=Dispatcher(DispatcherConfig()), model="m").invoke("hi")


def test_leaving_a_stream_early_frees_the_worker_slot(workers: dict[str, EmbeddedWorker]) -> None:
    async def body(d: Dispatcher, spy: SpyTransport) -> None:
        llm = TandemChatModel(dispatcher=d, model="tandem-plain")

        def in_flight() -> int:
            return sum(w.in_flight for w in d.workers())

        async def settled() -> int:
            deadline = time.monotonic() + 2
            while in_flight() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return in_flight()

        async with contextlib.aclosing(llm.astream("hi")) as chunks:  # type: ignore[type-var]
            async for _ in chunks:
                assert in_flight() == 1
                break
        assert await settled() == 0

        async for _ in llm.astream("hi"):
            break
        assert await settled() == 0  # abandoned: freed when the loop finalizes the generator

        def first_only() -> None:
            for _ in llm.stream("hi"):
                break

        await asyncio.to_thread(first_only)
        assert await settled() == 0

    with_dispatcher(workers, body)


def test_callers_elsewhere_get_an_error_when_the_dispatcher_loop_stops(
    start_worker: Callable[..., EmbeddedWorker],
) -> None:
    slow = start_worker(model_name="tandem-slow", reply="a b c", delay=DelayModel("constant", 2.0))
    ready, stop = threading.Event(), threading.Event()
    models: list[TandemChatModel] = []

    async def serve() -> None:
        async with Dispatcher(DispatcherConfig(), [WorkerConfig(url=slow.url)]) as d:
            models.append(TandemChatModel(dispatcher=d, model="tandem-slow"))
            ready.set()
            await asyncio.to_thread(stop.wait)
            # Shut down as an app should: cancel the calls still running on this loop, then close the
            # dispatcher (Dispatcher.aclose() under a running complete() makes it retry on a closed client).
            running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t.get_name() != HEALTH]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    loop_thread = threading.Thread(target=asyncio.run, args=(serve(),))
    loop_thread.start()
    try:
        assert ready.wait(10)
        llm = models[0]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            calls: list[concurrent.futures.Future[Any]] = [
                pool.submit(llm.invoke, "hi"),
                pool.submit(lambda: list(llm.stream("hi"))),
                pool.submit(asyncio.run, llm.ainvoke("hi")),
            ]
            deadline = time.monotonic() + 5
            while len(slow.engine.requests) < len(calls) and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            for call in calls:
                with pytest.raises(NoWorkerError, match="shut down"):
                    call.result(timeout=5)  # an error, never a hang
    finally:
        stop.set()
        loop_thread.join(10)
