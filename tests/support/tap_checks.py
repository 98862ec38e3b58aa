"""Checks every feature tap must pass, shared by the per-family tap tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def check_deterministic_and_batch_independent(
    tap: Any, batch: dict[str, Any], all_layers: Sequence[int], pooling: Sequence[str]
) -> None:
    """Two eval extractions are identical; features agree to 1e-6 across calls, and a sample's
    features do not depend on the rest of its batch (anchors are cached in any batch size)."""
    with torch.no_grad():
        a = tap.extract(batch, list(all_layers))
        b = tap.extract(batch, list(all_layers))
        for x, y in zip(a.hidden, b.hidden, strict=True):
            assert torch.equal(x, y)
        f1 = tap.features(batch, [-2, -1], pooling)
        f2 = tap.features(batch, [-2, -1], pooling)
        alone = tap.features({k: v[:1] if torch.is_tensor(v) else v for k, v in batch.items()}, [-2, -1], pooling)
    assert torch.allclose(f1, f2, atol=1e-6, rtol=0)
    assert torch.allclose(alone[0], f1[0], atol=1e-5, rtol=0)
