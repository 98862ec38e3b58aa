"""Gradient conflict statistics and PCGrad-style projection (SPEC.md §3, steps 2–4).

Gradients are *sequences of tensors*, one per trainable parameter, never one concatenated
flat vector: every function below loops over parameter tensors, so the extra memory of a
CRaFT step stays near one copy of the trainable parameters.

With ``g_t`` the task gradient and ``g_r`` the retention gradient (over a set of parameters):

    dot  = g_t · g_r
    cos  = dot / (|g_t| |g_r|)
    conflict  ⇔  cos < conflict_threshold
    g_t ← g_t − (dot / |g_r|²) · g_r          (only on conflict, only if projection is on)
    g   = g_t + λ · g_r                        (the combined gradient)

``global`` granularity takes one ``dot``/``cos`` over all parameters (the original CRaFT);
``per_layer`` takes them per parameter *group* (a module's parameters, as AEGIS does) and
projects each conflicting group on its own.

Functions are pure by default (they return new tensors); the ``inplace=True`` variants write
into the ``g_task`` tensors instead, which is what :class:`craft_plugin.CraftHook` uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ConflictStats",
    "ProjectionResult",
    "combine",
    "conflict_stats",
    "grad_dot",
    "grad_sq_norm",
    "per_tensor_stats",
    "project_conflicting",
    "project_grouped",
]

Grads = Sequence[Tensor]

#: Norms below this are treated as zero (no direction, so no conflict and no projection).
_TINY = 1e-20


def _acc(x: Tensor) -> Tensor:
    """Flatten, upcasting half precisions to float32 (float64 stays float64)."""
    x = x.reshape(-1)
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def grad_dot(a: Grads, b: Grads) -> Tensor:
    """``Σ_i ⟨a_i, b_i⟩`` over parameter tensors, accumulated in float32 or better (0-d tensor)."""
    _check_pair(a, b)
    if len(a) == 0:
        return torch.zeros((), dtype=torch.float32)
    parts = []
    for x, y in zip(a, b, strict=True):
        xa = _acc(x)
        parts.append(torch.dot(xa, _acc(y).to(xa.dtype)))
    return torch.stack(parts).sum()


def grad_sq_norm(a: Grads) -> Tensor:
    """``Σ_i |a_i|²`` over parameter tensors, accumulated in float32 or better (0-d tensor)."""
    if len(a) == 0:
        return torch.zeros((), dtype=torch.float32)
    parts = [torch.dot(_acc(x), _acc(x)) for x in a]
    return torch.stack(parts).sum()


@dataclass(frozen=True)
class ConflictStats:
    """``dot``, ``cos`` and the squared norms of two gradients (0-d float32 tensors)."""

    dot: Tensor
    cos: Tensor
    task_sq_norm: Tensor
    ret_sq_norm: Tensor

    def is_conflict(self, threshold: float) -> bool:
        """``cos < threshold``; never a conflict when either gradient is zero."""
        if float(self.task_sq_norm) <= _TINY or float(self.ret_sq_norm) <= _TINY:
            return False
        return float(self.cos) < threshold


def per_tensor_stats(g_task: Grads, g_ret: Grads) -> Tensor:
    """A ``[n_tensors, 3]`` table of ``(g_t,i·g_r,i, |g_t,i|², |g_r,i|²)``, one row per tensor.

    Every dot product a step needs is in this table: the global statistics are its column
    sums and a group's are the sums over the group's rows, so each gradient is read once.
    """
    _check_pair(g_task, g_ret)
    if len(g_task) == 0:
        return torch.zeros((0, 3), dtype=torch.float32)
    rows = []
    for x, y in zip(g_task, g_ret, strict=True):
        xa = _acc(x)
        ya = _acc(y).to(xa.dtype)
        rows.append(torch.stack([torch.dot(xa, ya), torch.dot(xa, xa), torch.dot(ya, ya)]))
    return torch.stack(rows)


def conflict_stats(g_task: Grads, g_ret: Grads, *, table: Tensor | None = None) -> ConflictStats:
    """``dot = g_t·g_r`` and ``cos = dot / (|g_t||g_r|)`` (``cos = 0`` if a norm is zero).

    ``table`` may pass in :func:`per_tensor_stats` of the same gradients.
    """
    if table is None:
        table = per_tensor_stats(g_task, g_ret)
    dot, nt, nr = table.sum(dim=0)
    denom = torch.sqrt(nt) * torch.sqrt(nr)
    cos = torch.where(denom > 0, dot / denom.clamp_min(_TINY), torch.zeros_like(dot))
    return ConflictStats(dot=dot, cos=cos, task_sq_norm=nt, ret_sq_norm=nr)


def project_conflicting(
    g_task: Grads, g_ret: Grads, dot: Tensor | float, ret_sq_norm: Tensor | float, *, inplace: bool = False
) -> list[Tensor]:
    """PCGrad step: ``g_t − (dot / |g_r|²) · g_r``, tensor by tensor.

    ``dot`` and ``ret_sq_norm`` are those of the whole set being projected (all parameters
    for ``global``, one group for ``per_layer``). A zero ``|g_r|²`` returns ``g_t`` unchanged.
    """
    _check_pair(g_task, g_ret)
    nr = float(ret_sq_norm)
    if nr <= _TINY:
        return list(g_task) if inplace else [t.clone() for t in g_task]
    coef = float(dot) / nr
    if inplace:
        for t, r in zip(g_task, g_ret, strict=True):
            t.add_(r.to(t.dtype), alpha=-coef)
        return list(g_task)
    return [t - coef * r.to(t.dtype) for t, r in zip(g_task, g_ret, strict=True)]


def combine(g_task: Grads, g_ret: Grads, lam: Tensor | float, *, inplace: bool = False) -> list[Tensor]:
    """The combined gradient ``g = g_t + λ · g_r``, tensor by tensor."""
    _check_pair(g_task, g_ret)
    lam_f = float(lam)
    if inplace:
        for t, r in zip(g_task, g_ret, strict=True):
            t.add_(r.to(t.dtype), alpha=lam_f)
        return list(g_task)
    return [t + lam_f * r.to(t.dtype) for t, r in zip(g_task, g_ret, strict=True)]


@dataclass(frozen=True)
class ProjectionResult:
    """What a (grouped) projection did.

    ``stats``: global dot/cos/norms of the *unprojected* gradients (what the log line shows).
    ``conflict``: the conflict test fired (globally for ``global``; in any group for ``per_layer``).
    ``projected_frac``: share of groups whose task gradient was projected (0 or 1 for ``global``).
    ``energy_removed``: share of the task gradient's squared norm removed by the projection,
    ``Σ_projected dot_g² / |g_r,g|²  /  |g_t|²``.
    ``n_groups``: number of groups tested.
    """

    grads: list[Tensor]
    stats: ConflictStats
    conflict: bool
    projected_frac: float
    energy_removed: float
    n_groups: int


def project_grouped(
    g_task: Grads,
    g_ret: Grads,
    groups: Sequence[Sequence[int]] | None,
    *,
    threshold: float,
    enabled: bool = True,
    inplace: bool = False,
    combine_lambda: float | None = None,
    table: Tensor | None = None,
) -> ProjectionResult:
    """Conflict test and PCGrad projection per group of parameter tensors.

    ``groups`` lists, for each group, the indices into ``g_task``/``g_ret`` of its tensors;
    ``None`` means one group with every tensor (``global`` granularity). Each group with
    ``cos_g < threshold`` (and both norms non-zero) has its task gradient projected when
    ``enabled``; the others are left as they are.

    With ``combine_lambda=λ`` the returned gradients are already the combined
    ``g = proj(g_t) + λ·g_r``, computed in one fused pass per tensor as
    ``g_t + (λ − dot_g/|g_r,g|²)·g_r`` (the coefficient is just ``λ`` for unprojected groups);
    bf16 / fp16 gradients are combined in float32 and rounded once (statistics are always
    accumulated in float32 or better).
    ``table`` may pass in :func:`per_tensor_stats` of the same gradients (else it is computed):
    every gradient is read once for all the statistics, whatever the granularity.
    """
    _check_pair(g_task, g_ret)
    if table is None:
        table = per_tensor_stats(g_task, g_ret)
    stats = conflict_stats(g_task, g_ret, table=table)
    out = list(g_task) if inplace else [t.clone() for t in g_task]
    is_global = groups is None
    groups = [list(range(len(g_task)))] if groups is None else [list(g) for g in groups if len(g) > 0]
    # Group statistics are sums of the per-tensor rows; one host sync reads them all.
    if is_global:
        group_table = table.sum(dim=0, keepdim=True)
    else:
        group_table = torch.stack([table[idx].sum(dim=0) for idx in groups]) if groups else table.new_zeros((0, 3))
    total_sq = float(stats.task_sq_norm)
    removed = 0.0
    n_projected = 0
    any_conflict = False
    lam = 0.0 if combine_lambda is None else float(combine_lambda)
    for idx, (dot, nt, nr) in zip(groups, group_table.tolist(), strict=True):
        coef = 0.0  # the PCGrad coefficient dot_g / |g_r,g|² if this group is projected
        if nt > _TINY and nr > _TINY and dot / (nt**0.5 * nr**0.5) < threshold:
            any_conflict = True
            if enabled:
                coef = dot / nr
                n_projected += 1
                removed += dot**2 / nr
        if lam - coef != 0.0:
            for i in idx:
                _add_scaled_(out[i], g_ret[i], lam - coef)
    n_groups = len(groups)
    return ProjectionResult(
        grads=out,
        stats=stats,
        conflict=any_conflict,
        projected_frac=n_projected / n_groups if n_groups else 0.0,
        energy_removed=removed / total_sq if total_sq > _TINY else 0.0,
        n_groups=n_groups,
    )


def _add_scaled_(t: Tensor, r: Tensor, alpha: float) -> None:
    """``t += alpha · r`` in place; half-precision tensors (bf16, fp16) are computed in float32
    and rounded once, so the result is the float32 value to the storage dtype's rounding."""
    if t.dtype in (torch.bfloat16, torch.float16):
        t.copy_(torch.add(t.float(), r.float(), alpha=alpha))
    else:
        t.add_(r.to(t.dtype), alpha=alpha)


def _check_pair(a: Grads, b: Grads) -> None:
    if len(a) != len(b):
        raise ValueError(f"gradient lists differ in length: {len(a)} task tensors vs {len(b)} retention tensors")
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape != y.shape:
            raise ValueError(f"gradient tensor {i}: task shape {tuple(x.shape)} != retention shape {tuple(y.shape)}")
