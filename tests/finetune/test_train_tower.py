"""The domain image tower: augmentations, the held-out split, and a real (tiny) training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.augment import BuyerPhotoAugment, resize_batch
from finetune.train_tower import ClipTrainConfig, TowerReport, _tower, holdout_ids, plan_steps, train_image_tower
from retrieval.catalogue import load_catalogue
from retrieval.encoders import OpenClipImageEncoder, SentenceTransformerTextEncoder
from retrieval.image_tower import TowerConfig, build_tower, save_tower
from tests.support.clock import FakeClock

ARTIFACT_META = Path(__file__).resolve().parents[2] / "artifacts" / "image-tower" / "tandem_meta.json"
TINY = TowerConfig(name="t", image_size=32, width=32, layers=1, head_width=16)


def test_augment_shapes_range_and_determinism() -> None:
    x = torch.randint(0, 256, (6, 3, 80, 60), dtype=torch.uint8)
    aug = BuyerPhotoAugment(32)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 32, 32)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    clean = resize_batch(x, 32)
    assert clean.shape == a.shape and not torch.allclose(clean, a)


def test_holdout_split_is_stable_and_sized() -> None:
    ids = [str(i) for i in range(20_000)]
    held = holdout_ids(ids, 0.05)
    assert 800 < len(held) < 1200
    assert holdout_ids(list(reversed(ids[:5000])), 0.05) == {i for i in held if int(i) < 5000}
    assert holdout_ids(ids, 0.0) == set()


@pytest.fixture(scope="module")
def trained(
    small_catalogue_dir: Path, text_encoder: SentenceTransformerTextEncoder, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TowerReport, Path]:
    cat = load_catalogue(small_catalogue_dir, limit=160)
    config = ClipTrainConfig(
        tower=TowerConfig(name="t", image_size=32, width=48, layers=1, head_width=24),
        epochs=4,
        min_steps=1,
        batch_size=32,
        lr=3e-3,
        holdout_fraction=0.2,
    )
    out = tmp_path_factory.mktemp("trained") / "image-tower"
    stages: list[str] = []
    report = train_image_tower(
        cat, text_encoder, config, out, cache_dir=out.parent / "cache", progress=lambda s, d, t: stages.append(s)
    )
    assert "training" in stages and "decoding photos" in stages
    return report, out


def test_training_learns_and_reports(trained: tuple[TowerReport, Path]) -> None:
    report, _ = trained
    assert report.losses[-1] < report.losses[0]
    assert report.train_products + report.holdout_products == 160
    for key in ("category_acc@1_clean", "category_acc@5_buyer_photo", "image_to_title_r@10_clean"):
        assert 0.0 <= report.holdout[key] <= 1.0


def test_checkpoint_loads_as_open_clip_and_is_aligned(trained: tuple[TowerReport, Path], text_encoder) -> None:  # type: ignore[no-untyped-def]
    report, out = trained
    enc = OpenClipImageEncoder.from_checkpoint(out)
    assert enc.dim == text_encoder.dim
    assert enc.aligned_text_encoder == text_encoder.model_id
    meta = json.loads((out / "tandem_meta.json").read_text())
    assert meta["trained"] is True
    assert ClipTrainConfig.model_validate(meta["train_config"]).epochs == 4  # the config round-trips
    held = json.loads((out / "holdout_ids.json").read_text())
    assert len(held) == report.holdout_products
    assert not out.with_name(out.name + ".partial").exists()
    vec = enc.encode([Image.new("RGB", (60, 80), (200, 0, 0))])
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)


def test_fine_tunes_an_open_clip_base_with_another_output_size(
    small_catalogue_dir: Path, text_encoder: SentenceTransformerTextEncoder, tmp_path: Path
) -> None:
    """A pretrained open_clip model (a local-dir: checkpoint of size 64) is fine-tuned into the 384-d text space."""
    from retrieval.image_tower import build_tower, load_base_tower, save_tower

    base_cfg = TowerConfig(name="base", embed_dim=64, image_size=32, width=32, layers=1, head_width=16, seed=5)
    base_model = build_tower(base_cfg)
    base_dir = save_tower(base_model, base_cfg, tmp_path / "base")
    loaded, spec = load_base_tower(f"local-dir:{base_dir}", None, 384)
    assert spec.model_cfg["embed_dim"] == 384 and spec.image_size == 32
    # The tower's weights come from the base; the projection to the new size starts afresh.
    torch.testing.assert_close(loaded.visual.conv1.weight, base_model.visual.conv1.weight)  # type: ignore[union-attr]
    assert loaded.visual.proj.shape == (32, 384)  # type: ignore[union-attr]
    cat = load_catalogue(small_catalogue_dir, limit=40)
    config = ClipTrainConfig(
        base_model=f"local-dir:{base_dir}", epochs=1, min_steps=1, batch_size=16, holdout_fraction=0.1
    )
    report = train_image_tower(cat, text_encoder, config, tmp_path / "tuned")
    enc = OpenClipImageEncoder.from_checkpoint(tmp_path / "tuned")
    assert enc.dim == 384 and enc.aligned_text_encoder == text_encoder.model_id
    assert report.steps >= 1


def test_budget_keeps_the_shipped_tower_and_lifts_small_catalogues() -> None:
    """The demo catalogue's default run is the shipped tower's (same batch and steps); 1,000 products get min_steps."""
    shipped = json.loads(ARTIFACT_META.read_text())
    recorded = ClipTrainConfig.model_validate(shipped["train_config"])  # an old config still loads
    assert plan_steps(shipped["report"]["train_products"], recorded) == (256, shipped["report"]["steps"])
    assert plan_steps(shipped["report"]["train_products"], ClipTrainConfig()) == (256, shipped["report"]["steps"])
    bs, steps = plan_steps(950, ClipTrainConfig())
    assert steps == ClipTrainConfig().min_steps > 6 * (950 // bs)
    assert plan_steps(950, ClipTrainConfig(steps=42)) == (bs, 42)


def test_runs_at_least_min_steps(
    small_catalogue_dir: Path, text_encoder: SentenceTransformerTextEncoder, tmp_path: Path
) -> None:
    cat = load_catalogue(small_catalogue_dir, limit=48)
    config = ClipTrainConfig(tower=TINY, epochs=1, min_steps=7, batch_size=16, holdout_fraction=0.0)
    steps: list[int] = []
    report = train_image_tower(cat, text_encoder, config, tmp_path / "t",
                               progress=lambda s, d, t: steps.append(d) if s == "training" and d else None)  # fmt: skip
    # 48 products in batches of 16 are 3 steps an epoch: the epoch budget alone would be 3.
    assert report.steps == report.planned_steps == 7 == steps[-1] == len(steps)
    assert len(report.losses) == 3 and not report.stopped_by_time  # passes of 3 + 3 + 1 steps


def test_time_budget_stops_on_the_clock(
    small_catalogue_dir: Path, text_encoder: SentenceTransformerTextEncoder, tmp_path: Path
) -> None:
    """Timing steps take 1 s, real ones 2 s on the injected clock: 26 steps planned in 30 s, the clock stops 13."""
    cat = load_catalogue(small_catalogue_dir, limit=48)
    clock = FakeClock()

    def tick(stage: str, done: int, total: int) -> None:
        if done:
            clock.advance(1.0 if stage == "timing steps" else 2.0 if stage == "training" else 0.0)

    config = ClipTrainConfig(tower=TINY, max_minutes=0.5, batch_size=16, holdout_fraction=0.0)
    report = train_image_tower(cat, text_encoder, config, tmp_path / "t", progress=tick, clock=clock)
    assert report.planned_steps == 26  # (30 s - 4 s of timing: a warm-up step and 3 timed) / 1 s a step
    assert report.stopped_by_time and report.steps == 13  # 4 s + 13 × 2 s ≥ 30 s
    assert (tmp_path / "t" / "open_clip_config.json").is_file()  # stopped cleanly, with a tower to serve


def test_warm_start_loads_the_source_and_rebuilds_the_category_head(
    small_catalogue_dir: Path, text_encoder: SentenceTransformerTextEncoder, tmp_path: Path
) -> None:
    source = build_tower(TINY.model_copy(update={"seed": 3}))
    src_dir = save_tower(source, TINY, tmp_path / "source")
    loaded, spec = _tower(ClipTrainConfig(init=str(src_dir)), text_encoder)
    assert spec.image_size == TINY.image_size
    for (name, a), b in zip(loaded.visual.state_dict().items(), source.visual.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    # Onto a catalogue with other categories (the source never saw them): a zero learning rate keeps the weights.
    cat = load_catalogue(small_catalogue_dir, limit=40)
    config = ClipTrainConfig(init=str(src_dir), lr=0.0, steps=2, batch_size=16, holdout_fraction=0.0)
    report = train_image_tower(cat, text_encoder, config, tmp_path / "warm")
    assert report.init == str(src_dir) and report.steps == 2
    assert report.categories == len({p.category for p in cat.products})
    warm = OpenClipImageEncoder.from_checkpoint(tmp_path / "warm")
    cold = OpenClipImageEncoder.from_checkpoint(src_dir)
    img = [Image.open(p.image_path).convert("RGB") for p in cat.products[:4] if p.image_path]
    np.testing.assert_allclose(warm.encode(img), cold.encode(img), atol=1e-5)


def test_warm_start_refuses_a_folder_without_a_checkpoint(
    text_encoder: SentenceTransformerTextEncoder, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="not an open_clip checkpoint folder"):
        _tower(ClipTrainConfig(init=str(tmp_path)), text_encoder)
