"""The ``tandem`` CLI as a user runs it: real catalogue subset, real MiniLM, a tiny tower, Qdrant Edge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import run_cli


@pytest.fixture
def indexed_env(tandem_env: Path, small_catalogue_dir: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, _ = run_cli(["index", "--catalog", str(small_catalogue_dir), "--limit", "60"], capsys)
    assert code == 0
    assert "indexed 60" in out
    return tandem_env


def test_search_text_json(indexed_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["search", "--text", "red kurta", "--json"], capsys)
    assert code == 0
    items = json.loads(out)["items"]
    assert len(items) == 10
    for item in items:
        assert set(item) == {"product_id", "title", "category", "score", "image"}
        assert isinstance(item["category"], list) and len(item["category"]) == 3
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)


def test_search_image_finds_its_own_product_first(
    indexed_env: Path, small_catalogue_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["search", "--text", "shoes", "-k", "60", "--json"], capsys)
    assert code == 0
    some = json.loads(out)["items"][17]
    code, out, _ = run_cli(["search", "--image", some["image"], "--json", "-k", "3"], capsys)
    assert code == 0
    items = json.loads(out)["items"]
    assert items[0]["product_id"] == some["product_id"]


def test_search_table_output(indexed_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["search", "--text", "watch", "-k", "3"], capsys)
    assert code == 0
    assert "product_id" in out and "score" in out and "diversity: ILD@3 image" in out


def test_search_reports_diversity_and_mmr_raises_it(indexed_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["search", "--text", "casual shirts", "-k", "6", "--json", "--mode", "flat"], capsys)
    assert code == 0
    plain = json.loads(out)["diversity"]
    assert plain["settings"] == {"pool": 6} and 0.0 <= plain["ild_category"] <= 1.0
    code, out, _ = run_cli(["search", "--text", "casual shirts", "-k", "6", "--json", "--mode", "flat", "--mmr", "0",
                            "--pool", "40"], capsys)  # fmt: skip
    assert code == 0
    diverse = json.loads(out)["diversity"]
    assert diverse["settings"] == {"mmr_lambda": 0.0, "pool": 40} and diverse["ild_image"] > plain["ild_image"]
    code, _, err = run_cli(["search", "--text", "x", "--mmr", "0.5", "--diversity", "0.5"], capsys)
    assert code == 1 and "not both" in err


def test_reindex_skips_what_is_done(indexed_env: Path, small_catalogue_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli(["index", "--catalog", str(small_catalogue_dir), "--limit", "60"], capsys)
    assert code == 0
    assert "indexed 0, already present 60" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search"], "give --text, --image, or both"),
        (["search", "--text", "x", "--mode", "weird"], "unknown --mode"),
        (["search", "--image", "/no/such/file.jpg"], "does not exist"),
        (["index", "--catalog", "/no/such/catalogue"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(
    tandem_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert err.startswith("error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_search_before_index(tandem_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["search", "--text", "red kurta"], capsys)
    assert code == 1
    assert "tandem index" in err


def test_invalid_setting_is_one_line(tandem_env: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from api.settings import get_settings

    monkeypatch.setenv("TANDEM_IMAGES__MAX_BYTES", "lots")
    get_settings.cache_clear()
    code, _, err = run_cli(["search", "--text", "x"], capsys)
    assert code == 1
    assert err.startswith("error: invalid setting images.max_bytes")


def test_catalogue_stats(tandem_env: Path, small_catalogue_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["catalogue", "stats", "--catalog", str(small_catalogue_dir), "--json"], capsys)
    assert code == 0
    body = json.loads(out)
    assert [lvl["level"] for lvl in body["levels"]] == ["master_category", "sub_category", "article_type"]
    assert sum(body["levels"][0]["counts"].values()) == body["products"]
    assert body["levels"][2]["categories"] > body["levels"][0]["categories"]


def test_broken_catalogue_indexes_good_rows(
    tandem_env: Path, tmp_path: Path, small_catalogue_dir: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "broken"
    (root / "images").mkdir(parents=True)
    lines = (small_catalogue_dir / "products.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:6]
    fields = rows[1].split(",")
    rows.append(",".join(["777777", "", *fields[2:]]))  # line 7: empty title
    rows.append(rows[0])  # duplicate id
    (root / "products.csv").write_text("\n".join([header, *rows]) + "\n")
    for r in rows[:5]:
        pid = r.split(",")[0]
        (root / "images" / f"{pid}.jpg").symlink_to(small_catalogue_dir / "images" / f"{pid}.jpg")
    code, out, err = run_cli(["index", "--catalog", str(root)], capsys)
    assert code == 0
    assert "indexed 5" in out
    assert "row 7, column 'title': empty title" in err
    assert "row 8, column 'product_id': duplicate product id" in err


def test_corrupt_query_image_real_process(tandem_env: Path, tmp_path: Path) -> None:
    """What a user sees from the installed console script: one line, exit 1, no traceback."""
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    exe = Path(sys.executable).with_name("tandem")
    env = {**os.environ}
    proc = subprocess.run(
        [str(exe), "search", "--image", str(corrupt)], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "corrupt.jpg" in lines[0]
