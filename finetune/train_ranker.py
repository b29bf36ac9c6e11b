"""``tandem train ranker``: the LoRA domain ranker, supervised fine-tuning with TRL + peft.

The base (Tandem's small base model by default, or any hub id / folder such as
``Qwen/Qwen2.5-0.5B-Instruct`` where there is internet) gets a LoRA adapter trained on
ranking conversations of SYNTHETIC train buyers (:mod:`finetune.ranking_data`): the buyer's
profile, recent orders, request and retrieval's candidates in; optionally a ``get_products``
look-up; then one ``submit_ranking`` call with candidate ids, best first. Two objectives:
``distill`` (the CLI's default and the shipped adapter's, :mod:`finetune.distill_ranker`), where
reading lessons come first and then every id slot learns the teacher's posterior over the
candidates left, and ``sft``, where TRL's ``SFTTrainer`` does the work (prompt-completion
format, so only the answer is in the loss) on the teacher's one order.

Beside the adapter: ``tandem_ranker.json`` (the training config, round-trippable, plus
timings and losses) and ``SERVE.md`` with the vLLM and ollama command lines.

Example:
    >>> report = train_ranker(cases, catalogue, codes, base_dir, out_dir, RankerTrainConfig.tiny())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from finetune.buyers import CatalogueCodes
from finetune.ranking_data import RankingCase, sft_conversation
from finetune.trainer_budget import TimeBudget
from llms.ollama_admin import modelfile_for_adapter
from llms.worker.hf_engine import cpu_has_fast_bf16
from retrieval.catalogue import Catalogue

if TYPE_CHECKING:
    from trl.trainer.sft_config import SFTConfig

__all__ = ["CONFIG_FILE", "RankerTrainConfig", "RankerTrainReport", "serving_instructions", "train_ranker"]

Progress = Callable[[str, int, int], None]
CONFIG_FILE = "tandem_ranker.json"


@dataclass(frozen=True)
class RankerTrainConfig:
    """LoRA and training settings of the ranker; saved beside the adapter as JSON."""

    base: str = ""  # the base model folder the adapter was trained on
    adapter_name: str = "tandem-ranker"
    # "sft": TRL's SFTTrainer on the teacher's one ranking, look-up conversations included;
    # "distill": reading lessons, then every id slot learns the teacher's posterior over the candidates left
    # (finetune.distill_ranker); distilled() holds the settings of the shipped adapter.
    objective: str = "sft"
    # Attention only, as LlamaRec: ranking is reading the request and the buyer's orders against the candidate
    # lines, and a r16 adapter on q/k/v/o of a 135M base is 1.8M parameters (7 MB), small enough to ship.
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    top_layers: int | None = None  # adapt only the upper N layers (None: every layer)
    learning_rate: float = 5e-4
    epochs: float = 1.0
    batch_size: int = 2
    gradient_accumulation: int = 4
    max_length: int = 1536  # prompts run to ~950 tokens, ~1,250 with a get_products look-up: never cut the answer
    gradient_checkpointing: bool = False  # turn on for billion-parameter bases on a GPU
    bf16: bool | None = None  # None: where the hardware multiplies bf16 (CUDA, or a CPU with AMX / AVX-512 BF16)
    max_minutes: float | None = None  # None: train the whole schedule, however long it takes
    max_steps: int | None = None
    save_steps: int = 20  # checkpoints, so an interrupted run resumes where it stopped
    top_n: int = 10
    lookup_share: float = 0.2
    shuffle_candidates: bool = True  # see finetune.ranking_data.sft_conversation: the model must read the lines
    reading_lessons: int = 0  # distill: SYNTHETIC match-the-request lessons first (finetune.ranker_warmup)
    seed: int = 0

    @classmethod
    def distilled(cls) -> RankerTrainConfig:
        """Listwise distillation: attention of every layer, after 240 reading lessons (30 optimiser steps).

        Reading is an attention pattern (from the answer to the line that matches, and from each
        line to the request), so every layer's q/k/v/o adapts. Without the lessons, the loss sat
        at a uniform choice's for 30 steps (and, with the MLP of the upper 10 layers, for 100).
        """
        return cls(objective="distill", learning_rate=2e-3, dropout=0.0, reading_lessons=240)

    @classmethod
    def tiny(cls) -> RankerTrainConfig:
        return cls(r=4, alpha=8, batch_size=1, gradient_accumulation=1, max_steps=4, max_minutes=1.0,
                   max_length=4096, bf16=False, save_steps=2)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RankerTrainConfig:
        raw = dict(data)
        raw["target_modules"] = tuple(raw.get("target_modules", ()))
        return cls(**raw)


@dataclass
class RankerTrainReport:
    """What was trained, on what, for how many steps and how long; saved beside the adapter."""

    config: dict[str, Any]
    base: str
    examples: int
    steps: int
    planned_steps: int  # the schedule's length; fewer steps means a time budget stopped it (checkpoints kept)
    seconds_train: float
    first_loss: float | None
    final_loss: float | None
    trainable_parameters: int
    out_dir: str
    device: str = "cpu"
    precision: str = "float32"
    resumed_from_step: int = 0
    served_base: str = ""  # what vLLM / ollama serve the adapter on (the hub id of a converted package)
    command: str = ""  # the command that rebuilds this adapter
    synthetic_buyers: bool = True
    losses: list[tuple[int, float]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.steps >= self.planned_steps


def serving_instructions(base: str, adapter_dir: Path, name: str) -> str:
    """How vLLM, ollama and Tandem's worker load this adapter (written to ``SERVE.md``)."""
    return f"""# Serving the {name} adapter

Base model: `{base}`. Adapter: `{adapter_dir}` (peft LoRA, safetensors).

Tandem's embedded worker:

    tandem worker --port 9001 --model {base} --adapter {name}={adapter_dir}

vLLM (the adapter is served under the name `{name}`; tool calls in the Hermes `<tool_call>` format):

    vllm serve {base} --enable-lora --lora-modules {name}={adapter_dir} \\
        --enable-auto-tool-choice --tool-call-parser hermes --max-lora-rank 64

ollama (Modelfile beside this file; ollama may need the adapter converted to GGUF for some architectures):

    ollama create {name} -f {adapter_dir}/Modelfile

Then point Tandem at it: `TANDEM_LLM__RANKER_MODEL={name}`.
"""


