"""Action-pathway targets across normalizations (SPEC.md §4, "Normalization").

A teacher's action-side output is cached in the teacher's *normalized* action space. A student
may train with other normalization statistics (the new dataset's, or a merge). For every
affine normalization (mean/std, min/max, quantiles) the two spaces are related per action
dimension by

    raw = a_T · s_T + c_T = a_S · s_S + c_S    ⇒    a_S = α · a_T + β,
    α = s_T / s_S,   β = (c_T − c_S) / s_S.

A student that computes the teacher's function *in raw units* then has, on the same anchor
and the same stored randomness (``noise``):

* ``action``   (normalized actions, e.g. ACT's chunk):     ``a_S = α·a_T + β``
* ``velocity`` (flow matching, ``x_t = t·noise + (1−t)·a``, ``v = noise − a``):
  ``v_S = noise + α·(v_T − noise) − β``
* ``epsilon``  (diffusion's predicted noise, ``x_t = √ᾱ·a + √(1−ᾱ)·noise``):
  ``ε_S = noise + α·(ε_T − noise)``
* ``hidden``   (hidden states, not in action units): unchanged.

With identical statistics ``α = 1``, ``β = 0`` and every map is the identity, so a student
identical to its teacher still gets ``L_ret = 0``. Pure torch; no LeRobot.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["ActionKind", "affine_between", "map_action_target"]

ActionKind = Literal["action", "velocity", "epsilon", "hidden"]


def affine_between(
    teacher_scale: Tensor, teacher_shift: Tensor, student_scale: Tensor, student_shift: Tensor, tol: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """``(α, β)`` with ``a_S = α·a_T + β`` for ``raw = a·scale + shift`` on each side.

    A dimension whose scale is (numerically) 0 on either side — a constant action in that
    side's statistics, e.g. a gripper command that never changes — has no affine map between
    the two spaces; it keeps ``α = 1``, ``β = 0`` (compared as the two policies output it).
    """
    degenerate = (student_scale.abs() < tol) | (teacher_scale.abs() < tol)
    safe = torch.where(degenerate, torch.ones_like(student_scale), student_scale)
    alpha = torch.where(degenerate, torch.ones_like(safe), teacher_scale / safe)
    beta = torch.where(degenerate, torch.zeros_like(safe), (teacher_shift - student_shift) / safe)
    return alpha, beta


def map_action_target(
    kind: ActionKind, target: Tensor, alpha: Tensor, beta: Tensor, noise: Tensor | None = None
) -> Tensor:
    """The teacher's cached ``target`` expressed in the student's normalized action space.

    ``alpha`` and ``beta`` broadcast over the last axis (the action dimension); ``noise`` is
    the stored draw, cut to the target's shape (a padded noise's extra dimensions dropped).
    """
    if kind == "hidden":
        return target
    alpha = alpha.to(target)
    beta = beta.to(target)
    if kind == "action":
        return alpha * target + beta
    if noise is None:
        raise ValueError(f"mapping a {kind!r} target needs the stored noise")
    noise = noise[..., : target.shape[-1]].to(target)
    if noise.shape != target.shape:
        raise ValueError(f"noise {tuple(noise.shape)} does not fit the target {tuple(target.shape)}")
    if kind == "velocity":
        return noise + alpha * (target - noise) - beta
    if kind == "epsilon":
        return noise + alpha * (target - noise)
    raise ValueError(f"unknown action kind {kind!r}; expected action, velocity, epsilon or hidden")
