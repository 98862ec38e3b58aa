"""Anchor inputs as stored in a cache: the *raw* frames, and how a preprocessor sees them.

Since cache schema 2 the shards hold each anchor's frame as the dataset gave it (images,
state, actions, padding flags; the task string by its index into ``manifest.tasks``), not the
teacher's preprocessed batch. At training time the student's **own** preprocessor turns them
into its inputs, exactly as it would at deploy time, whatever normalization statistics it
trains with; the teacher's action targets are mapped to the student's action normalization
with :func:`action_affine` and :func:`craft_plugin.core.actions.map_action_target`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["BOOKKEEPING", "action_affine", "decode_inputs", "encode_inputs", "raw_batch", "run_preprocessor"]

#: Dataset bookkeeping columns: not model inputs, not stored (the frame index is in `index`).
BOOKKEEPING = frozenset({"index", "frame_index", "episode_index", "task_index", "timestamp"})


def encode_inputs(batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """Tensors of a batch for storage: images as uint8 when that is lossless.

    An image tensor whose values are exactly ``k/255`` is stored as uint8 ``k`` (decoded back
    bit-exactly); any other float image is stored as float32. Non-tensor entries (task
    strings) are not stored here (see :func:`raw_batch`).
    """
    out: dict[str, Tensor] = {}
    spec: dict[str, dict[str, Any]] = {}
    for key, value in batch.items():
        if not isinstance(value, Tensor) or key in BOOKKEEPING:
            continue
        t = value.detach().cpu()
        encoding = "raw"
        if "image" in key and t.is_floating_point():
            as_u8 = torch.round(t.float() * 255.0).clamp(0, 255)
            if torch.equal((as_u8 / 255.0).to(t.dtype), t):
                t, encoding = as_u8.to(torch.uint8), "uint8/255"
            else:
                t = t.float()
        elif t.is_floating_point() and t.dtype != torch.float32:
            t = t.float()
        out[key] = t.contiguous()
        spec[key] = {"dtype": str(value.dtype).removeprefix("torch."), "shape": list(t.shape[1:]), "encoding": encoding}
    return out, spec


def decode_inputs(inputs: dict[str, Tensor], spec: dict[str, dict[str, Any]], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Undo :func:`encode_inputs`: the tensors exactly as they were given."""
    out = {}
    for key, t in inputs.items():
        s = spec.get(key, {})
        dtype = getattr(torch, s.get("dtype", str(t.dtype).removeprefix("torch.")))
        if s.get("encoding") == "uint8/255":
            t = (t.float() / 255.0).to(dtype)
        else:
            t = t.to(dtype)
        out[key] = t.to(device)
    return out


def raw_batch(inputs: dict[str, Tensor], spec: dict[str, dict[str, Any]], task_index: Tensor | None, tasks: Sequence[str]) -> dict[str, Any]:
    """A batch as a LeRobot ``DataLoader`` gives it (tensors on the CPU, ``task`` strings)."""
    batch: dict[str, Any] = decode_inputs(inputs, spec, "cpu")
    if task_index is not None and tasks:
        batch["task"] = [tasks[int(i)] for i in task_index.tolist()]
    return batch


def run_preprocessor(preprocessor: Any, raw: dict[str, Any], device: str | torch.device | None = None) -> dict[str, Any]:
    """``preprocessor(raw)`` with every tensor moved to ``device`` (when given)."""
    batch = preprocessor(dict(raw))
    if device is None:
        return batch
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def action_affine(preprocessor: Any, action_dim: int) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` per action dimension of ``preprocessor``'s action normalization:
    ``raw = normalized · scale + shift`` (identity when it does not normalize actions).

    Read off LeRobot's ``NormalizerProcessorStep`` by un-normalizing 0 and 1, so it holds for
    every affine mode (mean/std, min/max, quantiles) without knowing which one is used.
    """
    step = next((s for s in getattr(preprocessor, "steps", []) if hasattr(s, "_normalize_action")), None)
    if step is None:
        return torch.ones(action_dim), torch.zeros(action_dim)
    zero = torch.zeros(1, action_dim)
    one = torch.ones(1, action_dim)
    with torch.no_grad():
        shift = step._normalize_action(zero, inverse=True).reshape(-1).float().cpu()
        scale = step._normalize_action(one, inverse=True).reshape(-1).float().cpu() - shift
    return scale, shift
