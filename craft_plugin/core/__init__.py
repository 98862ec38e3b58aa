"""CRaFT's math core: pure functions on tensors, one file per part of SPEC.md §3–4.

Nothing here imports LeRobot or transformers, so the core (and :class:`craft_plugin.CraftHook`)
works in any PyTorch training loop.
"""

from craft_plugin.core.conflict import (
    ConflictStats,
    ProjectionResult,
    combine,
    conflict_stats,
    grad_dot,
    grad_sq_norm,
    per_tensor_stats,
    project_conflicting,
    project_grouped,
)
from craft_plugin.core.dual import EpsilonSchedule, LagrangeMultiplier, dual_update, epsilon_at
from craft_plugin.core.losses import hidden_cosine, hidden_l1, hidden_loss, hidden_mse, slot_scale, standardize
from craft_plugin.core.pooling import (
    TokenMasks,
    cls_token,
    last_token,
    mean_image_tokens,
    mean_masked,
    pool,
)

__all__ = [
    "ConflictStats",
    "EpsilonSchedule",
    "LagrangeMultiplier",
    "ProjectionResult",
    "TokenMasks",
    "cls_token",
    "combine",
    "conflict_stats",
    "dual_update",
    "epsilon_at",
    "grad_dot",
    "grad_sq_norm",
    "hidden_cosine",
    "hidden_l1",
    "hidden_loss",
    "hidden_mse",
    "last_token",
    "mean_image_tokens",
    "mean_masked",
    "per_tensor_stats",
    "pool",
    "project_conflicting",
    "project_grouped",
    "slot_scale",
    "standardize",
]
