"""Train the domain image tower LiT-style: photos learn to land on the frozen text encoder's vectors.

Two objectives share one embedding space:

* **contrastive** (CLIP/LiT loss) between a photo and its product's text
  (title + category path) embedded by the frozen sentence encoder;
* **category**: the photo classified against the frozen text embeddings of all
  category paths, so level 1 of hierarchical search can compare a photo with
  category names directly and with calibrated scores.

Photos are augmented to look like buyers' uploads (:mod:`finetune.augment`). A
deterministic held-out split never trains and is used for the report.

The budget is optimiser steps, not epochs alone: ``epochs`` passes over the catalogue, but
never fewer than ``min_steps`` steps (a 1,000-product catalogue needs as many steps as a large
one, not 6 × 8); ``steps`` sets the count outright and ``max_minutes`` fits it to a time budget
(measured on a few throw-away steps first, so the learning-rate schedule still completes).
``init`` warm-starts from a trained tower (or any open_clip checkpoint folder): the image tower
transfers because the text side is the frozen sentence encoder, and the category head (the
frozen text embeddings of the catalogue's own category paths) is built for the new catalogue.

Example:
    >>> out = Path("var/models/image-tower")
    >>> report = train_image_tower(catalogue, text_encoder, ClipTrainConfig(), out)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, Field

from finetune.augment import BuyerPhotoAugment, resize_batch
from retrieval.catalogue import Catalogue, Product
from retrieval.categories import category_key, category_text
from retrieval.encoders import TextEncoder
from retrieval.errors import ImageError
from retrieval.image_tower import TowerConfig, TowerSpec, build_tower, load_base_tower, save_tower, tower_spec
from retrieval.images import ImageLimits, read_image_file
from retrieval.text_cache import encode_texts_cached

__all__ = [
    "ClipTrainConfig",
    "ProgressFn",
    "TowerReport",
    "holdout_ids",
    "load_image_array",
    "plan_steps",
    "train_image_tower",
    "write_tower_report",
]

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, completed, total)``: called as work advances."""

SOURCE_HW = (80, 60)  # the catalogue's thumbnail size (H, W); other sizes are resized to it once


class ClipTrainConfig(BaseModel):
    """Everything that decides a training run; saved beside the checkpoint."""

    tower: TowerConfig = Field(default_factory=TowerConfig)
    base_model: str | None = Field(
        default=None,
        description="Fine-tune this open_clip model (name or local-dir:PATH) instead of Tandem's own small tower.",
    )
    base_pretrained: str | None = Field(default=None, description="open_clip pretrained tag or file for base_model.")
    init: str | None = Field(
        default=None,
        description="Warm-start from this trained tower or open_clip checkpoint folder (e.g. artifacts/image-tower).",
    )
    epochs: int = Field(default=6, ge=1)
    min_steps: int = Field(
        default=900,
        ge=1,
        description="Never fewer optimiser steps than this, whatever the epochs give (the demo catalogue's 6 epochs"
        " are 978 steps, so its default run is unchanged; a 1,000-product catalogue gets 900, not 48).",
    )
    steps: int | None = Field(default=None, ge=1, description="Train exactly this many steps (overrides epochs).")
    max_minutes: float | None = Field(
        default=None, gt=0, description="Time budget: fit the steps to it (alone: as many as fit), stop at it."
    )
    batch_size: int = Field(default=256, ge=8)
    lr: float = 2e-3
    weight_decay: float = 0.05
    category_weight: float = 1.0
    holdout_fraction: float = Field(default=0.05, ge=0.0, lt=0.5)
    seed: int = 0
    threads: int | None = None


