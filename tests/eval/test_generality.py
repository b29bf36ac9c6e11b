"""A catalogue with its own columns indexes, searches and evaluates; the generality experiment runs end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from eval.generality import GENERALITY_MAPPING, _spread, _write
from tests.support.cli import run_cli

MAPPED_ENV = {
    "TANDEM_CATALOGUE__COLUMNS__CSV_NAME": GENERALITY_MAPPING.csv_name,
    "TANDEM_CATALOGUE__COLUMNS__IMAGES_DIR": GENERALITY_MAPPING.images_dir,
    "TANDEM_CATALOGUE__COLUMNS__IMAGE_PATTERN": GENERALITY_MAPPING.image_pattern,
    "TANDEM_CATALOGUE__COLUMNS__ID_COLUMN": GENERALITY_MAPPING.id_column,
    "TANDEM_CATALOGUE__COLUMNS__TITLE_COLUMN": GENERALITY_MAPPING.title_column,
    "TANDEM_CATALOGUE__COLUMNS__CATEGORY_COLUMNS": json.dumps(GENERALITY_MAPPING.category_columns),
}


@pytest.fixture
def mapped_catalogue(fashion_dir: Path, tmp_path: Path) -> Path:
    """Watches, bags, personal care... (no apparel) under renamed columns and another photo layout."""
    import random

    with (fashion_dir / "products.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["master_category"] in ("Accessories", "Personal Care")]
    return _write(fashion_dir, tmp_path / "mapped", _spread(rows, 80, random.Random(0)), mapped=True)


def test_a_column_mapped_catalogue_indexes_searches_and_evaluates(
    tandem_env: Path,
    mapped_catalogue: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from api.settings import get_settings

    monkeypatch.setenv("TANDEM_CATALOGUE__PATH", str(mapped_catalogue))
    for key, value in MAPPED_ENV.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    header = (mapped_catalogue / "catalogue.csv").read_text().splitlines()[0].split(",")
    assert "product_id" not in header and "sku" in header  # nothing under the demo's names

    code, out, err = run_cli(["index"], capsys)
    assert code == 0 and "indexed 80" in out, err
    sku = next(p.name.removeprefix("p").removesuffix(".jpg") for p in sorted((mapped_catalogue / "photos").iterdir()))
    code, out, err = run_cli(["search", "--image", str(mapped_catalogue / "photos" / f"p{sku}.jpg"), "--json"], capsys)
    assert code == 0, err
    # The tiny test tower is untrained: the product comes first through the exact-match stage.
    assert json.loads(out)["items"][0]["product_id"] == sku

    qdir = tmp_path / "queries"
    code, out, err = run_cli(["eval", "make-queries", "--out", str(qdir), "--n", "10"], capsys)
    assert code == 0, err  # a tower trained on another catalogue: every product here is unseen
    assert (qdir / "products.csv").read_text().splitlines()[0].startswith("sku,name,department,family,kind")
    report_path = tmp_path / "report.json"
    code, out, err = run_cli(
        ["eval", "retrieval", "--queries", str(qdir / "products.csv"), "--images", str(qdir / "images"),
         "--json", str(report_path), "--colour-attribute", "colour"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["queries"] == 10 and not report["skipped"]
    assert 0.0 <= report["hierarchical"]["ndcg@10"] <= 1.0


def test_generality_experiment_runs_tiny(
    tandem_env: Path,
    fashion_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from api.settings import get_settings

    monkeypatch.setenv("TANDEM_CATALOGUE__PATH", str(fashion_dir))
    get_settings.cache_clear()
    reports = tmp_path / "reports"
    code, _out, err = run_cli(
        ["eval", "generality", "--tiny", "--work", str(tmp_path / "work"), "--report-dir", str(reports)], capsys
    )
    assert code == 0, err
    body = json.loads((reports / "catalogue_generality.json").read_text())
    assert "SIMULATED" in body["synthetic"] and "SIMULATED" in (reports / "catalogue_generality.md").read_text()
    assert set(body["new_catalogue"]["tops"]).isdisjoint(body["side_a"]["tops"])  # the tower never saw them
    towers = body["towers"]
    assert set(towers) == {"side_a_never_saw_new", "new_only_epochs_6", "new_only_step_budget", "new_warm_from_side_a"}
    assert towers["new_warm_from_side_a"]["init"].endswith("side-a")
    for r in towers.values():
        clean, edited = r["self_hit@1"]["catalogue_photo"], r["self_hit@1"]["edited_copy"]
        assert clean["with_exact"] == 1.0  # a catalogue photo is its own product, whatever the tiny tower does
        assert edited["with_exact"] >= edited["without_exact"]
        assert 0.0 <= r["buyer_photos"]["category_precision@10"] <= 1.0
    assert body["large_catalogue"]["exact_stage_full_catalogue"]["clean_distance_zero"] == 1.0
