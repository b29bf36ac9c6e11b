"""Where the knobs put a list on the relevance–diversity trade-off: ``tandem experiment diversity``.

On SYNTHETIC test buyers (their words, and their photo when they sent one) and on photo-only
queries, every request gets one candidate pool from Tandem's real hierarchical retrieval, larger
than K = 10: the best hits of the categories level 1 kept, then (``explore``) the best
product of each of the nearest categories it left out, the choice a buyer without a precise
target wants. The same pools are then ordered by:

- the **LoRA ranker** with sampling: temperature 0 → 1.5; top-p and top-k at
  temperature 1; several seeds each. The ranker asks as the pipeline does (a required
  ``submit_ranking`` call over an ``enum`` of the candidate ids, ``uniqueItems``), so a hot
  ranker samples a ranking without repeats; its answer is validated and filled as in the pipeline;
- **MMR** over the pool (retrieval scores, image vectors), λ from 1 (relevance order) to 0.

For each setting: NDCG@10 against the buyer's graded relevance (3 = the wanted product,
2 = same category and colour, 1 = same category), ILD@10 on image embeddings, the spread
of both across seeds (the standard deviation of the per-seed means), and beside them the
category-tree ILD@10, novelty@10 and the coverage of the pooled products and categories. A
uniformly random order of each pool is measured too: what a ranker that ignored its candidates
would reach on these pools; each setting's NDCG@10 is set against a partial shuffle at the same
ILD@10 (:func:`gap_to_shuffle`), and the share of its top 10 taken from the explored tail is
reported. Headline figures:
``ild_range_ratio`` (highest over lowest mean ILD@10 the sampling knobs reach) and
``ndcg_gap_vs_mmr_at_equal_ild`` (the best sampling setting's NDCG@10 minus MMR's,
interpolated at the same ILD; ≥ 0 means the ranker's knobs are at least as good as MMR).
The measured points are also Tandem's diversity calibration (``api.http.diversity``).

Example:
    >>> report = run_experiment(settings, budget=200)  # doctest: +SKIP
    >>> report["ild_range_ratio"]  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.diversity import CoverageTracker, novelty
from eval.metrics import ndcg_at_k
from eval.ranker_eval import llm_ranker
from eval.report_format import verdict
from finetune.buyers import Buyer
from finetune.ranking_data import RankingCase, graded_relevance
from llms.client import ChatClient
from rag.diversity import category_ild, ild, mmr_order
from rag.validation import validate_ranking
from retrieval.catalogue import Catalogue
from retrieval.hierarchical import EXPLORE_PER_CATEGORY

__all__ = [
    "ListScore",
    "Request",
    "Setting",
    "gap_at_equal_ild",
    "gap_at_most_diverse",
    "gap_to_shuffle",
    "run_experiment",
    "summarise",
]

K = 10
SAMPLING: list[tuple[str, float, dict[str, Any]]] = [
    *[("temperature", t, {"temperature": t}) for t in (0.0, 0.3, 0.6, 0.9, 1.2, 1.5)],
    *[("top_p", p, {"temperature": 1.0, "top_p": p}) for p in (0.3, 0.6, 0.8, 0.95)],
    *[("top_k", float(k), {"temperature": 1.0, "top_k": k}) for k in (2, 5, 10, 40)],
]
MMR_LAMBDAS = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
RANDOM_SHUFFLES = 20  # runs of the random-order baseline (each shuffles every pool)


@dataclass(frozen=True)
class Request:
    """One experiment request: a buyer, the query kind, and its candidate pool (retrieval order, with scores)."""

    buyer: Buyer
    kind: str  # "words" (with the photo when the buyer sent one) or "photo"
    pool: tuple[str, ...]
    scores: tuple[float, ...]
    explored: int = 0  # the pool's last ``explored`` products come from categories level 1 left out

    @property
    def tail(self) -> frozenset[str]:
        """The explored products: what a list takes from nearby categories rather than the precise hits."""
        return frozenset(self.pool[len(self.pool) - self.explored :]) if self.explored else frozenset()


@dataclass(frozen=True)
class ListScore:
    """One ranked list's relevance and diversity at K."""

    ndcg: float
    ild: float  # image embeddings
    ild_category: float = 0.0  # category-tree distance
    novelty: float = 0.0  # mean -log2 purchase popularity
    explored: float = 0.0  # share of the list from the pool's explored tail