def _rows(
    cases: Sequence[RankingCase], catalogue: Catalogue, codes: CatalogueCodes, config: RankerTrainConfig
) -> list[dict[str, Any]]:
    rng = random.Random(config.seed)
    rows = []
    for case in cases:
        example = sft_conversation(case, catalogue, codes, top_n=config.top_n, lookup_share=config.lookup_share,
                                   shuffle=config.shuffle_candidates, rng=rng)  # fmt: skip
        messages = example["messages"]
        rows.append({
            "prompt": messages[:-1],
            "completion": messages[-1:],
            "tools": json.dumps(example["tools"]),  # a string: Arrow cannot hold heterogeneous JSON schemas
        })  # fmt: skip
    return rows


def _use_bf16(config: RankerTrainConfig) -> bool:
    if config.bf16 is not None:
        return config.bf16
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())

    return cpu_has_fast_bf16()


@dataclass
class _Fit:
    """What the trainer did: optimiser steps, seconds, the logged losses, trainable parameters, the resume point."""

    steps: int
    seconds: float
    losses: list[tuple[int, float]]
    trainable: int
    resumed_from: int


def _sft_config(
    config: RankerTrainConfig, output_dir: Path, max_steps: int, bf16: bool, checkpoint_dir: Path | None
) -> SFTConfig:
    from trl.trainer.sft_config import SFTConfig  # noqa: PLC0415 - lazy: TRL pulls transformers (seconds); only training needs it

    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, max_steps // 20),
        max_steps=max_steps,
        max_length=config.max_length,
        completion_only_loss=True,
        logging_steps=max(1, min(10, max_steps // 50)),
        save_strategy="steps" if checkpoint_dir else "no",
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to=[],
        disable_tqdm=True,
        seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        # On a CPU without bf16 units autocast made steps ~20x slower; with AMX it makes them ~2x faster.
        bf16=bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        dataset_num_proc=None,
    )


def _fit(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    config: RankerTrainConfig,
    budget: TimeBudget,
    schedule: tuple[int, bool],
    out_dir: Path,
    checkpoint_dir: Path | None,
    served_base: str | None,
) -> _Fit:
    """Train the LoRA adapter with TRL's ``SFTTrainer`` (``schedule``: max steps, bf16) and save it in ``out_dir``."""
    from transformers import PrinterCallback  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it
    from transformers.trainer_utils import get_last_checkpoint  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it
    from trl.trainer.sft_trainer import SFTTrainer  # noqa: PLC0415 - lazy: TRL pulls transformers (seconds); only training needs it

    max_steps, bf16 = schedule
    lora = _lora_config(config, int(model.config.num_hidden_layers))
    with tempfile.TemporaryDirectory() as scratch:
        output_dir = checkpoint_dir or Path(scratch)
        resume = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        args = _sft_config(config, output_dir, max_steps, bf16, checkpoint_dir)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora, callbacks=[budget])  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        peft_model: Any = trainer.model  # a PeftModel once SFTTrainer has applied the LoRA config
        trainable = sum(int(p.numel()) for p in peft_model.parameters() if p.requires_grad)
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume)
        seconds = time.perf_counter() - t0
        # The trainer's own log holds the steps before a resume too (the callback only saw this run's).
        losses = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
        out_dir.mkdir(parents=True, exist_ok=True)
        if served_base:
            # The adapter names what vLLM loads it on, not this machine's converted folder.
            peft_model.peft_config["default"].base_model_name_or_path = served_base
        peft_model.save_pretrained(out_dir)
    resumed_from = int(resume.rsplit("-", 1)[-1]) if resume else 0
    return _Fit(int(result.global_step), seconds, losses, trainable, resumed_from)


