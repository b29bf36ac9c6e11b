"""``tandem train ...``: build Tandem's own models on this machine."""

from __future__ import annotations

import json
from dataclasses import replace
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


def run_train_base(
    settings: Settings,
    *,
    tiny: bool = False,
    minutes: float | None = None,
    limit: int | None = None,
    force: bool = False,
    out_dir: Path | None = None,
) -> Path:
    """Train the small base chat model unless it is there already; returns its folder."""
    from finetune.train_base import REPORT_FILE, BaseModelConfig, train_base
    from retrieval.catalogue import load_catalogue

    target = out_dir or settings.base_model_dir
    if (target / REPORT_FILE).is_file() and not force:
        out.print(f"base model already trained in {target} (use --force to train again)")
        return target
    config = BaseModelConfig.tiny() if tiny else BaseModelConfig()
    if minutes is not None:
        config = replace(config, max_minutes=minutes, max_steps=None)
    cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, limit=limit, check_images=False)
    out.print(f"training the base model {config.name} on {len(cat)} products (budget {config.max_minutes:g} min)")
    with staged_progress() as progress:
        report = train_base(cat, target, config, progress=progress)
    out.print(
        f"trained {report.parameters / 1e6:.2f}M parameters in {report.seconds_train:.0f}s "
        f"({report.steps} steps, {report.train_tokens / 1e6:.2f}M tokens; corpus {report.seconds_corpus:.0f}s); "
        f"loss {report.first_loss:.2f} -> {report.final_loss:.2f}, held-out {report.eval_loss} -> {target}"
    )
    return target


@train_app.command("base")
def train_base_cmd(
    tiny: Annotated[bool, typer.Option("--tiny", help="Test-sized model, trains in seconds.")] = False,
    minutes: Annotated[
        float | None, typer.Option("--minutes", min=0.1, help="Training time budget (default 12).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=10, help="Use the first N products only.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Train again even if the model exists.")] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default TANDEM_HOME/models/tandem-base).")
    ] = None,
) -> None:
    """Train Tandem's small base chat model from scratch (tokenizer + Qwen2-style LM, offline)."""
    run_train_base(get_settings(), tiny=tiny, minutes=minutes, limit=limit, force=force, out_dir=out_dir)


def run_train_ranker(
    settings: Settings,
    *,
    base: str | None = None,
    tiny: bool = False,
    buyers: int = 6000,
    train_buyers: int | None = None,
    minutes: float | None = None,
    force: bool = False,
    out_dir: Path | None = None,
) -> Path:
    """Fine-tune the LoRA ranker on SYNTHETIC train buyers; trains the base model first when it is missing."""
    from api.components import build_retriever, build_store
    from finetune.buyers import BuyerConfig, CatalogueCodes
    from finetune.ranker_cases import build_cases, ensure_buyers, retrieval_search
    from finetune.train_ranker import CONFIG_FILE, RankerTrainConfig, train_ranker
    from retrieval.catalogue import load_catalogue

    target = out_dir or settings.ranker_dir
    if (target / CONFIG_FILE).is_file() and not force:
        out.print(f"ranker already trained in {target} (use --force to train again)")
        return target
    if base is None:
        base = str(run_train_base(settings, tiny=tiny))
    config = RankerTrainConfig.tiny() if tiny else RankerTrainConfig()
    if minutes is not None:
        config = replace(config, max_minutes=minutes, max_steps=None)
    config = replace(config, base=base)
    cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, check_images=False)
    by_split = ensure_buyers(cat, settings.buyers_dir, BuyerConfig(n_buyers=buyers))
    chosen = by_split["train"][:train_buyers] if train_buyers else by_split["train"]
    out.print(f"{len(chosen)} SYNTHETIC train buyers ({settings.buyers_dir}); base model {base}")
    store = build_store(settings)
    try:
        retriever = build_retriever(settings, store)
        with staged_progress() as progress:
            cases = build_cases(chosen, retrieval_search(retriever, cat), cat, None, progress=progress)
            report = train_ranker(cases, cat, CatalogueCodes(cat.products), base, target, config, progress=progress)
    finally:
        store.close()
    out.print(
        f"trained the LoRA ranker ({report.trainable_parameters / 1e6:.2f}M trainable parameters) on "
        f"{report.examples} conversations in {report.seconds_train:.0f}s ({report.steps} steps); "
        f"loss {report.first_loss} -> {report.final_loss} -> {target}\nserving: {target / 'SERVE.md'}"
    )
    return target


@train_app.command("ranker")
def train_ranker_cmd(
    base: Annotated[
        str | None, typer.Option("--base", help="Base model folder or hub id (default: tandem train base's model).")
    ] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Test-sized run (seconds).")] = False,
    buyers: Annotated[int, typer.Option("--buyers", min=10, help="SYNTHETIC buyers to generate if none exist.")] = 6000,
    train_buyers: Annotated[
        int | None, typer.Option("--train-buyers", min=1, help="Use only the first N train buyers.")
    ] = None,
    minutes: Annotated[float | None, typer.Option("--minutes", min=0.1, help="Training time budget.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Train again even if the adapter exists.")] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Adapter folder (default TANDEM_HOME/models/tandem-ranker).")
    ] = None,
) -> None:
    """LoRA-finetune the domain ranker (TRL SFT + peft) on ranking conversations of SYNTHETIC buyers."""
    run_train_ranker(get_settings(), base=base, tiny=tiny, buyers=buyers, train_buyers=train_buyers,
                     minutes=minutes, force=force, out_dir=out_dir)  # fmt: skip
