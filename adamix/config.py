"""`AdaMixConfig`: one dataclass for both AdaMix variants (bottleneck adapters and LoRA)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["adapter", "lora"]
Placement = Literal["ffn", "attention", "both"]
LORA_TARGETS = ("query", "key", "value")  # the attention projections LoRA may adapt


@dataclass
class AdaMixConfig:
    """Configuration of an AdaMix mixture (see `ADAMIX.md`). `num_experts=1` is the plain baseline."""

    kind: Kind = field(default="adapter", metadata={"help": "'adapter' (bottleneck adapters) or 'lora'."})
    num_experts: int = field(default=4, metadata={"help": "Experts M per mixture module; 1 = plain adapter/LoRA."})
    bottleneck: int = field(default=16, metadata={"help": "Adapter bottleneck r (d -> r -> d)."})
    share_up: bool = field(default=True, metadata={"help": "Adapter: one up-projection shared by all experts."})
    share_down: bool = field(default=False, metadata={"help": "Adapter: one down-projection shared by all experts."})
    placement: Placement = field(
        default="ffn",
        metadata={"help": "Adapter site: 'ffn' (after the FFN output, the paper's default), 'attention' "
                          "(after the attention output) or 'both'."},
    )
    lora_r: int = field(default=4, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    lora_targets: tuple[str, ...] = field(
        default=("query", "value"),
        metadata={"help": "Attention projections LoRA adapts: any of 'query', 'key', 'value'."},
    )
    lora_share_b: bool = field(default=True, metadata={"help": "LoRA: B (up) shared, experts over A (down)."})
    consistency_weight: float = field(
        default=1.0, metadata={"help": "lambda of the consistency KL (1 for classification, 100 for generation)."}
    )
    init_std: float = field(default=0.02, metadata={"help": "Std of the N(0, std) init of adapter weights."})
    seed: int = field(default=0, metadata={"help": "Seed of the init and of the routing generator."})

    def __post_init__(self) -> None:
        if isinstance(self.lora_targets, list):
            self.lora_targets = tuple(self.lora_targets)
        self._check("kind", self.kind in ("adapter", "lora"), "'adapter' or 'lora'")
        for name in ("num_experts", "bottleneck", "lora_r"):
            value = getattr(self, name)
            self._check(name, isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                        "an integer >= 1")
        self._check("num_experts", self.num_experts <= 64, "at most 64")
        self._check("bottleneck", self.bottleneck <= 4096, "at most 4096")
        self._check("lora_r", self.lora_r <= 1024, "at most 1024")
        for name in ("share_up", "share_down", "lora_share_b"):
            self._check(name, isinstance(getattr(self, name), bool), "a bool")
        self._check("placement", self.placement in ("ffn", "attention", "both"), "'ffn', 'attention' or 'both'")
        self._check("lora_alpha", _is_number(self.lora_alpha) and self.lora_alpha > 0, "a finite number > 0")
        self._check("lora_dropout", _is_number(self.lora_dropout) and 0 <= self.lora_dropout < 1, "in [0, 1)")
        self._check(
            "lora_targets",
            len(self.lora_targets) > 0 and all(t in LORA_TARGETS for t in self.lora_targets)
            and len(set(self.lora_targets)) == len(self.lora_targets),
            "a non-empty subset of ('query', 'key', 'value') without repeats",
        )
        self._check("consistency_weight", _is_number(self.consistency_weight) and self.consistency_weight >= 0,
                    "a finite number >= 0")
        self._check("init_std", _is_number(self.init_std) and 0 < self.init_std <= 1, "in (0, 1]")
        self._check("seed", isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
                    "an integer >= 0")

    def _check(self, name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise ValueError(f"AdaMixConfig.{name} must be {expected}, got {getattr(self, name)!r}")

    @property
    def lora_scaling(self) -> float:
        return self.lora_alpha / self.lora_r

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaMixConfig:
        """Build a config from `to_dict()` output; unknown fields are refused by name."""
        if not isinstance(data, dict):
            raise ValueError(f"AdaMixConfig must be built from a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"AdaMixConfig has no field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool, NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
