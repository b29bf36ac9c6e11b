"""The benchmark's report: ``retrieval_bench.md`` section by section, the latency plot, and the files.

:func:`markdown` joins one function per section (machine, catalogue pipeline, synthetic vector
search with its beam sweep, notes); :func:`write_report` writes the JSON, the markdown and,
when the synthetic benchmark ran, the p50-latency-against-N plot. Cells and tables come from
:mod:`eval.report_format`, with two decimals and a compact rule: the style this report has
always had.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.bench_retrieval.vectors import SYNTHETIC_NOTE
from eval.report_format import fmt, table

__all__ = ["markdown", "write_report"]


def _cell(value: Any) -> str:
    return fmt(value, 2)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return table(header, rows, cell=_cell, tight_rule=True)


def _recall_key(row: Mapping[str, Any]) -> str:
    return next((key for key in row if key.startswith("edge_recall@")), "edge_recall@10")


def _machine_section(machine: Mapping[str, Any]) -> list[str]:
    if not machine:
        return []
    return ["## Machine", "", *_table(["", "value"], [[key, value] for key, value in machine.items()])]


def _catalogue_section(cat: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Catalogue pipeline (real data)", ""]
    if not cat:
        return [*lines, "Not run.", ""]
    lines += [
        f"Catalogue `{cat.get('catalogue', '?')}`, text encoder `{cat.get('text_encoder', '?')}`, "
        f"image encoder `{cat.get('image_encoder', '?')}`, device {cat.get('device', '?')}; "
        f"flat search (Qdrant Edge, top {cat.get('k', 10)}).",
        "",
    ]
    keys = ("products", "failed", "index_seconds", "images_per_s", "texts_per_s")
    lines += _table(["products", "failed", "index s", "images/s", "texts/s"], [[cat.get(key) for key in keys]])
    stages = [
        ("text query (encode + search)", cat.get("text_query")),
        ("photo query (decode + encode + search)", cat.get("image_query")),
        ("search only (precomputed vector)", cat.get("search_only")),
    ]
    lines += _table(
        ["query", "p50 ms", "p95 ms", "mean ms", "queries"],
        [[name, s.get("p50_ms"), s.get("p95_ms"), s.get("mean_ms"), s.get("n")] for name, s in stages if s],
    )
    return lines


def _vector_table(rows: Sequence[Mapping[str, Any]], recall: str) -> list[str]:
    header = ["N", "dim", "data", "Edge p50 ms", "Edge p95 ms", "NumPy p50 ms", "NumPy p95 ms", "speed-up p50",
              recall.replace("edge_", "Edge "), "insert s", "build s", "synthetic"]  # fmt: skip
    keys = ("edge_p50_ms", "edge_p95_ms", "numpy_p50_ms", "numpy_p95_ms", "speedup_p50")
    return _table(
        header,
        [
            [
                r.get("n"),
                r.get("dim"),
                r.get("data", "synthetic"),
                *(r.get(key) for key in keys),
                r.get(_recall_key(r)),
                r.get("edge_insert_s"),
                r.get("edge_build_s"),
                "synthetic" if r.get("synthetic", True) else "real",
            ]
            for r in rows
        ],
    )


def _sweep_table(rows: Sequence[Mapping[str, Any]], recall: str) -> list[str]:
    sweep = [(r, s) for r in rows for s in r.get("ef_sweep") or []]
    if not sweep:
        return []
    plain = recall.replace("edge_", "")
    return [
        "Search beam sweep (same index, same queries, synthetic):",
        "",
        *_table(
            ["N", "search ef", "Edge p50 ms", "Edge p95 ms", plain],
            [[r.get("n"), s.get("hnsw_ef"), s.get("p50_ms"), s.get("p95_ms"), s.get(plain)] for r, s in sweep],
        ),
    ]


def _vector_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Vector search: Qdrant Edge HNSW vs NumPy brute force (synthetic vectors)", ""]
    if not rows:
        return [*lines, "Not run.", ""]
    first = rows[0]
    lines += [
        f"**{SYNTHETIC_NOTE}**",
        "",
        f"Qdrant Edge: HNSW m={first.get('hnsw_m', '?')}, ef_construct={first.get('hnsw_ef_construct', '?')}, "
        f"search ef={first.get('hnsw_ef', '?')}, quantization: {first.get('quantization', '?')}. "
        f"{first.get('queries', '?')} single-vector queries per size, top {first.get('k', 10)}, one at a time. "
        "Build = flush + optimise (HNSW construction; Qdrant Edge builds on one thread). "
        "Recall is HNSW's overlap with the exact NumPy result.",
        "",
    ]
    recall = _recall_key(first)
    return lines + _vector_table(rows, recall) + _sweep_table(rows, recall)


def markdown(results: Mapping[str, Any]) -> str:
    """``retrieval_bench.md`` (without the plot's link) for the results of :func:`eval.bench_retrieval.run`."""
    lines = ["# Retrieval benchmark", ""]
    if results.get("generated_at"):
        lines += [f"Generated {results['generated_at']}.", ""]
    lines += _machine_section(results.get("machine") or {})
    lines += _catalogue_section(results.get("catalogue"))
    lines += _vector_section(results.get("vector_search") or [])
    notes = results.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)
    from matplotlib.figure import Figure  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)

    ns = [r["n"] for r in rows]
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(ns, [r["edge_p50_ms"] for r in rows], marker="o", label="Qdrant Edge HNSW (p50)")
    ax.plot(ns, [r["numpy_p50_ms"] for r in rows], marker="s", label="NumPy brute force (p50)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vectors stored (N, log scale)")
    ax.set_ylabel("query latency p50, ms (log scale)")
    dim = rows[0].get("dim", "?")
    ax.set_title(f"Single-query latency vs N (synthetic, dim {dim})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def write_report(results: dict[str, Any], reports_dir: Path, name: str = "retrieval_bench") -> tuple[Path, Path]:
    """Write ``name.json``, ``name.md`` and (with vector rows) the plot ``name.png`` in ``reports_dir``.

    ``results`` holds ``machine`` (dict), ``catalogue`` (dict from
    :func:`~eval.bench_retrieval.catalogue.bench_catalogue` or None), ``vector_search`` (rows
    from :func:`~eval.bench_retrieval.vectors.bench_vector_search`) and optionally
    ``generated_at`` and ``notes`` (list of strings). Returns the JSON and Markdown paths.
    """
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    json_path = reports_dir / f"{name}.json"
    md_path = reports_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    rows = results.get("vector_search") or []
    text = markdown(results)
    if rows:
        png_path = reports_dir / f"{name}.png"
        _plot(rows, png_path)
        text += f"\n![p50 latency vs N]({png_path.name})\n"
    md_path.write_text(text, encoding="utf-8")
    return json_path, md_path