@dataclass
class TowerReport:
    """What a training run produced, with held-out quality figures."""

    checkpoint: str
    train_products: int
    holdout_products: int
    categories: int
    epochs: int
    steps: int
    train_seconds: float
    total_seconds: float
    final_loss: float
    losses: list[float] = field(default_factory=list)
    holdout: dict[str, float] = field(default_factory=dict)
    planned_steps: int = 0
    stopped_by_time: bool = False
    init: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def holdout_ids(product_ids: Sequence[str], fraction: float, seed: int = 0) -> set[str]:
    """A deterministic held-out split: the same ids whatever order or subset the catalogue is read in."""
    if fraction <= 0:
        return set()
    cut = int(fraction * 10_000)
    out = set()
    for pid in product_ids:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{pid}".encode()).digest()[:4], "big") % 10_000
        if h < cut:
            out.add(pid)
    return out


def load_image_array(products: Sequence[Product], limits: ImageLimits | None = None) -> tuple[torch.Tensor, list[int]]:
    """Decode every product photo to a uint8 (N,3,80,60) tensor; returns it and the indices that failed."""
    limits = limits or ImageLimits()
    h, w = SOURCE_HW
    out = torch.zeros((len(products), 3, h, w), dtype=torch.uint8)
    failed: list[int] = []

    def one(i: int) -> None:
        p = products[i]
        try:
            if p.image_path is None:
                raise ImageError("no image")
            img = read_image_file(p.image_path, limits)
        except ImageError:
            failed.append(i)
            return
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        out[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(one, range(len(products))))
    return out, sorted(failed)


class _Pixels:
    """Normalises [0,1] pixels with the tower's own mean and std."""

    def __init__(self, spec: TowerSpec) -> None:
        self.mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _embed(model: Any, pixels: torch.Tensor, norm: _Pixels, batch: int = 512) -> torch.Tensor:
    model.eval()
    outs = []
    with torch.inference_mode():
        for s in range(0, len(pixels), batch):
            outs.append(model.encode_image(norm(pixels[s : s + batch]), normalize=True))
    return torch.cat(outs) if outs else torch.zeros((0, 1))


def _holdout_metrics(
    model: Any,
    images: torch.Tensor,
    cat_idx: torch.Tensor,
    cat_emb: torch.Tensor,
    text_emb: torch.Tensor,
    size: int,
    seed: int,
    norm: _Pixels,
) -> dict[str, float]:
    """Zero-shot category accuracy (clean and buyer-like photos) and image→title retrieval on held-out products."""
    if len(images) == 0:
        return {}
    clean = _embed(model, resize_batch(images, size), norm)
    aug = BuyerPhotoAugment(size)
    g = torch.Generator().manual_seed(seed + 1)
    noisy = _embed(model, torch.cat([aug(images[s : s + 512], g) for s in range(0, len(images), 512)]), norm)
    out: dict[str, float] = {"n": float(len(images))}
    for name, emb in (("clean", clean), ("buyer_photo", noisy)):
        scores = emb @ cat_emb.T
        top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
        out[f"category_acc@1_{name}"] = float((top5[:, 0] == cat_idx).float().mean())
        out[f"category_acc@5_{name}"] = float((top5 == cat_idx[:, None]).any(dim=1).float().mean())
        sim = emb @ text_emb.T
        rank = (sim > sim.diag()[:, None]).sum(dim=1)  # 0 = its own title ranks first
        out[f"image_to_title_r@1_{name}"] = float((rank < 1).float().mean())
        out[f"image_to_title_r@10_{name}"] = float((rank < 10).float().mean())
    return out


@dataclass
class _TrainData:
    """What a run trains and evaluates on: photos, frozen text targets, category labels and the split."""

    images: torch.Tensor
    text_emb: torch.Tensor
    cat_emb: torch.Tensor
    labels: torch.Tensor
    train_idx: torch.Tensor
    hold_idx: torch.Tensor
    categories: int
    held: set[str]


