"""Fairness between API keys: key B's latency while key A floods, against a real ``tandem serve`` process.

``tandem bench fairness`` starts ``tandem serve --no-embedded-llm`` (the REST API over the
configured ``TANDEM_HOME`` index) with two keys, ``a`` and ``b``, and a per-key token bucket,
then measures, on ``POST /v1/recommendations`` text queries:

1. **quiet**: B alone, one request at a time on a fixed schedule (``probe_rate`` a second);
2. **flooded**: the same probes while A floods: ``flood_connections`` connections, each sending
   its next request the moment the last one answers, far over A's bucket (A gets 429s, each
   held up to ``TANDEM_API__RATE_LIMIT_HOLD_S`` first, as served by default);

   phases 1 and 2 alternate for ``rounds`` rounds on one server, and the verdict pools each
   phase's samples: on a shared machine a neighbour's burst then lands in one round of one
   phase, not in the whole of it (single runs of the same code gave ratios from 1.3 to 2.1);
3. **no hold** (optional): the flood again with refusals answered at once;
4. **control** (optional): the flood again on a server with the rate limit off, to show what
   the limit buys.

Target: B's flooded p95 ≤ 2 × its quiet p95. The flood runs in its own process on raw HTTP/1.1
over asyncio streams rather than httpx: on a small machine the flooder shares the CPU with the
server, and httpx spends several times the CPU per request that the server needs to refuse it,
so it would measure the client, not the server.

Example:
    >>> report = run(settings, FairnessConfig(probe_s=30))  # doctest: +SKIP
    >>> report["flooded_p95_ms"] <= 2 * report["quiet_p95_ms"]  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from eval.machine import machine_info
from eval.process import Service, ServiceError, free_port, venv_script, wait_for_quiet, wait_http
from eval.report_format import fmt, machine_line, table, verdict
from retrieval.store import manifest_path

if TYPE_CHECKING:
    from api.settings import Settings

__all__ = ["FairnessConfig", "FairnessError", "PhaseSamples", "flood", "pool", "run", "summarise", "write_reports"]

PATH = "/v1/recommendations"
# B's queries: varied words, so no answer is a repeat of the one before.
QUERIES = (
    "navy formal shirts for men", "red kurtas for women", "black running shoes", "leather wallet brown",
    "white casual t-shirt", "blue denim jeans", "silver analog watch", "pink handbag", "grey sweatshirt",
    "green saree", "sports shorts", "yellow dress", "brown belt", "sunglasses for men", "black heels",
    "printed tops", "track pants", "flip flops", "backpack", "formal trousers",
)  # fmt: skip
FLOOD_BODY = json.dumps({"text": "red kurtas", "top_k": 5}).encode()


class FairnessError(RuntimeError):
    """The benchmark could not run: no index, a server that did not start, a flood that failed."""


@dataclass(frozen=True)
class FairnessConfig:
    """One fairness run; the defaults take about three minutes on 2 cores (two server starts included)."""

    rate_per_s: float = 10.0  # each key's bucket (TANDEM_API__RATE_PER_S) for the run
    burst: int = 20  # TANDEM_API__BURST
    probe_rate: float = 4.0  # B's requests a second (well inside its own bucket)
    probe_s: float = 30.0  # seconds of B's probes per phase
    warmup: int = 20  # B's requests before measuring (not counted)
    rounds: int = 3  # quiet and flooded phases alternate this many times; each phase's samples are pooled
    flood_connections: int = 16  # A's concurrent connections, each back to back
    flood_lead_s: float = 2.0  # the flood starts this long before B's probes
    hold_s: float = 1.0  # TANDEM_API__RATE_LIMIT_HOLD_S of the flooded phase
    no_hold: bool = True  # also flood a server whose refusals are not held
    control: bool = True  # also flood a server without the rate limit
    startup_timeout_s: float = 300.0
    quiet_wait_s: float = 30.0  # at most this long waiting for other processes to leave the CPU
    target_ratio: float = 2.0


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"p50": None, "p95": None, "max": None, "n": 0}
    return {"p50": round(float(np.percentile(arr, 50)), 2), "p95": round(float(np.percentile(arr, 95)), 2),
            "max": round(float(arr.max()), 2), "n": int(arr.size)}  # fmt: skip


# ------------------------------------------------------------------ the flood (its own process)


async def _flood_async(port: int, key: str, connections: int, duration_s: float) -> dict[str, int]:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(FLOOD_BODY)}\r\n\r\n"
    ).encode("latin-1")
    request = head + FLOOD_BODY
    counts: Counter[str] = Counter()
    stop_at = time.monotonic() + duration_s

    async def one_connection() -> None:
        while time.monotonic() < stop_at:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                counts["connect_error"] += 1
                await asyncio.sleep(0.05)
                continue
            try:
                while time.monotonic() < stop_at:
                    writer.write(request)
                    status_line = await reader.readline()
                    if not status_line:
                        break  # the server closed the connection: open another
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    await reader.readexactly(length)
                    counts[status_line.split()[1].decode()] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                counts["io_error"] += 1
            finally:
                writer.close()

    try:
        async with asyncio.timeout(duration_s + 10):  # a server that stops answering must not hang the flood
            await asyncio.gather(*(one_connection() for _ in range(connections)))
    except TimeoutError:
        counts["unfinished"] += 1
    return dict(counts)


def flood(port: int, key: str, connections: int, duration_s: float) -> dict[str, int]:
    """Send back-to-back requests on ``connections`` connections for ``duration_s``: counts by status."""
    return asyncio.run(_flood_async(port, key, connections, duration_s))


# ------------------------------------------------------------------ B's probes


def _probe(client: httpx.Client, n: int, rate: float, offset: int = 0) -> tuple[list[float], Counter[int]]:
    """``n`` requests on a fixed schedule (one every 1/rate s; late ones go at once): latencies (ms), statuses."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        body = {"text": QUERIES[(offset + i) % len(QUERIES)], "top_k": 5}
        t0 = time.perf_counter()
        r = client.post(PATH, json=body)
        elapsed = (time.perf_counter() - t0) * 1000
        statuses[r.status_code] += 1
        if r.status_code == 200:
            latencies.append(elapsed)
    return latencies, statuses


