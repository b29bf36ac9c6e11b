"""First run: how long a fresh clone's ``make run`` takes to serve the web chat, stage by stage.

``python -m eval.bench_first_run [--repo .] [--reports eval/reports]`` (``make bench-first-run``)
clones the repository's committed HEAD into a temporary folder, runs ``make run`` there as a new
user would (its own ``.venv`` and ``TANDEM_HOME``; uv's download cache is the machine's, so
packages are not fetched again) and watches it from outside: the time of each stage line the
command prints, ``/readyz`` every second until retrieval and then the LLM part are ready, the
web chat page, and one chat turn answered by the models. Then it stops the service and writes
``first_run.{md,json}``.

Example:
    >>> report = run_benchmark(Path("."), Path("eval/reports"))  # doctest: +SKIP
    >>> report["stages"]["chat_served_s"]  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from eval.machine import machine_info
from eval.process import free_port
from eval.report_format import machine_line

__all__ = ["run_benchmark"]

# The first line of each stage as `make run` prints it (a stage ends where the next one starts).
MARKERS = {
    "setup_done_s": "starting the embedded LLM worker",
    "index_done_s": "indexed ",
    "server_started_s": "Uvicorn running",
}


def _clean_env(port: int, limit: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_", "VIRTUAL_ENV")) and k != "LIMIT"}
    env["TANDEM_API__PORT"] = str(port)
    if limit:
        env["LIMIT"] = str(limit)  # `make run LIMIT=N`: a subset, for a quick check of the benchmark itself
    return env


def _read_lines(stream: Any, t0: float, lines: list[tuple[float, str]]) -> None:
    for raw in iter(stream.readline, b""):
        for part in raw.decode("utf-8", errors="replace").replace("\r", "\n").splitlines():
            if part.strip():
                lines.append((time.perf_counter() - t0, part.strip()))


def _wait_ready(base: str, t0: float, deadline_s: float, process: subprocess.Popen[bytes]) -> dict[str, float]:
    seen: dict[str, float] = {}
    with httpx.Client(base_url=base, timeout=5) as client:
        while time.perf_counter() - t0 < deadline_s and "llm_ready_s" not in seen and process.poll() is None:
            try:
                parts = client.get("/readyz").json().get("parts", {})
            except (httpx.HTTPError, ValueError):
                parts = {}
            now = time.perf_counter() - t0
            if parts.get("retrieval"):
                seen.setdefault("retrieval_ready_s", now)
            if parts.get("llm"):
                seen["llm_ready_s"] = now
            time.sleep(1.0)
    return seen


def _chat_turn(base: str) -> dict[str, Any]:
    body = {"message": {"text": "navy formal shirts for men"}, "top_k": 3}
    with httpx.Client(base_url=base, timeout=120) as client:
        page = client.get("/")
        t = time.perf_counter()
        answer = client.post("/v1/chat", json=body).json()
    return {"web_chat_status": page.status_code, "turn_ms": round((time.perf_counter() - t) * 1000),
            "explanation": answer.get("explanation", ""), "degraded": answer.get("degraded", [])}  # fmt: skip


def run_benchmark(repo: Path, reports: Path, deadline_s: float = 1200.0, limit: int | None = None) -> dict[str, Any]:
    """Clone ``repo``'s HEAD, time its ``make run`` until the chat answers, write the report."""

    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    port = free_port()
    lines: list[tuple[float, str]] = []
    # Beside the repository, as a user's clone is: the default catalogue path (../shared/data/fashion) resolves.
    with tempfile.TemporaryDirectory(prefix=".tandem-first-run-", dir=repo.resolve().parent) as scratch:
        clone = Path(scratch)
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(repo.resolve()), str(clone / ".")], check=True)
        t0 = time.perf_counter()
        process = subprocess.Popen(["make", "run"], cwd=clone, env=_clean_env(port, limit), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        reader = threading.Thread(target=_read_lines, args=(process.stdout, t0, lines), daemon=True)
        reader.start()
        try:
            ready = _wait_ready(f"http://127.0.0.1:{port}", t0, deadline_s, process)
            turn = _chat_turn(f"http://127.0.0.1:{port}") if "llm_ready_s" in ready else {}
            chat_served = time.perf_counter() - t0 if turn.get("web_chat_status") == 200 else None
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        base_record = next((clone / "var" / "models" / "base").glob("*/tandem_base.json"), None)
        conversion_s = json.loads(base_record.read_text())["seconds"] if base_record else None
    stages: dict[str, Any] = {}
    for key, marker in MARKERS.items():
        hit = next((t for t, line in lines if marker in line), None)
        stages[key] = round(hit, 1) if hit is not None else None
    stages.update({k: round(v, 1) for k, v in ready.items()})
    indexed = next((line for _, line in lines if line.startswith("indexed ")), "")
    took = re.search(r" in ([0-9.]+)s", indexed)
    stages["index_seconds"] = float(took.group(1)) if took else None
    stages["base_conversion_s"] = conversion_s
    stages["chat_served_s"] = round(chat_served, 1) if chat_served is not None else None
    report = {"commit": head.stdout.strip(), "machine": machine_info(), "stages": stages, "turn": turn, "limit": limit,
              "log_tail": [line for _, line in lines[-15:]]}  # fmt: skip
    _write(report, reports)
    return report


def _write(report: dict[str, Any], reports: Path) -> None:

    reports.mkdir(parents=True, exist_ok=True)
    (reports / "first_run.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    s = report["stages"]

    def at(key: str) -> str:
        return "—" if s.get(key) is None else f"{s[key]:.0f} s"

    served = s.get("chat_served_s")
    verdict = "within" if served is not None and served <= 600 else "NOT within"
    turn = report["turn"]
    conv = s.get("base_conversion_s")
    limit = report.get("limit")
    scope = f"**A SUBSET**: `make run LIMIT={limit}`, a check of the benchmark." if limit else "The whole catalogue."
    md = f"""# First run: a fresh clone's `make run`

{machine_line(report["machine"])} Commit `{report["commit"][:10]}`; `python -m eval.bench_first_run`.
The clone gets its own `.venv` and `TANDEM_HOME`; uv's download cache is the machine's (packages are not
downloaded again, which on a new machine adds the time of the download).

| stage (time since `make run`) | at |
| --- | --- |
| `.venv` synced from `uv.lock`, embedded LLM worker started | {at("setup_done_s")} |
| all products indexed with the shipped image tower (indexing itself: {at("index_seconds")}) | {at("index_done_s")} |
| API listening | {at("server_started_s")} |
| `/readyz`: retrieval ready (the REST API answers) | {at("retrieval_ready_s")} |
| `/readyz`: LLM ready (the worker converted its base in {conv} s, loaded it and the adapter) | {at("llm_ready_s")} |
| web chat page served and a chat turn answered by the models | {at("chat_served_s")} |

{scope}

Target: the web chat served within 10 minutes on this machine: **{verdict}** ({at("chat_served_s")}).
The LLM worker starts at once and loads beside the indexing, so the two overlap.

The first turn (`navy formal shirts for men`) took {turn.get("turn_ms", "—")} ms; degraded:
{json.dumps(turn.get("degraded", []))}. Its explanation:

> {turn.get("explanation", "").replace(chr(10), " ")}
"""
    (reports / "first_run.md").write_text(md, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--reports", type=Path, default=Path("eval/reports"))
    parser.add_argument("--deadline", type=float, default=1200.0, help="Give up after this many seconds.")
    parser.add_argument("--limit", type=int, default=None, help="Index only this many products (a quick check).")
    args = parser.parse_args()
    report = run_benchmark(args.repo, args.reports, args.deadline, args.limit)
    print(json.dumps(report["stages"]))


if __name__ == "__main__":
    main()