@dataclass(frozen=True)
class Setting:
    knob: str
    value: float
    ndcg: float
    ild: float
    ild_std: float
    ndcg_std: float
    seeds: int
    ild_category: float = 0.0
    novelty: float = 0.0
    product_coverage: float = 0.0  # share of the pooled products that some top-K list shows
    category_coverage: float = 0.0  # share of the pooled categories that some top-K list shows
    explored: float = 0.0  # share of the top-K lists taken from the pools' explored tails

    def metrics(self) -> dict[str, float]:
        """The setting's measurements under the report's JSON keys."""
        return {"ndcg@10": self.ndcg, "ild@10": self.ild, "ild_std": self.ild_std,
                "ild_category@10": self.ild_category, "novelty@10": self.novelty,
                "product_coverage": self.product_coverage, "category_coverage": self.category_coverage,
                "explored@10": self.explored}  # fmt: skip


Progress = Callable[[str, int, int], None]


def _relevance(request: Request, catalogue: Catalogue) -> dict[str, int]:
    target = catalogue.get(request.buyer.target)
    if target is None:
        return {}
    return {pid: graded_relevance(target, p) for pid in request.pool if (p := catalogue.get(pid)) is not None}


class _Scorer:
    """Scores top-K lists of the experiment's pools: relevance, ILD (image, category), novelty, coverage."""

    def __init__(
        self,
        requests: Sequence[Request],
        catalogue: Catalogue,
        vectors: Mapping[str, np.ndarray],
        popularity: Mapping[str, float] | None,
    ) -> None:
        self.vectors = vectors
        self.popularity = popularity
        self.relevance = [_relevance(r, catalogue) for r in requests]
        self.tails = [r.tail for r in requests]
        pooled = {pid for r in requests for pid in r.pool}
        self.paths = {pid: tuple(p.category) if (p := catalogue.get(pid)) is not None else () for pid in pooled}
        self.n_products = len(pooled)
        self.n_categories = len(set(self.paths.values()))

    def score(self, ranking: Sequence[str], relevance: dict[str, int], tail: frozenset[str] = frozenset()) -> ListScore:
        top = list(ranking[:K])
        return ListScore(
            ndcg_at_k(top, relevance, K),
            ild(np.vstack([self.vectors[p] for p in top])),
            category_ild([self.paths[p] for p in top]),
            novelty(top, self.popularity) if self.popularity is not None else 0.0,
            sum(p in tail for p in top) / len(top),
        )

    def score_all(self, orders: Sequence[Sequence[str]]) -> list[ListScore]:
        """One order per request, in the requests' order."""
        return [self.score(o, rel, tail) for o, rel, tail in zip(orders, self.relevance, self.tails, strict=True)]

    def coverage(self, rankings: Sequence[Sequence[str]]) -> tuple[float, float]:
        tracker = CoverageTracker(max(1, self.n_products), max(1, self.n_categories))
        for ranking in rankings:
            top = list(ranking[:K])
            tracker.add(top, [self.paths[p] for p in top])
        return tracker.product_coverage, tracker.category_coverage


def _mean(values: Sequence[float]) -> float:
    return round(float(np.mean(values)), 4) if len(values) else 0.0


def summarise(
    knob: str,
    value: float,
    per_seed: Sequence[Sequence[ListScore]],
    coverage: Sequence[tuple[float, float]] = (),
) -> Setting:
    """Means over requests and seeds; the spreads are across the per-seed means."""
    ndcg_means = [float(np.mean([s.ndcg for s in rows])) for rows in per_seed]
    ild_means = [float(np.mean([s.ild for s in rows])) for rows in per_seed]
    return Setting(
        knob,
        value,
        _mean(ndcg_means),
        _mean(ild_means),
        round(float(np.std(ild_means)), 4),
        round(float(np.std(ndcg_means)), 4),
        len(per_seed),
        ild_category=_mean([s.ild_category for rows in per_seed for s in rows]),
        novelty=_mean([s.novelty for rows in per_seed for s in rows]),
        product_coverage=_mean([c[0] for c in coverage]),
        category_coverage=_mean([c[1] for c in coverage]),
        explored=_mean([s.explored for rows in per_seed for s in rows]),
    )


