"""``tandem train base``: Tandem's small base chat model, built offline on this CPU.

A byte-level BPE tokenizer and a small Qwen2-style causal LM (a few million parameters) are
trained from scratch on :mod:`finetune.base_corpus` (catalogue prose, search conversations with
``<tool_call>``, explanations, generic rankings) with the transformers ``Trainer``, and saved
with ``save_pretrained`` beside the tokenizer and its chat template — the folder layout a hub
model has, so the embedded worker, vLLM and ollama load it the same way. A real base model
(``--base Qwen/Qwen2.5-0.5B-Instruct`` for the ranker) replaces it where there is internet.

Training is bounded by wall time (``max_minutes``): the number of steps is calibrated on this
machine first, so the cosine schedule ends when the budget does.

Example:
    >>> report = train_base(catalogue, Path("var/models/tandem-base"), BaseModelConfig.tiny())  # doctest: +SKIP
    >>> report.parameters < 1_000_000  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from finetune.base_corpus import CorpusConfig, build_corpus
from finetune.tiny_lm import default_corpus, make_chat_tokenizer
from retrieval.catalogue import Catalogue

__all__ = ["BaseModelConfig", "BaseTrainReport", "train_base"]

Progress = Callable[[str, int, int], None]
REPORT_FILE = "tandem_base.json"


@dataclass(frozen=True)
class BaseModelConfig:
    """Model size, corpus and training budget of the small base model."""

    name: str = "tandem-base"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 768
    vocab_size: int = 4096
    block_size: int = 1024  # ranker prompts (20 candidates, tools) run to ~1,000 tokens: positions must be trained
    batch_size: int = 4
    learning_rate: float = 2e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    max_minutes: float = 12.0
    max_steps: int | None = None  # fixes the number of steps instead of calibrating to max_minutes
    eval_share: float = 0.02
    seed: int = 0
    corpus: CorpusConfig = field(default_factory=CorpusConfig)

    @classmethod
    def tiny(cls) -> BaseModelConfig:
        """The test-sized configuration: trains in seconds."""
        return cls(
            name="tandem-base-tiny", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
            vocab_size=600, block_size=256, batch_size=4, max_minutes=5.0, max_steps=12,
            corpus=CorpusConfig(n_products=300, n_search=60, n_explain=60, n_rank=30),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BaseModelConfig:
        raw = dict(data)
        raw["corpus"] = CorpusConfig(**raw.get("corpus", {}))
        return cls(**raw)


@dataclass
class BaseTrainReport:
    """What was trained, on what, how long it took and where the loss went."""

    config: dict[str, Any]
    parameters: int
    documents: int
    train_tokens: int
    steps: int
    seconds_corpus: float
    seconds_train: float
    first_loss: float | None
    final_loss: float | None
    eval_loss: float | None
    out_dir: str
    synthetic_conversations: bool = True
    losses: list[tuple[int, float]] = field(default_factory=list)


def _pack(token_docs: Sequence[list[int]], block: int, eos: int, pad: int) -> list[list[int]]:
    """Whole documents (each ended by ``eos``) first-fit into blocks, the rest padded; longer ones are dropped.

    A conversation cut in two teaches nothing about its answer (the ranking needs the candidates
    that a cut would leave in the previous block), so documents are never split.
    """
    open_blocks: list[list[int]] = []
    full: list[list[int]] = []
    for ids in token_docs:
        doc = [*ids, eos]
        if len(doc) > block:
            continue
        for i, candidate in enumerate(open_blocks):
            if len(candidate) + len(doc) <= block:
                candidate.extend(doc)
                if block - len(candidate) < 16:
                    full.append(open_blocks.pop(i))
                break
        else:
            open_blocks.append(doc)
            if len(open_blocks) > 64:  # bounded search; the oldest open block is as full as it will get
                full.append(open_blocks.pop(0))
    full.extend(open_blocks)
    return [b + [pad] * (block - len(b)) for b in full]


def _calibrate(model: Any, batch: torch.Tensor, repeats: int = 2) -> float:
    """Seconds per optimiser step on the device training will use (forward + backward of one batch)."""
    # The Trainer trains on CUDA when there is one; timing steps on the CPU there would spend a GPU's budget on a
    # CPU's number of steps.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    batch = batch.to(device)
    seconds = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return min(seconds[1:])  # the first call pays for lazy initialisation


def train_base(
    catalogue: Catalogue, out_dir: Path, config: BaseModelConfig, *, progress: Progress | None = None
) -> BaseTrainReport:
    """Build the corpus, the tokenizer and the model, train within the budget, save to ``out_dir``."""
    from datasets import Dataset
    from transformers import (
        DataCollatorForLanguageModeling,
        GenerationConfig,
        PrinterCallback,
        Qwen2Config,
        Qwen2ForCausalLM,
        Trainer,
        TrainingArguments,
    )

    from finetune.trainer_budget import TimeBudget

    report_progress: Progress = progress or (lambda stage, done, total: None)
    t0 = time.perf_counter()
    # Rendering needs only the chat template, not a trained vocabulary.
    renderer = make_chat_tokenizer(default_corpus(), 512)

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        text: str = renderer.apply_chat_template(messages, tools=tools, tokenize=False)
        return text

    report_progress("corpus", 0, 1)
    docs = build_corpus(catalogue, config.corpus, render)
    report_progress("corpus", 1, 1)
    corpus_text = [*docs, *default_corpus()]
    tokenizer = make_chat_tokenizer(corpus_text, config.vocab_size, model_max_length=4 * config.block_size)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    encoded = tokenizer(docs, add_special_tokens=False)["input_ids"]
    rng = random.Random(config.seed)
    blocks = _pack(encoded, config.block_size, eos, tokenizer.pad_token_id)
    real_per_block = sum(len(ids) + 1 for ids in encoded if len(ids) < config.block_size) / max(1, len(blocks))
    rng.shuffle(blocks)
    n_eval = max(1, int(len(blocks) * config.eval_share)) if len(blocks) > 10 else 0
    eval_blocks, train_blocks = blocks[:n_eval], blocks[n_eval:]
    seconds_corpus = time.perf_counter() - t0

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=max(2048, config.block_size),
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    model = Qwen2ForCausalLM(model_config)
    parameters = sum(p.numel() for p in model.parameters())

    if config.max_steps is not None:
        steps = config.max_steps
    else:
        sample = torch.tensor(train_blocks[: config.batch_size])
        step_s = _calibrate(model, sample)
        steps = max(10, int(config.max_minutes * 60 * 0.92 / step_s))
    budget_s = config.max_minutes * 60

    budget = TimeBudget(budget_s, steps, report_progress, "training")
    train_ds = Dataset.from_dict({"input_ids": train_blocks})
    eval_ds = Dataset.from_dict({"input_ids": eval_blocks}) if eval_blocks else None
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            warmup_steps=max(1, int(steps * config.warmup_ratio)),
            lr_scheduler_type="cosine",
            max_steps=steps,
            logging_steps=max(1, steps // 50),
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,  # Tandem's own progress bar instead
            dataloader_num_workers=0,
            seed=config.seed,
            use_cpu=not torch.cuda.is_available(),
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            callbacks=[budget],
        )
        trainer.remove_callback(PrinterCallback)  # the losses go to the report and the progress bar, not stdout
        t1 = time.perf_counter()
        result = trainer.train()
        seconds_train = time.perf_counter() - t1
        eval_loss = float(trainer.evaluate(eval_ds)["eval_loss"]) if eval_ds is not None else None

    model.generation_config = GenerationConfig(
        eos_token_id=[im_end, eos], pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    report = BaseTrainReport(
        config=config.to_json(),
        parameters=parameters,
        documents=len(docs),
        # Padding after the last whole document of a block is not training text.
        train_tokens=int(int(result.global_step) * config.batch_size * real_per_block),
        steps=int(result.global_step),
        seconds_corpus=round(seconds_corpus, 1),
        seconds_train=round(seconds_train, 1),
        first_loss=budget.first_loss,
        final_loss=budget.final_loss,
        eval_loss=None if eval_loss is None or math.isnan(eval_loss) else round(eval_loss, 4),
        out_dir=str(out_dir),
        losses=budget.losses,
    )
    (out_dir / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")
    return report
