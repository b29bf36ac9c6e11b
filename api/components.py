"""Build Tandem's heavy components from settings: encoders and the vector store.

The CLI and the HTTP service both build through these functions, so there is one
place that decides which implementation a setting selects.
"""

from __future__ import annotations

from pathlib import Path

from api.settings import Settings
from finetune.image_tower import ensure_untrained_tower
from retrieval.client_store import ClientStore
from retrieval.edge_store import EdgeStore
from retrieval.encoders import OpenClipImageEncoder, SentenceTransformerTextEncoder, set_offline
from retrieval.store import VectorStore

__all__ = ["build_image_encoder", "build_store", "build_text_encoder", "image_tower_dir"]


def image_tower_dir(settings: Settings) -> Path:
    """The checkpoint folder of the default image encoder."""
    if settings.encoders.image_checkpoint is not None:
        return settings.encoders.image_checkpoint
    return ensure_untrained_tower(settings.models_dir)


def build_text_encoder(settings: Settings) -> SentenceTransformerTextEncoder:
    if settings.encoders.offline:
        set_offline()
    enc = settings.encoders
    return SentenceTransformerTextEncoder(enc.text_model, device=enc.device, batch_size=enc.text_batch_size)


def build_image_encoder(settings: Settings) -> OpenClipImageEncoder:
    enc = settings.encoders
    if enc.image_checkpoint is None and enc.image_model is not None:
        return OpenClipImageEncoder.from_pretrained(
            enc.image_model, enc.image_pretrained, device=enc.device, batch_size=enc.batch_size
        )
    return OpenClipImageEncoder.from_checkpoint(image_tower_dir(settings), device=enc.device, batch_size=enc.batch_size)


def build_store(settings: Settings) -> VectorStore:
    q = settings.qdrant
    if q.url:
        from qdrant_client import QdrantClient

        client = QdrantClient(
            url=q.url, api_key=q.api_key.get_secret_value() if q.api_key else None, timeout=int(q.timeout_s)
        )
        return ClientStore(client, q.collection, hnsw_ef=q.hnsw_ef)
    return EdgeStore(settings.qdrant_dir, hnsw_ef=q.hnsw_ef)
