"""``tandem train ranker``: the LoRA domain ranker, supervised fine-tuning with TRL + peft.

The base (Tandem's small base model by default, or any hub id / folder such as
``Qwen/Qwen2.5-0.5B-Instruct`` where there is internet) gets a LoRA adapter trained on
ranking conversations of SYNTHETIC train buyers (:mod:`finetune.ranking_data`): the buyer's
profile, recent orders, request and retrieval's candidates in; optionally a ``get_products``
look-up; then one ``submit_ranking`` call with candidate ids, best first. TRL's
``SFTTrainer`` does the work (prompt-completion format, so only the answer is in the loss).

Beside the adapter: ``tandem_ranker.json`` (the training config, round-trippable, plus
timings and losses) and ``SERVE.md`` with the vLLM and ollama command lines.

Example:
    >>> report = train_ranker(cases, catalogue, codes, base_dir, out_dir, RankerTrainConfig.tiny())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from finetune.buyers import CatalogueCodes
from finetune.ranking_data import RankingCase, sft_conversation
from retrieval.catalogue import Catalogue

__all__ = ["CONFIG_FILE", "RankerTrainConfig", "RankerTrainReport", "serving_instructions", "train_ranker"]

Progress = Callable[[str, int, int], None]
CONFIG_FILE = "tandem_ranker.json"


@dataclass(frozen=True)
class RankerTrainConfig:
    """LoRA and training settings of the ranker; saved beside the adapter as JSON."""

    base: str = ""  # folder or hub id; "" = Tandem's small base model
    adapter_name: str = "tandem-ranker"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    learning_rate: float = 2e-3
    epochs: float = 1.0
    batch_size: int = 4
    max_length: int = 1152  # ranker prompts run to ~750 tokens, ~1,000 with a get_products look-up
    gradient_checkpointing: bool = False  # turn on for billion-parameter bases on a GPU
    max_minutes: float = 15.0
    max_steps: int | None = None
    top_n: int = 10
    lookup_share: float = 0.2
    seed: int = 0

    @classmethod
    def tiny(cls) -> RankerTrainConfig:
        return cls(r=4, alpha=8, batch_size=1, max_steps=4, max_minutes=1.0, max_length=4096)

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
    config: dict[str, Any]
    base: str
    examples: int
    steps: int
    seconds_train: float
    first_loss: float | None
    final_loss: float | None
    trainable_parameters: int
    out_dir: str
    synthetic_buyers: bool = True
    losses: list[tuple[int, float]] = field(default_factory=list)


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


def train_ranker(
    cases: Sequence[RankingCase],
    catalogue: Catalogue,
    codes: CatalogueCodes,
    base: str,
    out_dir: Path,
    config: RankerTrainConfig,
    *,
    progress: Progress | None = None,
) -> RankerTrainReport:
    """Fine-tune a LoRA adapter on ``cases`` and save it with its config and serving instructions."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    from finetune.trainer_budget import TimeBudget
    from llms.ollama_admin import modelfile_for_adapter

    report_progress: Progress = progress or (lambda stage, done, total: None)
    rng = random.Random(config.seed)
    rows = []
    for case in cases:
        example = sft_conversation(case, catalogue, codes, top_n=config.top_n, lookup_share=config.lookup_share,
                                   rng=rng)  # fmt: skip
        messages = example["messages"]
        rows.append({
            "prompt": messages[:-1],
            "completion": messages[-1:],
            "tools": json.dumps(example["tools"]),  # a string: Arrow cannot hold heterogeneous JSON schemas
        })  # fmt: skip
    dataset = Dataset.from_list(rows)

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    steps_per_epoch = max(1, len(rows) // config.batch_size)
    max_steps = config.max_steps or max(1, int(steps_per_epoch * config.epochs))
    budget_s = config.max_minutes * 60

    budget = TimeBudget(budget_s, max_steps, report_progress, "ranker training")
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(
            output_dir=scratch,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, max_steps // 20),
            max_steps=max_steps,
            max_length=config.max_length,
            completion_only_loss=True,
            logging_steps=max(1, max_steps // 50),
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=config.seed,
            use_cpu=not torch.cuda.is_available(),
            # TRL defaults to bf16 and gradient checkpointing; on a CPU without bf16 units that made steps ~20x
            # slower, and a few-million-parameter model does not need the memory checkpointing saves.
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            gradient_checkpointing=config.gradient_checkpointing,
            dataset_num_proc=None,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[budget],
        )
        trainer.remove_callback(PrinterCallback)
        peft_model: Any = trainer.model  # a PeftModel once SFTTrainer has applied the LoRA config
        trainable = sum(int(p.numel()) for p in peft_model.parameters() if p.requires_grad)
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
        out_dir.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(out_dir)

    report = RankerTrainReport(
        config=config.to_json(),
        base=base,
        examples=len(rows),
        steps=int(result.global_step),
        seconds_train=round(seconds, 1),
        first_loss=budget.first_loss,
        final_loss=budget.final_loss,
        trainable_parameters=trainable,
        out_dir=str(out_dir),
        losses=budget.losses,
    )
    (out_dir / CONFIG_FILE).write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")
    (out_dir / "SERVE.md").write_text(serving_instructions(base, out_dir, config.adapter_name), encoding="utf-8")
    # ollama resolves ADAPTER against the Modelfile's folder, which is the adapter folder itself.
    (out_dir / "Modelfile").write_text(modelfile_for_adapter(base, "."), encoding="utf-8")
    return report
