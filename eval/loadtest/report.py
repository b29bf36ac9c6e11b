"""The load test's report: ``api_loadtest.md`` section by section, the latency/throughput plot, and the files.

:func:`markdown` joins one function per report section (method, runs, reference against
Tandem, targets, raw encoder, inside the service, errors, notes); :func:`write_report` writes
the JSON, the markdown and the PNG. Numbers go through :func:`eval.report_format.fmt` with
``whole=True``: a whole figure of 1,000 or more is a count and reads better without decimals.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from eval.loadtest.client import RECOMMEND_PATH
from eval.loadtest.parse import mean_batch_size, stage_means_ms
from eval.loadtest.targets import MIN_RAW_RATIO, REFERENCE, stat, title
from eval.report_format import fmt, table, verdict

__all__ = ["OTHER_LOAD_NOTE", "markdown", "measured", "write_report"]

# Cores taken by other processes during a phase above which the report says so.
OTHER_LOAD_NOTE = 0.25

_cell = partial(fmt, whole=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    return table(header, rows, align, cell=_cell)


def measured(row: Mapping[str, Any]) -> str:
    """A target's measured figure with its unit (``–`` when it was not measured)."""
    value = row.get("measured")
    if value is None:
        return "–"
    unit = row.get("unit", "")
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "failures":
        return f"{int(value):,}"
    return f"{value:,.1f} {unit}"


def _reference_think_s() -> float:
    """The think time the reference's figures imply by Little's law: users / throughput − mean latency."""
    return float(REFERENCE["users"] / REFERENCE["rps"] - REFERENCE["mean_ms"] / 1000)


def _think_label(think: Sequence[float] | None) -> str:
    if not think or max(think) == 0:
        return "none"
    lo, hi = think
    return f"{lo:g} s" if lo == hi else f"uniform {lo:g}–{hi:g} s"


def _quiet_label(quiet: Mapping[str, Any] | None) -> str:
    if not quiet:
        return "not checked"
    return f"others {quiet.get('other_cores', 0):.2f} cores after {quiet.get('waited_s', 0):.0f} s"


def _error_rate(stats: Mapping[str, Any]) -> str:
    rate = stats.get("error_rate")
    return "–" if rate is None else f"{stats.get('failures', 0):,} ({rate:.2%})"


def _runs(results: Mapping[str, Any]) -> Mapping[str, Any]:
    runs: Mapping[str, Any] = results.get("runs") or {}
    return runs


def _intro(results: Mapping[str, Any]) -> list[str]:
    machine = results.get("machine") or {}
    config = results.get("config") or {}
    lines = ["# Recommendation API under load (Locust)", ""]
    if config.get("quick"):
        lines += ["**Quick mode: runs of a few seconds, for a smoke test; the figures are not representative.**", ""]
    load = machine.get("load_average_1_5_15m")
    lines += [
        f"Machine: {machine.get('cpu', '?')}, {machine.get('logical_cores', '?')} logical cores, "
        f"{machine.get('ram_gb', '?')} GB RAM, GPU: {machine.get('gpu', '?')}; torch {machine.get('torch', '?')}, "
        f"Python {machine.get('python', '?')}; load average at the start {load}; "
        f"generated {results.get('generated_at', '?')}.",
        "",
    ]
    return lines


