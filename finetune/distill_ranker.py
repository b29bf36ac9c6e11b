"""Listwise distillation of the ranker: every candidate-id slot of ``submit_ranking`` learns a distribution.

SFT on one teacher ranking (:mod:`finetune.train_ranker`'s TRL path) teaches, at each id slot,
one token: the teacher's pick. But the teacher knows more than its order: a posterior over the
candidates (:func:`finetune.ranking_data.target_posterior`). Here each slot's target is that
posterior over the candidates not yet listed (Plackett–Luce), on the very tokens greedy
decoding chooses between; the tool call's other tokens keep their hard SFT target. One
teacher-forced pass scores all slots, as LlamaRec's verbalizer scores its index letters, and a
model that copies the format but ignores the lines pays for every misplaced unit of mass, not
only for the top pick. The vocabulary projection is taken at the answer's ~60 positions only,
not the prompt's ~950. A run starts with reading lessons (:func:`lesson_example`,
:mod:`finetune.ranker_warmup`): without them a small base never starts reading the lines.

TRL's ``SFTTrainer`` has no soft-target loss and its ``GKDTrainer`` distils from a teacher
*model*; the teacher here is a distribution per slot, so this is a small loop of its own, with
the same checkpoint-and-resume contract (``checkpoint_dir``) and time budget as the TRL path.

Example:
    >>> examples = [distill_example(case, cat, codes, tokenizer, top_n=10, rng=rng) for case in cases]  # doctest: +SKIP
    >>> fit = distill(peft_model, examples, config, checkpoint_dir=Path("var/ranker.checkpoints"))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune.buyers import CatalogueCodes
from finetune.ranker_warmup import ReadingLesson
from finetune.ranking_data import RankingCase, ranker_case_prompt, target_posterior, teacher_ranking
from rag.ranker_format import RankerPrompt, handles, ranker_prompt
from retrieval.catalogue import Catalogue

__all__ = [
    "DistillExample",
    "DistillFit",
    "distill",
    "distill_example",
    "lesson_example",
    "prefix_cache",
    "shared_prefix",
    "slot_targets",
]

Progress = Callable[[str, int, int], None]
_STATE = "distill_state.pt"


@dataclass(frozen=True)
class DistillExample:
    """One rendered conversation: its tokens, where the answer starts, and each id slot's soft target.

    ``slots`` holds ``(position, token_ids, probabilities)``: at token ``position`` of
    ``input_ids`` the model should put ``probabilities`` on the candidate-id tokens ``token_ids``.
    """

    input_ids: tuple[int, ...]
    answer_start: int
    slots: tuple[tuple[int, tuple[int, ...], tuple[float, ...]], ...]
    unscored: tuple[int, ...] = ()  # answer positions in no loss (a lesson's ids after the first: no order to learn)


def slot_targets(posterior: Sequence[float], ranking: Sequence[int], slots: int) -> list[list[float]]:
    """Plackett–Luce targets: slot ``j`` gets ``posterior`` over the candidates not in ``ranking[:j]``.

    >>> [[round(p, 2) for p in row] for row in slot_targets([0.5, 0.3, 0.2], [0, 1, 2], 2)]
    [[0.5, 0.3, 0.2], [0.0, 0.6, 0.4]]
    """
    p = np.asarray(posterior, dtype=np.float64)
    rows = []
    for j in range(slots):
        q = p.copy()
        q[list(ranking[:j])] = 0.0
        total = q.sum()
        q = q / total if total > 0 else np.where(q == 0, 0.0, 1.0)
        rows.append([float(v) for v in q])
    return rows


def _token_at(offsets: Sequence[tuple[int, int]], char: int) -> int:
    for i, (start, end) in enumerate(offsets):
        if start == char and end == char + 1:
            return i
    raise ValueError(f"no token is the one character at {char}: the tokenizer merges a candidate id with its quotes")


def distill_example(
    case: RankingCase,
    catalogue: Catalogue,
    codes: CatalogueCodes,
    tokenizer: Any,
    *,
    top_n: int = 10,
    rng: random.Random | None = None,
    shuffle: bool = True,
) -> DistillExample:
    """Render ``case`` as served with its slot targets; ``shuffle``: the candidates in a random order.

    Shuffled as ``sft_conversation`` explains: in retrieval order the best candidate is ``A`` half
    the time, and a small model learns that prior instead of reading the lines.
    """
    rng = rng or random.Random(case.buyer.buyer_id)
    posterior = target_posterior(case, codes, catalogue)
    best = teacher_ranking(case, codes, catalogue)[:top_n]
    n = len(case.candidates)
    order = rng.sample(range(n), n) if shuffle else list(range(n))
    shown = replace(case, candidates=tuple(case.candidates[i] for i in order))
    products = [p for p in (catalogue.get(c) for c in shown.candidates) if p is not None]
    if len(products) != len(shown.candidates):
        raise ValueError(f"buyer {case.buyer.buyer_id}: a candidate is not in the catalogue")
    prompt = ranker_case_prompt(case.buyer, products, catalogue, at_least=top_n)
    ranking = [shown.candidates.index(pid) for pid in best]
    return _rendered(prompt, tokenizer, ranking, [float(posterior[i]) for i in order])


def lesson_example(lesson: ReadingLesson, tokenizer: Any, *, top_n: int = 10, rng: random.Random) -> DistillExample:
    """A reading lesson (:mod:`finetune.ranker_warmup`) as a distillation example.

    Only the first slot is scored: its target is the matching candidate. The ids after it (the
    others, in a random order) are in no loss, so the lesson teaches no order among them, and its
    one bit of signal is not averaged away among nine slots that carry none.
    """
    n = len(lesson.candidates)
    prompt = ranker_prompt(lesson.profile, [], lesson.request, lesson.candidates, at_least=top_n)
    rest = [i for i in range(n) if i != lesson.answer]
    ranking = [lesson.answer, *rng.sample(rest, len(rest))][: min(top_n, n)]
    posterior = [1.0 if i == lesson.answer else 0.0 for i in range(n)]
    example = _rendered(prompt, tokenizer, ranking, posterior)
    first, *later = example.slots
    return replace(example, slots=(first,), unscored=tuple(position for position, _, _ in later))


def _rendered(
    prompt: RankerPrompt, tokenizer: Any, ranking: Sequence[int], posterior: Sequence[float]
) -> DistillExample:
    """``prompt`` answered by a ``submit_ranking`` call of the shown candidates ``ranking`` (indexes), tokenized,
    with each id slot's Plackett–Luce target from ``posterior`` (over the candidates in the order shown)."""
    ids = handles(len(posterior))
    answer = [ids[i] for i in ranking]
    call = {"type": "function", "function": {"name": "submit_ranking", "arguments": {"ids": answer}}}
    messages = [*prompt.messages, {"role": "assistant", "content": "", "tool_calls": [call]}]
    head = tokenizer.apply_chat_template(
        prompt.messages, tools=prompt.tools, tokenize=False, add_generation_prompt=True
    )
    text = tokenizer.apply_chat_template(messages, tools=prompt.tools, tokenize=False)
    if not text.startswith(head):
        raise ValueError("the chat template renders the prompt differently once the answer follows it")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    answer_start = next(i for i, (start, _) in enumerate(offsets) if start >= len(head))
    id_tokens = [int(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(h))[0]) for h in ids]
    cursor = text.index('"ids"', len(head))
    slots = []
    rows = slot_targets(posterior, ranking, len(answer))
    for j, (target, row) in enumerate(zip(answer, rows, strict=True)):
        cursor = text.index(f'"{target}"', cursor) + 1
        position = _token_at(offsets, cursor)
        if enc["input_ids"][position] != id_tokens[ids.index(target)]:
            raise ValueError(f"candidate id {target!r} tokenizes differently inside the call than alone")
        # Every id not listed yet, a zero target included: these are what guided decoding chooses between.
        left = [i for i in range(len(ids)) if i not in ranking[:j]]
        slots.append((position, tuple(id_tokens[i] for i in left), tuple(row[i] for i in left)))
    return DistillExample(tuple(enc["input_ids"]), answer_start, tuple(slots))


