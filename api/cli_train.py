"""``tandem train ...``: build Tandem's own models on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from api.console import err, out, staged_progress
from api.settings import Settings, get_settings

train_app = typer.Typer(help="Train Tandem's own models (cached under TANDEM_HOME).", no_args_is_help=True)


def run_train_clip(
    settings: Settings,
    *,
    epochs: int | None = None,
    limit: int | None = None,
    small: bool = False,
    force: bool = False,
    report_dir: Path | None = None,
    base: str | None = None,
    pretrained: str | None = None,
) -> None:
    from api.components import build_text_encoder
    from eval.bench_retrieval import machine_info
    from finetune.image_tower import TowerConfig
    from finetune.train_tower import ClipTrainConfig, train_image_tower, write_tower_report
    from retrieval.catalogue import load_catalogue

    target = settings.tower_dir
    if (target / "open_clip_config.json").is_file() and not force:
        out.print(f"image tower already trained in {target} (use --force to train again)")
        return
    config = ClipTrainConfig()
    if small:
        # The test-sized configuration: a one-layer tower, trained in well under a minute.
        config = ClipTrainConfig(
            tower=TowerConfig(name="tandem-vit-small-test", image_size=32, width=64, layers=1, head_width=32),
            epochs=1,
            batch_size=64,
        )
    if epochs is not None:
        config = config.model_copy(update={"epochs": epochs})
    if base is not None:
        config = config.model_copy(update={"base_model": base, "base_pretrained": pretrained})
    cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, limit=limit, check_images=False)
    out.print(f"training the image tower on {len(cat)} products from {cat.root} ({config.epochs} epoch(s))")
    with staged_progress() as progress:
        report = train_image_tower(
            cat, build_text_encoder(settings), config, target, cache_dir=settings.cache_dir, progress=progress
        )
    h = report.holdout
    out.print(
        f"trained in {report.total_seconds:.0f}s ({report.train_seconds:.0f}s of training) -> {target}\n"
        f"held-out {report.holdout_products} products: category acc@1 {h.get('category_acc@1_clean', 0):.3f} "
        f"(buyer-like photos {h.get('category_acc@1_buyer_photo', 0):.3f}), "
        f"image->title R@10 {h.get('image_to_title_r@10_clean', 0):.3f}"
    )
    if report_dir is not None:
        m = machine_info()
        where = f"{m.get('cpu', '?')}, {m.get('logical_cores', '?')} cores, {m.get('ram_gb', '?')} GB RAM"
        out.print(f"report: {write_tower_report(report, config, report_dir, where)}")
    err.print(json.dumps(report.as_dict()), markup=False, highlight=False)


@train_app.command("clip")
def train_clip(
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Training epochs (default 6).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=2, help="Train on the first N products only.")] = None,
    small: Annotated[bool, typer.Option("--small", help="Tiny test configuration (< 1 minute).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Train again even if a tower exists.")] = False,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="Write image_tower.md/json here (e.g. eval/reports).")
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Fine-tune an open_clip model instead (e.g. ViT-B-32, local-dir:PATH).")
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option("--pretrained", help="open_clip pretrained tag for --base (needs internet).")
    ] = None,
) -> None:
    """Train the domain image tower (LiT-style against the frozen text encoder, plus a category objective)."""
    run_train_clip(
        get_settings(),
        epochs=epochs,
        limit=limit,
        small=small,
        force=force,
        report_dir=report_dir,
        base=base,
        pretrained=pretrained,
    )
