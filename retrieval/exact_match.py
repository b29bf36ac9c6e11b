"""The exact-product stage of photo search: a photo of a catalogue product returns that product first.

Whatever the image tower's quality, a buyer who uploads (a lightly cropped, resized or
re-compressed copy of) a catalogue photo wants that product. Every catalogue photo gets a
perceptual fingerprint at index time (stored in its payload, :data:`FINGERPRINT_FIELD`):

* a 256-bit DCT pHash and a 256-bit dHash of the grey image, computed after trimming the
  near-white background (so a crop that only removes background changes nothing);
* an 8×8 RGB thumbnail of the trimmed photo (the hashes are colour-blind: the same shirt in
  red and in blue hashes alike).

A query matches the catalogue photo with the smallest distance ``hamming/512 + 2 · mean|Δcolour|``
when that distance is at most ``threshold``; the match goes first and the normal search follows.
The threshold comes from ``eval/reports/catalogue_generality.md`` (edited copies of catalogue
photos against held-out products). Photos that are byte-for-byte the same picture under two
product ids cannot be told apart by any image method: the first indexed wins.

Example:
    >>> index = ExactMatchIndex.from_fingerprints(["1"], [fingerprint(photo)], [{"product_id": "1"}])  # doctest: +SKIP
    >>> index.match(photo).product_id  # doctest: +SKIP
    '1'
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops

from retrieval.errors import RetrievalError
from retrieval.images import ImageLimits, read_image_file
from retrieval.store import SearchFilter, VectorStore, derived_cache_key

__all__ = [
    "DEFAULT_THRESHOLD",
    "FINGERPRINT_FIELD",
    "ExactMatch",
    "ExactMatchIndex",
    "fingerprint",
    "fingerprint_distance",
]

FINGERPRINT_FIELD = "image_fingerprint"
HASH_BYTES = 64  # 256 pHash bits + 256 dHash bits
COLOUR_BYTES = 8 * 8 * 3
COLOUR_WEIGHT = 2.0
# Measured on 44,072 fashion thumbnails (eval/reports/catalogue_generality.md): keeps false matches of
# products not in the index to a few per cent while finding most edited copies.
DEFAULT_THRESHOLD = 0.25
TIE_SLACK = 0.02  # candidates this close to the nearest are ties: the vector search's order decides
_BACKGROUND_TOLERANCE = 24  # grey levels from white still counted as background when trimming


@lru_cache(maxsize=2)
def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (pHash's transform; NumPy only)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    m[0] /= np.sqrt(2)
    out: np.ndarray = m * np.sqrt(2 / n)
    return out


def _trim(img: Image.Image) -> Image.Image:
    grey = img.convert("L")
    mask = ImageChops.difference(grey, Image.new("L", grey.size, 255)).point(
        lambda v: 255 if v > _BACKGROUND_TOLERANCE else 0
    )
    box = mask.getbbox()
    return img.crop(box) if box else img


def fingerprint(img: Image.Image) -> bytes:
    """The photo's fingerprint: 64 bytes of pHash+dHash bits, then 192 bytes of an 8×8 RGB thumbnail."""
    img = _trim(img.convert("RGB"))
    grey = img.convert("L")
    d = _dct_matrix(64)
    a = np.asarray(grey.resize((64, 64), Image.Resampling.BOX), dtype=np.float64)
    low = (d @ a @ d.T)[:16, :16].ravel()
    phash = low > np.median(low)
    g = np.asarray(grey.resize((17, 16), Image.Resampling.BOX), dtype=np.float64)
    dhash = (g[:, 1:] > g[:, :-1]).ravel()
    colour = np.asarray(img.resize((8, 8), Image.Resampling.BOX), dtype=np.uint8).ravel()
    return np.packbits(np.concatenate([phash, dhash])).tobytes() + colour.tobytes()


def _fingerprint_file(path: object) -> bytes | None:
    """The fingerprint of a stored catalogue photo, or None when there is no readable, decodable file."""
    if not isinstance(path, str) or not path:
        return None
    try:
        return fingerprint(read_image_file(Path(path), ImageLimits()))
    except RetrievalError:
        return None


def fingerprint_distance(query: bytes, prints: np.ndarray) -> np.ndarray:
    """Distance of one fingerprint to each row of ``prints`` (uint8, N × 256): 0 = the same picture.

    In uint8/uint64 throughout: it runs on every photo query over the whole catalogue, and a float copy of
    the prints per query cost more than the vector search itself.
    """
    q = np.frombuffer(query, dtype=np.uint8)
    h = np.ascontiguousarray(prints[:, :HASH_BYTES]).view(np.uint64)
    qh = np.ascontiguousarray(q[:HASH_BYTES]).view(np.uint64)
    bits = np.bitwise_count(np.bitwise_xor(h, qh)).sum(axis=1, dtype=np.uint32) / (HASH_BYTES * 8)
    c, qc = prints[:, HASH_BYTES:], q[HASH_BYTES:]
    diff = np.maximum(c, qc) - np.minimum(c, qc)  # |Δ| without leaving uint8
    colour = diff.sum(axis=1, dtype=np.uint32) / (COLOUR_BYTES * 255.0)
    out: np.ndarray = bits + COLOUR_WEIGHT * colour
    return out


