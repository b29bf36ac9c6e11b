"""Model management on an ollama server: what its OpenAI endpoint (``/v1``) cannot do.

Chat goes through the dispatcher like every other worker (``WorkerConfig(url="http://ollama:11434/v1",
health_url="http://ollama:11434/api/version")``); this module only pulls models, registers a
LoRA adapter on top of a base model, lists models and checks that the server answers. It wraps
the ``ollama`` package's :class:`ollama.AsyncClient` and translates its errors into
:mod:`llms.errors` (``ModelNotFoundError`` for 404, ``WorkerError`` otherwise).

Example:
    >>> print(modelfile_for_adapter("qwen2.5:0.5b", "./adapters/ranker"), end="")
    FROM qwen2.5:0.5b
    ADAPTER ./adapters/ranker
    >>> async def main():  # doctest: +SKIP
    ...     async with OllamaAdmin("http://127.0.0.1:11434") as admin:
    ...         await admin.pull_model("qwen2.5:0.5b")
    ...         await admin.create_from_adapter("tandem-ranker", "qwen2.5:0.5b", "var/adapters/ranker")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import ollama

from llms.errors import LLMError, ModelNotFoundError, WorkerError

__all__ = ["OllamaAdmin", "adapter_files", "modelfile_for_adapter"]

# What ollama's own `ollama create` uploads for an ADAPTER directory: the weights, then the JSON configs.
_WEIGHT_PATTERNS = ("*.safetensors", "*.gguf")


def modelfile_for_adapter(base: str, adapter_path: str | Path) -> str:
    """A Modelfile that puts a LoRA adapter on ``base``, for ``ollama create NAME -f Modelfile``.

    ollama resolves a relative ``adapter_path`` against the Modelfile's directory.
    """
    lines = []
    for command, value in (("FROM", base), ("ADAPTER", str(adapter_path))):
        if not value or any(c in value for c in '"\r\n'):
            # A newline would start another Modelfile command; ollama's parser has no escape for quotes.
            raise ValueError(f"{command} needs a one-line value without double quotes, got {value!r}")
        # ollama's parser takes the rest of the line but strips one pair of quotes; quote only what needs it.
        lines.append(f'{command} "{value}"' if any(c.isspace() for c in value) else f"{command} {value}")
    return "\n".join(lines) + "\n"


def adapter_files(adapter_dir: str | Path) -> dict[str, Path]:
    """The files ``ollama create`` would upload for ``ADAPTER adapter_dir``, by name relative to it.

    A single ``.gguf`` / ``.safetensors`` file is taken as is; a directory (a PEFT save) gives its
    ``*.safetensors`` (else ``*.gguf``) weights and its ``*.json`` configs.
    """
    path = Path(adapter_dir)
    if path.is_file():
        return {path.name: path}
    if not path.is_dir():
        raise FileNotFoundError(f"no adapter at {path}")
    weights: list[Path] = []
    for pattern in _WEIGHT_PATTERNS:
        weights = sorted(path.glob(pattern))
        if weights:
            break
    if not weights:
        raise FileNotFoundError(f"no adapter weights (*.safetensors or *.gguf) in {path}")
    return {p.name: p for p in [*weights, *sorted(path.glob("*.json"))] if p.is_file()}


@contextlib.asynccontextmanager
async def _translated(action: str) -> AsyncIterator[None]:
    try:
        yield
    except ollama.ResponseError as exc:
        if exc.status_code == 404:
            raise ModelNotFoundError(f"{action}: {exc.error}") from exc
        status = f"answered {exc.status_code}" if exc.status_code > 0 else "failed"
        raise WorkerError(f"{action}: ollama {status}: {exc.error}") from exc
    except ConnectionError as exc:  # ollama turns httpx.ConnectError into the builtin ConnectionError
        raise WorkerError(f"{action}: cannot connect to ollama ({exc})") from exc
    except httpx.HTTPError as exc:
        raise WorkerError(f"{action}: {type(exc).__name__}: {exc}") from exc


class OllamaAdmin:
    """Pull models, create a model from a LoRA adapter, list models and probe an ollama server.

    ``transport`` (e.g. :class:`httpx.MockTransport` in tests) and ``timeout`` go to the
    underlying ``httpx.AsyncClient``. The default timeout is none, because a pull or a create
    can take minutes; :meth:`is_running` has its own short one.

    Example:
        >>> admin = OllamaAdmin("http://127.0.0.1:11434")  # doctest: +SKIP
        >>> await admin.list_models()  # doctest: +SKIP
        ['qwen2.5:0.5b', 'tandem-ranker:latest']
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        extra: dict[str, Any] = {}
        if transport is not None:
            extra["transport"] = transport
        # trust_env=False: reach ollama the way the dispatcher does, not through an environment proxy.
        self._client = ollama.AsyncClient(host, timeout=timeout, headers=headers, trust_env=False, **extra)

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def pull_model(
        self, name: str, *, on_progress: Callable[[ollama.ProgressResponse], None] | None = None
    ) -> str:
        """Download ``name`` from the registry; returns ollama's final status (``"success"``).

        With ``on_progress``, ollama's progress events are streamed to it as they come.
        """
        async with _translated(f"pull {name!r}"):
            if on_progress is None:
                done = await self._client.pull(name, stream=False)
                return str(done.status)
            status = ""
            async for event in await self._client.pull(name, stream=True):
                on_progress(event)
                status = str(event.status or status)
            return status

    async def create_from_adapter(self, name: str, base: str, adapter_dir: str | Path) -> str:
        """Register ``name`` = ``base`` + the LoRA adapter in ``adapter_dir``; returns ollama's final status.

        The adapter's files are uploaded as blobs first (ollama's create takes digests, not
        paths, since the server may not see this machine's disk), as ``ollama create`` does.
        """
        files = adapter_files(adapter_dir)
        async with _translated(f"create {name!r} from {base!r} + {adapter_dir}"):
            digests = {rel: await self._client.create_blob(path) for rel, path in files.items()}
            done = await self._client.create(model=name, from_=base, adapters=digests, stream=False)
        return str(done.status)

    async def list_models(self) -> list[str]:
        """Names of the models the server has locally (``name:tag``)."""
        async with _translated("list models"):
            listing = await self._client.list()
        return [m.model for m in listing.models if m.model]

    async def is_running(self, *, timeout_s: float = 2.0) -> bool:
        """Whether the server answers a model listing within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s), _translated("probe"):
                await self._client.list()
        except (LLMError, TimeoutError):
            return False
        return True