def _method(results: Mapping[str, Any]) -> list[str]:
    machine = results.get("machine") or {}
    config = results.get("config") or {}
    return [
        "## Method",
        "",
        f"- Each simulated buyer (`eval/locustfile.py`, a Locust `FastHttpUser`) POSTs "
        f'`{{"image_url": "http://127.0.0.1:PORT/<id>.jpg", "top_k": {config.get("top_k", 10)}}}` to '
        f"`{RECOMMEND_PATH}` with an `X-API-Key`; the API downloads the photo from a local image server "
        "(`eval.loadtest.serve_images`: a threaded HTTP/1.1 file server on 127.0.0.1; real HTTP, no internet "
        "latency), decodes it, encodes it with the "
        "image tower (micro-batched with concurrent requests), searches the index and answers the top K. "
        "A request counts as failed unless the answer is 200 with JSON holding 1 to K `items`.",
        f"- Photos: {config.get('ids', '?')} catalogue products drawn at random (seed {config.get('seed', '?')}) from "
        f"`{config.get('images_dir', '?')}` (60×80 JPEGs), each request one of them at random.",
        f"- Service: `tandem serve` on 127.0.0.1, image encoder `{config.get('image_encoder', '?')}` on "
        f"{config.get('device', '?')}, retrieval mode {config.get('mode', '?')}, index `{config.get('index', '?')}`; "
        f"API settings {json.dumps(config.get('api') or {})}.",
        f"- **Think time (an assumption)**: the reference gives ~{REFERENCE['rps']:.0f} req/s with "
        f"{REFERENCE['users']} users at a {REFERENCE['mean_ms']:.0f} ms mean but no think time; by Little's law "
        f"(throughput = users / (latency + think time)) it is {REFERENCE['users']} / {REFERENCE['rps']:.0f} − "
        f"{REFERENCE['mean_ms'] / 1000:.2f} ≈ {_reference_think_s():.2f} s, "
        f"reproduced with a {_think_label(config.get('think_s'))} wait between a user's requests.",
        f"- One machine for everything: the API, Locust (one process) and the image server share its "
        f"{machine.get('logical_cores', '?')} cores (CPU used by each below). The reference ran on an RTX 3090 with "
        "its own model: the figures stand side by side, they are not a like-for-like comparison.",
        "",
    ]


def _run_table(results: Mapping[str, Any]) -> list[str]:
    config = results.get("config") or {}
    runs = _runs(results)
    lines = _table(
        ["run", "users", "spawn rate /s", "ramp-up s (not counted)", "think time", "measured s", "CPU quiet before"],
        [
            [
                title(runs, name),
                r.get("users"),
                r.get("spawn_rate"),
                r.get("ramp_s"),
                _think_label(r.get("think_s")),
                r.get("duration_s"),
                _quiet_label((results.get("quiet") or {}).get(name)),
            ]
            for name, r in runs.items()
        ],
        "lrrrlrl",
    )
    lines += [
        "Users start at the spawn rate; Locust's statistics are reset once all are running (`--reset-stats`), "
        "so every figure below is the steady state. Before each measurement the driver waits (up to "
        f"{config.get('quiet_wait_s', '?')} s) for other processes to leave the CPU; the last column says what "
        "they still used.",
        "",
    ]
    return lines


def _per_run_rows(runs: Mapping[str, Any]) -> list[list[Any]]:
    """The comparison's rows that come from /metrics and the CPU accounting rather than Locust's statistics."""
    names = list(runs)
    batch_row: list[Any] = ["mean encoder batch size (/metrics)", "–"]
    cpu_rows: dict[str, list[Any]] = {
        k: [label, "–"]
        for k, label in (
            ("api", "CPU cores used: API"),
            ("locust", "CPU cores used: Locust"),
            ("image_server", "CPU cores used: image server"),
            ("other", "CPU cores used: other processes"),
        )
    }
    for n in names:
        batch_row.append(mean_batch_size(runs[n].get("metrics")))
        cpu = runs[n].get("cpu") or {}
        for k, cells in cpu_rows.items():
            cells.append(cpu.get(k))
    return [batch_row, *cpu_rows.values()]