def ranker_orders(
    llm: ChatClient,
    model: str,
    catalogue: Catalogue,
    requests: Sequence[Request],
    sampling: dict[str, Any],
    seed: int,
) -> list[list[str]]:
    """The validated ranking of every pool by the LLM ranker with these sampling knobs and this seed."""
    cases = [RankingCase(r.buyer, r.pool) for r in requests]
    answers = llm_ranker(llm, model, catalogue, sampling={**sampling, "seed": seed})(cases)
    return [validate_ranking(a.ids, list(r.pool)).ranking for a, r in zip(answers, requests, strict=True)]


def gap_at_equal_ild(sampling: Sequence[Setting], mmr: Sequence[Setting]) -> float | None:
    """The best sampling setting's NDCG@10 minus MMR's NDCG@10 interpolated at that setting's ILD@10.

    Only settings inside MMR's measured ILD range count (no extrapolation); None when there are none.
    """
    gaps = _gaps(sampling, mmr)
    return round(max(g for _, g in gaps), 4) if gaps else None


def gap_at_most_diverse(sampling: Sequence[Setting], mmr: Sequence[Setting]) -> float | None:
    """The same gap for the sampling setting with the highest ILD@10 (inside MMR's range): what diversity costs.

    The best gap is often a near-greedy setting beside MMR's λ = 1 point, which says little about the trade-off.
    """
    gaps = _gaps(sampling, mmr)
    return round(max(gaps, key=lambda pair: pair[0].ild)[1], 4) if gaps else None


def gap_to_shuffle(setting: Setting, retrieval: Setting, random_order: Setting) -> float | None:
    """NDCG@10 above a partial shuffle at the same ILD@10; None outside the two orders' ILD range.

    The partial shuffle shows each request its pool in random order with probability α and in retrieval order
    otherwise: its expected NDCG and ILD are both linear in α, so it is the straight line between the two
    points. A ranker whose sampling only forgot its candidates would sit on that line; one that reads them
    stays above it.
    """
    low, high = retrieval.ild, random_order.ild
    if high <= low or not low <= setting.ild <= high:
        return None
    alpha = (setting.ild - low) / (high - low)
    return round(setting.ndcg - (retrieval.ndcg + alpha * (random_order.ndcg - retrieval.ndcg)), 4)


def _gaps(sampling: Sequence[Setting], mmr: Sequence[Setting]) -> list[tuple[Setting, float]]:
    curve = sorted(mmr, key=lambda s: s.ild)
    xs = [s.ild for s in curve]
    ys = [s.ndcg for s in curve]
    return [(s, s.ndcg - float(np.interp(s.ild, xs, ys))) for s in sampling if xs[0] <= s.ild <= xs[-1]]


def _sampling_settings(
    rank: Callable[[dict[str, Any], int], list[list[str]]],
    scorer: _Scorer,
    seeds: int,
    report_progress: Progress,
) -> list[Setting]:
    """One setting per sampling knob value, each ranked with every seed (greedy decoding: once)."""
    settings: list[Setting] = []
    total = sum(1 if s["temperature"] == 0.0 else seeds for _, _, s in SAMPLING)
    done = 0
    for knob, value, sampling in SAMPLING:
        per_seed, coverage = [], []
        # Greedy decoding ignores the seed: one run stands for all.
        for seed in range(1 if sampling["temperature"] == 0.0 else seeds):
            orders = rank(sampling, seed)
            per_seed.append(scorer.score_all(orders))
            coverage.append(scorer.coverage(orders))
            done += 1
            report_progress("ranker sampling sweep", done, total)
        settings.append(summarise(knob, value, per_seed, coverage))
    return settings


def _mmr_settings(requests: Sequence[Request], vectors: dict[str, np.ndarray], scorer: _Scorer) -> list[Setting]:
    settings: list[Setting] = []
    for lam in MMR_LAMBDAS:
        orders = []
        for request in requests:
            order = mmr_order(request.scores, np.vstack([vectors[p] for p in request.pool]), lam=lam, k=K)
            orders.append([request.pool[i] for i in order])
        settings.append(summarise("mmr_lambda", lam, [scorer.score_all(orders)], [scorer.coverage(orders)]))
    return settings


