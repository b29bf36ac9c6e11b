"""The domain image tower: a small open_clip model whose image embeddings live in the text encoder's space.

Saved as an open_clip ``local-dir:`` checkpoint (``open_clip_config.json`` with
``model_cfg``/``preprocess_cfg`` plus ``open_clip_model.safetensors``), so the
same loader serves it and any hub model.

Example:
    >>> from retrieval.image_tower import TowerConfig, build_tower, save_tower
    >>> model = build_tower(TowerConfig(embed_dim=384))  # doctest: +SKIP
    >>> save_tower(model, TowerConfig(embed_dim=384), Path("var/models/image-tower-init"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

__all__ = [
    "TowerConfig",
    "TowerSpec",
    "build_tower",
    "ensure_untrained_tower",
    "load_base_tower",
    "save_tower",
    "tower_spec",
    "untrained_tower_dir",
]

# CLIP's normalisation constants: kept so a pretrained open_clip tower can be fine-tuned with the same code.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class TowerConfig(BaseModel):
    """Architecture of the CPU-sized image tower (a small ViT in open_clip's own config format)."""

    name: str = "tandem-vit-tiny"
    embed_dim: int = Field(default=384, gt=0, description="Must equal the text encoder's dimension.")
    image_size: int = 64
    patch_size: int = 16
    width: int = 192
    layers: int = 4
    head_width: int = 32
    mlp_ratio: float = 2.0
    seed: int = 0

    def open_clip_config(self) -> dict[str, Any]:
        # The text tower is never used (the frozen sentence encoder is the text side) but open_clip's
        # CLIP class needs one; it is kept minimal.
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "width": self.width,
                "layers": self.layers,
                "head_width": self.head_width,
                "mlp_ratio": self.mlp_ratio,
            },
            "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1},
        }


@dataclass(frozen=True)
class TowerSpec:
    """What a saved checkpoint records: open_clip's model and preprocessing configs, and a name."""

    name: str
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg.get("size", self.model_cfg["vision_cfg"].get("image_size", 224))
        return int(size if isinstance(size, int) else size[0])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.preprocess_cfg.get("mean", OPENAI_MEAN))

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.preprocess_cfg.get("std", OPENAI_STD))


def tower_spec(config: TowerConfig) -> TowerSpec:
    preprocess = {
        "size": config.image_size,
        "mean": list(OPENAI_MEAN),
        "std": list(OPENAI_STD),
        "interpolation": "bicubic",
        "resize_mode": "squash",
    }
    return TowerSpec(config.name, config.open_clip_config(), preprocess)


def build_tower(config: TowerConfig) -> torch.nn.Module:
    """A freshly initialised open_clip model for ``config`` (seeded, so builds are reproducible)."""
    import open_clip  # noqa: PLC0415 - lazy: open_clip pulls torch (seconds); only the image tower needs it

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(config.seed)
        model: torch.nn.Module = open_clip.CLIP(**config.open_clip_config())
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def load_base_tower(base: str, pretrained: str | None, embed_dim: int) -> tuple[torch.nn.Module, TowerSpec]:
    """A pretrained open_clip model to fine-tune, its output projected to ``embed_dim`` (the text encoder's).

    ``base`` is an open_clip model name with a ``pretrained`` tag or file (needs internet for a tag), or
    ``local-dir:PATH``. The image tower's weights are kept; a projection of another size starts afresh.
    """
    import open_clip  # noqa: PLC0415 - lazy: open_clip pulls torch (seconds); only the image tower needs it

    try:
        source = open_clip.create_model(base, pretrained=pretrained)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"cannot load base model {base!r} (pretrained={pretrained!r}): {exc}") from exc
    if base.startswith("local-dir:"):
        saved = json.loads((Path(base.removeprefix("local-dir:")) / "open_clip_config.json").read_text())
        model_cfg, preprocess_cfg = saved["model_cfg"], saved.get("preprocess_cfg", {})
    else:
        model_cfg = open_clip.get_model_config(base)
        if model_cfg is None:
            raise ValueError(f"open_clip has no model config {base!r}")
        preprocess_cfg = dict(getattr(source.visual, "preprocess_cfg", {}) or {})
    model_cfg = {**model_cfg, "embed_dim": embed_dim}
    model: torch.nn.Module = open_clip.CLIP(**model_cfg)
    own = model.visual.state_dict()  # type: ignore[union-attr]
    keep = {k: v for k, v in source.visual.state_dict().items() if k in own and own[k].shape == v.shape}
    model.visual.load_state_dict(keep, strict=False)  # type: ignore[union-attr]
    name = base.removeprefix("local-dir:").rstrip("/").split("/")[-1] + "-tandem"
    return model, TowerSpec(name, model_cfg, preprocess_cfg)


def save_tower(
    model: torch.nn.Module, spec: TowerSpec | TowerConfig, directory: Path, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as an open_clip ``local-dir:`` checkpoint folder; returns the folder."""
    from safetensors.torch import save_file  # noqa: PLC0415 - lazy: only saving weights needs it

    if isinstance(spec, TowerConfig):
        spec = tower_spec(spec)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": spec.model_cfg, "preprocess_cfg": spec.preprocess_cfg}
    (directory / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    info = {"name": spec.name, **(meta or {})}
    (directory / "tandem_meta.json").write_text(json.dumps(info, indent=2))
    return directory


def untrained_tower_dir(models_dir: Path) -> Path:
    return models_dir / "image-tower-untrained"


def ensure_untrained_tower(models_dir: Path, config: TowerConfig | None = None) -> Path:
    """A seeded, randomly initialised tower checkpoint (labelled untrained): the fallback before training."""
    directory = untrained_tower_dir(models_dir)
    if not (directory / "open_clip_config.json").is_file():
        config = config or TowerConfig()
        save_tower(build_tower(config), config, directory, {"trained": False})
    return directory
