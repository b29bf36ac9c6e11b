"""``reliability.{json,md}``: the soak, the long fuzz and the fairness benchmark in one report.

Each benchmark writes its own report (``soak.json``, ``fuzz.json``, ``fairness.json``); this
gathers the figures a platform team asks for into one place. A part not run yet says so.

Example:
    >>> body = write_reliability(Path("eval/reports"))  # doctest: +SKIP
    >>> sorted(body)  # doctest: +SKIP
    ['fairness', 'fuzz', 'soak']
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval.report_format import fmt, machine_line, verdict

__all__ = ["gather", "write_reliability"]

_SOAK_KEYS = ("minutes", "rss_growth", "errors", "p99_ms_first_minute", "p99_ms_last_minute")
_FUZZ_KEYS = ("operations", "examples", "server_errors")
_FAIRNESS_KEYS = ("quiet_p95_ms", "flooded_p95_ms")


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return body


def gather(reports: Path) -> dict[str, Any]:
    """The figures of each part (``None`` where that benchmark has not been run)."""
    soak, fuzz, fair = (_read(reports / f"{n}.json") for n in ("soak", "fuzz", "fairness"))
    s = (soak or {}).get("summary", {})
    return {
        "soak": {k: round(v, 4) if isinstance(v, float) else v for k, v in ((k, s.get(k)) for k in _SOAK_KEYS)}
        if soak
        else None,
        "fuzz": {k: fuzz.get(k) for k in _FUZZ_KEYS} if fuzz else None,
        "fairness": {k: fair.get(k) for k in _FAIRNESS_KEYS} if fair else None,
        "machine": (soak or fuzz or fair or {}).get("machine"),
    }


def _soak_lines(s: Mapping[str, Any] | None) -> list[str]:
    if s is None:
        return ["Not run yet: `make soak`."]
    growth = s["rss_growth"]
    return [
        f"{fmt(s['minutes'], 0)} minutes of mixed traffic at half the measured capacity (`soak.md`).",
        "",
        "| target | measured | result |",
        "| --- | ---: | ---: |",
        f"| memory at the end within 10 % of after warm-up | {fmt(None if growth is None else growth * 100)} % |"
        f" {verdict(None if growth is None else growth <= 0.10)} |",
        f"| unexpected errors: 0 | {s['errors']} | {verdict(s['errors'] == 0)} |",
        f"| p99, first / last minute | {fmt(s['p99_ms_first_minute'], 0)} / {fmt(s['p99_ms_last_minute'], 0)} ms | |",
        "",
        "![soak](soak.png)",
    ]


def _fuzz_lines(f: Mapping[str, Any] | None) -> list[str]:
    if f is None:
        return ["Not run yet: `make fuzz`."]
    return [f"Schemathesis, property-based from `/openapi.json` (`fuzz.md`): {f['operations']} operations,"
            f" {f['examples']} generated requests, **{f['server_errors']}** server errors"
            f" ({verdict(f['server_errors'] == 0)})."]  # fmt: skip


def _fairness_lines(f: Mapping[str, Any] | None) -> list[str]:
    if f is None:
        return ["Not run yet: `tandem bench fairness`."]
    quiet, flooded = f["quiet_p95_ms"], f["flooded_p95_ms"]
    ok = None if not quiet or flooded is None else flooded <= 2 * quiet
    return [f"Key B's p95 alone {fmt(quiet, 0)} ms; while key A floods {fmt(flooded, 0)} ms (target ≤ 2×:"
            f" {verdict(ok)}; `fairness.md`)."]  # fmt: skip


def write_reliability(reports: Path) -> dict[str, Any]:
    """Write ``reliability.json`` and ``reliability.md`` from the parts' reports in ``reports``."""
    body = gather(reports)
    machine = body.pop("machine")
    (reports / "reliability.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Reliability: soak, fuzzed contract, fairness",
        "",
        machine_line(machine) if machine else "",
        "",
        "## Soak",
        "",
        *_soak_lines(body["soak"]),
        "",
        "## Fuzzed contract",
        "",
        *_fuzz_lines(body["fuzz"]),
        "",
        "## Keys and fairness",
        "",
        *_fairness_lines(body["fairness"]),
    ]
    (reports / "reliability.md").write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return body