# ------------------------------------------------------------------ one server


@dataclass
class _Served:
    service: Service
    port: int
    b: httpx.Client  # key B's client


@contextmanager
def _server(settings: Settings, keys: dict[str, str], limit: tuple[float, int, float], work: Path,
            timeout_s: float) -> Iterator[_Served]:  # fmt: skip
    """``tandem serve`` with keys a and b and this (rate, burst, hold; rate 0: no limit), ready, and B's client."""
    rate_per_s, burst, hold_s = limit
    port = free_port()
    env = {
        **os.environ,
        "TANDEM_HOME": str(settings.home),
        "TANDEM_API__KEYS": ",".join(f"{name}:{key}" for name, key in keys.items()),
        "TANDEM_API__RATE_PER_S": str(rate_per_s),
        "TANDEM_API__BURST": str(burst),
        "TANDEM_API__RATE_LIMIT_HOLD_S": str(hold_s),
    }
    env.pop("TANDEM_API__KEYS_FILE", None)
    argv = [venv_script("tandem"), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-embedded-llm"]
    service = Service("api", argv, work / f"api-{port}.log", env)
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", service, timeout_s)
        except ServiceError as exc:
            raise FairnessError(str(exc)) from exc
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": keys["b"]}, timeout=60) as b:
            yield _Served(service, port, b)
    finally:
        service.stop()


def _settle(served: _Served, cfg: FairnessConfig) -> dict[str, float]:
    """Warm the encoders with B's requests (not counted), then wait for other processes to leave the CPU."""
    _probe(served.b, cfg.warmup, cfg.probe_rate * 2, offset=7)
    return wait_for_quiet(cfg.quiet_wait_s, own=[served.service])


@dataclass
class PhaseSamples:
    """One phase's raw samples: B's latencies (ms) and statuses, A's answers by status, the phase's length."""

    latencies: list[float]
    statuses: Counter[int]
    a_counts: Counter[str] | None = None
    duration_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"b": _percentiles(self.latencies),
                               "b_statuses": {str(k): v for k, v in sorted(self.statuses.items())}}  # fmt: skip
        if self.a_counts is not None:
            counts = self.a_counts
            total = sum(v for k, v in counts.items() if k.isdigit())
            out.update(
                a_counts=dict(sorted(counts.items())),
                a_requests=total,
                a_rps=round(total / self.duration_s, 1) if self.duration_s else None,
                a_ok_rps=round(counts.get("200", 0) / self.duration_s, 2) if self.duration_s else None,
                a_429_share=round(counts.get("429", 0) / total, 4) if total else None,
            )
        return out


