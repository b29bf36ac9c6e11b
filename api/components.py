"""Build Tandem's heavy components from settings: encoders and the vector store.

The CLI and the HTTP service both build through these functions, so there is one
place that decides which implementation a setting selects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from api.settings import ARTIFACTS_DIR, Settings
from llms.base_model import ensure_base_model
from llms.errors import BaseModelError
from retrieval.categories import CategoryIndex
from retrieval.client_store import ClientStore, ClusterLayout
from retrieval.edge_store import EdgeStore
from retrieval.encoders import (
    ImageEncoder,
    OpenClipImageEncoder,
    SentenceTransformerTextEncoder,
    TextEncoder,
    set_offline,
)
from retrieval.exact_match import ExactMatchIndex
from retrieval.hierarchical import HierarchicalRetriever
from retrieval.image_tower import ensure_untrained_tower
from retrieval.search import Retriever
from retrieval.store import VectorStore

Progress = Callable[[str, int, int], None]

__all__ = [
    "build_image_encoder",
    "build_retriever",
    "build_store",
    "build_text_encoder",
    "derived_indexes",
    "image_tower_dir",
    "llm_model_dirs",
    "tower_is_trained",
    "trained_tower_dir",
]


def trained_tower_dir(settings: Settings) -> Path | None:
    """The domain tower: trained under ``TANDEM_HOME`` by ``tandem train clip``, else the one shipped in the repo."""
    for folder in (settings.tower_dir, ARTIFACTS_DIR / "image-tower"):
        if (folder / "open_clip_config.json").is_file():
            return folder
    return None


def image_tower_dir(settings: Settings) -> Path:
    """The checkpoint folder of the image encoder: configured, else the trained domain tower, else untrained."""
    if settings.encoders.image_checkpoint is not None:
        return settings.encoders.image_checkpoint
    return trained_tower_dir(settings) or ensure_untrained_tower(settings.models_dir)


def tower_is_trained(settings: Settings) -> bool:
    return trained_tower_dir(settings) is not None


def llm_model_dirs(settings: Settings, *, progress: Progress | None = None) -> tuple[Path, Path]:
    """The base model folder (converted or downloaded once) and the ranker adapter the embedded worker serves."""
    base = ensure_base_model(settings.llm.base, settings.models_dir, progress=progress)
    adapter = settings.ranker_adapter_dir()
    if not (adapter / "adapter_config.json").is_file():
        raise BaseModelError(
            f"no ranker adapter in {adapter}: run `tandem train ranker` (or set TANDEM_LLM__RANKER_ADAPTER)"
        )
    return base, adapter


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


def build_retriever(
    settings: Settings,
    store: VectorStore,
    text_encoder: TextEncoder | None = None,
    image_encoder: ImageEncoder | None = None,
) -> HierarchicalRetriever:
    """Flat and hierarchical retrieval over ``store`` (level-1 categories cached under ``TANDEM_HOME``)."""
    text_encoder = text_encoder or build_text_encoder(settings)
    image_encoder = image_encoder or build_image_encoder(settings)
    exact, categories = derived_indexes(settings, store, text_encoder)
    retriever = Retriever(store, text_encoder, image_encoder, exact)
    return HierarchicalRetriever(retriever, categories, settings.retrieval.level1)


def derived_indexes(
    settings: Settings, store: VectorStore, text_encoder: TextEncoder
) -> tuple[ExactMatchIndex, CategoryIndex]:
    """What retrieval derives from the index's contents: exact-match fingerprints and the level-1 categories.

    Both are cached under ``TANDEM_HOME`` by the index's manifest and size, so a service that
    rebuilds them after the index grew (see ``Resources.refresh_retrieval``) pays once per change.
    """
    level1 = settings.retrieval.level1
    categories = CategoryIndex.load_or_build(
        store, text_encoder, cache_dir=settings.cache_dir, depth=settings.retrieval.category_depth,
        exclude=tower_holdout_ids(settings), head=level1.representation == "head",
        clusters=level1.clusters if level1.representation == "clusters" else 1,
    )  # fmt: skip
    return ExactMatchIndex.load_or_build(store, cache_dir=settings.cache_dir), categories


def tower_holdout_ids(settings: Settings) -> set[str]:
    """The products the image tower never trained on (level 1 learns nothing from them either, so evals stay fair)."""
    tower = trained_tower_dir(settings)
    recorded = tower / "holdout_ids.json" if tower is not None else None
    return set(json.loads(recorded.read_text())) if recorded is not None and recorded.is_file() else set()


def build_store(settings: Settings) -> VectorStore:
    q = settings.qdrant
    if q.url:
        api_key = q.api_key.get_secret_value() if q.api_key else None
        layout = ClusterLayout(q.shard_number, q.replication_factor, q.write_consistency_factor)
        return ClientStore.connect(
            q.url,
            q.collection,
            api_key=api_key,
            timeout_s=q.timeout_s,
            hnsw_ef=q.hnsw_ef,
            layout=layout,
            write_retries=q.write_retries,
        )
    return EdgeStore(settings.qdrant_dir, hnsw_ef=q.hnsw_ef)
