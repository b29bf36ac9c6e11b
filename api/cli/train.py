"""``tandem train ...``: build Tandem's own models on this machine."""

from __future__ import annotations

import json
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from api.console import CliError, err, out, staged_progress
from api.settings import Settings, get_settings

train_app = typer.Typer(help="Train Tandem's own models (cached under TANDEM_HOME).", no_args_is_help=True)


def _command(default: str) -> str:
    """The command line that is running, as ``tandem ...`` (what rebuilds an artifact), or ``default``."""
    import shlex
    import sys

    return "tandem " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else default


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
    out_dir: Path | None = None,
    steps: int | None = None,
    minutes: float | None = None,
    min_steps: int | None = None,
    init: Path | None = None,
    lr: float | None = None,
) -> None:
    from api.components import build_text_encoder
    from eval.machine import machine_info
    from finetune.train_tower import ClipTrainConfig, plan_steps, train_image_tower, write_tower_report
    from retrieval.catalogue import load_catalogue
    from retrieval.image_tower import TowerConfig

    target = out_dir or settings.tower_dir
    if (target / "open_clip_config.json").is_file() and not force:
        out.print(f"image tower already trained in {target} (use --force to train again)")
        return
    config = ClipTrainConfig()
    if small:
        # The test-sized configuration: a one-layer tower, trained in well under a minute.
        config = ClipTrainConfig(
            tower=TowerConfig(name="tandem-vit-small-test", image_size=32, width=64, layers=1, head_width=32),
            epochs=1,
            min_steps=1,
            batch_size=64,
        )
    if epochs is not None:
        config = config.model_copy(update={"epochs": epochs})
    if base is not None:
        config = config.model_copy(update={"base_model": base, "base_pretrained": pretrained})
    budget = {"steps": steps, "max_minutes": minutes, "min_steps": min_steps, "lr": lr}
    config = config.model_copy(update={k: v for k, v in budget.items() if v is not None})
    if init is not None:
        if not (init / "open_clip_config.json").is_file():
            raise CliError(f"--init {init} is not a tower or open_clip checkpoint folder (no open_clip_config.json)")
        config = config.model_copy(update={"init": str(init)})
    cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, limit=limit, check_images=False)
    bs, planned = plan_steps(round(len(cat) * (1 - config.holdout_fraction)), config)
    budget_text = f"{planned} steps of {bs}" + (f", at most {minutes:g} min" if minutes else "")
    start = f", warm-started from {init}" if init else ""
    out.print(f"training the image tower on {len(cat)} products from {cat.root} ({budget_text}{start})")
    with staged_progress() as progress:
        report = train_image_tower(
            cat, build_text_encoder(settings), config, target, cache_dir=settings.cache_dir, progress=progress,
            command=_command("tandem train clip"),
        )  # fmt: skip
    h = report.holdout
    out.print(
        f"trained in {report.total_seconds:.0f}s ({report.train_seconds:.0f}s of training, {report.steps} of"
        f" {report.planned_steps} steps{', stopped by the time budget' if report.stopped_by_time else ''})"
        f" -> {target}\n"
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
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Passes over the catalogue (default 6; see --min-steps).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Train exactly this many optimiser steps (overrides epochs).")
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option("--minutes", min=0.05, help="Time budget: as many steps as fit (with --steps: at most those)."),
    ] = None,
    min_steps: Annotated[
        int | None, typer.Option("--min-steps", min=1, help="At least this many steps whatever the epochs (900).")
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init", help="Warm-start from a tower or open_clip checkpoint folder (e.g. artifacts/image-tower)."
        ),
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="Peak learning rate (default 2e-3).")] = None,
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
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output folder (default TANDEM_HOME/models/image-tower; artifacts/image-tower is the shipped one).",
        ),
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
        out_dir=out_dir,
        steps=steps,
        minutes=minutes,
        min_steps=min_steps,
        init=init,
        lr=lr,
    )


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
    objective: str = "distill",
) -> Path:
    """LoRA-finetune the ranker on SYNTHETIC train buyers over the base model (TANDEM_LLM__BASE unless ``base``).

    Checkpoints go beside the output folder (``<out>.checkpoints``), so the same command run
    again after an interruption resumes where it stopped.
    """
    from api.components import build_retriever, build_store
    from finetune.buyers import BuyerConfig, CatalogueCodes
    from finetune.ranker_cases import build_cases, ensure_buyers, retrieval_search
    from finetune.train_ranker import CONFIG_FILE, RankerTrainConfig, train_ranker
    from llms.base_model import ensure_base_model, resolve_source
    from retrieval.catalogue import load_catalogue

    target = out_dir or settings.ranker_dir
    checkpoints = target.with_name(target.name + ".checkpoints")
    if (target / CONFIG_FILE).is_file() and not force:
        done = json.loads((target / CONFIG_FILE).read_text(encoding="utf-8"))
        if done.get("steps", 0) >= done.get("planned_steps", 0) or not checkpoints.is_dir():
            out.print(f"ranker already trained in {target} (use --force to train again)")
            return target
        out.print(f"ranker in {target} stopped at step {done['steps']} of {done['planned_steps']}: resuming")
    spec = base or settings.llm.base
    source = resolve_source(spec)
    with staged_progress() as progress:
        base_dir = ensure_base_model(spec, settings.models_dir, progress=progress)
    config = RankerTrainConfig.distilled() if objective == "distill" else RankerTrainConfig()
    if tiny:
        config = replace(RankerTrainConfig.tiny(), objective=objective)
    if minutes is not None:
        config = replace(config, max_minutes=minutes)
    config = replace(config, base=str(base_dir))
    cat = load_catalogue(settings.catalogue.path, settings.catalogue.columns, check_images=False)
    by_split = ensure_buyers(cat, settings.buyers_dir, BuyerConfig(n_buyers=buyers))
    chosen = by_split["train"][:train_buyers] if train_buyers else by_split["train"]
    out.print(f"{len(chosen)} SYNTHETIC train buyers ({settings.buyers_dir}); base model {spec} ({base_dir})")
    store = build_store(settings)
    try:  # the index is needed for the candidates only: closed before the hours of training, for others to open
        retriever = build_retriever(settings, store)
        with staged_progress() as progress:
            cases = build_cases(chosen, retrieval_search(retriever, cat), cat, None, progress=progress)
    finally:
        store.close()
    with staged_progress() as progress:
        report = train_ranker(
            cases, cat, CatalogueCodes(cat.products), str(base_dir), target, config, progress=progress,
            checkpoint_dir=checkpoints,
            served_base=source.package.upstream if source.package else spec,
            command=_command("tandem train ranker"),
        )  # fmt: skip
    resumed = f", resumed at step {report.resumed_from_step}" if report.resumed_from_step else ""
    if not report.complete:
        resumed += f"; stopped at step {report.steps} of {report.planned_steps}, run again to resume"
    out.print(
        f"trained the LoRA ranker ({report.trainable_parameters / 1e6:.2f}M trainable parameters) on "
        f"{report.examples} conversations in {report.seconds_train:.0f}s ({report.steps} steps{resumed}, "
        f"{report.device}, {report.precision}); loss {report.first_loss} -> {report.final_loss} -> {target}\n"
        f"serving: {target / 'SERVE.md'}"
    )
    return target