def pool(phases: Sequence[PhaseSamples]) -> PhaseSamples:
    """Several rounds of one phase as one: every sample, every status, A's counts over the summed time."""
    a_counts: Counter[str] | None = None
    if any(p.a_counts is not None for p in phases):
        a_counts = Counter()
        for p in phases:
            a_counts.update(p.a_counts or {})
    return PhaseSamples([x for p in phases for x in p.latencies], sum((p.statuses for p in phases), Counter()),
                  a_counts, sum(p.duration_s for p in phases))  # fmt: skip


def _flooded(port: int, key_a: str, client: httpx.Client, cfg: FairnessConfig, n: int) -> PhaseSamples:
    duration = cfg.flood_lead_s + cfg.probe_s + 3.0
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool_:
        pending = pool_.apply_async(flood, (port, key_a, cfg.flood_connections, duration))
        time.sleep(cfg.flood_lead_s)
        latencies, statuses = _probe(client, n, cfg.probe_rate)
        try:
            counts = pending.get(timeout=duration + 60)
        except Exception as exc:  # a failed child: its error, raised here with the benchmark's name on it
            raise FairnessError(f"the flood failed: {type(exc).__name__}: {exc}") from exc
    return PhaseSamples(latencies, statuses, Counter(counts), duration)


def _rounds(served: _Served, key_a: str, cfg: FairnessConfig, n: int, echo: Callable[[str], None]) -> dict[str, Any]:
    """Quiet and flooded phases, alternating ``cfg.rounds`` times: per-round summaries and the pooled phases."""
    quiet: list[PhaseSamples] = []
    flooded: list[PhaseSamples] = []
    rounds: list[dict[str, Any]] = []
    for i in range(cfg.rounds):
        quiet_cpu = wait_for_quiet(cfg.quiet_wait_s, own=[served.service])
        echo(f"round {i + 1}/{cfg.rounds}: quiet: B alone, {n} requests at {cfg.probe_rate:g}/s")
        quiet.append(PhaseSamples(*_probe(served.b, n, cfg.probe_rate)))
        flooded_cpu = wait_for_quiet(cfg.quiet_wait_s, own=[served.service])
        echo(f"round {i + 1}/{cfg.rounds}: flooded: A on {cfg.flood_connections} connections, B's {n} requests again")
        flooded.append(_flooded(served.port, key_a, served.b, cfg, n))
        q95, f95 = quiet[-1].summary()["b"]["p95"], flooded[-1].summary()["b"]["p95"]
        ratio = round(f95 / q95, 2) if q95 and f95 else None
        rounds.append({"quiet_p95_ms": q95, "flooded_p95_ms": f95, "ratio": ratio,
                       "quiet_cpu": quiet_cpu, "flooded_cpu": flooded_cpu})  # fmt: skip
    return {"rounds": rounds, "quiet": pool(quiet).summary(), "flooded": pool(flooded).summary(),
            "quiet_cpu": _worst(r["quiet_cpu"] for r in rounds),
            "flooded_cpu": _worst(r["flooded_cpu"] for r in rounds)}  # fmt: skip


def _worst(cpus: Iterator[dict[str, float]] | Sequence[dict[str, float]]) -> dict[str, float]:
    """The busiest of the rounds' 'other processes before the phase' figures (what the table shows)."""
    return max(cpus, key=lambda c: c.get("other_cores", 0.0))