def _prepare(
    catalogue: Catalogue,
    text_encoder: TextEncoder,
    config: ClipTrainConfig,
    cache_dir: Path | None,
    report_progress: ProgressFn,
) -> _TrainData:
    """Decode the photos, embed product and category texts with the frozen encoder, and split off the held-out set."""
    products = catalogue.products
    held = holdout_ids([p.product_id for p in products], config.holdout_fraction, config.seed)

    report_progress("decoding photos", 0, 1)
    images, failed = load_image_array(products)
    report_progress("decoding photos", 1, 1)
    keep = [i for i in range(len(products)) if i not in set(failed)]

    categories = sorted({p.category for p in products})
    cat_index = {c: i for i, c in enumerate(categories)}
    report_progress("embedding texts (frozen teacher)", 0, 1)
    text_emb = torch.from_numpy(encode_texts_cached(text_encoder, [p.text() for p in products], cache_dir))
    cat_emb = torch.from_numpy(
        encode_texts_cached(text_encoder, [category_text(category_key(c)) for c in categories], cache_dir)
    )
    report_progress("embedding texts (frozen teacher)", 1, 1)
    labels = torch.tensor([cat_index[p.category] for p in products])

    train_idx = torch.tensor([i for i in keep if products[i].product_id not in held])
    hold_idx = torch.tensor([i for i in keep if products[i].product_id in held], dtype=torch.long)
    if len(train_idx) < 2:
        raise ValueError("need at least two trainable products")
    return _TrainData(images, text_emb, cat_emb, labels, train_idx, hold_idx, len(categories), held)


def _tower(config: ClipTrainConfig, text_encoder: TextEncoder) -> tuple[Any, TowerSpec]:
    """The tower to train (Tandem's own, warm-started, or an open_clip base), with only its visual half trainable."""
    model: Any
    if config.init:
        folder = Path(config.init.removeprefix("local-dir:"))
        if not (folder / "open_clip_config.json").is_file():
            raise ValueError(f"--init {folder} is not an open_clip checkpoint folder (no open_clip_config.json)")
        model, spec = load_base_tower(f"local-dir:{folder}", None, text_encoder.dim)
    elif config.base_model:
        model, spec = load_base_tower(config.base_model, config.base_pretrained, text_encoder.dim)
    else:
        model, spec = build_tower(config.tower), tower_spec(config.tower)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.visual.parameters():
        p.requires_grad_(True)
    return model, spec


def _loss(
    model: Any,
    x: torch.Tensor,
    idx: torch.Tensor,
    data: _TrainData,
    scales: tuple[torch.Tensor, torch.Tensor],
    category_weight: float,
) -> torch.Tensor:
    """Contrastive loss against the products' texts plus the weighted category loss, for one batch."""
    logit_scale, cat_scale = scales
    img = F.normalize(model.encode_image(x), dim=-1)
    t = data.text_emb[idx]
    logits = logit_scale.clamp(max=math.log(100)).exp() * img @ t.T
    target = torch.arange(len(idx))
    loss_con = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    cat_logits = cat_scale.clamp(max=math.log(100)).exp() * img @ data.cat_emb.T
    loss_cat = F.cross_entropy(cat_logits, data.labels[idx])
    return loss_con + category_weight * loss_cat