def _lora_config(config: RankerTrainConfig, num_layers: int) -> Any:
    from peft import LoraConfig  # noqa: PLC0415 - lazy: peft pulls transformers (seconds); only this path needs it

    layers = None
    if config.top_layers is not None and config.top_layers < num_layers:
        layers = list(range(num_layers - config.top_layers, num_layers))
    return LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), layers_to_transform=layers,
                      task_type="CAUSAL_LM")  # fmt: skip


def _fit_distill(
    model: Any,
    tokenizer: Any,
    data: tuple[Sequence[RankingCase], Catalogue, CatalogueCodes],
    config: RankerTrainConfig,
    budget_s: float | None,
    out_dir: Path,
    checkpoint_dir: Path | None,
    served_base: str | None,
    progress: Progress,
) -> _Fit:
    """Train the LoRA adapter by listwise distillation (:mod:`finetune.distill_ranker`) and save it in ``out_dir``."""
    from peft import get_peft_model  # noqa: PLC0415 - lazy: peft pulls transformers (seconds); only this path needs it

    from finetune.distill_ranker import (  # noqa: PLC0415 - lazy: with the rest of training
        distill,
        distill_example,
        lesson_example,
    )
    from finetune.ranker_warmup import reading_lesson, reading_types  # noqa: PLC0415 - lazy: with the rest

    cases, catalogue, codes = data
    rng = random.Random(config.seed)
    examples = []
    types = reading_types(catalogue) if config.reading_lessons else {}
    for i in range(config.reading_lessons):
        lesson = reading_lesson(catalogue, rng, by_type=types)
        examples.append(lesson_example(lesson, tokenizer, top_n=config.top_n, rng=rng))
        progress("rendering reading lessons (SYNTHETIC)", i + 1, config.reading_lessons)
    for i, case in enumerate(cases):
        examples.append(distill_example(case, catalogue, codes, tokenizer, top_n=config.top_n, rng=rng))
        progress("rendering ranking conversations", i + 1, len(cases))
    peft_model: Any = get_peft_model(model, _lora_config(config, int(model.config.num_hidden_layers)))
    fit = distill(peft_model, examples, learning_rate=config.learning_rate,
                  accumulation=config.batch_size * config.gradient_accumulation, epochs=config.epochs,
                  save_steps=config.save_steps, max_steps=config.max_steps, budget_s=budget_s,
                  checkpoint_dir=checkpoint_dir, progress=progress, seed=config.seed,
                  lessons=config.reading_lessons)  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    if served_base:
        peft_model.peft_config["default"].base_model_name_or_path = served_base
    peft_model.save_pretrained(out_dir)
    return _Fit(fit.steps, fit.seconds, fit.losses, fit.trainable, fit.resumed_from)