def _comparison(results: Mapping[str, Any]) -> list[str]:
    runs = _runs(results)
    names = list(runs)
    header = ["", "reference (RTX 3090, 50 users)", *[title(runs, n) for n in names]]

    def row(label: str, ref: Any, key: str, fmt: Callable[[Mapping[str, Any]], Any] | None = None) -> list[Any]:
        cells: list[Any] = [label, ref]
        for n in names:
            stats = runs[n].get("stats") or {}
            cells.append(fmt(stats) if fmt else stats.get(key))
        return cells

    lines = ["## Reference against Tandem", ""]
    lines += _table(
        header,
        [
            row("requests", "–", "requests"),
            row("failed (rate)", f"< {REFERENCE['error_rate_max']:.1%}", "", _error_rate),
            row("mean ms", REFERENCE["mean_ms"], "mean_ms"),
            row("p50 ms", "–", "p50_ms"),
            row("p95 ms", REFERENCE["p95_ms"], "p95_ms"),
            row("p99 ms", "–", "p99_ms"),
            row("max ms", "–", "max_ms"),
            row("requests/s", f"~{REFERENCE['rps']:.0f}", "rps"),
            *_per_run_rows(runs),
        ],
        "l" + "r" * (len(header) - 1),
    )
    lines += [
        "Latencies are Locust's, end to end from the client (percentiles approximated by Locust: exact to the "
        "millisecond below 100 ms, to 10 ms up to 1 s). Requests/s is Locust's: requests over the run's duration.",
        "",
    ]
    return lines


def _targets(results: Mapping[str, Any]) -> list[str]:
    runs = _runs(results)
    return [
        "## Targets",
        "",
        *_table(
            ["target", "run", "measured", "result"],
            [
                [t["target"], title(runs, t["run"]), measured(t), verdict(t.get("passed"))]
                for t in results.get("targets") or []
            ],
            "llrl",
        ),
    ]


def _raw_batches(raw: Mapping[str, Any]) -> list[str]:
    return _table(
        [
            "torch threads",
            "batch",
            "images/s",
            "ms per batch (mean)",
            "ms per batch (p95)",
            "batches",
            "seconds",
            "cores used",
            "other processes' cores",
        ],
        [
            [
                b.get("threads"),
                b.get("batch_size"),
                b.get("images_per_s"),
                b.get("mean_ms"),
                b.get("p95_ms"),
                b.get("batches"),
                b.get("seconds"),
                b.get("cores_used"),
                b.get("other_cores"),
            ]
            for b in raw.get("batches") or []
        ],
        "rrrrrrrrr",
    )


