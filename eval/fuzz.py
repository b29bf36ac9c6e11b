"""Property-based fuzzing of an HTTP API from its own OpenAPI document (Schemathesis), and its report.

Every operation of every :class:`FuzzTarget` is called with the document's examples, then with
``examples`` generated requests that the schema allows (positive) and as many that it forbids
(negative), derandomized, so a run is repeatable. Each answer is checked: no 5xx, the status
code and the content type are documented for the operation, and the body matches the documented
schema. A run also measures how much schema-valid data the service accepts (2xx) rather than
rejects (400/413/415/422): a low share means the published schema promises more than the service
takes, so a client generated from it sends requests that fail.

Targets are built objects (ASGI apps, called in process); ``tandem bench fuzz`` wires them.

Example:
    >>> report = run_fuzz([FuzzTarget("api", app, {"X-API-Key": key})], examples=50)  # doctest: +SKIP
    >>> report["server_errors"], len(report["failures"])  # doctest: +SKIP
    (0, 0)
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.generation.hypothesis.builder import generate_example_cases
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from eval.report_format import fmt, machine_line, table

__all__ = ["CHECKS", "DEPENDENCY_CODES", "FuzzTarget", "run_fuzz", "write_report"]

CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)
# 5xx answers that are the service's documented reply to a state the fuzz made itself, not server errors: a model
# only the workers it registered at made-up addresses serve (503 llm_unavailable), a deadline it chose too short
# for the queue (504 deadline_exceeded). Counted apart and held to every other check.
DEPENDENCY_CODES = frozenset({"llm_unavailable", "deadline_exceeded"})
# Statuses that say the data itself was refused; 401/404/409/429 say nothing about the data (Schemathesis' view too).
_REJECTED = frozenset({400, 413, 415, 422})
_MAX_DETAIL = 1200


@dataclass(frozen=True)
class FuzzTarget:
    """An ASGI app to fuzz from its ``/openapi.json``, with headers every request carries (an API key).

    Example:
        >>> FuzzTarget("worker", object()).headers
        {}
    """

    name: str
    app: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    schema_path: str = "/openapi.json"


@dataclass
class _OperationStats:
    target: str
    operation: str
    examples: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    accepted: int = 0  # positive cases answered 2xx
    rejected: int = 0  # positive cases answered 400/413/415/422
    server_errors: int = 0
    dependency_errors: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)  # why schema-valid requests were refused

    def row(self) -> dict[str, Any]:
        judged = self.accepted + self.rejected
        return {
            "target": self.target,
            "operation": self.operation,
            "examples": self.examples,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "positive_accepted": self.accepted,
            "positive_rejected": self.rejected,
            "acceptance": round(self.accepted / judged, 3) if judged else None,
            "server_errors": self.server_errors,
            "dependency_errors": self.dependency_errors,
            "seconds": round(self.seconds, 2),
            "rejections": dict(self.reasons.most_common(5)),
        }


@dataclass
class _Failures:
    """Distinct failures: one per (target, operation, failure kind, status), with the first reproduction."""

    seen: dict[tuple[str, str, str, int], dict[str, Any]] = field(default_factory=dict)

    def add(self, target: str, operation: str, title: str, status: int, detail: str) -> None:
        key = (target, operation, title, status)
        if key in self.seen:
            self.seen[key]["count"] += 1
            return
        self.seen[key] = {"target": target, "operation": operation, "failure": title, "status": status,
                          "count": 1, "detail": detail[:_MAX_DETAIL]}  # fmt: skip

    def rows(self) -> list[dict[str, Any]]:
        return list(self.seen.values())


def _fuzz_settings(examples: int) -> hypothesis.settings:
    # derandomize: the same requests on every run; no database, no shrinking (every failure is collected instead).
    return hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def _run_operation(
    target: FuzzTarget,
    operation: Any,
    examples: int,
    modes: Sequence[GenerationMode],
    stats: _OperationStats,
    failures: _Failures,
) -> None:
    headers = dict(target.headers)

    def exercise(case: Any) -> None:
        response = case.call(headers=headers)
        status = response.status_code
        stats.examples += 1
        stats.statuses[status] += 1
        checks = list(CHECKS)
        if status >= 500 and _error_code(response) in DEPENDENCY_CODES:
            stats.dependency_errors += 1
            checks.remove(not_a_server_error)
        elif status >= 500:
            stats.server_errors += 1
        if case.meta is not None and case.meta.generation.mode.is_positive:
            if 200 <= status < 300:
                stats.accepted += 1
            elif status in _REJECTED:
                stats.rejected += 1
                stats.reasons[f"{status} {_reason(response)}"] += 1
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                failures.add(target.name, stats.operation, failure.title, status, _detail(failure, case, response))
        except Failure as failure:
            failures.add(target.name, stats.operation, failure.title, status, _detail(failure, case, response))

    for example in generate_example_cases(test=exercise, operation=operation, fill_missing=False, headers=headers):
        exercise(example)
    for mode in modes:
        strategy = operation.as_strategy(generation_mode=mode, headers=headers)
        test = _fuzz_settings(examples)(given(strategy)(exercise))
        try:
            test()
        except hypothesis.errors.Unsatisfiable as exc:
            # An operation without inputs has no invalid request to send; no valid one is a real failure.
            if mode is GenerationMode.POSITIVE:
                failures.add(target.name, stats.operation, "no valid data could be generated", 0, str(exc))


def _error(response: Any) -> dict[str, Any]:
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _error_code(response: Any) -> str:
    return str(_error(response).get("code", ""))


def _reason(response: Any) -> str:
    """The error message of a refusal, with quoted values cut out so that like refusals count together."""
    message = str(_error(response).get("message", ""))
    return re.sub(r"'[^']*'|\"[^\"]*\"|\b\d+(?:\.\d+)?\b", "…", message)[:100]


def _detail(failure: Failure, case: Any, response: Any) -> str:
    body = response.content[:300].decode("utf-8", "replace") if response.content else ""
    try:
        curl = case.as_curl_command(headers=dict.fromkeys(("X-API-Key",), "…"))
    except Exception:  # a case that cannot be written as curl still reports its failure
        curl = ""
    return f"{failure.message}\nresponse: {body}\nreproduce: {curl}"


def run_fuzz(
    targets: Iterable[FuzzTarget],
    *,
    examples: int,
    modes: Sequence[str] = ("positive", "negative"),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fuzz every operation of every target; the report's figures (see the module docstring)."""
    generation = [GenerationMode(m) for m in modes]
    started = time.perf_counter()
    rows: list[_OperationStats] = []
    failures = _Failures()
    try:
        for target in targets:
            schema = schemathesis.openapi.from_asgi(target.schema_path, target.app, headers=dict(target.headers))
            for result in schema.get_all_operations():
                if isinstance(result, Err):
                    failures.add(target.name, "(schema)", "invalid operation in the document", 0, str(result.err()))
                    continue
                operation = result.ok()
                stats = _OperationStats(target.name, operation.label)
                t0 = time.perf_counter()
                _run_operation(target, operation, examples, generation, stats, failures)
                stats.seconds = time.perf_counter() - t0
                rows.append(stats)
                if progress is not None:
                    progress(f"{target.name} {operation.label}: {stats.examples} examples, {dict(stats.statuses)}")
    finally:
        shutdown_lifespans()  # the apps' lifespans (indexes, dispatchers) close with the run
    accepted = sum(r.accepted for r in rows)
    judged = accepted + sum(r.rejected for r in rows)
    return {
        "operations": len(rows),
        "examples": sum(r.examples for r in rows),
        "server_errors": sum(r.server_errors for r in rows),
        "dependency_errors": sum(r.dependency_errors for r in rows),
        "failures": failures.rows(),
        "acceptance": round(accepted / judged, 3) if judged else None,
        "examples_per_operation": examples,
        "modes": list(modes),
        "checks": [c.__name__ for c in CHECKS],
        "seconds": round(time.perf_counter() - started, 1),
        "per_operation": [r.row() for r in rows],
    }


