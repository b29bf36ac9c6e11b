"""Level-1 category representations: category-name text embeddings and prototypes of the products' own vectors.

Built once from the store (a scroll over every point) and cached beside the index,
keyed by the index's manifest and size, so a re-index invalidates it.

Example:
    >>> cats = CategoryIndex.load_or_build(store, text_encoder, cache_dir=Path("var/cache"))  # doctest: +SKIP
    >>> cats.keys[:2]  # doctest: +SKIP
    ['Accessories > Accessories > Accessory Gift Set', 'Accessories > Bags > Backpacks']
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from retrieval.encoders import TextEncoder, l2_normalise
from retrieval.errors import IndexNotFoundError, StoreError
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR, VectorStore, level_field

__all__ = ["CategoryIndex", "category_key", "category_text"]


def category_key(category: list[str] | tuple[str, ...], depth: int | None = None) -> str:
    """The key of a category (prefix of the path up to ``depth``, 0-based; None = full path)."""
    parts = list(category) if depth is None else list(category)[: depth + 1]
    return " > ".join(parts)


def category_text(key: str) -> str:
    """The text a category key is embedded from (the image tower's category objective uses the same)."""
    return key


@dataclass(frozen=True)
class CategoryIndex:
    """Per-category vectors for level 1, at one depth of the category path.

    ``text`` holds the text encoder's embedding of each category name; ``proto_image`` and
    ``proto_text`` the normalised mean of the products' image and text vectors.
    """

    depth: int | None
    keys: list[str]
    sizes: np.ndarray
    text: np.ndarray
    proto_image: np.ndarray
    proto_text: np.ndarray

    @property
    def total(self) -> int:
        return int(self.sizes.sum())

    @cached_property
    def position(self) -> dict[str, int]:
        """Row of each category key in the arrays."""
        return {key: i for i, key in enumerate(self.keys)}

    @classmethod
    def build(cls, store: VectorStore, text_encoder: TextEncoder, depth: int | None = None) -> CategoryIndex:
        sums_img: dict[str, np.ndarray] = {}
        sums_txt: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        field = "category_path" if depth is None else level_field(depth)
        for payload, vectors in store.scroll(vectors=[IMAGE_VECTOR, TEXT_VECTOR]):
            key = payload.get(field)
            if not isinstance(key, str):
                continue
            counts[key] = counts.get(key, 0) + 1
            for name, sums in ((IMAGE_VECTOR, sums_img), (TEXT_VECTOR, sums_txt)):
                v = vectors.get(name)
                if v is not None:
                    sums[key] = sums[key] + v if key in sums else v.astype(np.float64)
        if not counts:
            raise IndexNotFoundError("the index is empty: nothing to build level-1 categories from")
        keys = sorted(counts)
        proto_image = l2_normalise(np.stack([sums_img[k] for k in keys]).astype(np.float32))
        proto_text = l2_normalise(np.stack([sums_txt[k] for k in keys]).astype(np.float32))
        text = text_encoder.encode([category_text(k) for k in keys])
        sizes = np.array([counts[k] for k in keys], dtype=np.int64)
        return cls(depth, keys, sizes, text, proto_image, proto_text)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            depth=np.array(-1 if self.depth is None else self.depth),
            keys=np.array(self.keys, dtype=object),
            sizes=self.sizes,
            text=self.text,
            proto_image=self.proto_image,
            proto_text=self.proto_text,
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CategoryIndex:
        with np.load(path, allow_pickle=True) as z:
            depth = int(z["depth"])
            return cls(
                None if depth < 0 else depth,
                [str(k) for k in z["keys"]],
                z["sizes"],
                z["text"],
                z["proto_image"],
                z["proto_text"],
            )

    @classmethod
    def load_or_build(
        cls, store: VectorStore, text_encoder: TextEncoder, *, cache_dir: Path | None, depth: int | None = None
    ) -> CategoryIndex:
        """The cached index if it matches the store's manifest and size, else a fresh build (then cached)."""
        manifest = store.manifest()
        if manifest is None:
            raise IndexNotFoundError("there is no index yet: run `tandem index` first")
        try:
            n = store.count()
        except StoreError:
            n = -1
        fingerprint = hashlib.sha256(
            f"{manifest.model_dump_json()}|{n}|{depth}|{text_encoder.model_id}".encode()
        ).hexdigest()[:16]
        path = cache_dir / f"level1-{fingerprint}.npz" if cache_dir else None
        if path is not None and path.is_file():
            try:
                return cls.load(path)
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)
        built = cls.build(store, text_encoder, depth)
        if path is not None:
            built.save(path)
        return built
