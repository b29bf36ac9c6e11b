"""Loading a local transformers checkpoint and its LoRA adapters for :class:`~llms.worker.hf_engine.TransformersEngine`.

:func:`load_checkpoint` checks the directories, picks the device and the dtype
(:func:`resolve_dtype`: bfloat16 on a CPU only where :func:`cpu_has_fast_bf16`), loads the
tokenizer (it must carry a chat template), the model, and every adapter into one
``PeftModel``. Every failure is an :class:`~llms.errors.EngineError` with a one-line reason.
transformers and peft are imported only when a checkpoint is loaded: they cost seconds.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from llms.errors import EngineError

__all__ = ["BASE_ADAPTER", "cpu_has_fast_bf16", "load_checkpoint", "reason", "resolve_dtype"]

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


def reason(exc: BaseException) -> str:
    """The first line of an exception's message: third-party errors can span pages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX-512 BF16): then bf16 prefills ~3x faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def resolve_dtype(dtype: str, device: torch.device) -> Any:
    """``auto``: the checkpoint's dtype on CUDA; on a CPU bfloat16 where it has bf16 units, else float32.

    Example:
        >>> resolve_dtype("float32", torch.device("cpu"))
        torch.float32
    """
    if dtype == "auto":
        if device.type != "cpu":
            return "auto"
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise EngineError(f"unknown dtype {dtype!r} (auto, float32, bfloat16, float16)")
    return value


def load_checkpoint(
    model_dir: Path,
    adapters: Mapping[str, Path],
    *,
    device: str,
    torch_threads: int | None,
    dtype: str,
) -> tuple[Any, Any, torch.device]:
    """The model (a ``PeftModel`` holding every adapter, if any), its tokenizer and the device they are on.

    Example:
        >>> model, tokenizer, device = load_checkpoint(Path("var/models/tiny-chat"), {}, device="cpu",
        ...     torch_threads=None, dtype="auto")  # doctest: +SKIP
    """
    _check_paths(model_dir, adapters)
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    torch_device = _torch_device(device)
    tokenizer = _load_tokenizer(model_dir)
    model = _load_model(model_dir, torch_device, resolve_dtype(dtype, torch_device))
    if adapters:
        model = _load_adapters(model, adapters, torch_device)
    model.eval()
    return model, tokenizer, torch_device


def _check_paths(model_dir: Path, adapters: Mapping[str, Path]) -> None:
    if not model_dir.is_dir():
        raise EngineError(f"model directory {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise EngineError(f"model directory {model_dir} has no config.json")
    for name, path in adapters.items():
        if not name or name == BASE_ADAPTER:
            raise EngineError(f"invalid adapter name {name!r}")
        if not (Path(path) / "adapter_config.json").is_file():
            raise EngineError(f"adapter {name!r}: {path} has no adapter_config.json")


def _torch_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch_device = torch.device(device)
    except RuntimeError as exc:
        raise EngineError(f"invalid device {device!r}: {reason(exc)}") from exc
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError("device 'cuda' requested but CUDA is not available")
    return torch_device


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:
        raise EngineError(f"cannot load the tokenizer from {model_dir}: {reason(exc)}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise EngineError(f"the tokenizer in {model_dir} has no chat template")
    return tokenizer


def _load_model(model_dir: Path, device: torch.device, torch_dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch_dtype)
        return model.to(device)
    except Exception as exc:
        raise EngineError(f"cannot load the model from {model_dir}: {reason(exc)}") from exc


def _load_adapters(model: Any, adapters: Mapping[str, Path], device: torch.device) -> Any:
    from peft import PeftModel  # noqa: PLC0415 - lazy: peft pulls transformers (seconds); only this path needs it

    names = list(adapters)
    current = names[0]
    try:
        with warnings.catch_warnings():
            # peft asks transformers' deprecated is_gradient_checkpointing: noise in every CLI run.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = PeftModel.from_pretrained(
                model, str(adapters[current]), adapter_name=current, is_trainable=False
            )
        for current in names[1:]:
            peft_model.load_adapter(str(adapters[current]), adapter_name=current, is_trainable=False)
        return peft_model.to(device)
    except Exception as exc:
        raise EngineError(f"cannot load adapter {current!r} from {adapters[current]}: {reason(exc)}") from exc