def write_report(report: Mapping[str, Any], reports_dir: Path, *, name: str = "fuzz") -> tuple[Path, Path]:
    """``fuzz.json`` (the figures) and ``fuzz.md`` (a short reading of them)."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = reports_dir / f"{name}.json", reports_dir / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Fuzzed API contract (Schemathesis)",
        "",
        f"{fmt(report['operations'])} operations, {fmt(report['examples'])} requests"
        f" ({report['examples_per_operation']} generated per operation and mode: {', '.join(report['modes'])};"
        f" the OpenAPI examples too), derandomized, in {fmt(report['seconds'])} s."
        f" Checks: {', '.join(report['checks'])}.",
        "",
        f"**Server errors: {fmt(report['server_errors'])}. Distinct failures: {fmt(len(report['failures']))}.**"
        f" Documented 503/504 answers to a state the fuzz made itself ({', '.join(sorted(DEPENDENCY_CODES))}):"
        f" {fmt(report['dependency_errors'])}."
        f" Schema-valid requests accepted (2xx of 2xx + 400/413/415/422): {fmt(report['acceptance'], 3)}.",
        "",
    ]
    rows = [
        [r["target"], r["operation"], r["examples"], r["acceptance"],
         ", ".join(f"{k}×{v}" for k, v in r["statuses"].items()), r["server_errors"], r["dependency_errors"]]
        for r in report["per_operation"]
    ]  # fmt: skip
    lines += table(["target", "operation", "requests", "accepted", "statuses", "5xx", "503/504 made by the fuzz"],
                   rows, "llrrlrr", cell=lambda v: fmt(v, 2))  # fmt: skip
    refused = [r for r in report["per_operation"] if r["rejections"]]
    if refused:
        lines += ["## Why schema-valid requests were refused", ""]
        for r in refused:
            reasons = "; ".join(f"{reason} (×{n})" for reason, n in r["rejections"].items())
            lines.append(f"- {r['target']} `{r['operation']}`: {reasons}")
        lines.append("")
    if report["failures"]:
        lines += ["## Failures", ""]
        for f in report["failures"]:
            first = next((line for line in f["detail"].splitlines() if line.strip()), "")
            where = f"{f['target']} `{f['operation']}`"
            lines.append(f"- {where} {f['failure']} (HTTP {f['status']}, ×{f['count']}): {first}")
        lines.append("")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    lines += ["", machine_line(report["machine"]) if "machine" in report else ""]
    md_path.write_text("\n".join(lines).rstrip() + "\n")
    return json_path, md_path
