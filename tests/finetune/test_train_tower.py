"""The domain image tower: augmentations, the held-out split, and a real (tiny) training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.augment import BuyerPhotoAugment, resize_batch
from finetune.train_tower import ClipTrainConfig, TowerReport, holdout_ids, train_image_tower
from retrieval.catalogue import load_catalogue
from retrieval.encoders import OpenClipImageEncoder, SentenceTransformerTextEncoder
from retrieval.image_tower import TowerConfig


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
    config = ClipTrainConfig(base_model=f"local-dir:{base_dir}", epochs=1, batch_size=16, holdout_fraction=0.1)
    report = train_image_tower(cat, text_encoder, config, tmp_path / "tuned")
    enc = OpenClipImageEncoder.from_checkpoint(tmp_path / "tuned")
    assert enc.dim == 384 and enc.aligned_text_encoder == text_encoder.model_id
    assert report.steps >= 1
