"""Service-time models for the simulated engine: heterogeneous, heavy-tailed GPU workers on a laptop.

Spec strings, so a worker process can be given one on its command line:

- ``constant:ms=50``
- ``lognormal:median_ms=80,sigma=0.8`` (heavy right tail)
- ``pareto:scale_ms=40,alpha=1.8`` (heavier still)

plus ``speed=F`` (service times divided by F; 0.25 = four times slower) and
``ttft=F`` (share of the service time spent before the first token, default 0.2).

Example:
    >>> import random
    >>> m = DelayModel.parse("constant:ms=50,speed=0.5")
    >>> round(m.sample(random.Random(0)), 3)
    0.1
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["DelayModel"]

Kind = Literal["constant", "lognormal", "pareto"]
_PARAMS: dict[str, set[str]] = {
    "constant": {"ms"},
    "lognormal": {"median_ms", "sigma"},
    "pareto": {"scale_ms", "alpha"},
}
_COMMON = {"speed", "ttft"}


@dataclass(frozen=True)
class DelayModel:
    """A distribution of per-request service times in seconds."""

    kind: Kind = "constant"
    scale_s: float = 0.0  # constant: the value; lognormal: the median; pareto: the minimum
    shape: float = 0.0  # lognormal: sigma; pareto: alpha
    speed: float = 1.0
    ttft_fraction: float = 0.2

    @classmethod
    def parse(cls, spec: str) -> DelayModel:
        kind, _, rest = spec.strip().partition(":")
        if kind not in _PARAMS:
            raise ValueError(f"unknown delay model {kind!r}; use one of {', '.join(_PARAMS)}")
        values: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, raw = item.partition("=")
            if not sep or key not in _PARAMS[kind] | _COMMON:
                raise ValueError(f"bad delay parameter {item!r} for {kind}; expected {sorted(_PARAMS[kind] | _COMMON)}")
            try:
                values[key] = float(raw)
            except ValueError as exc:
                raise ValueError(f"delay parameter {key} must be a number, got {raw!r}") from exc
        missing = _PARAMS[kind] - values.keys()
        if missing:
            raise ValueError(f"delay model {kind} needs {', '.join(sorted(missing))}")
        speed = values.get("speed", 1.0)
        ttft = values.get("ttft", 0.2)
        if speed <= 0 or not 0 <= ttft <= 1:
            raise ValueError("speed must be > 0 and ttft within [0, 1]")
        if kind == "constant":
            return cls("constant", values["ms"] / 1000, 0.0, speed, ttft)
        if kind == "lognormal":
            if values["sigma"] < 0:
                raise ValueError("sigma must be >= 0")
            return cls("lognormal", values["median_ms"] / 1000, values["sigma"], speed, ttft)
        if values["alpha"] <= 1:
            raise ValueError("pareto alpha must be > 1 (finite mean)")
        return cls("pareto", values["scale_ms"] / 1000, values["alpha"], speed, ttft)

    @property
    def mean_s(self) -> float:
        if self.kind == "lognormal":
            base = self.scale_s * math.exp(self.shape**2 / 2)
        elif self.kind == "pareto":
            base = self.scale_s * self.shape / (self.shape - 1)
        else:
            base = self.scale_s
        return base / self.speed

    def sample(self, rng: random.Random) -> float:
        if self.kind == "lognormal":
            base = self.scale_s * math.exp(rng.gauss(0.0, self.shape))
        elif self.kind == "pareto":
            base = self.scale_s * rng.paretovariate(self.shape)
        else:
            base = self.scale_s
        return base / self.speed
