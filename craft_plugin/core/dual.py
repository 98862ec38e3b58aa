"""The primal-dual side of CRaFT (SPEC.md §3, steps 5–6).

Dual ascent on the multiplier of the constraint ``L_ret ≤ ε_t``:

    λ ← clip(λ + lambda_lr · (L_ret − ε_t), 0, lambda_max)

and the retention budget ``ε_t`` annealed from ``epsilon_start`` (step 0) to ``epsilon_end``
(step ``total_steps`` and after), with ``t = min(step / total_steps, 1)``:

    linear       ε_t = ε_0 + (ε_1 − ε_0) · t
    cosine       ε_t = ε_1 + (ε_0 − ε_1) · (1 + cos(π t)) / 2
    exponential  ε_t = ε_0 · (ε_1 / ε_0) ** t                (geometric; needs ε_0, ε_1 > 0)
    constant     ε_t = ε_1                                   (the final budget, from step 0)

:class:`LagrangeMultiplier` keeps λ as a tiny stateful object (``cooper``-style): its value
lives in its state, it is clamped after every dual step, and it checkpoints with
``state_dict``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "EpsilonSchedule",
    "LagrangeMultiplier",
    "ScheduleKind",
    "dual_update",
    "epsilon_at",
]

ScheduleKind = Literal["linear", "cosine", "exponential", "constant"]
SCHEDULE_KINDS: tuple[str, ...] = ("linear", "cosine", "exponential", "constant")


def dual_update(lam: float, l_ret: float, epsilon: float, lr: float, lam_max: float) -> float:
    """One projected dual-ascent step: ``clip(λ + lr·(L_ret − ε), 0, λ_max)``."""
    if lr < 0:
        raise ValueError(f"lambda_lr must be >= 0, got {lr}")
    if lam_max < 0:
        raise ValueError(f"lambda_max must be >= 0, got {lam_max}")
    return min(max(lam + lr * (l_ret - epsilon), 0.0), lam_max)


def epsilon_at(step: int, total_steps: int, start: float, end: float, kind: ScheduleKind = "linear") -> float:
    """The retention budget ``ε_t`` at ``step`` of a ``total_steps`` anneal (see module doc)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    t = min(step / total_steps, 1.0)
    if kind == "linear":
        return start + (end - start) * t
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "exponential":
        if start <= 0 or end <= 0:
            raise ValueError(f"exponential schedule needs epsilon_start > 0 and epsilon_end > 0, got {start}, {end}")
        return start * (end / start) ** t
    if kind == "constant":
        return end
    raise ValueError(f"unknown epsilon schedule {kind!r}; allowed: {', '.join(SCHEDULE_KINDS)}")


@dataclass(frozen=True)
class EpsilonSchedule:
    """An ε schedule as a value: ``schedule(step)`` gives ``ε_step``."""

    start: float
    end: float
    total_steps: int
    kind: ScheduleKind = "linear"

    def __post_init__(self) -> None:
        epsilon_at(0, self.total_steps, self.start, self.end, self.kind)  # validates

    def __call__(self, step: int) -> float:
        return epsilon_at(step, self.total_steps, self.start, self.end, self.kind)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> EpsilonSchedule:
        return cls(
            start=float(state["start"]),
            end=float(state["end"]),
            total_steps=int(state["total_steps"]),
            kind=state["kind"],
        )


class LagrangeMultiplier:
    """λ ≥ 0 for the constraint ``L_ret ≤ ε``, updated by projected dual ascent.

    The value is a float64 0-d tensor so that ``state_dict`` round-trips it bit-exactly.
    """

    def __init__(self, init: float, lr: float, max_value: float) -> None:
        if not 0.0 <= init <= max_value:
            raise ValueError(f"initial lambda must lie in [0, lambda_max={max_value}], got {init}")
        self.lr = float(lr)
        self.max_value = float(max_value)
        self.value = torch.tensor(float(init), dtype=torch.float64)

    def __float__(self) -> float:
        return float(self.value)

    def step(self, l_ret: float, epsilon: float) -> float:
        """``λ ← clip(λ + lr·(L_ret − ε), 0, λ_max)``; returns the new λ."""
        new = dual_update(float(self.value), float(l_ret), float(epsilon), self.lr, self.max_value)
        self.value = torch.tensor(new, dtype=torch.float64)
        return new

    def state_dict(self) -> dict[str, Tensor]:
        return {"value": self.value.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        value = torch.as_tensor(state["value"], dtype=torch.float64).reshape(())
        if not 0.0 <= float(value) <= self.max_value:
            raise ValueError(f"saved lambda {float(value)} lies outside [0, lambda_max={self.max_value}]")
        self.value = value.clone()