def _inner(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def shared_prefix(examples: Sequence[DistillExample]) -> int:
    """How many leading tokens every example shares (the system prompt and the tools), before any answer."""
    if not examples:
        return 0
    first = examples[0].input_ids
    n = min(e.answer_start for e in examples)
    for e in examples[1:]:
        n = next((i for i in range(n) if e.input_ids[i] != first[i]), n)
    return n


def prefix_cache(model: Any, tokens: Sequence[int]) -> Any:
    """The KV of the shared prefix under the adapter as it is now, without gradient (see :func:`_loss`)."""
    with torch.no_grad():
        return _inner(model).model(input_ids=torch.tensor([list(tokens)]), use_cache=True).past_key_values


def _loss(model: Any, example: DistillExample, prefix: tuple[int, Any] | None = None) -> torch.Tensor:
    """Soft cross-entropy at the id slots, among the ids left, plus hard cross-entropy on the call's other tokens.

    At an id slot, guided decoding chooses only among the candidate ids not yet listed, so the
    slot's softmax is taken over those tokens alone: the loss is about which candidate, never
    about writing an id at all. The slots' mean and the other tokens' mean are added, so the
    ~50 format tokens (learned in a few steps) do not drown the ~10 slots that rank.

    With ``prefix`` (its length and :func:`prefix_cache`), the shared system prompt and tools are
    not recomputed: the example's own tokens attend to their cached KV. That cache is computed
    with the current adapter once per optimiser step, so serving's view is kept and only the
    gradient through the prefix's keys and values is dropped (measured on 2 CPU cores: 1.7× fewer seconds a step).
    """
    inner = _inner(model)
    ids = torch.tensor([example.input_ids])
    start = 0
    if prefix is not None:
        start, cache = prefix[0], copy.deepcopy(prefix[1])
        hidden = inner.model(input_ids=ids[:, start:], past_key_values=cache, use_cache=True).last_hidden_state[0]
    else:
        hidden = inner.model(input_ids=ids).last_hidden_state[0]
    positions = torch.arange(example.answer_start, len(example.input_ids))
    logits = inner.lm_head(hidden[positions - 1 - start]).float()
    slot_rows = {position - example.answer_start for position, _, _ in example.slots}
    slot_losses = []
    for position, tokens, probs in example.slots:
        logp = torch.log_softmax(logits[position - example.answer_start, list(tokens)], dim=-1)
        slot_losses.append(-(torch.tensor(probs, dtype=logp.dtype) * logp).sum())
    skipped = slot_rows | {position - example.answer_start for position in example.unscored}
    others = [i for i in range(len(positions)) if i not in skipped]
    hard = torch.nn.functional.cross_entropy(logits[others], ids[0, positions[others]]) if others else logits.sum() * 0
    slot = torch.stack(slot_losses).mean() if slot_losses else logits.sum() * 0
    return slot + hard


@dataclass
class DistillFit:
    """What the loop did: optimiser steps done and planned, seconds (resumed runs' included), losses, resume point."""

    steps: int
    planned_steps: int
    seconds: float
    losses: list[tuple[int, float]]
    trainable: int
    resumed_from: int


def _schedule(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, total // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _save_state(
    path: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    step: int,
    losses: list[tuple[int, float]],
    seconds: float,
) -> None:
    from peft import get_peft_model_state_dict  # noqa: PLC0415 - lazy: peft pulls transformers; only training needs it

    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (_STATE + ".tmp")
    state = {"adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "losses": losses, "seconds": seconds}  # fmt: skip
    torch.save(state, tmp)
    tmp.replace(path / _STATE)  # a kill mid-write leaves the previous checkpoint whole


def distill(
    model: Any,
    examples: Sequence[DistillExample],
    *,
    learning_rate: float,
    accumulation: int,
    epochs: float = 1.0,
    save_steps: int = 20,
    max_steps: int | None = None,
    budget_s: float | None = None,
    checkpoint_dir: Path | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
    seed: int = 0,
    share_prefix: bool = True,
    lessons: int = 0,
) -> DistillFit:
    """Train ``model`` (a peft model; only its adapter trains) on ``examples``; resumes from ``checkpoint_dir``.

    The first ``lessons`` examples (reading lessons, :func:`lesson_example`) come first, in their
    order; the rest follow in a seeded shuffle, so a resumed run continues with the examples the
    interrupted one had not reached. Stops after ``budget_s`` seconds (at a step boundary,
    checkpoint saved) with fewer steps than planned.
    """
    from peft import set_peft_model_state_dict  # noqa: PLC0415 - lazy: peft pulls transformers; only training needs it

    report = progress or (lambda stage, done, total: None)
    planned = max_steps or max(1, int(len(examples) * epochs / accumulation))
    if not examples:
        raise ValueError("no examples to distil")
    main, shuffler = list(range(lessons, len(examples))), random.Random(seed)
    order = list(range(lessons))
    while len(order) < planned * accumulation:  # one shuffled pass over the cases per epoch
        order += shuffler.sample(main, len(main)) if main else list(range(lessons))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    scheduler = _schedule(optimizer, planned)
    step, losses, earlier = 0, [], 0.0
    state_file = checkpoint_dir / _STATE if checkpoint_dir else None
    if state_file is not None and state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses = int(state["step"]), list(state["losses"])
        earlier = float(state.get("seconds", 0.0))  # training time of the runs before this one
    resumed_from, start = step, clock()
    shared = shared_prefix(examples) if share_prefix else 0
    model.train()
    while step < planned:
        total = 0.0
        model.eval()  # the prefix as serving computes it: no dropout
        prefix = (shared, prefix_cache(model, examples[0].input_ids[:shared])) if shared else None
        model.train()
        for k in range(accumulation):
            loss = _loss(model, examples[order[step * accumulation + k]], prefix) / accumulation
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append((step, round(total, 4)))
        report("ranker distillation", step, planned)
        if checkpoint_dir is not None and (step % save_steps == 0 or step == planned):
            _save_state(checkpoint_dir, model, optimizer, scheduler, step, losses, earlier + clock() - start)
        if budget_s is not None and clock() - start > budget_s:
            break  # after a step, as TRL's path stops: a budget always buys at least one
    if checkpoint_dir is not None and step % save_steps:
        _save_state(checkpoint_dir, model, optimizer, scheduler, step, losses, earlier + clock() - start)
    model.eval()
    trainable = sum(int(p.numel()) for p in params)
    return DistillFit(step, planned, earlier + clock() - start, losses, trainable, resumed_from)
