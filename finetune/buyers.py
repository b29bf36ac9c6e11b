"""SYNTHETIC buyers: a documented, seeded preference model over the real catalogue.

The shared catalogue has products but no buyers and no purchase logs, so the ranker is
trained and evaluated on buyers generated here. Everything about them is synthetic and is
labelled so wherever it shows (files, reports, README).

The preference model (price-free), per buyer:

1. **Profile**: business type (boutique, sportswear retailer, department store, footwear
   wholesaler, accessories reseller, online fashion reseller, corporate uniform supplier),
   region, the age band of its customers, and the gender it buys for (unknown for ~30 %).
2. **Category affinity**: the business type weights master categories and usages; 2–5
   *focus* categories (full category paths) are drawn in proportion to that weight × the
   number of the category's products that suit the buyer's gender, get Dirichlet(1) shares
   of 85 % of the mass; the rest spreads over all categories the business type sells.
3. **Colour affinity**: Dirichlet(0.5) over the twelve commonest colours, tilted by a small
   regional prior; other colours keep a floor.
4. **Usage affinity**: business type × age band (younger customers: casual and sports,
   older: formal and ethnic).
5. **Gender**: a product whose title names another gender is almost never bought
   (weight 0.005), and focus categories are drawn by how many of their products fit;
   "Unisex" and unnamed products fit everyone.

A product's utility is the sum of the log affinities. The purchase history (4–12 products)
and the next wanted product (the *target*) are drawn without replacement with Gumbel top-k
over the utilities. The query names the target in a few keywords (its article type, often
its colour, sometimes gender or usage); about 30 % of buyers also send a photo of a *similar*
product (same article type and colour, not the target itself), as buyers send competitors'
photos. Buyers are split into train/validation/test by a hash of their id.

Example:
    >>> from retrieval.catalogue import load_catalogue  # doctest: +SKIP
    >>> buyers = generate_buyers(load_catalogue("../shared/data/fashion"), BuyerConfig(n_buyers=100))  # doctest: +SKIP
    >>> buyers[0].split, len(buyers[0].history) >= 4  # doctest: +SKIP
    ('train', True)
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rag.ranker_format import product_gender
from retrieval.catalogue import Catalogue, Product

__all__ = [
    "BUSINESS_TYPES",
    "Buyer",
    "BuyerConfig",
    "BuyerProfile",
    "CatalogueCodes",
    "generate_buyers",
    "load_buyers",
    "query_likelihood",
    "save_buyers",
]

Split = Literal["train", "validation", "test"]

# Master-category and usage weights per business type (unlisted ones weigh 0.05).
BUSINESS_TYPES: dict[str, dict[str, dict[str, float]]] = {
    "boutique": {"master": {"Apparel": 3, "Accessories": 2, "Footwear": 1},
                 "usage": {"Ethnic": 3, "Party": 3, "Formal": 1.5, "Casual": 1}},
    "sportswear retailer": {"master": {"Apparel": 2, "Footwear": 2, "Accessories": 1, "Sporting Goods": 2},
                            "usage": {"Sports": 6, "Casual": 1}},
    "department store": {"master": {"Apparel": 2, "Accessories": 1.5, "Footwear": 1.5, "Personal Care": 1},
                         "usage": {"Casual": 2, "Formal": 1, "Ethnic": 1, "Sports": 1, "Smart Casual": 1}},
    "footwear wholesaler": {"master": {"Footwear": 8, "Accessories": 0.5},
                            "usage": {"Casual": 2, "Formal": 1.5, "Sports": 1.5, "Ethnic": 1}},
    "accessories reseller": {"master": {"Accessories": 6, "Personal Care": 2},
                             "usage": {"Casual": 2, "Formal": 1, "Party": 1}},
    "online fashion reseller": {"master": {"Apparel": 3, "Footwear": 1, "Accessories": 1},
                                "usage": {"Casual": 3, "Smart Casual": 2, "Sports": 1}},
    "corporate uniform supplier": {"master": {"Apparel": 4, "Footwear": 2, "Accessories": 1},
                                   "usage": {"Formal": 6, "Smart Casual": 2, "Casual": 0.5}},
}  # fmt: skip
REGIONS: dict[str, dict[str, float]] = {
    "Western Europe": {"Black": 1.5, "Navy Blue": 1.5, "Grey": 1.3, "White": 1.2},
    "North America": {"Blue": 1.4, "Black": 1.3, "Grey": 1.2, "Red": 1.1},
    "Middle East": {"White": 1.6, "Black": 1.5, "Gold": 1.8, "Beige": 1.3},
    "South Asia": {"Red": 1.5, "Pink": 1.4, "Yellow": 1.4, "Green": 1.3, "Gold": 1.3},
    "East Africa": {"Yellow": 1.5, "Green": 1.5, "Orange": 1.4, "Red": 1.3},
    "Latin America": {"Red": 1.4, "Pink": 1.3, "Orange": 1.3, "Blue": 1.2},
}
AGE_BANDS: dict[str, dict[str, float]] = {
    "18-24": {"Casual": 1.5, "Sports": 1.5, "Party": 1.3},
    "25-34": {"Casual": 1.2, "Smart Casual": 1.3, "Party": 1.1},
    "35-44": {"Formal": 1.3, "Smart Casual": 1.2},
    "45-54": {"Formal": 1.5, "Ethnic": 1.3},
    "55+": {"Formal": 1.4, "Ethnic": 1.5, "Casual": 0.8},
}
GENDERS = ("Men", "Women", "Boys", "Girls")
_OFF_TARGET = 0.05
_GENDER_MISMATCH = 0.005


@dataclass(frozen=True)
class BuyerProfile:
    """What the platform knows about a buyer's business (gender may be unknown)."""

    business_type: str
    region: str
    age_band: str
    gender: str | None

    def describe(self) -> str:
        who = f"buys for {self.gender}" if self.gender else "gender not stated"
        return f"{self.business_type} in {self.region}, customers aged {self.age_band}, {who}"


