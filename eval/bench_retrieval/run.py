"""The entry point the CLI calls: both benchmarks, in order, then the report.

:func:`run` stamps the results with the time and :func:`eval.machine.machine_info`, runs the
catalogue benchmark (unless told not to) and the synthetic one in a throw-away folder under
``TANDEM_HOME/bench``, and writes ``retrieval_bench.{json,md,png}``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.bench_retrieval.catalogue import bench_catalogue
from eval.bench_retrieval.report import write_report
from eval.bench_retrieval.vectors import DEFAULT_SIZES, bench_vector_search
from eval.machine import machine_info

if TYPE_CHECKING:
    from rich.progress import Progress

    from api.settings import Settings
    from eval.bench_retrieval.catalogue import Encoders

__all__ = ["run"]


def run(
    settings: Settings,
    encoders: Encoders,
    *,
    limit: int | None = None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    queries: int = 200,
    reports_dir: Path = Path("eval/reports"),
    progress: Progress | None = None,
    catalogue: bool = True,
    notes: Sequence[str] = (),
    name: str = "retrieval_bench",
) -> dict[str, Any]:
    """Run the catalogue benchmark (unless ``catalogue=False``) and the synthetic one, and write the report.

    Returns the results dict with ``report`` (the paths written) added.
    """
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "catalogue": bench_catalogue(settings, encoders, limit, queries, progress) if catalogue else None,
        "vector_search": [],
        "notes": list(notes),
    }
    if sizes:
        bench_root = settings.home / "bench"
        bench_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="vectors-", dir=bench_root))
        try:
            results["vector_search"] = bench_vector_search(sizes, queries=queries, work_dir=work, progress=progress)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    json_path, md_path = write_report(results, reports_dir, name)
    results["report"] = {"json": str(json_path), "markdown": str(md_path)}
    return results
