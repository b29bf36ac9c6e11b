"""``tandem worker``: bad input is one line and exit 1; a real worker process answers the OpenAI protocol."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from eval.process import free_port
from tests.support.cli import run_cli


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["worker"], "--model DIR is required"),
        (["worker", "--model", "/nonexistent/model"], "/nonexistent/model"),
        (["worker", "--simulate", "--delay-model", "gamma:x=1"], "unknown delay model"),
        (["worker", "--simulate", "--delay-model", "lognormal:median_ms=5"], "needs sigma"),
        (["worker", "--model", "x", "--adapter", "noequals"], "NAME=DIR"),
        (["worker", "--model", "x", "--hang"], "only apply with --simulate"),
    ],
)
def test_bad_worker_options_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert err.startswith("error:") and message in err
    assert len(err.strip().splitlines()) == 1


def _wait_healthy(port: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """Until the worker's /health answers 200 (a guard against a hang, not a timing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "worker exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.2)


def test_worker_process_serves_a_base_model_with_an_adapter(tmp_path: Path) -> None:
    from finetune.tiny_lm import build_tiny_chat_model, build_tiny_lora_adapter

    base = build_tiny_chat_model(tmp_path / "tiny-base")
    adapter = build_tiny_lora_adapter(base, tmp_path / "ranker")
    port = free_port()
    tandem = str(Path(sys.executable).with_name("tandem"))
    proc = subprocess.Popen(
        [tandem, "worker", "--port", str(port), "--model", str(base), "--adapter", f"tiny-ranker={adapter}",
         "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_healthy(port, proc, 90)
        ids = [m["id"] for m in httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]]
        assert ids == ["tiny-base", "tiny-ranker"]
        body = {"model": "tiny-ranker", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] <= 4
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_an_embedded_worker_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    """``kill -9`` of the API must not orphan its LLM worker (a process holding a port and the model's memory)."""
    import psutil

    tandem = str(Path(sys.executable).with_name("tandem"))
    port = free_port()
    # A stand-in for the API: a parent that starts the worker as the embedded launcher does, then waits.
    parent_code = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([{tandem!r}, 'worker', '--simulate', '--port', '{port}', '--exit-with-parent']); "
        "print(p.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker = psutil.Process(int(parent.stdout.readline()))
    try:
        _wait_healthy(port, None, 60)  # up and serving first, so the kill lands on a running worker
        parent.kill()
        parent.wait()
        worker.wait(timeout=30)  # raises psutil.TimeoutExpired if it outlived its parent
        assert not worker.is_running()
    finally:
        parent.stdout.close()
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker.is_running():
            worker.kill()
