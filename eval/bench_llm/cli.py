"""``tandem bench llm``: the command line of the LLM serving benchmark (options, progress, exit codes)."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

from rich.console import Console

from eval.bench_llm.config import SIMULATED_NOTE, BenchConfig, BenchError
from eval.bench_llm.run import run
from eval.report_format import fmt

__all__ = ["main"]


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the benchmark like Ctrl-C does, so the worker processes are stopped too."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None, *, home: Path = Path("var")) -> int:
    """``tandem bench llm``: the benchmark with a rich progress display; exit code 1 on a failure to run.

    ``home`` is Tandem's data folder (the CLI passes ``TANDEM_HOME``): a quick run reports there.
    """

    parser = argparse.ArgumentParser(
        prog="tandem bench llm",
        description="LLM dispatcher benchmark against real worker processes whose model is SIMULATED.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test of about a minute (CI)")
    parser.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="report folder (default eval/reports; with --quick TANDEM_HOME/reports, so real results stay)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of arrivals and delay models (default 0)")
    parser.add_argument("--sigma", type=float, default=None, help="lognormal sigma of every worker (default 0.8)")
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=None,
        help="first wait up to S s for other processes to leave the CPU (default 30; quick 0)",
    )
    parser.add_argument(
        "--sessions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="multi-turn sessions on workers with a SIMULATED prefix cache: round_robin, power_of_two, affinity "
        "(default on)",
    )
    parser.add_argument(
        "--litellm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="LiteLLM's Router against the dispatcher on the same workers (default on; skipped without litellm)",
    )
    parser.add_argument(
        "--real-engines",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="llama.cpp servers with the packaged SmolLM2 GGUF (default on; skipped without `make engines`)",
    )
    parser.add_argument(
        "--llama-python",
        default=None,
        help="the interpreter of the llama.cpp build (default var/llama-venv/bin/python, made by `make engines`)",
    )
    args = parser.parse_args(argv)
    overrides = {"seed": args.seed, "quiet_wait_s": args.quiet_wait_s, "sigma": args.sigma,
                 "sessions": args.sessions, "litellm": args.litellm, "real_engines": args.real_engines,
                 "llama_python": args.llama_python}  # fmt: skip
    if args.quick:
        config = BenchConfig.quick_config(**overrides)
    else:
        config = replace(BenchConfig(), **{k: v for k, v in overrides.items() if v is not None})
    reports = args.reports
    if reports is None:
        if args.quick:
            reports = home / "reports"
        else:
            reports = Path("eval/reports")
    console = Console(stderr=True)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        results = run(config, reports_dir=reports, console=console)
    except BenchError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted: every worker process the benchmark started is stopped")
        return 130
    console.print(f"[bold]SIMULATED model[/bold]: {SIMULATED_NOTE}", highlight=False)
    for name, v in results["policies"].items():
        console.print(
            f"{name:>18}: p50 {fmt(v['p50_ms'], 0)} ms, p99 {fmt(v['p99_ms'], 0)} ms, TTFT p50 "
            f"{fmt(v['ttft_p50_ms'], 0)} ms, {fmt(v['throughput_rps'], 1)} req/s, "
            f"max share {fmt(v['max_share'], 2)}",
            highlight=False,
        )
    rows = (("sessions", "sessions"), ("litellm_router", "LiteLLM Router"), ("real_engines", "real engines"))
    for key, label in rows:
        if "skipped" in results.get(key, {}):
            console.print(f"[yellow]{label} skipped[/yellow]: {results[key]['skipped']}", highlight=False)
    for t in results["targets"]:
        mark = "n/a " if t["passed"] is None else "[green]PASS[/green]" if t["passed"] else "[red]MISS[/red]"
        console.print(f"{mark}  {t['target']}: {t['measured']}", highlight=False)
    console.print(f"wrote {', '.join(results['report'].values())} in {results['cpu']['wall_s']:.0f} s")
    return 0