@dataclass(frozen=True)
class Buyer:
    """One SYNTHETIC buyer: profile, purchase history, the request, the product it wants, and its split."""

    buyer_id: str
    profile: BuyerProfile
    history: tuple[str, ...]
    target: str
    query_text: str
    query_image: str | None
    split: Split
    colour_weights: dict[str, float] = field(default_factory=dict)
    category_weights: dict[str, float] = field(default_factory=dict)
    usage_weights: dict[str, float] = field(default_factory=dict)
    synthetic: bool = True

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Buyer:
        raw = dict(data)
        raw["profile"] = BuyerProfile(**raw["profile"])  # type: ignore[arg-type]
        raw["history"] = tuple(raw["history"])  # type: ignore[arg-type]
        return cls(**raw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BuyerConfig:
    """How many buyers, how they are split, and the seed."""

    n_buyers: int = 6000
    seed: int = 0
    history_min: int = 4
    history_max: int = 12
    photo_share: float = 0.3
    validation_share: float = 0.1
    test_share: float = 0.1


class CatalogueCodes:
    """The catalogue as integer codes (category path, colour, usage, gender) for vectorised utilities."""

    def __init__(self, products: Sequence[Product]) -> None:
        self.products = list(products)
        self.ids = [p.product_id for p in self.products]
        self.index = {pid: i for i, pid in enumerate(self.ids)}
        self.paths = sorted({" > ".join(p.category) for p in self.products})
        self.colours = sorted({p.attributes.get("base_colour", "") for p in self.products})
        self.usages = sorted({p.attributes.get("usage", "") for p in self.products})
        path_pos = {c: i for i, c in enumerate(self.paths)}
        colour_pos = {c: i for i, c in enumerate(self.colours)}
        usage_pos = {c: i for i, c in enumerate(self.usages)}
        self.path = np.array([path_pos[" > ".join(p.category)] for p in self.products])
        self.colour = np.array([colour_pos[p.attributes.get("base_colour", "")] for p in self.products])
        self.usage = np.array([usage_pos[p.attributes.get("usage", "")] for p in self.products])
        self.gender = [product_gender(p.title) for p in self.products]
        self.path_master = [path.split(" > ")[0] for path in self.paths]
        self.path_size = np.bincount(self.path, minlength=len(self.paths)).astype(float)
        colour_counts = np.bincount(self.colour, minlength=len(self.colours))
        self.top_colours = [self.colours[int(i)] for i in np.argsort(-colour_counts, kind="stable")[:12]]
        self._by_type_colour: dict[tuple[int, int], list[int]] = {}
        for i, (path, colour) in enumerate(zip(self.path, self.colour, strict=True)):
            self._by_type_colour.setdefault((int(path), int(colour)), []).append(i)

    def gender_factor(self, gender: str | None) -> np.ndarray:
        if gender is None:
            return np.ones(len(self.products))
        fits = {gender, "Unisex", None} | ({"Kids"} if gender in {"Boys", "Girls"} else set())
        return np.array([1.0 if g in fits else _GENDER_MISMATCH for g in self.gender])

    def similar(self, i: int) -> list[int]:
        """Products with the same category path and colour as product ``i`` (itself included)."""
        return self._by_type_colour[(int(self.path[i]), int(self.colour[i]))]


def _split_of(buyer_id: str, config: BuyerConfig) -> Split:
    h = int.from_bytes(hashlib.sha256(buyer_id.encode()).digest()[:8], "big") / 2**64
    if h < config.test_share:
        return "test"
    if h < config.test_share + config.validation_share:
        return "validation"
    return "train"


# How a SYNTHETIC buyer words a request for its target: each facet named with this probability, then a lead.
_SAYS_COLOUR, _SAYS_GENDER, _SAYS_USAGE = 0.65, 0.5, 0.3
_LEADS = ("", "", "need ", "looking for ", "wholesale ", "bulk order: ")


def _query_words(product: Product, gender: str | None, rng: np.random.Generator) -> str:
    article = product.category[-1].lower()
    words: list[str] = []
    colour = product.attributes.get("base_colour", "")
    if colour and rng.random() < _SAYS_COLOUR:
        words.append(colour.lower())
    words.append(article)
    if gender and rng.random() < _SAYS_GENDER:
        words.append(f"for {gender.lower()}")
    usage = product.attributes.get("usage", "")
    if usage and rng.random() < _SAYS_USAGE:
        words.append(usage.lower())
    lead = _LEADS[int(rng.integers(len(_LEADS)))]
    return lead + " ".join(words)


def query_likelihood(query: str, product: Product, gender: str | None) -> float:
    """P(``query`` | the buyer wants ``product``) under the request model of :func:`_query_words`.

    The lead words are the same for every product, so they are stripped and left out. Example:
    a buyer who wants a red casual kurta writes "red kurtas" with probability 0.65 × 0.7 (colour
    named, usage not; gender unknown), and "kurtas" with 0.35 × 0.7.
    """
    text = query
    for lead in sorted({lead for lead in _LEADS if lead}, key=len, reverse=True):
        if text.startswith(lead):
            text = text[len(lead) :]
            break
    colour = product.attributes.get("base_colour", "")
    usage = product.attributes.get("usage", "")
    total = 0.0
    for says_colour, says_gender, says_usage in itertools.product((True, False), repeat=3):
        if (says_colour and not colour) or (says_gender and not gender) or (says_usage and not usage):
            continue
        words = [colour.lower()] if says_colour else []
        words.append(product.category[-1].lower())
        words += [f"for {gender.lower()}"] if says_gender and gender else []
        words += [usage.lower()] if says_usage else []
        if " ".join(words) != text:
            continue
        p = 1.0
        for named, share, known in ((says_colour, _SAYS_COLOUR, colour), (says_gender, _SAYS_GENDER, gender),
                                    (says_usage, _SAYS_USAGE, usage)):  # fmt: skip
            if known:
                p *= share if named else 1 - share
        total += p
    return total


def _gumbel_top_k(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k draws without replacement with probabilities softmax(logits), in draw order."""
    keys = logits + rng.gumbel(size=logits.shape)
    top = np.argpartition(-keys, k)[:k]
    return top[np.argsort(-keys[top])]


def _one_buyer(codes: CatalogueCodes, n: int, config: BuyerConfig, rng: np.random.Generator) -> Buyer:
    business = str(rng.choice(list(BUSINESS_TYPES)))
    region = str(rng.choice(list(REGIONS)))
    age = str(rng.choice(list(AGE_BANDS)))
    gender = str(rng.choice(GENDERS, p=[0.4, 0.4, 0.1, 0.1])) if rng.random() < 0.7 else None
    spec = BUSINESS_TYPES[business]

    master_w = np.array([spec["master"].get(m, _OFF_TARGET) for m in codes.path_master])
    k_focus = int(rng.integers(2, 6))
    fits = codes.gender_factor(gender)
    # Focus categories are drawn by how many products in them suit the buyer's gender.
    p_focus = master_w * np.bincount(codes.path, weights=fits, minlength=len(codes.paths))
    focus = rng.choice(len(codes.paths), size=k_focus, replace=False, p=p_focus / p_focus.sum())
    cat_w = 0.15 * master_w / master_w.sum()
    cat_w[focus] += 0.85 * rng.dirichlet(np.ones(k_focus))

    colour_w = np.full(len(codes.colours), 0.02)
    top = [codes.colours.index(c) for c in codes.top_colours]
    colour_w[top] += rng.dirichlet(np.full(len(top), 0.5))
    for name, tilt in REGIONS[region].items():
        if name in codes.colours:
            colour_w[codes.colours.index(name)] *= tilt
    colour_w /= colour_w.sum()

    usage_w = np.array(
        [spec["usage"].get(u, _OFF_TARGET) * AGE_BANDS[age].get(u, 1.0) for u in codes.usages], dtype=float
    )
    usage_w /= usage_w.sum()

    utility = (np.log(cat_w[codes.path]) + np.log(colour_w[codes.colour]) + np.log(usage_w[codes.usage])
               + np.log(codes.gender_factor(gender)))  # fmt: skip
    n_hist = int(rng.integers(config.history_min, config.history_max + 1))
    drawn = _gumbel_top_k(utility, n_hist + 1, rng)
    history, target = drawn[:-1], int(drawn[-1])
    target_product = codes.products[target]
    image: str | None = None
    if rng.random() < config.photo_share:
        others = [i for i in codes.similar(target) if i != target]
        image = codes.ids[int(rng.choice(others))] if others else codes.ids[target]
    buyer_id = f"b{config.seed}-{n:06d}"
    keep = np.argsort(-cat_w)[:12]
    return Buyer(
        buyer_id=buyer_id,
        profile=BuyerProfile(business, region, age, gender),
        history=tuple(codes.ids[int(i)] for i in history),
        target=codes.ids[target],
        query_text=_query_words(target_product, gender, rng),
        query_image=image,
        split=_split_of(buyer_id, config),
        colour_weights={c: round(float(w), 5) for c, w in zip(codes.colours, colour_w, strict=True) if w > 0.005},
        category_weights={codes.paths[int(i)]: round(float(cat_w[i]), 5) for i in keep},
        usage_weights={u: round(float(w), 5) for u, w in zip(codes.usages, usage_w, strict=True)},
    )


def generate_buyers(catalogue: Catalogue | Sequence[Product], config: BuyerConfig | None = None) -> list[Buyer]:
    """Generate ``config.n_buyers`` SYNTHETIC buyers; the same seed and catalogue give the same buyers."""
    config = config or BuyerConfig()
    products = catalogue.products if isinstance(catalogue, Catalogue) else list(catalogue)
    codes = CatalogueCodes(products)
    rng = np.random.default_rng(config.seed)
    return [_one_buyer(codes, n, config, rng) for n in range(config.n_buyers)]


def buyer_utility(buyer: Buyer, codes: CatalogueCodes, product_ids: Iterable[str]) -> np.ndarray:
    """The buyer's latent utility of each product (the oracle the ranker is taught to approximate)."""
    idx = np.array([codes.index[p] for p in product_ids], dtype=int)
    cat_floor = min(buyer.category_weights.values()) / 10 if buyer.category_weights else 1e-4
    cat = np.array([buyer.category_weights.get(codes.paths[codes.path[i]], cat_floor) for i in idx])
    colour = np.array([buyer.colour_weights.get(codes.colours[codes.colour[i]], 0.002) for i in idx])
    usage = np.array([buyer.usage_weights.get(codes.usages[codes.usage[i]], 0.002) for i in idx])
    gender = codes.gender_factor(buyer.profile.gender)[idx]
    utility: np.ndarray = np.log(cat) + np.log(colour) + np.log(usage) + np.log(gender)
    return utility


def save_buyers(buyers: Sequence[Buyer], folder: Path) -> dict[str, int]:
    """Write ``{train,validation,test}.jsonl`` (one SYNTHETIC buyer per line); returns the counts."""
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split in ("train", "validation", "test"):
        rows = [b for b in buyers if b.split == split]
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for b in rows:
                f.write(json.dumps(b.to_json(), ensure_ascii=False) + "\n")
        counts[split] = len(rows)
    (folder / "README.md").write_text(
        "# SYNTHETIC buyers\n\nGenerated by `finetune/buyers.py` from a seeded preference model over the real"
        " catalogue. They are not real buyers and have no real purchase logs.\n",
        encoding="utf-8",
    )
    return counts


def load_buyers(folder: Path, split: Split) -> list[Buyer]:
    path = folder / f"{split}.jsonl"
    with path.open(encoding="utf-8") as f:
        return [Buyer.from_json(json.loads(line)) for line in f if line.strip()]