def plan_steps(train_products: int, config: ClipTrainConfig) -> tuple[int, int]:
    """(batch size, optimiser steps) before any time budget: ``steps``, else max(epochs' steps, ``min_steps``)."""
    # Small catalogues (a demo subset) still get several steps per epoch.
    bs = min(config.batch_size, max(16, train_products // 8))
    if config.steps is not None:
        return bs, config.steps
    steps_per_epoch = max(1, train_products // bs)
    return bs, max(config.min_steps, steps_per_epoch * config.epochs)


Clock = Callable[[], float]
_TIMING_STEPS = 3  # throw-away steps that measure the seconds per step for a time budget


def _step(
    model: Any,
    opt: torch.optim.Optimizer,
    idx: torch.Tensor,
    x: torch.Tensor,
    data: _TrainData,
    scales: tuple[torch.Tensor, torch.Tensor],
    category_weight: float,
) -> float:
    loss = _loss(model, x, idx, data, scales, category_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach().item())


def _fit_to_time(
    model: Any, spec: TowerSpec, norm: _Pixels, data: _TrainData, config: ClipTrainConfig, bs: int, planned: int,
    clock: Clock, started: float, report_progress: ProgressFn,
) -> int:  # fmt: skip
    """``planned`` cut to what fits ``config.max_minutes``, timed on a copy (the run's own state is untouched)."""
    assert config.max_minutes is not None
    trial = copy.deepcopy(model)
    trial.train()
    scales = (torch.tensor(math.log(1 / 0.07)), torch.tensor(math.log(1 / 0.07)))
    opt = torch.optim.AdamW(list(trial.visual.parameters()), lr=0.0)
    aug = BuyerPhotoAugment(spec.image_size)
    g = torch.Generator().manual_seed(config.seed + 7)
    # The first step pays for allocations and thread start-up: it is left out of the timing.
    report_progress("timing steps", 0, _TIMING_STEPS + 1)
    t0 = clock()
    for i in range(_TIMING_STEPS + 1):
        if i == 1:
            t0 = clock()
        idx = data.train_idx[torch.randperm(len(data.train_idx), generator=g)[:bs]]
        _step(trial, opt, idx, norm(aug(data.images[idx], g)), data, scales, config.category_weight)
        report_progress("timing steps", i + 1, _TIMING_STEPS + 1)
    per_step = max((clock() - t0) / _TIMING_STEPS, 1e-6)
    left = config.max_minutes * 60 - (clock() - started)
    fit = max(1, int(left / per_step))
    return fit if config.steps is None else min(planned, fit)


def _fit(
    model: Any,
    spec: TowerSpec,
    norm: _Pixels,
    data: _TrainData,
    config: ClipTrainConfig,
    report_progress: ProgressFn,
    clock: Clock = time.perf_counter,
) -> tuple[list[float], int, int, float]:
    """Train on buyer-like augmentations of the photos.

    Returns the mean loss per pass over the catalogue, the steps run, the steps planned and the seconds.
    """
    started = clock()
    train_idx = data.train_idx
    bs, total_steps = plan_steps(len(train_idx), config)
    if config.max_minutes is not None:
        total_steps = _fit_to_time(model, spec, norm, data, config, bs, total_steps, clock, started, report_progress)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    cat_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [*model.visual.parameters(), logit_scale, cat_scale]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(train_idx) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps, pct_start=0.1)
    aug = BuyerPhotoAugment(spec.image_size)
    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    deadline = started + config.max_minutes * 60 if config.max_minutes is not None else math.inf

    losses: list[float] = []
    t_train = time.perf_counter()
    step = 0
    report_progress("training", 0, total_steps)
    # Passes over the shuffled catalogue until the step budget is spent (the same order as epochs always had).
    while step < total_steps:
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        running, done = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * bs : (b + 1) * bs]
            x = norm(aug(data.images[idx], g))
            running += _step(model, opt, idx, x, data, (logit_scale, cat_scale), config.category_weight)
            sched.step()
            step += 1
            done += 1
            report_progress("training", step, total_steps)
            if step >= total_steps or clock() >= deadline:
                break
        losses.append(running / done)
        if clock() >= deadline:
            break
    return losses, step, total_steps, time.perf_counter() - t_train


def _save(model: Any, spec: TowerSpec, out_dir: Path, meta: dict[str, Any], held: set[str]) -> None:
    tmp = out_dir.with_name(out_dir.name + ".partial")
    save_tower(model, spec, tmp, meta)
    (tmp / "holdout_ids.json").write_text(json.dumps(sorted(held)))
    # Swap in atomically: a crash mid-save never leaves a half-written default encoder.
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def train_image_tower(
    catalogue: Catalogue,
    text_encoder: TextEncoder,
    config: ClipTrainConfig,
    out_dir: Path,
    *,
    cache_dir: Path | None = None,
    progress: ProgressFn | None = None,
    command: str = "",
    clock: Clock = time.perf_counter,
) -> TowerReport:
    """Train the tower on ``catalogue`` and save it as an open_clip checkpoint in ``out_dir``.

    Its config, the report and ``command`` (what rebuilds it) are saved beside the weights.
    """
    started = time.perf_counter()
    report_progress = progress or (lambda stage, done, total: None)
    if config.tower.embed_dim != text_encoder.dim:
        config = config.model_copy(update={"tower": config.tower.model_copy(update={"embed_dim": text_encoder.dim})})
    if config.threads:
        torch.set_num_threads(config.threads)
    data = _prepare(catalogue, text_encoder, config, cache_dir, report_progress)
    model, spec = _tower(config, text_encoder)
    norm = _Pixels(spec)
    losses, steps, planned, train_seconds = _fit(model, spec, norm, data, config, report_progress, clock)

    report_progress("evaluating held-out photos", 0, 1)
    hold = data.hold_idx
    holdout = _holdout_metrics(model, data.images[hold], data.labels[hold], data.cat_emb, data.text_emb[hold],
                               spec.image_size, config.seed, norm)  # fmt: skip
    report_progress("evaluating held-out photos", 1, 1)
    report = TowerReport(
        checkpoint=str(out_dir),
        train_products=len(data.train_idx),
        holdout_products=len(hold),
        categories=data.categories,
        epochs=config.epochs,
        steps=steps,
        train_seconds=round(train_seconds, 1),
        total_seconds=round(time.perf_counter() - started, 1),
        final_loss=losses[-1],
        losses=losses,
        holdout=holdout,
        planned_steps=planned,
        stopped_by_time=steps < planned,
        init=config.init,
    )
    meta = {"trained": True, "text_encoder": text_encoder.model_id, "train_config": config.model_dump(),
            "command": command, "catalogue": str(catalogue.root), "report": report.as_dict()}  # fmt: skip
    _save(model, spec, out_dir, meta, data.held)
    return report


def write_tower_report(report: TowerReport, config: ClipTrainConfig, reports_dir: Path, machine: str = "") -> Path:
    """``image_tower.json`` + ``image_tower.md`` in ``reports_dir``: training time and held-out quality."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    body = {"report": report.as_dict(), "config": config.model_dump(), "machine": machine}
    (reports_dir / "image_tower.json").write_text(json.dumps(body, indent=2) + "\n")
    h = report.holdout
    arch = (
        f"warm-started from {config.init}"
        if config.init
        else f"fine-tuned from {config.base_model} ({config.base_pretrained})"
        if config.base_model
        else f"{config.tower.name} (ViT, {config.tower.layers} layers, width {config.tower.width},"
        f" {config.tower.image_size}px, patch {config.tower.patch_size})"
    )
    lines = [
        "# Domain image tower",
        "",
        f"`tandem train clip`: {arch} trained LiT-style against the frozen"
        f" text encoder, plus a category objective over {report.categories} category paths;"
        f" {report.steps} optimiser steps ({config.epochs} epochs, at least {config.min_steps} steps),"
        f" batch {config.batch_size}, on {report.train_products} products.",
        f"Machine: {machine or 'this machine'}.",
        "",
        f"- total {report.total_seconds:.0f} s, of which training {report.train_seconds:.0f} s"
        " (the rest: decoding photos and embedding product texts with the frozen encoder, cached for next time)",
        f"- loss per pass over the catalogue: {', '.join(f'{x:.3f}' for x in report.losses)}",
        "",
        f"Held-out split: {report.holdout_products} products never trained on.",
        "",
        "| metric | clean thumbnail | buyer-like photo |",
        "| --- | ---: | ---: |",
    ]
    for metric in ("category_acc@1", "category_acc@5", "image_to_title_r@1", "image_to_title_r@10"):
        lines.append(f"| {metric} | {h.get(metric + '_clean', 0):.3f} | {h.get(metric + '_buyer_photo', 0):.3f} |")
    lines += [
        "",
        "Zero-shot category accuracy: the photo's embedding against the text embeddings of all category paths."
        " Image→title: the photo against the held-out products' title texts (R@k = own title in the top k).",
    ]
    md = reports_dir / "image_tower.md"
    md.write_text("\n".join(lines) + "\n")
    return md