def encode_fingerprint(fp: bytes) -> str:
    return base64.b64encode(fp).decode("ascii")


def _passes(payload: Mapping[str, Any], search_filter: SearchFilter | None) -> bool:
    """Whether a stored payload satisfies a search filter (the same conditions Qdrant applies)."""
    if search_filter is None or search_filter.is_empty():
        return True
    for key, accepted in search_filter.conditions():
        value: Any = payload
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value not in accepted:
            return False
    return True


@dataclass(frozen=True, slots=True)
class ExactMatch:
    """A catalogue product whose photo the query is a near-duplicate of."""

    product_id: str
    distance: float
    payload: dict[str, Any]


class ExactMatchIndex:
    """Fingerprints of every indexed catalogue photo, matched by Hamming + colour distance.

    Example:
        >>> index = ExactMatchIndex.load_or_build(store, cache_dir=Path("var/cache"))  # doctest: +SKIP
        >>> index.match(photo)  # doctest: +SKIP
        ExactMatch(product_id='12783', distance=0.04, payload={...})
    """

    def __init__(
        self, ids: Sequence[str], prints: np.ndarray, payloads: Sequence[str], threshold: float = DEFAULT_THRESHOLD
    ) -> None:
        self.ids = list(ids)
        self.prints = prints.reshape(len(self.ids), HASH_BYTES + COLOUR_BYTES).astype(np.uint8)
        self.payloads = list(payloads)  # JSON, parsed only for a hit
        self.threshold = threshold

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_fingerprints(
        cls,
        ids: Sequence[str],
        prints: Sequence[bytes],
        payloads: Sequence[Mapping[str, Any]],
        threshold: float = DEFAULT_THRESHOLD,
    ) -> ExactMatchIndex:
        arr = np.frombuffer(b"".join(prints), dtype=np.uint8) if prints else np.zeros((0,), np.uint8)
        return cls(ids, arr, [json.dumps(dict(p)) for p in payloads], threshold)

    @classmethod
    def build(cls, store: VectorStore, threshold: float = DEFAULT_THRESHOLD) -> ExactMatchIndex:
        """Every stored fingerprint, read from the payloads.

        A point indexed before fingerprints existed is fingerprinted from its catalogue photo (the payload's
        ``image`` path) when that file is readable, so an older index gets the stage without a re-index (about
        1 ms a photo, once: :meth:`load_or_build` caches the result); a point with neither is left out.
        """
        ids: list[str] = []
        prints: list[bytes] = []
        payloads: list[dict[str, Any]] = []
        for payload, _ in store.scroll(vectors=[]):
            fp = payload.pop(FINGERPRINT_FIELD, None)
            raw = base64.b64decode(fp) if isinstance(fp, str) else _fingerprint_file(payload.get("image"))
            if raw is None or len(raw) != HASH_BYTES + COLOUR_BYTES:
                continue
            ids.append(str(payload.get("product_id")))
            prints.append(raw)
            payloads.append(payload)
        return cls.from_fingerprints(ids, prints, payloads, threshold)

    @classmethod
    def load_or_build(
        cls, store: VectorStore, *, cache_dir: Path | None, threshold: float = DEFAULT_THRESHOLD
    ) -> ExactMatchIndex:
        """The cached fingerprints if they match the store's manifest and size, else read from the store."""
        # v2: points without a stored fingerprint are fingerprinted from their photo (v1 caches left them out).
        key = derived_cache_key(store, FINGERPRINT_FIELD, "v2")
        path = cache_dir / f"exact-{key}.npz" if cache_dir and key else None
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    return cls(list(z["ids"]), z["prints"], list(z["payloads"]), threshold)
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)
        built = cls.build(store, threshold)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".partial.npz")
            np.savez(tmp, ids=np.array(built.ids, dtype=str), prints=built.prints,
                     payloads=np.array(built.payloads, dtype=str))  # fmt: skip
            tmp.replace(path)
        return built

    def candidates(self, img: Image.Image, search_filter: SearchFilter | None = None) -> list[ExactMatch]:
        """Catalogue products ``img`` may be a copy of: within the threshold, passing the filter, nearest first.

        Only those within :data:`TIE_SLACK` of the nearest are returned: the same picture under two ids
        (distance 0 to both) or near-identical photos, which the caller may order by its search.
        """
        if not self.ids:
            return []
        dist = fingerprint_distance(fingerprint(img), self.prints)
        out: list[ExactMatch] = []
        for i in np.argsort(dist, kind="stable")[:8]:
            if dist[i] > self.threshold or (out and dist[i] > out[0].distance + TIE_SLACK):
                break
            payload = json.loads(self.payloads[i])
            if _passes(payload, search_filter):
                out.append(ExactMatch(self.ids[i], float(dist[i]), payload))
        return out

    def match(self, img: Image.Image, search_filter: SearchFilter | None = None) -> ExactMatch | None:
        """The catalogue product ``img`` is a copy of (the nearest within the threshold, passing the filter)."""
        found = self.candidates(img, search_filter)
        return found[0] if found else None
