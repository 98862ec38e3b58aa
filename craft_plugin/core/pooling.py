"""Pooling a layer's hidden states into a few vectors over token masks (SPEC.md §4).

``hidden`` is ``[B, T, D]``; masks are boolean ``[B, T]``:

* ``valid``  — real (non-padding) tokens,
* ``vision`` — image-token positions,
* ``text``   — language-token positions.

Strategies (each gives ``[B, D]``):

    mean_image_tokens  mean of hidden over positions with valid ∧ vision
    mean_masked        mean of hidden over positions with valid
    last_token         hidden at the last position with valid ∧ text
    cls_token          hidden at the first position with valid

Padded positions never contribute. A row with no position to pool (e.g. no vision token)
raises a ``ValueError`` naming the row, rather than silently returning zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "POOLING_STRATEGIES",
    "PoolingKind",
    "TokenMasks",
    "cls_token",
    "last_token",
    "mean_image_tokens",
    "mean_masked",
    "pool",
]

PoolingKind = Literal["mean_image_tokens", "mean_masked", "last_token", "cls_token"]
POOLING_STRATEGIES: tuple[str, ...] = ("mean_image_tokens", "mean_masked", "last_token", "cls_token")


@dataclass(frozen=True)
class TokenMasks:
    """Boolean ``[B, T]`` masks over a sequence; ``vision``/``text`` may be ``None`` if absent."""

    valid: Tensor
    vision: Tensor | None = None
    text: Tensor | None = None


def _masked_mean(hidden: Tensor, mask: Tensor, what: str) -> Tensor:
    _check(hidden, mask, what)
    mask = mask.bool()
    counts = mask.sum(dim=1)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{what}: rows {empty} have no token to pool over")
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / counts.to(hidden.dtype).unsqueeze(-1)


def _gather_position(hidden: Tensor, mask: Tensor, what: str, last: bool) -> Tensor:
    _check(hidden, mask, what)
    mask = mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{what}: rows {empty} have no token to pool over")
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    if last:
        idx = torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=1)
    else:
        idx = torch.where(mask, positions, torch.full_like(positions, T)).amin(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx.to(hidden.device)]


def mean_image_tokens(hidden: Tensor, masks: TokenMasks) -> Tensor:
    """Mean over vision-token positions that are valid."""
    if masks.vision is None:
        raise ValueError("mean_image_tokens needs a vision-token mask; this policy's tap provides none")
    return _masked_mean(hidden, masks.valid.bool() & masks.vision.bool(), "mean_image_tokens")


def mean_masked(hidden: Tensor, masks: TokenMasks) -> Tensor:
    """Mean over all valid positions."""
    return _masked_mean(hidden, masks.valid, "mean_masked")


def last_token(hidden: Tensor, masks: TokenMasks) -> Tensor:
    """The last valid language token."""
    if masks.text is None:
        raise ValueError("last_token needs a text-token mask; this policy's tap provides none")
    return _gather_position(hidden, masks.valid.bool() & masks.text.bool(), "last_token", last=True)


def cls_token(hidden: Tensor, masks: TokenMasks) -> Tensor:
    """The first valid token."""
    return _gather_position(hidden, masks.valid, "cls_token", last=False)


_STRATEGIES = {
    "mean_image_tokens": mean_image_tokens,
    "mean_masked": mean_masked,
    "last_token": last_token,
    "cls_token": cls_token,
}


def pool(hidden: Tensor, masks: TokenMasks, strategies: Sequence[PoolingKind]) -> Tensor:
    """Apply each strategy in order and stack: ``[B, T, D]`` → ``[B, len(strategies), D]``."""
    if len(strategies) == 0:
        raise ValueError("pool needs at least one strategy")
    out = []
    for name in strategies:
        fn = _STRATEGIES.get(name)
        if fn is None:
            raise ValueError(f"unknown pooling {name!r}; allowed: {', '.join(POOLING_STRATEGIES)}")
        out.append(fn(hidden, masks))
    return torch.stack(out, dim=1)


def _check(hidden: Tensor, mask: Tensor, what: str) -> None:
    if hidden.dim() != 3:
        raise ValueError(f"{what}: hidden states must be [B, T, D], got shape {tuple(hidden.shape)}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"{what}: mask shape {tuple(mask.shape)} does not match hidden [B, T] = {tuple(hidden.shape[:2])}")
