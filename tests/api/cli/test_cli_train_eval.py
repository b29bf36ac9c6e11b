"""`tandem train clip`, `tandem eval make-queries`, `tandem eval retrieval` and `--mode` as a new user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import run_cli

REPORT_KEYS = {
    "precision@10",
    "recall@10",
    "ndcg@10",
    "map@10",
    "mrr",
    "category_recall",
    "searched_fraction",
    "latency_ms_p50",
    "latency_ms_p95",
}


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory: pytest.TempPathFactory, small_catalogue_dir: Path) -> Path:
    """TANDEM_HOME with a --small tower trained by the real console script, and the catalogue indexed with it."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env |= {"TANDEM_HOME": str(home), "TANDEM_CATALOGUE__PATH": str(small_catalogue_dir)}
    exe = Path(sys.executable).with_name("tandem")
    for argv in (["train", "clip", "--small"], ["index"]):
        proc = subprocess.run([str(exe), *argv], capture_output=True, text=True, env=env, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr
    return home


@pytest.fixture
def home_env(trained_home: Path, small_catalogue_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from api.settings import get_settings

    monkeypatch.setenv("TANDEM_HOME", str(trained_home))
    monkeypatch.setenv("TANDEM_CATALOGUE__PATH", str(small_catalogue_dir))
    monkeypatch.delenv("TANDEM_ENCODERS__IMAGE_CHECKPOINT", raising=False)
    get_settings.cache_clear()
    return trained_home


def test_trained_tower_is_the_default_encoder(home_env: Path) -> None:
    from api.components import image_tower_dir
    from api.settings import get_settings

    assert image_tower_dir(get_settings()) == home_env / "models" / "image-tower"
    assert (home_env / "models" / "image-tower" / "holdout_ids.json").is_file()


def test_train_again_is_skipped(home_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["train", "clip", "--small"], capsys)
    assert code == 0 and "already trained" in out


def test_modes(home_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["search", "--text", "blue jeans", "--mode", "hierarchical"], capsys)
    assert code == 0 and "searched" in out and "% of the catalogue" in out
    code, out, _ = run_cli(["search", "--text", "blue jeans", "--mode", "flat", "--json"], capsys)
    assert code == 0 and len(json.loads(out)["items"]) == 10


def test_make_queries_then_eval(home_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qdir = tmp_path / "queries"
    code, out, _ = run_cli(["eval", "make-queries", "--out", str(qdir), "--n", "12"], capsys)
    assert code == 0, out
    photos = sorted((qdir / "images").glob("*.jpg"))
    assert len(photos) >= 5
    held = set(json.loads((home_env / "models" / "image-tower" / "holdout_ids.json").read_text()))
    assert {p.stem for p in photos} <= held  # queries come from products the tower never trained on
    photos[0].write_bytes(b"not a jpeg")  # an unreadable query photo is reported and skipped
    report_path = tmp_path / "report.json"
    code, out, err = run_cli(
        [
            "eval",
            "retrieval",
            "--queries",
            str(qdir / "products.csv"),
            "--images",
            str(qdir / "images"),
            "--json",
            str(report_path),
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert set(report) >= {"hierarchical", "flat"}
    for mode in ("hierarchical", "flat"):
        assert set(report[mode]) >= REPORT_KEYS
        for key in REPORT_KEYS - {"latency_ms_p50", "latency_ms_p95"}:
            assert 0.0 <= report[mode][key] <= 1.0
    assert report["flat"]["searched_fraction"] == 1.0 and report["flat"]["category_recall"] == 1.0
    assert report["hierarchical"]["searched_fraction"] < 1.0
    assert report["queries"] == len(photos) - 1
    assert "skipped query" in err and photos[0].stem in err
    assert "ndcg@10" in out


def test_eval_missing_inputs(home_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        ["eval", "retrieval", "--queries", str(tmp_path / "q.csv"), "--images", str(tmp_path)], capsys
    )
    assert code == 1 and err.startswith("error:") and "does not exist" in err