def run(settings: Settings, cfg: FairnessConfig, *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Alternating quiet and flooded rounds, then (optionally) the no-hold and unlimited floods; the report's data."""
    if settings.qdrant.url is None and not manifest_path(settings.qdrant_dir).is_file():
        raise FairnessError(f"no index under {settings.home}: run `tandem index` (or `make run`) first")
    keys = {"a": secrets.token_urlsafe(24), "b": secrets.token_urlsafe(24)}
    n = max(10, round(cfg.probe_s * cfg.probe_rate))
    report: dict[str, Any] = {"config": asdict(cfg), "machine": machine_info(),
                              "generated": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tandem-fairness-") as tmp:
        work = Path(tmp)
        with _server(settings, keys, (cfg.rate_per_s, cfg.burst, cfg.hold_s), work, cfg.startup_timeout_s) as served:
            echo(f"server up on port {served.port}; warming up with {cfg.warmup} requests")
            _settle(served, cfg)
            report.update(_rounds(served, keys["a"], cfg, n, echo))
        others = [("no_hold", (cfg.rate_per_s, cfg.burst, 0.0), cfg.no_hold, "refusals answered at once"),
                  ("control", (0.0, cfg.burst, 0.0), cfg.control, "the rate limit off")]  # fmt: skip
        for name, limit, wanted, what in others:
            if not wanted:
                continue
            with _server(settings, keys, limit, work, cfg.startup_timeout_s) as served:
                report[f"{name}_cpu"] = _settle(served, cfg)
                echo(f"{name}: the same flood with {what}")
                report[name] = _flooded(served.port, keys["a"], served.b, cfg, n).summary()
    return summarise(report, cfg)


def summarise(report: dict[str, Any], cfg: FairnessConfig) -> dict[str, Any]:
    """The headline figures and the verdict: B's flooded p95 within ``target_ratio`` of quiet, every B request 200."""
    quiet_p95 = report["quiet"]["b"]["p95"]
    flooded_p95 = report["flooded"]["b"]["p95"]
    report.update(
        quiet_p95_ms=quiet_p95,
        flooded_p95_ms=flooded_p95,
        ratio=round(flooded_p95 / quiet_p95, 2) if quiet_p95 and flooded_p95 is not None else None,
        a_429_share=report["flooded"]["a_429_share"],
        b_non_200=sum(v for k, v in report["flooded"]["b_statuses"].items() if k != "200"),
        no_hold_flooded_p95_ms=report["no_hold"]["b"]["p95"] if "no_hold" in report else None,
        control_flooded_p95_ms=report["control"]["b"]["p95"] if "control" in report else None,
        target=f"flooded p95 <= {cfg.target_ratio:g} x quiet p95",
    )
    report["passed"] = bool(report["ratio"] is not None and report["ratio"] <= cfg.target_ratio
                            and report["b_non_200"] == 0)  # fmt: skip
    return report


# ------------------------------------------------------------------ reports


def _phase_row(name: str, phase: dict[str, Any], cpu: dict[str, float] | None) -> list[str]:
    b = phase["b"]
    a = phase.get("a_requests")
    share = phase.get("a_429_share")
    return [name, fmt(b["p50"]), fmt(b["p95"]), fmt(b["max"]), str(b["n"]),
            ", ".join(f"{k}: {v}" for k, v in phase["b_statuses"].items()),
            "-" if a is None else f"{fmt(phase['a_rps'])} ({fmt(phase['a_ok_rps'], 2)} served)",
            "-" if share is None else f"{share:.2%}", fmt(cpu.get("other_cores") if cpu else None, 2)]  # fmt: skip


def _noise_note(report: dict[str, Any]) -> list[str]:
    """A warning when other processes used the CPU unequally before the quiet and the flooded phase."""
    quiet = (report.get("quiet_cpu") or {}).get("other_cores")
    flooded = (report.get("flooded_cpu") or {}).get("other_cores")
    if quiet is None or flooded is None or abs(quiet - flooded) < 0.5:
        return []
    return [f"**Caution**: other processes used {quiet:.2f} cores before the quiet phase and {flooded:.2f} before"
            " the flooded one; on a shared machine the ratio then says as much about them as about the service.",
            ""]  # fmt: skip


def _round_lines(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """Each round's p95s, so a round a neighbour disturbed shows as one outlier (nothing for a single round)."""
    if len(rounds) < 2:
        return []

    def others(cpu: dict[str, float] | None) -> str:
        return fmt((cpu or {}).get("other_cores"), 2)

    rows = [[str(i), fmt(r["quiet_p95_ms"]), fmt(r["flooded_p95_ms"]), fmt(r["ratio"], 2), others(r.get("quiet_cpu")),
             others(r.get("flooded_cpu"))] for i, r in enumerate(rounds, start=1)]  # fmt: skip
    header = ["round", "quiet p95", "flooded p95", "ratio", "others' cores before quiet", "before flooded"]
    return ["By round (B's p95 in ms):", "", *table(header, rows)]


_HEADER = ["phase", "B p50", "B p95", "B max", "B n", "B statuses", "A req/s", "A 429 share", "others' cores before"]


def write_reports(report: dict[str, Any], reports: Path) -> tuple[Path, Path]:
    """``fairness.json`` and ``fairness.md`` under ``reports``."""
    reports.mkdir(parents=True, exist_ok=True)
    cfg = report["config"]
    json_path = reports / "fairness.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    rounds = report.get("rounds") or []
    pooled = f", {len(rounds)} rounds pooled" if len(rounds) > 1 else ""
    rows = [_phase_row(f"quiet (B alone){pooled}", report["quiet"], report.get("quiet_cpu")),
            _phase_row(f"A floods, limit on, refusals held {cfg['hold_s']:g} s{pooled}", report["flooded"],
                       report.get("flooded_cpu"))]  # fmt: skip
    if report.get("no_hold"):
        rows.append(_phase_row("A floods, limit on, refusals at once", report["no_hold"], report.get("no_hold_cpu")))
    if report.get("control"):
        rows.append(_phase_row("A floods, limit off (control)", report["control"], report.get("control_cpu")))
    lines = [
        "# Fairness between API keys",
        "",
        machine_line(report["machine"]) + f" Generated {report['generated']}.",
        "",
        f"`tandem serve --no-embedded-llm` in its own process with keys `a` and `b`, each limited to"
        f" {cfg['rate_per_s']:g} requests/s (bursts of {cfg['burst']}). B sends `POST {PATH}` text queries one at a"
        f" time, {cfg['probe_rate']:g} a second for {cfg['probe_s']:g} s per phase, alone, then while A floods"
        f" the same route on {cfg['flood_connections']} connections, each sending its next request as soon as the"
        " last is answered (from another process, on raw HTTP/1.1, so the flooder spends little of the CPU it shares"
        f" with the server). The two phases alternate {cfg.get('rounds', 1)} times on one server and each phase's"
        " samples are pooled, so a neighbour's burst on this shared machine lands in one round, not in a whole"
        " phase. The service as configured by default holds a refused request up to its Retry-After"
        f" (here {cfg['hold_s']:g} s, jittered down to half of it) before the 429; the comparison phases restart the"
        " server with refusals"
        " answered at once, and without any limit. B's latencies are of its answered (200) requests, in ms; the last"
        " column is the CPU other processes used just before the phase (the busiest round's; this machine is"
        " shared: figures taken while it is busy are slower in every phase).",
        "",
        *table(_HEADER, rows),
        *_round_lines(rounds),
        f"Target: {report['target']}: {fmt(report['flooded_p95_ms'])} ms against"
        f" {fmt(cfg['target_ratio'] * (report['quiet_p95_ms'] or 0.0))} ms (ratio {report['ratio']}), every B"
        " request answered:"
        f" {verdict(report['passed'])}.",
        "",
        *_noise_note(report),
        "A refused request is answered by the service middleware before routing and before its body is read"
        " (429 `rate_limited`, `Retry-After`), so it takes no in-flight slot and no encoder time, and a flood writes"
        " one log line per key every 10 s instead of one a request. Refused at once, a client that retries in a"
        " tight loop still makes the server spend a core on refusals, and on a small machine that CPU is what B"
        " waits for; held, the same client retries at the pace of its limit. The holds are jittered: held for"
        " exactly 1 s, a flood's connections, refused together, came back together once a second, and the bucket,"
        " full again, admitted a burst of them at once, so B's p95 was 97 ms against 39.5 quiet (2.45 times)."
        " Spread over 0.5-1 s, A's admitted requests arrive one at a time at its rate.",
        "",
    ]
    md_path = reports / "fairness.md"
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return json_path, md_path
