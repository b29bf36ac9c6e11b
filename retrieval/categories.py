"""Level-1 category representations: names, prototypes, cluster prototypes and a learned head.

Built once from the store (a scroll over every point) and cached beside the index,
keyed by the index's manifest and size, so a re-index invalidates it. Everything level 1
learns from the products (prototypes, clusters, the head) is fitted on the products outside
``exclude`` (the image tower's held-out split), so photo queries of held-out products
evaluate level 1 on products it never saw.

Example:
    >>> cats = CategoryIndex.load_or_build(store, text_encoder, cache_dir=Path("var/cache"))  # doctest: +SKIP
    >>> cats.keys[:2]  # doctest: +SKIP
    ['Accessories > Accessories > Accessory Gift Set', 'Accessories > Bags > Backpacks']
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval.encoders import TextEncoder, l2_normalise
from retrieval.errors import IndexNotFoundError
from retrieval.store import IMAGE_VECTOR, TEXT_VECTOR, VectorStore, derived_cache_key, level_field

__all__ = ["CategoryHead", "CategoryIndex", "category_key", "category_text", "cluster_prototypes", "fit_category_head"]


def category_key(category: list[str] | tuple[str, ...], depth: int | None = None) -> str:
    """The key of a category (prefix of the path up to ``depth``, 0-based; None = full path)."""
    parts = list(category) if depth is None else list(category)[: depth + 1]
    return " > ".join(parts)


def category_text(key: str) -> str:
    """The text a category key is embedded from (the image tower's category objective uses the same)."""
    return key


@dataclass(frozen=True)
class CategoryHead:
    """A linear softmax classifier over the image vectors: ``log_softmax(x @ weight.T + bias)``.

    Example:
        >>> head = CategoryHead(np.eye(2, 3, dtype=np.float32), np.zeros(2, np.float32))
        >>> head.log_probs(np.array([[1.0, 0.0, 0.0]])).argmax()
        np.int64(0)
    """

    weight: np.ndarray  # (categories, dim)
    bias: np.ndarray  # (categories,)

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        """log P(category | image vector) for each row of ``x`` (or one vector)."""
        z = np.asarray(x, dtype=np.float32) @ self.weight.T + self.bias
        z = z - z.max(axis=-1, keepdims=True)
        out: np.ndarray = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return out


def fit_category_head(
    x: np.ndarray, labels: np.ndarray, n_classes: int, *, l2: float = 1e-5, iterations: int = 100
) -> CategoryHead:
    """Multinomial logistic regression of ``labels`` on ``x``: full-batch L-BFGS in torch, fixed start (deterministic).

    A class absent from ``labels`` gets a very low bias, so it is never predicted but stays well defined.
    """
    present = np.unique(labels)
    if len(present) == 1:  # one class: nothing to learn, it is always the answer
        bias = np.full(n_classes, -30.0, dtype=np.float32)
        bias[present[0]] = 0.0
        return CategoryHead(np.zeros((n_classes, x.shape[1]), dtype=np.float32), bias)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    absent = torch.ones(n_classes, dtype=torch.bool)
    absent[torch.from_numpy(present)] = False
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iterations, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = (xt @ w.T + b).masked_fill(absent, -30.0)
        loss = torch.nn.functional.cross_entropy(logits, yt) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        fitted_bias = b.masked_fill(absent, -30.0).numpy().astype(np.float32)
    return CategoryHead(w.detach().numpy().astype(np.float32), fitted_bias)


def cluster_prototypes(x: np.ndarray, k: int, *, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """Up to ``k`` unit prototypes of the rows of ``x`` by spherical k-means (k-means++ start, fixed seed).

    One prototype (the normalised mean) when ``k == 1``; never more prototypes than distinct rows.
    """
    x = l2_normalise(x)
    k = max(1, min(k, len(np.unique(x, axis=0))))
    if k == 1:
        mean: np.ndarray = l2_normalise(x.mean(axis=0, keepdims=True))
        return mean
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):  # k-means++: spread the starts out
        d = np.maximum(0.0, 1.0 - np.max(x @ np.stack(centres).T, axis=1))
        p = d / d.sum() if d.sum() > 0 else None
        centres.append(x[rng.choice(len(x), p=p)])
    c = np.stack(centres)
    for _ in range(iterations):
        assign = np.argmax(x @ c.T, axis=1)
        new = np.stack([x[assign == j].mean(axis=0) if np.any(assign == j) else c[j] for j in range(k)])
        new = l2_normalise(new)
        if np.allclose(new, c, atol=1e-6):
            break
        c = new
    return c


@dataclass(frozen=True)
class CategoryIndex:
    """Per-category vectors for level 1, at one depth of the category path.

    ``text`` holds the text encoder's embedding of each category name; ``proto_image`` and
    ``proto_text`` the normalised mean of the products' image and text vectors;
    ``cluster_image`` up to a few k-means prototypes per category (``cluster_owner`` says whose)
    and ``head`` a linear classifier of image vectors, when built.

    Example:
        >>> eye = np.eye(2, 3, dtype=np.float32)
        >>> CategoryIndex(None, ["a", "b"], np.array([3, 1]), eye, eye, eye).total
        4
    """

    depth: int | None
    keys: list[str]
    sizes: np.ndarray
    text: np.ndarray
    proto_image: np.ndarray
    proto_text: np.ndarray
    cluster_image: np.ndarray | None = None
    cluster_owner: np.ndarray | None = None
    head: CategoryHead | None = None

    @property
    def total(self) -> int:
        return int(self.sizes.sum())

    @cached_property
    def position(self) -> dict[str, int]:
        """Row of each category key in the arrays."""
        return {key: i for i, key in enumerate(self.keys)}

    @classmethod
    def from_vectors(
        cls,
        depth: int | None,
        product_keys: Sequence[str],
        image: np.ndarray,
        text: np.ndarray,
        text_encoder: TextEncoder | None,
        *,
        train: np.ndarray | None = None,
        clusters: int = 1,
        head: bool = False,
    ) -> CategoryIndex:
        """Build from every product's category key and vectors; ``train`` marks the products level 1 may learn from.

        Sizes count every product (they are what a search reads). A category with no product in
        ``train`` learns from its own products instead: it would otherwise be unreachable.
        """
        keys = sorted(set(product_keys))
        if not keys:
            raise IndexNotFoundError("the index is empty: nothing to build level-1 categories from")
        pos = {k: i for i, k in enumerate(keys)}
        labels = np.array([pos[k] for k in product_keys], dtype=np.int64)
        train = np.ones(len(labels), dtype=bool) if train is None else np.asarray(train, dtype=bool)
        learn = train | ~np.isin(labels, np.unique(labels[train]))
        sizes = np.bincount(labels, minlength=len(keys)).astype(np.int64)
        img, txt, lab = image[learn], text[learn], labels[learn]
        proto_image = l2_normalise(_sums(img, lab, len(keys)))
        proto_text = l2_normalise(_sums(txt, lab, len(keys)))
        cluster_image = cluster_owner = None
        if clusters > 1:
            protos = [cluster_prototypes(img[lab == i], clusters, seed=i) for i in range(len(keys))]
            cluster_image = np.concatenate(protos).astype(np.float32)
            cluster_owner = np.repeat(np.arange(len(keys)), [len(p) for p in protos])
        fitted = fit_category_head(img, lab, len(keys)) if head else None
        names = text_encoder.encode([category_text(k) for k in keys]) if text_encoder is not None else proto_text.copy()
        return cls(depth, keys, sizes, names, proto_image, proto_text, cluster_image, cluster_owner, fitted)

    @classmethod
    def build(
        cls,
        store: VectorStore,
        text_encoder: TextEncoder,
        depth: int | None = None,
        *,
        exclude: Collection[str] = (),
        clusters: int = 1,
        head: bool = False,
    ) -> CategoryIndex:
        """Scroll the store once and build; products in ``exclude`` count in sizes but teach level 1 nothing."""
        field = "category_path" if depth is None else level_field(depth)
        keys: list[str] = []
        images: list[np.ndarray] = []
        texts: list[np.ndarray] = []
        train: list[bool] = []
        excluded = set(exclude)
        for payload, vectors in store.scroll(vectors=[IMAGE_VECTOR, TEXT_VECTOR]):
            key = payload.get(field)
            img, txt = vectors.get(IMAGE_VECTOR), vectors.get(TEXT_VECTOR)
            if not isinstance(key, str) or img is None or txt is None:
                continue
            keys.append(key)
            images.append(img)
            texts.append(txt)
            train.append(str(payload.get("product_id")) not in excluded)
        if not keys:
            raise IndexNotFoundError("the index is empty: nothing to build level-1 categories from")
        return cls.from_vectors(
            depth,
            keys,
            np.stack(images).astype(np.float32),
            np.stack(texts).astype(np.float32),
            text_encoder,
            train=np.array(train),
            clusters=clusters,
            head=head,
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        extra: dict[str, Any] = {}
        if self.cluster_image is not None and self.cluster_owner is not None:
            extra |= {"cluster_image": self.cluster_image, "cluster_owner": self.cluster_owner}
        if self.head is not None:
            extra |= {"head_weight": self.head.weight, "head_bias": self.head.bias}
        np.savez(
            tmp,
            depth=np.array(-1 if self.depth is None else self.depth),
            keys=np.array(self.keys, dtype=object),
            sizes=self.sizes,
            text=self.text,
            proto_image=self.proto_image,
            proto_text=self.proto_text,
            **extra,
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CategoryIndex:
        with np.load(path, allow_pickle=True) as z:
            depth = int(z["depth"])
            files = set(z.files)
            head = CategoryHead(z["head_weight"], z["head_bias"]) if "head_weight" in files else None
            return cls(
                None if depth < 0 else depth,
                [str(k) for k in z["keys"]],
                z["sizes"],
                z["text"],
                z["proto_image"],
                z["proto_text"],
                z["cluster_image"] if "cluster_image" in files else None,
                z["cluster_owner"] if "cluster_owner" in files else None,
                head,
            )

    @classmethod
    def load_or_build(
        cls,
        store: VectorStore,
        text_encoder: TextEncoder,
        *,
        cache_dir: Path | None,
        depth: int | None = None,
        exclude: Collection[str] = (),
        clusters: int = 1,
        head: bool = False,
    ) -> CategoryIndex:
        """The cached index if it matches the store's manifest, size and build options, else a fresh build (cached)."""
        held = hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest()[:12]
        fingerprint = derived_cache_key(store, depth, text_encoder.model_id, "v2", clusters, head, held)
        path = cache_dir / f"level1-{fingerprint}.npz" if cache_dir and fingerprint else None
        if path is not None and path.is_file():
            try:
                return cls.load(path)
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)
        built = cls.build(store, text_encoder, depth, exclude=exclude, clusters=clusters, head=head)
        if path is not None:
            built.save(path)
        return built


def _sums(x: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, x.shape[1]), dtype=np.float64)
    np.add.at(out, labels, x)
    return out.astype(np.float32)