def _baselines(requests: Sequence[Request], scorer: _Scorer, shuffles: int) -> tuple[Setting, Setting]:
    """The pools in retrieval order, and in a uniformly random order (``shuffles`` runs, each shuffling every pool)."""
    pools = [list(r.pool) for r in requests]
    retrieval = summarise("retrieval", 0.0, [scorer.score_all(pools)], [scorer.coverage(pools)])
    # A uniformly random order of the same pool, for scale: a ranker that ignored its candidates. (Not a ceiling: a
    # hot ranker that favours the explored tail goes beyond it.) One generator per run, drawn on for every pool: a
    # generator per pool with the run's seed would give all same-sized pools the same permutation.
    runs = [random.Random(seed) for seed in range(max(1, shuffles))]
    shuffled_runs = [[rng.sample(pool, len(pool)) for pool in pools] for rng in runs]
    random_order = summarise(
        "random",
        0.0,
        [scorer.score_all(run) for run in shuffled_runs],
        [scorer.coverage(run) for run in shuffled_runs],
    )
    return retrieval, random_order


def _experiment_report(
    requests: Sequence[Request],
    settings: Sequence[Setting],
    baselines: tuple[Setting, Setting],
    seeds: int,
    pool: tuple[int, int],
) -> dict[str, Any]:
    """The report dict: every setting, the headline figures and how the requests and pools were made."""
    retrieval, random_order = baselines
    sampled = [s for s in settings if s.knob in {"temperature", "top_p", "top_k"}]
    mmr = [s for s in settings if s.knob == "mmr_lambda"]
    lowest = min(s.ild for s in sampled)
    temps = [s.ild for s in settings if s.knob == "temperature"]
    shuffle_gaps = [g for s in sampled if (g := gap_to_shuffle(s, retrieval, random_order)) is not None]
    return {
        "settings": [
            {
                "knob": s.knob,
                "value": s.value,
                **s.metrics(),
                "ndcg_std": s.ndcg_std,
                "seeds": s.seeds,
                "ndcg_gap_vs_shuffle": gap_to_shuffle(s, retrieval, random_order),
            }
            for s in settings
        ],
        "ild_range_ratio": round(max(s.ild for s in sampled) / lowest, 4) if lowest > 0 else math.inf,
        "ndcg_gap_vs_mmr_at_equal_ild": gap_at_equal_ild(sampled, mmr),
        "ndcg_gap_vs_mmr_at_most_diverse_sampling": gap_at_most_diverse(sampled, mmr),
        "temperature_monotone": all(b >= a for a, b in itertools.pairwise(temps)),
        # The sampling settings against a partial shuffle of the same pools at the same ILD (gap_to_shuffle).
        "ndcg_gap_vs_shuffle": {
            "min": min(shuffle_gaps) if shuffle_gaps else None,
            "mean": _mean(shuffle_gaps) if shuffle_gaps else None,
            "settings_compared": len(shuffle_gaps),
            "settings_sampled": len(sampled),
        },
        "retrieval_order": retrieval.metrics(),
        "random_order": random_order.metrics(),
        # The random order's ILD@10 over the lowest sampling setting's: how broad these pools are.
        "random_order_ild_ratio": round(random_order.ild / lowest, 4) if lowest > 0 else math.inf,
        "requests": {
            "total": len(requests),
            "words": sum(r.kind == "words" for r in requests),
            "photo": sum(r.kind == "photo" for r in requests),
        },
        "seeds": seeds,
        "pool": {
            "precise": pool[0],
            "explored_categories": pool[1],
            "per_category": EXPLORE_PER_CATEGORY,
            "mean_size": round(float(np.mean([len(r.pool) for r in requests])), 2) if requests else 0.0,
        },
        "synthetic_buyers": True,
    }


def run_experiment(
    requests: Sequence[Request],
    catalogue: Catalogue,
    vectors: dict[str, np.ndarray],
    rank: Callable[[dict[str, Any], int], list[list[str]]],
    *,
    seeds: int = 3,
    popularity: Mapping[str, float] | None = None,
    progress: Progress | None = None,
    pool: tuple[int, int] = (20, 0),
) -> dict[str, Any]:
    """Sweep every knob over the same pools; ``rank(sampling, seed)`` orders every pool with the LLM ranker.

    ``popularity`` (product id → share of purchases) adds novelty; coverage is over the pooled products.
    ``pool`` says how the pools were made (precise hits, nearby categories explored) for the report.
    """
    report_progress = progress or (lambda stage, done, total: None)
    scorer = _Scorer(requests, catalogue, vectors, popularity)
    settings = _sampling_settings(rank, scorer, seeds, report_progress)
    settings += _mmr_settings(requests, vectors, scorer)
    # The random order costs no LLM call, so it gets more runs than the ranker's seeds: it is one end of the
    # partial-shuffle line every sampling setting is measured against.
    baselines = _baselines(requests, scorer, max(seeds, RANDOM_SHUFFLES))
    return _experiment_report(requests, settings, baselines, seeds, pool)


