"""``tandem bench fuzz``: Schemathesis over the API's and the embedded worker's own OpenAPI documents.

The Tandem API is fuzzed as ``make run`` builds it (the configured index and encoders) with
three stand-ins, so a run is hermetic and repeatable: every image URL host resolves to one public
address and answers one JPEG (no request leaves the process), and the LLM worker is Tandem's
embedded worker over a SIMULATED engine, reached in process. The worker's own endpoint is fuzzed
beside it. :func:`api_target` and :func:`worker_target` are what the test suite's short runs use too.

Example:
    $ tandem bench fuzz --examples 300
"""

from __future__ import annotations

import io
import secrets
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from pydantic import SecretStr

from api.console import CliError, out
from api.settings import Settings, get_settings
from llms.config import WorkerConfig

__all__ = ["FUZZ_WORKER_HOST", "api_target", "fuzz", "worker_target"]

FUZZ_WORKER_HOST = "fuzz-worker"
_PUBLIC_ADDRESS = "93.184.215.14"  # any public address: the SSRF policy passes it, the mock transport answers it


class _Routes(httpx.AsyncBaseTransport):
    """Send requests for a known host to its transport; any other host refuses the connection."""

    def __init__(self, routes: dict[str, httpx.AsyncBaseTransport]) -> None:
        self.routes = routes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self.routes.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"connection refused by {request.url.host}", request=request)
        return await transport.handle_async_request(request)


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 40, 40)).save(buf, format="JPEG")
    return buf.getvalue()


async def _public_resolver(host: str, port: int) -> list[str]:
    return [_PUBLIC_ADDRESS]


def _worker_app() -> Any:
    from api.worker.app import create_worker_app
    from llms.worker.service import WorkerService
    from llms.worker.simulated import SimulatedEngine

    return create_worker_app(WorkerService(SimulatedEngine(model_name="tandem-base", adapters=["tandem-ranker"])))


def worker_target() -> Any:
    """The embedded worker's endpoint over a SIMULATED engine serving ``tandem-base`` and ``tandem-ranker``."""
    from eval.fuzz import FuzzTarget

    return FuzzTarget("worker", _worker_app())


def api_target(settings: Settings, *, key: str | None = None) -> Any:
    """The Tandem API over ``settings``, with the stand-ins above and an API key (random unless given)."""
    from api.http.app import create_app
    from eval.fuzz import FuzzTarget

    key = key or secrets.token_urlsafe(16)
    worker = WorkerConfig(url=f"http://{FUZZ_WORKER_HOST}/v1", name=FUZZ_WORKER_HOST, max_concurrency=8,
                          models=[settings.llm.ranker_model, settings.llm.explainer_model])  # fmt: skip
    settings = settings.model_copy(
        update={
            "api": settings.api.model_copy(update={"keys": [SecretStr(key)]}),
            "llm": settings.llm.model_copy(update={"workers": [worker]}),
            "storage": settings.storage.model_copy(update={"url_allow": []}),
        }
    )
    jpeg = _jpeg()
    images = httpx.MockTransport(lambda _: httpx.Response(200, content=jpeg, headers={"content-type": "image/jpeg"}))
    llm = _Routes({FUZZ_WORKER_HOST: httpx.ASGITransport(app=_worker_app())})
    api = create_app(settings, resolver=_public_resolver, transport=images, llm_transport=llm)
    return FuzzTarget("api", api, {"X-API-Key": key})


def fuzz(
    examples: Annotated[
        int, typer.Option("--examples", min=1, help="Generated requests per operation and mode.")
    ] = 300,
    reports: Annotated[Path, typer.Option("--reports", help="Where fuzz.{json,md} go.")] = Path("eval/reports"),
    only: Annotated[str | None, typer.Option("--only", help="api or worker (default: both).")] = None,
) -> None:
    """Fuzz the API and the embedded worker from their OpenAPI documents: 5xx, undocumented statuses, bad bodies."""
    from eval.fuzz import run_fuzz, write_report
    from eval.machine import machine_info
    from eval.reliability import write_reliability

    if only not in (None, "api", "worker"):
        raise CliError(f"--only takes api or worker, not {only!r}")
    targets = [api_target(get_settings())] if only != "worker" else []
    targets += [worker_target()] if only != "api" else []
    report = run_fuzz(targets, examples=examples, progress=out.print)
    report["machine"] = machine_info()
    report["notes"] = [
        "The API is the configured one (index, encoders); image URLs resolve to one public address and answer one"
        " JPEG in process; its LLM worker is the embedded worker over a SIMULATED engine, in process.",
        "Refusals that depend on data, not on the schema, stay in the acceptance figure: a random image_path or"
        " session_id that does not exist, random bytes that are not an image, an unknown filter attribute.",
    ]
    json_path, md_path = write_report(report, reports)
    write_reliability(reports)
    out.print(f"{report['operations']} operations, {report['examples']} requests, {report['server_errors']} server"
              f" errors, {len(report['failures'])} distinct failures; wrote {json_path} and {md_path}")  # fmt: skip
    if report["server_errors"] or report["failures"]:
        raise typer.Exit(1)