class Objective(StrEnum):
    """How ``tandem train ranker`` teaches the teacher's ranking."""

    sft = "sft"
    distill = "distill"


@train_app.command("ranker")
def train_ranker_cmd(
    base: Annotated[
        str | None,
        typer.Option("--base", help="Base: package, .gguf, folder or hub id (default TANDEM_LLM__BASE)."),
    ] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Test-sized run (seconds).")] = False,
    buyers: Annotated[int, typer.Option("--buyers", min=10, help="SYNTHETIC buyers to generate if none exist.")] = 6000,
    train_buyers: Annotated[
        int | None, typer.Option("--train-buyers", min=1, help="Use only the first N train buyers.")
    ] = None,
    minutes: Annotated[
        float | None, typer.Option("--minutes", min=0.1, help="Stop after this long (default: the whole schedule).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Train again even if the adapter exists.")] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Adapter folder (default TANDEM_HOME/models/tandem-ranker).")
    ] = None,
    objective: Annotated[
        Objective,
        typer.Option(
            "--objective",
            help="distill: reading lessons, then the teacher's posterior per id slot (the"
            " shipped adapter); sft: TRL SFT on the teacher's order.",
        ),
    ] = Objective.distill,
) -> None:
    """LoRA-finetune the domain ranker (TRL SFT + peft) on ranking conversations of SYNTHETIC buyers."""
    run_train_ranker(get_settings(), base=base, tiny=tiny, buyers=buyers, train_buyers=train_buyers,
                     minutes=minutes, force=force, out_dir=out_dir, objective=objective.value)  # fmt: skip