def _plot(report: dict[str, Any], path: Path) -> None:
    """The trade-off: NDCG@10 against ILD@10 per knob, with the retrieval and random orders for scale."""
    import matplotlib  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - lazy: matplotlib only when a plot is drawn (seconds to import)

    fig, ax = plt.subplots(figsize=(7.5, 5))
    labels = {"temperature": "ranker temperature", "top_p": "ranker top-p (T=1)", "top_k": "ranker top-k (T=1)",
              "mmr_lambda": "MMR λ (retrieval scores)"}  # fmt: skip
    for knob, label in labels.items():
        rows = [s for s in report["settings"] if s["knob"] == knob]
        if not rows:
            continue
        ax.errorbar([s["ild@10"] for s in rows], [s["ndcg@10"] for s in rows], xerr=[s["ild_std"] for s in rows],
                    yerr=[s["ndcg_std"] for s in rows], marker="o", capsize=3, label=label)  # fmt: skip
        for s in rows:
            ax.annotate(f"{s['value']:g}", (s["ild@10"], s["ndcg@10"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    base = report["retrieval_order"]
    ax.scatter([base["ild@10"]], [base["ndcg@10"]], marker="*", s=150, color="black", label="retrieval order", zorder=5)
    if "random_order" in report:
        rnd = report["random_order"]
        ax.scatter([rnd["ild@10"]], [rnd["ndcg@10"]], marker="X", s=110, color="grey", zorder=5,
                   label="random order of the pool (for scale)")  # fmt: skip
        ax.plot([base["ild@10"], rnd["ild@10"]], [base["ndcg@10"], rnd["ndcg@10"]], linestyle="--", color="grey",
                linewidth=1, label="partial shuffle (retrieval or random order per request)")  # fmt: skip
    ax.set_xlabel("ILD@10 (image embeddings, mean pairwise 1 − cos)")
    ax.set_ylabel("NDCG@10 (graded relevance, SYNTHETIC buyers)")
    ax.set_title("Relevance against diversity, per knob (error bars: spread across seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(report: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """``diversity.md`` as lines: what was measured, the table, the targets and the reading."""
    base = report["retrieval_order"]
    ratio, gap = report["ild_range_ratio"], report["ndcg_gap_vs_mmr_at_equal_ild"]
    shuffle = report.get("ndcg_gap_vs_shuffle") or {"min": None, "mean": None, "settings_compared": 0}
    return [
        "# Diversity you can dial: the relevance–diversity trade-off per knob",
        "",
        "> Requests are those of **SYNTHETIC** test buyers (`finetune/buyers.py`) plus photo-only queries of their"
        " photos; the candidate pools come from Tandem's real hierarchical retrieval, the rankings from the LoRA ranker"
        " served by the embedded worker's engine, MMR from `rag/mmr.py`.",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('logical_cores', '?')} cores, GPU: "
        f"{machine.get('gpu') or 'none'}. Requests: {report['requests']}; seeds per sampling setting:"
        f" {report['seeds']}; {_pool_words(report)}, K = 10.",
        "",
        "ILD@10 is on image embeddings (the headline figure). *vs shuffle* is NDCG@10 above a partial shuffle at the"
        " same ILD@10 (each request shown its pool in retrieval order or in random order, mixed to reach that ILD:"
        " the dashed line in the plot), what a ranker whose sampling ignored its candidates would reach;"
        " *explored@10* is the share of the top 10 taken from the explored categories' products. Beside them the"
        " category-tree ILD@10, novelty@10 (mean −log2 of a product's share of the SYNTHETIC train buyers'"
        " purchases, add-one smoothed) and coverage (the share of all pooled products / categories that some top-10"
        " list shows, across the requests).",
        "",
        "| knob | value | NDCG@10 | ± | ILD@10 | ± | vs shuffle | explored@10 | category ILD@10 | novelty@10 |"
        " product coverage | category coverage |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[
            _row(s["knob"], f"{s['value']:g}", s, f"{s['ndcg_std']:.4f}", f"{s['ild_std']:.4f}")
            for s in report["settings"]
        ],
        _row("retrieval order", "–", base, "–", "–"),
        *(
            [_row("random order", "–", report["random_order"], "–", f"{report['random_order']['ild_std']:.4f}")]
            if "random_order" in report
            else []
        ),
        "",
        "| target | measured | result |",
        "| --- | --- | ---: |",
        f"| ILD@10 raised across ≥ 2× by the sampling knobs alone | {ratio:.2f}× | {verdict(ratio >= 2, bold=False)} |",
        f"| mean ILD@10 monotone in temperature | {report['temperature_monotone']} |"
        f" {verdict(bool(report['temperature_monotone']), bold=False)} |",
        f"| NDCG@10 at equal ILD ≥ MMR's | {gap if gap is not None else 'no overlap'} |"
        f" {verdict(gap is not None and gap >= 0, bold=False)} |",
        f"| every sampling setting above a partial shuffle at equal ILD (it reads its candidates) |"
        f" {_shuffle_words(shuffle)} | {verdict(shuffle['min'] is not None and shuffle['min'] > 0, bold=False)} |",
        "",
        "![trade-off](diversity.png)",
        "",
        "## Reading",
        "",
        *_reading(report),
    ]


def write_report(report: dict[str, Any], reports: Path, machine: dict[str, Any]) -> None:
    """``diversity.json``, ``diversity.md`` (table, targets, reading) and ``diversity.png`` (the trade-off)."""
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "diversity.json").write_text(json.dumps({**report, "machine": machine}, indent=2), encoding="utf-8")
    _plot(report, reports / "diversity.png")
    (reports / "diversity.md").write_text("\n".join(_markdown(report, machine)) + "\n", encoding="utf-8")


def _pool_words(report: Mapping[str, Any]) -> str:
    pool = report.get("pool", {"precise": 20, "explored_categories": 0, "mean_size": 20})
    words = f"pools of {pool['mean_size']:g} products: the {pool['precise']} best of hierarchical retrieval"
    if pool["explored_categories"]:
        words += (f" then the {pool.get('per_category', EXPLORE_PER_CATEGORY)} best of each of the"
                  f" {pool['explored_categories']} nearest categories level 1 left out")  # fmt: skip
    return words


def _shuffle_words(shuffle: Mapping[str, Any]) -> str:
    if shuffle["min"] is None:
        return "no setting inside the two orders' ILD range"
    return (
        f"min {shuffle['min']:+.3f}, mean {shuffle['mean']:+.3f} NDCG@10 ({shuffle['settings_compared']} of"
        f" {shuffle.get('settings_sampled', '?')} settings inside the range)"
    )


def _row(knob: str, value: str, s: Mapping[str, Any], ndcg_std: str, ild_std: str) -> str:
    shuffle = s.get("ndcg_gap_vs_shuffle")
    return (f"| {knob} | {value} | {s['ndcg@10']:.4f} | {ndcg_std} | {s['ild@10']:.4f} | {ild_std} |"
            f" {'–' if shuffle is None else f'{shuffle:+.3f}'} | {s.get('explored@10', 0.0):.2f} |"
            f" {s.get('ild_category@10', 0.0):.4f} | {s.get('novelty@10', 0.0):.2f} |"
            f" {s.get('product_coverage', 0.0):.3f} | {s.get('category_coverage', 0.0):.3f} |")  # fmt: skip


def _reading(report: dict[str, Any]) -> list[str]:
    by = {(s["knob"], s["value"]): s for s in report["settings"]}
    temps = [s for s in report["settings"] if s["knob"] == "temperature"]
    mmr = [s for s in report["settings"] if s["knob"] == "mmr_lambda"]
    cold, hot = temps[0], temps[-1]
    lines = [
        f"- Temperature moves ILD@10 from {cold['ild@10']:.3f} (greedy) to {hot['ild@10']:.3f} at T = {hot['value']:g},"
        f" at a cost of {cold['ndcg@10'] - hot['ndcg@10']:.3f} NDCG@10; the sampling knobs alone span"
        f" {report['ild_range_ratio']:.2f}× in ILD@10.",
        f"- MMR spans ILD@10 {min(s['ild@10'] for s in mmr):.3f}–{max(s['ild@10'] for s in mmr):.3f}"
        f" (NDCG@10 {max(s['ndcg@10'] for s in mmr):.3f} → {min(s['ndcg@10'] for s in mmr):.3f}).",
    ]
    gap = report["ndcg_gap_vs_mmr_at_equal_ild"]
    diverse = report.get("ndcg_gap_vs_mmr_at_most_diverse_sampling")
    if diverse is not None:
        verdict = ("the ranker's sampling buys diversity more cheaply." if diverse >= 0
                   else "MMR buys the same diversity at less relevance cost.")  # fmt: skip
        lines.append(f"- At the most diverse sampling setting the ranker is {diverse:+.3f} NDCG@10 from MMR at the"
                     f" same ILD@10: {verdict}")  # fmt: skip
    if gap is None:
        lines.append("- The ranker's settings and MMR reach different ILD ranges: no equal-ILD comparison.")
    elif gap >= 0:
        lines.append(f"- At equal ILD the best ranker setting is {gap:.3f} NDCG@10 above MMR.")
    else:
        lines.append(f"- At equal ILD the best ranker setting falls short of MMR by {-gap:.3f} NDCG@10, as public"
                     " studies found for prompted LLM re-rankers: for a buyer-facing diversity dial MMR is the"
                     " cheaper knob, and the calibration picks whichever setting costs less relevance.")  # fmt: skip
    low, high = max(mmr, key=lambda s: s["value"]), min(mmr, key=lambda s: s["value"])
    lines.append(
        f"- Beyond ILD: MMR λ {low['value']:g} → {high['value']:g} takes category-tree ILD@10"
        f" {low.get('ild_category@10', 0.0):.3f} → {high.get('ild_category@10', 0.0):.3f}, novelty@10"
        f" {low.get('novelty@10', 0.0):.2f} → {high.get('novelty@10', 0.0):.2f} bits and the share of pooled products"
        f" shown {low.get('product_coverage', 0.0):.3f} → {high.get('product_coverage', 0.0):.3f}; temperature"
        f" {cold['value']:g} → {hot['value']:g}: {cold.get('product_coverage', 0.0):.3f} →"
        f" {hot.get('product_coverage', 0.0):.3f}."
    )
    if "random_order" in report:
        rnd = report["random_order"]
        lines.append(
            f"- For scale: a uniformly random order of the same pools (a ranker that ignored its candidates) has"
            f" ILD@10 {rnd['ild@10']:.3f}, {report['random_order_ild_ratio']:.2f}× the lowest sampling setting's,"
            f" at NDCG@10 {rnd['ndcg@10']:.3f}."
        )
    shuffle = report.get("ndcg_gap_vs_shuffle") or {}
    if shuffle.get("min") is not None:
        above = shuffle["min"] > 0
        best = max(s["ndcg_gap_vs_shuffle"] for s in report["settings"]
                   if s["knob"] != "mmr_lambda" and s.get("ndcg_gap_vs_shuffle") is not None)  # fmt: skip
        lines.append(
            f"- Against a partial shuffle of the same pools at the same ILD@10 the sampling settings are"
            f" {shuffle['min']:+.3f} to {best:+.3f} NDCG@10 (mean {shuffle['mean']:+.3f}): "
            + ("the diversity the ranker's sampling buys costs less relevance than forgetting the order would, so"
               " its sampling follows what it read." if above else
               "some settings are no better than forgetting the order: there the sampling does not follow what the"
               " ranker read.")
        )  # fmt: skip
    greedy = by.get(("temperature", 0.0))
    if greedy:
        base = report["retrieval_order"]
        lines.append(f"- Greedy ranker: NDCG@10 {greedy['ndcg@10']:.3f} vs retrieval order {base['ndcg@10']:.3f},"
                     f" ILD@10 {greedy['ild@10']:.3f} vs {base['ild@10']:.3f}; {greedy.get('explored@10', 0.0):.0%}"
                     f" of its top 10 come from the explored categories (retrieval order:"
                     f" {base.get('explored@10', 0.0):.0%}), which the graded relevance (the wanted product's"
                     " category) counts as misses.")  # fmt: skip
    return lines
