"""``tandem bench fairness``: key B's latency while key A floods, against a real ``tandem serve``.

Registered in :mod:`api.cli.bench` as ``bench_app.command("fairness")(fairness)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.console import CliError, out
from api.settings import get_settings

__all__ = ["fairness"]


def fairness(
    reports: Annotated[Path, typer.Option("--reports", help="Where fairness.{json,md} go.")] = Path("eval/reports"),
    probe_s: Annotated[float, typer.Option("--probe-s", min=5, help="Seconds of B's requests per phase.")] = 30.0,
    probe_rate: Annotated[float, typer.Option("--probe-rate", min=0.5, help="B's requests a second.")] = 4.0,
    connections: Annotated[int, typer.Option("--connections", min=1, help="A's concurrent connections.")] = 16,
    rate: Annotated[float, typer.Option("--rate", min=0.1, help="Each key's requests/s for the run.")] = 10.0,
    burst: Annotated[int, typer.Option("--burst", min=1, help="Each key's burst for the run.")] = 20,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, help="Quiet and flooded phases alternate this many times (pooled).")
    ] = 3,
    hold_s: Annotated[float, typer.Option("--hold-s", min=0, help="Hold of a refused request (the service's).")] = 1.0,
    quiet_wait_s: Annotated[
        float, typer.Option("--quiet-wait-s", min=0, help="Longest wait for other processes to leave the CPU.")
    ] = 30.0,
    compare: Annotated[
        bool,
        typer.Option("--compare/--no-compare", help="Also flood servers with refusals at once and with no limit."),
    ] = True,
) -> None:
    """Per-key fairness: B's p95 alone and while A floods far over its rate limit (target: at most 2x)."""
    from eval.bench_fairness import FairnessConfig, FairnessError, run, write_reports
    from eval.reliability import write_reliability

    if probe_rate >= rate:
        raise CliError(f"B's --probe-rate ({probe_rate:g}/s) must stay under each key's --rate ({rate:g}/s)")
    cfg = FairnessConfig(rate_per_s=rate, burst=burst, probe_rate=probe_rate, probe_s=probe_s, rounds=rounds,
                         flood_connections=connections, hold_s=hold_s, no_hold=compare, control=compare,
                         quiet_wait_s=quiet_wait_s)  # fmt: skip
    try:
        report = run(get_settings(), cfg, echo=out.print)
    except FairnessError as exc:
        raise CliError(str(exc)) from exc
    json_path, md_path = write_reports(report, reports)
    write_reliability(reports)
    out.print(f"B p95: quiet {report['quiet_p95_ms']} ms, A flooding {report['flooded_p95_ms']} ms"
              f" (ratio {report['ratio']}; A's 429 share {report['a_429_share']:.1%});"
              f" refusals at once: {report['no_hold_flooded_p95_ms']} ms; no limit: {report['control_flooded_p95_ms']}"
              f" ms → {json_path}, {md_path}")  # fmt: skip