def _raw_ratios(runs: Mapping[str, Any], raw: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    sat = stat(runs, "saturation", "rps")
    batch = raw.get("reference_batch", 32)
    for label, key, target in (
        ("every core", "images_per_s", True),
        ("the service's thread count", "service_threads_images_per_s", False),
    ):
        denominator = raw.get(key)
        if sat is None or not denominator:
            continue
        tail = f" (target ≥ {MIN_RAW_RATIO:.2f}×)" if target else " (for reference)"
        bold = "**" if target else ""
        lines += [
            f"- API at saturation / raw encoder on {label} (batch {batch}): {sat:,.1f} req/s / "
            f"{denominator:,.1f} images/s = {bold}{sat / denominator:.2f}×{bold}{tail}."
        ]
    return [*lines, ""]


def _raw_encoder(results: Mapping[str, Any]) -> list[str]:
    raw = results.get("raw_encoder") or {}
    lines = ["## Raw encoder throughput (same run, before the API started)", ""]
    if not raw:
        return [*lines, "Not measured.", ""]
    lines += [
        f"`{raw.get('model_id', '?')}` built by `api.components.build_image_encoder`, on the same "
        f"{raw.get('images', '?')} photos decoded beforehand ({raw.get('decode_images_per_s', 0):,.0f} decodes/s "
        "with `retrieval.images.decode_image`), encoded (preprocessing + forward pass) batch after batch, with "
        f"torch on every core and on the service's own thread count ({raw.get('service_threads', '?')}: "
        "`tandem serve` leaves a core to its event loop); CPU before: "
        f"{_quiet_label((results.get('quiet') or {}).get('raw_encoder'))}.",
        "",
    ]
    return [*lines, *_raw_batches(raw), *_raw_ratios(_runs(results), raw)]


def _service_metrics(results: Mapping[str, Any]) -> list[str]:
    runs = _runs(results)
    names = list(runs)
    lines = ["## Inside the service (`GET /metrics`)", ""]
    if not any(runs[n].get("metrics") for n in names):
        return [*lines, "The service exposed no parsable `/metrics`; nothing recorded.", ""]
    stages = sorted({s for n in names for s in stage_means_ms(runs[n].get("metrics"))})
    if stages:
        lines += ["Mean time per stage inside the service (ms), per run:", ""]
        lines += _table(
            ["run", *stages],
            [[title(runs, n), *[stage_means_ms(runs[n].get("metrics")).get(s) for s in stages]] for n in names],
            "l" + "r" * len(stages),
        )
    counter_rows = [
        [title(runs, n), c["name"], ", ".join(f"{k}={v}" for k, v in c["labels"].items()), c["value"]]
        for n in names
        for c in (runs[n].get("metrics") or {}).get("counters", [])
    ]
    if counter_rows:
        lines += ["Counters, increase during each run:", ""]
        lines += _table(["run", "counter", "labels", "increase"], counter_rows, "lllr")
    return lines


def _threads(results: Mapping[str, Any]) -> list[str]:
    runs = _runs(results)
    thread_rows = [
        [
            title(runs, n),
            f"{sum(t['cores'] for t in runs[n]['api_threads']):.2f}",
            ", ".join(f"{t['thread']} {t['cores']:.2f}" for t in runs[n]["api_threads"]),
        ]
        for n in runs
        if runs[n].get("api_threads")
    ]
    if not thread_rows:
        return []
    return [
        "The API process's busiest threads (CPU cores over the run; Linux thread names, so Python threads all "
        "read as the process name): one thread near 1.0 is a serial bottleneck; Python threads that together "
        "stay near one core while cores are free point at the GIL.",
        "",
        *_table(["run", "sum of these", "threads (cores)"], thread_rows, "lrl"),
    ]


def _errors(results: Mapping[str, Any]) -> list[str]:
    runs = _runs(results)
    error_rows = [
        [title(runs, n), e.get("method", ""), e.get("name", ""), e.get("error", ""), e.get("occurrences")]
        for n in runs
        for e in runs[n].get("errors") or []
    ]
    body = _table(["run", "method", "name", "error", "count"], error_rows, "llllr") if error_rows else ["None.", ""]
    return ["## Errors", "", *body]


def _busy_note(results: Mapping[str, Any]) -> str | None:
    """A note naming the phases during which other processes took CPU (``None`` when none did)."""
    runs = _runs(results)
    raw = results.get("raw_encoder") or {}
    busy = [
        f"{title(runs, n)} ({runs[n]['cpu']['other']:.2f})"
        for n in runs
        if (runs[n].get("cpu") or {}).get("other", 0) >= OTHER_LOAD_NOTE
    ]
    busy += [
        f"raw encoder, {b.get('threads', '?')} thread(s), batch {b.get('batch_size')} ({b['other_cores']:.2f})"
        for b in raw.get("batches") or []
        if b.get("other_cores", 0) >= OTHER_LOAD_NOTE
    ]
    if not busy:
        return None
    return (
        "Other processes on the machine used CPU cores during: " + "; ".join(busy) + ". The figures of those "
        "phases are lower than an otherwise idle machine would give."
    )


def _littles_law_note(runs: Mapping[str, Any]) -> str | None:
    """Throughput the think-time run should have by Little's law, beside the measured one."""
    think = runs.get("think") or {}
    stats = think.get("stats") or {}
    if not (stats.get("mean_ms") and think.get("think_s") and think.get("users")):
        return None
    expected = think["users"] / (sum(think["think_s"]) / 2 + stats["mean_ms"] / 1000)
    return (
        f"Little's law check of the think-time run: {think['users']} users / (mean think "
        f"{sum(think['think_s']) / 2:g} s + mean latency {stats['mean_ms'] / 1000:.3f} s) = {expected:.1f} req/s "
        f"expected, {stats.get('rps', 0):.1f} measured."
    )


def _notes(results: Mapping[str, Any]) -> list[str]:
    notes = list(results.get("notes") or [])
    notes += [n for n in (_busy_note(results), _littles_law_note(_runs(results))) if n is not None]
    if not notes:
        return []
    return ["## Notes", "", *[f"- {note}" for note in notes], ""]


_SECTIONS: tuple[Callable[[Mapping[str, Any]], list[str]], ...] = (
    _intro,
    _method,
    _run_table,
    _comparison,
    _targets,
    _raw_encoder,
    _service_metrics,
    _threads,
    _errors,
    _notes,
)


def markdown(results: Mapping[str, Any]) -> str:
    """The report's markdown (without the plot's line, which :func:`write_report` adds when there is a plot)."""
    return "\n".join(line for section in _SECTIONS for line in section(results))


def _plot_run(ax_lat: Any, ax_rps: Any, runs: Mapping[str, Any], name: str, hist: Sequence[Mapping[str, Any]]) -> None:
    colour = {"single": "tab:green", "think": "tab:blue", "saturation": "tab:red"}.get(name)
    t = [h["t"] for h in hist]
    label = title(runs, name)
    p50 = [h["p50_ms"] if h["p50_ms"] is not None else math.nan for h in hist]
    p95 = [h["p95_ms"] if h["p95_ms"] is not None else math.nan for h in hist]
    ax_lat.plot(t, p50, color=colour, linestyle="-", label=f"{label}: p50")
    ax_lat.plot(t, p95, color=colour, linestyle="--", label=f"{label}: p95")
    rps = [h.get("interval_rps") for h in hist]
    ax_rps.plot(t, [r if r is not None else math.nan for r in rps], color=colour, label=label)


def _plot(runs: Mapping[str, Any], path: Path) -> bool:
    """Latency percentiles and throughput over time, one line per run; ``False`` when there is no history."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)
    from matplotlib.figure import Figure  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)

    series = {n: r.get("history") or [] for n, r in runs.items()}
    if not any(series.values()):
        return False
    fig = Figure(figsize=(8.0, 6.4), dpi=120)
    FigureCanvasAgg(fig)
    ax_lat, ax_rps = fig.subplots(2, 1, sharex=True)
    for name, hist in series.items():
        if hist:
            _plot_run(ax_lat, ax_rps, runs, name, hist)
    ramp = max((r.get("ramp_s") or 0) for r in runs.values())
    if ramp:
        for ax in (ax_lat, ax_rps):
            ax.axvspan(0, ramp, color="grey", alpha=0.1, label="ramp-up (not counted)" if ax is ax_rps else None)
    ax_lat.axhline(REFERENCE["p95_ms"], color="grey", linestyle=":", label="reference p95 (280 ms)")
    ax_lat.axhline(500, color="black", linestyle=":", linewidth=0.8, label="target p95 at 50 users (500 ms)")
    ax_lat.set_ylabel("latency, ms (Locust, current)")
    ax_lat.set_yscale("log")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend(fontsize=6, ncol=2, loc="lower right")
    ax_rps.axhline(REFERENCE["rps"], color="grey", linestyle=":", label="reference (~40 req/s)")
    ax_rps.set_ylabel("requests/s (per history interval)")
    ax_rps.set_xlabel("seconds since the run started")
    ax_rps.grid(True, alpha=0.3)
    ax_rps.legend(fontsize=7)
    ax_lat.set_title("Recommendation API under Locust: latency and throughput over time")
    fig.tight_layout()
    fig.savefig(path)
    return True


def write_report(results: Mapping[str, Any], reports_dir: Path, name: str = "api_loadtest") -> dict[str, Path]:
    """Write ``name.json``, ``name.md`` and (with Locust history) ``name.png``; return their paths by kind."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": reports_dir / f"{name}.json", "markdown": reports_dir / f"{name}.md"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    text = markdown(results)
    png = reports_dir / f"{name}.png"
    if _plot(results.get("runs") or {}, png):
        paths["png"] = png
        text += f"\n![latency and throughput over time]({png.name})\n"
    paths["markdown"].write_text(text, encoding="utf-8")
    return paths
