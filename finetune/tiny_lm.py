"""A tiny, randomly initialised Qwen2 chat model (and LoRA adapters for it), built offline in seconds.

Tests and the embedded worker's smoke checks need a real transformers checkpoint with a
real tokenizer and the production chat template, but no network and no GPU. This module
trains a byte-level BPE tokenizer on a small built-in corpus, attaches
:data:`CHAT_TEMPLATE_PATH` (the Qwen2.5/Hermes format that vLLM and ollama parse), and
saves a random ``Qwen2ForCausalLM`` next to it. Its outputs are gibberish, but they are
deterministic for a seed, which is all an engine test needs.

Example:
    >>> base = build_tiny_chat_model(Path("var/models/tiny-chat"))  # doctest: +SKIP
    >>> build_tiny_lora_adapter(base, Path("var/adapters/tiny-a"), seed=1)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prompts import CHAT_TEMPLATE_PATH, load_chat_template

__all__ = [
    "CHAT_TEMPLATE_PATH",
    "SPECIAL_TOKENS",
    "TOOL_TOKENS",
    "build_tiny_chat_model",
    "build_tiny_lora_adapter",
    "default_corpus",
    "load_chat_template",
    "make_chat_tokenizer",
]

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Not special: decode(skip_special_tokens=True) must keep them, or the tool-call parser never sees them.
TOOL_TOKENS: tuple[str, ...] = ("<tool_call>", "</tool_call>")
_QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def default_corpus() -> list[str]:
    """A few hundred lines of catalogue prose, ChatML markup and tool-call JSON to train the tiny tokenizer on.

    Example:
        >>> any("<tool_call>" in line for line in default_corpus())
        True
    """
    colours = ["red", "navy", "black", "white", "olive", "beige", "grey", "pink"]
    items = ["shirt", "dress", "sneakers", "handbag", "watch", "jeans", "jacket", "scarf"]
    buyers = ["boutique", "retailer", "wholesaler", "department store"]
    lines: list[str] = []
    for colour, item in itertools.product(colours, items):
        lines.append(f"Recommend a {colour} {item} for a {buyers[len(lines) % len(buyers)]}.")
        lines.append(f"The {colour} {item} is in stock: 120 units, price 24.90 EUR, ships in 3 days.")
        lines.append(
            f'<tool_call>\n{{"name": "search_products", "arguments": {{"query": "{colour} {item}", "limit": 5}}}}\n'
            "</tool_call>"
        )
        lines.append(
            f'<tool_response>\n{{"results": [{{"id": "p{len(lines)}", "title": "{colour.title()} {item}", '
            '"score": 0.87}]}\n</tool_response>'
        )
    for item in items:
        lines.append(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\nShow me {item}s like this photo.<|im_end|>\n"
            f"<|im_start|>assistant\nHere are three {item}s that match.<|im_end|>\n<|endoftext|>"
        )
    lines.append('{"type": "function", "function": {"name": "search_products", "description": "Search the catalogue",')
    lines.append(
        '"parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}'
    )
    lines.append("# Tools\n\nYou may call one or more functions to assist with the user query.")
    lines.append("Unicode: café, naïve, Größe, 東京, emoji 👗👠.")
    return lines


def _train_tokenizer(corpus: Sequence[str], vocab_size: int) -> object:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: PLC0415 - lazy: only building the tiny test model needs it

    tok = Tokenizer(models.BPE())
    # Qwen2's exact pipeline: AutoTokenizer rebuilds a "qwen2" checkpoint's tokenizer as Qwen2Tokenizer with these
    # steps, so training with anything else would tokenize differently after a reload.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TOOL_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    return tok


def make_chat_tokenizer(corpus: Sequence[str], vocab_size: int, *, model_max_length: int = 2048) -> Any:
    """A byte-level BPE tokenizer trained on ``corpus``, with Tandem's chat template and special tokens.

    Example:
        >>> tok = make_chat_tokenizer(default_corpus(), 512)  # doctest: +SKIP
        >>> tok.eos_token  # doctest: +SKIP
        '<|im_end|>'
    """
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it

    return PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(corpus, vocab_size),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=load_chat_template(),
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def build_tiny_chat_model(
    out_dir: Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
    corpus: Sequence[str] | None = None,
) -> Path:
    """Train a byte-level BPE tokenizer, build a random tiny ``Qwen2ForCausalLM`` and save both into ``out_dir``.

    The tokenizer carries the chat template, eos ``<|im_end|>`` and pad ``<|endoftext|>``;
    ``<tool_call>``/``</tool_call>`` are added tokens that survive decoding. The same seed
    (and corpus) gives the same weights and vocabulary.

    Example:
        >>> model_dir = build_tiny_chat_model(tmp_path / "tiny-chat", seed=0)  # doctest: +SKIP
        >>> AutoTokenizer.from_pretrained(model_dir).eos_token  # doctest: +SKIP
        '<|im_end|>'
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it

    min_vocab = 256 + len(SPECIAL_TOKENS) + len(TOOL_TOKENS)
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size must be at least {min_vocab} (the byte alphabet plus the special tokens)")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = make_chat_tokenizer(default_corpus() if corpus is None else corpus, vocab_size)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    pad_id = tokenizer.pad_token_id

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        # Wider than the usual 0.02 so a random model has peaked logits: greedy decoding then does not hinge on
        # float noise, which keeps "batched == alone" checks stable.
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_ids[0],
        pad_token_id=pad_id,
    )
    # A private RNG stream: building a fixture must not perturb the caller's global torch seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id, bos_token_id=None)

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_lora_adapter(base_dir: Path, out_dir: Path, *, seed: int = 0, r: int = 4) -> Path:
    """Save a LoRA adapter (q_proj, v_proj) with random, non-zero A and B for the model in ``base_dir``.

    ``init_lora_weights=False`` makes B non-zero, so the adapter really changes outputs.

    Example:
        >>> adapter_dir = build_tiny_lora_adapter(model_dir, tmp_path / "adapter-a", seed=1)  # doctest: +SKIP
    """
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415 - lazy: peft pulls transformers (seconds); only this path needs it
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(base, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    return out_dir
