"""Hidden-state retention losses between student and teacher features (SPEC.md §4).

Features are tensors of the same shape ``[..., D]`` (the cache stores
``[N, n_layers, n_vectors, hidden_dim]``). With ``s`` the student and ``t`` the teacher:

    mse     L = mean((s − t)²)                          over every element
    l1      L = mean(|s − t|)                           over every element
    cosine  L = mean(1 − cos(s, t))                     over every vector (last dim); range [0, 2]

Features may first be standardized by the teacher's statistics, ``(x − μ) / s`` with μ per
dimension and ``s`` the feature scale of each layer/vector slot (:func:`slot_scale`), so that
an ε budget means the same for every model.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

__all__ = ["HiddenLossKind", "hidden_cosine", "hidden_l1", "hidden_loss", "hidden_mse", "slot_scale", "standardize"]

HiddenLossKind = Literal["mse", "cosine", "l1"]
HIDDEN_LOSS_KINDS: tuple[str, ...] = ("mse", "cosine", "l1")


def _check(student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} differ in shape"
        )


def hidden_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """``mean((s − t)²)``, computed in float32 at least."""
    _check(student, teacher)
    return F.mse_loss(student.float(), teacher.float().detach())


def hidden_l1(student: Tensor, teacher: Tensor) -> Tensor:
    """``mean(|s − t|)``, computed in float32 at least."""
    _check(student, teacher)
    return F.l1_loss(student.float(), teacher.float().detach())


def hidden_cosine(student: Tensor, teacher: Tensor, eps: float = 1e-8) -> Tensor:
    """``mean(1 − cos(s, t))`` over vectors along the last dimension; in ``[0, 2]``."""
    _check(student, teacher)
    cos = F.cosine_similarity(student.float(), teacher.float().detach(), dim=-1, eps=eps)
    return (1.0 - cos).mean()


def hidden_loss(student: Tensor, teacher: Tensor, kind: HiddenLossKind = "mse") -> Tensor:
    """Dispatch on ``kind`` (``mse`` | ``cosine`` | ``l1``)."""
    if kind == "mse":
        return hidden_mse(student, teacher)
    if kind == "cosine":
        return hidden_cosine(student, teacher)
    if kind == "l1":
        return hidden_l1(student, teacher)
    raise ValueError(f"unknown hidden loss {kind!r}; allowed: {', '.join(HIDDEN_LOSS_KINDS)}")


def slot_scale(std: Tensor) -> Tensor:
    """The feature scale of each ``[layer, vector]`` slot: ``sqrt(mean_h σ_h²)`` over the last
    (hidden) dimension, broadcast back to ``std``'s shape.

    Dividing by it instead of each dimension's own ``σ_h`` keeps near-constant dimensions (a
    ``σ_h`` near 0, common in pooled VLM features) from blowing a tiny drift up into a huge loss,
    while an MSE of 1.0 still means "one teacher standard deviation" on average.
    """
    return std.float().pow(2).mean(dim=-1, keepdim=True).sqrt().expand_as(std)


def standardize(features: Tensor, mean: Tensor, std: Tensor, eps: float = 1e-6) -> Tensor:
    """``(x − μ) / max(σ, eps)``, broadcasting ``mean``/``std`` over the leading dimensions."""
    return (features.float() - mean.float()) / std.float().clamp_min(eps)