def _write_beside(out_dir: Path, report: RankerTrainReport, adapter_name: str, shown_base: str) -> None:
    """The report, the serving instructions and the ollama Modelfile, beside the adapter."""
    (out_dir / CONFIG_FILE).write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")
    (out_dir / "SERVE.md").write_text(serving_instructions(shown_base, out_dir, adapter_name), encoding="utf-8")
    # ollama resolves ADAPTER against the Modelfile's folder, which is the adapter folder itself.
    (out_dir / "Modelfile").write_text(modelfile_for_adapter(shown_base, "."), encoding="utf-8")


def train_ranker(
    cases: Sequence[RankingCase],
    catalogue: Catalogue,
    codes: CatalogueCodes,
    base: str,
    out_dir: Path,
    config: RankerTrainConfig,
    *,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
    served_base: str | None = None,
    command: str = "",
) -> RankerTrainReport:
    """Fine-tune a LoRA adapter on ``cases`` and save it with its config and serving instructions.

    With ``checkpoint_dir`` the run saves a checkpoint every ``save_steps`` optimiser steps and
    resumes from the last one it finds there (the same command, run again); the checkpoints
    are removed once the adapter is saved.
    """
    from datasets import Dataset  # noqa: PLC0415 - lazy: datasets is slow to import; only training needs it
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it

    report_progress: Progress = progress or (lambda stage, done, total: None)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    per_step = config.batch_size * config.gradient_accumulation
    lessons = config.reading_lessons if config.objective == "distill" else 0
    max_steps = config.max_steps or max(1, int((len(cases) + lessons) * config.epochs / per_step))
    budget_s = config.max_minutes * 60 if config.max_minutes else None
    if config.objective == "distill":
        bf16 = False  # the loop runs in float32: on CPUs without bf16 units autocast is ~20x slower
        fit = _fit_distill(model, tokenizer, (cases, catalogue, codes), config, budget_s, out_dir, checkpoint_dir,
                           served_base, report_progress)  # fmt: skip
    else:
        bf16 = _use_bf16(config)
        dataset = Dataset.from_list(_rows(cases, catalogue, codes, config))
        budget = TimeBudget(budget_s, max_steps, report_progress, "ranker training")
        fit = _fit(model, tokenizer, dataset, config, budget, (max_steps, bf16), out_dir, checkpoint_dir, served_base)
    report = RankerTrainReport(
        config=config.to_json(),
        base=base,
        examples=len(cases),
        steps=fit.steps,
        planned_steps=max_steps,
        seconds_train=round(fit.seconds, 1),
        first_loss=fit.losses[0][1] if fit.losses else None,
        final_loss=fit.losses[-1][1] if fit.losses else None,
        trainable_parameters=fit.trainable,
        out_dir=str(out_dir),
        device="cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
        precision="bf16 autocast" if bf16 else "float32",
        resumed_from_step=fit.resumed_from,
        served_base=served_base or base,
        command=command,
        losses=fit.losses,
    )
    _write_beside(out_dir, report, config.adapter_name, served_base or base)
    if checkpoint_dir is not None and report.complete:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return report
