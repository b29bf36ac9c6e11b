from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.encoders import OpenClipImageEncoder, SentenceTransformerTextEncoder, checkpoint_fingerprint
from retrieval.errors import EncoderError


def test_text_encoder_is_offline_minilm(text_encoder: SentenceTransformerTextEncoder) -> None:
    assert text_encoder.dim == 384
    assert text_encoder.model_id == "sentence-transformers:all-MiniLM-L6-v2"


def test_text_vectors_are_normalised_deterministic_and_meaningful(text_encoder: SentenceTransformerTextEncoder) -> None:
    texts = ["red kurta for women", "women's red kurtas", "black leather wallet for men"]
    a = text_encoder.encode(texts)
    b = text_encoder.encode(list(reversed(texts)))[::-1]
    assert a.shape == (3, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a[0] @ a[1] > a[0] @ a[2] + 0.2
    assert text_encoder.encode([]).shape == (0, 384)


def test_image_vectors_are_normalised_and_batch_independent(image_encoder: OpenClipImageEncoder) -> None:
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)) for _ in range(5)]
    all_at_once = image_encoder.encode(imgs)
    one_by_one = np.stack([image_encoder.encode([im])[0] for im in imgs])
    assert all_at_once.shape == (5, image_encoder.dim) == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(all_at_once, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(all_at_once, one_by_one, atol=1e-5)
    assert not np.allclose(all_at_once[0], all_at_once[1])


def test_image_encoder_round_trips_through_local_dir(tiny_tower_dir: Path, image_encoder: OpenClipImageEncoder) -> None:
    again = OpenClipImageEncoder.from_checkpoint(tiny_tower_dir)
    img = Image.new("RGB", (60, 80), (120, 30, 30))
    np.testing.assert_allclose(again.encode([img]), image_encoder.encode([img]), atol=1e-6)
    assert again.model_id == image_encoder.model_id
    assert again.model_id.endswith(checkpoint_fingerprint(tiny_tower_dir))


def test_not_a_checkpoint_is_an_encoder_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="not an open_clip checkpoint"):
        OpenClipImageEncoder.from_checkpoint(tmp_path)
