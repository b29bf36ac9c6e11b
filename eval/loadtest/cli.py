"""``tandem bench loadtest``: the command line of the load test (options, a rich progress display, exit codes)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from eval.loadtest.client import parse_wait
from eval.loadtest.report import measured
from eval.loadtest.run import LoadtestConfig, run
from eval.loadtest.targets import title
from eval.process import ServiceError

if TYPE_CHECKING:
    from api.settings import Settings
    from retrieval.encoders import ImageEncoder

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem bench loadtest",
        description="Locust load test of the recommendation API (tandem serve) beside the raw image encoder.",
    )
    parser.add_argument("--quick", action="store_true", help="runs of a few seconds (a smoke test)")
    parser.add_argument("--ids", type=int, default=None, help="catalogue photos to query (default 500; quick 100)")
    parser.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="report folder (default eval/reports; with --quick TANDEM_HOME/reports, so real results stay)",
    )
    parser.add_argument("--name", default="api_loadtest", help="report file names (default api_loadtest)")
    parser.add_argument("--single-s", type=int, default=None, help="single-user run, seconds (default 30)")
    parser.add_argument("--users", type=int, default=None, help="concurrent users of the two load runs (default 50)")
    parser.add_argument("--duration-s", type=int, default=None, help="each load run, seconds (default 60)")
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default 10)")
    parser.add_argument("--think", default="0.5-1.5", help="think time of the reference run: S or MIN-MAX seconds")
    parser.add_argument("--raw-s", type=float, default=None, help="raw encoder measurement, seconds (default 10)")
    parser.add_argument("--top-k", type=int, default=None, help="products per request (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the photo sample (default 0)")
    parser.add_argument("--index-limit", type=int, default=None, help="index only N products if there is no index")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=None,
        help="before each measurement wait up to S s for other processes to leave the CPU (default 120; quick 0)",
    )
    return parser


def _config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> LoadtestConfig:
    overrides: dict[str, Any] = {
        "ids": args.ids,
        "single_s": args.single_s,
        "users": args.users,
        "duration_s": args.duration_s,
        "spawn_rate": args.spawn_rate,
        "think_s": parse_wait(args.think),
        "raw_s": args.raw_s,
        "top_k": args.top_k,
        "seed": args.seed,
        "index_limit": args.index_limit,
        "quiet_wait_s": args.quiet_wait_s,
    }
    if args.quick:
        config = LoadtestConfig.quick_config(**overrides)
    else:
        config = LoadtestConfig(**{k: v for k, v in overrides.items() if v is not None})
    for label, value in (("--ids", config.ids), ("--users", config.users), ("--single-s", config.single_s)):
        if value <= 0:
            parser.error(f"{label} must be positive")
    if config.duration_s <= 0 or config.top_k <= 0 or config.raw_s <= 0 or config.spawn_rate <= 0:
        parser.error("--duration-s, --top-k, --raw-s and --spawn-rate must be positive")
    return config


def main(argv: Sequence[str] | None, *, settings: Settings, build_encoder: Callable[[], ImageEncoder]) -> int:
    """``tandem bench loadtest``: the load test with a rich progress display; exit code 1 on a failure to run.

    The CLI wires it: ``settings`` are the service's, ``build_encoder`` builds its image encoder.
    """

    parser = _parser()
    args = parser.parse_args(argv)
    config = _config(parser, args)
    reports = args.reports or (settings.home / "reports" if args.quick else Path("eval/reports"))
    console = Console(stderr=True)
    try:
        results = run(
            settings,
            config,
            build_encoder=build_encoder,
            reports_dir=reports,
            name=args.name,
            console=console,
            notes=args.note,
        )
    except ServiceError as exc:  # LoadtestError, or a service that did not start
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted: every process the load test started is stopped")
        return 130
    for t in results["targets"]:
        mark = {True: "[green]PASS[/green]", False: "[red]MISS[/red]"}.get(t["passed"], "n/a ")
        console.print(f"{mark}  {t['target']} ({title(results['runs'], t['run'])}): {measured(t)}", highlight=False)
    console.print(f"wrote {', '.join(results['report'].values())}")
    return 0
