"""The tiny offline chat model: tokenizer special tokens, chat template on disk, deterministic weights, adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.tiny_lm import (
    CHAT_TEMPLATE_PATH,
    SPECIAL_TOKENS,
    TOOL_TOKENS,
    build_tiny_chat_model,
    build_tiny_lora_adapter,
    load_chat_template,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-lm") / "tiny-chat", seed=0)


def test_tokenizer_round_trips_special_and_tool_tokens(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    for token in (*SPECIAL_TOKENS, *TOOL_TOKENS):
        ids = tok.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
        assert tok.convert_ids_to_tokens(ids[0]) == token

    text = (
        '<|im_start|>assistant\nVoilà: Größe 38, 東京 👗\n<tool_call>\n{"name": "search", "arguments": {"q": "red"}}\n'
        "</tool_call><|im_end|>"
    )
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    # Tool-call markers are not special: the service's parser needs them after skip_special_tokens.
    stripped = tok.decode(ids, skip_special_tokens=True)
    assert "<tool_call>" in stripped and "</tool_call>" in stripped
    assert "<|im_start|>" not in stripped and "<|im_end|>" not in stripped


def test_model_and_template_reload_from_disk(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (tiny_dir / "chat_template.jinja").read_text(encoding="utf-8") == load_chat_template()
    assert CHAT_TEMPLATE_PATH.is_file()
    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    assert tok.chat_template == load_chat_template()
    assert model.config.model_type == "qwen2"
    assert len(tok) <= model.config.vocab_size
    eos = {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    assert set(model.generation_config.eos_token_id) == eos
    assert model.config.pad_token_id == tok.pad_token_id

    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_build_is_deterministic_per_seed(tmp_path: Path, tiny_dir: Path) -> None:
    same = build_tiny_chat_model(tmp_path / "same", seed=0)
    other = build_tiny_chat_model(tmp_path / "other", seed=1)
    weights = (tiny_dir / "model.safetensors").read_bytes()
    assert (same / "model.safetensors").read_bytes() == weights
    assert (same / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()
    assert (other / "model.safetensors").read_bytes() != weights


def test_build_rejects_a_vocabulary_too_small(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_chat_model(tmp_path / "x", vocab_size=100)


def test_custom_corpus_is_used(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = build_tiny_chat_model(tmp_path / "custom", corpus=["zebra crossing"] * 50, vocab_size=300)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert len(tok.encode("zebra", add_special_tokens=False)) < len(b"zebra")


def test_lora_adapter_changes_the_output(tiny_dir: Path, tmp_path: Path) -> None:
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = build_tiny_lora_adapter(tiny_dir, tmp_path / "adapter", seed=3, r=2)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 2 and set(config["target_modules"]) == {"q_proj", "v_proj"}

    ids = torch.tensor([[5, 6, 7, 8]])
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True).eval()
    with torch.inference_mode():
        plain = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, adapter).eval()(input_ids=ids).logits
    assert not torch.allclose(plain, tuned)
