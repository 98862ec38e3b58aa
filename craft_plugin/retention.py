"""Retention losses computed from an anchor cache (SPEC.md §4), for ``CraftHook``'s ``retention_fn``.

* :class:`HiddenRetention` (``retention_mode="hidden"``): a random anchor batch from the
  cache, the student's pooled features on the cached inputs (through the same feature tap as
  the teacher), and the configured hidden loss against the cached teacher features —
  standardized when ``feature_norm="standardize"``: minus the teacher's per-dimension mean,
  divided by the teacher's feature scale of each layer and pooled vector (:func:`slot_scale`).
* :class:`TokenCERetention` (``retention_mode="token_ce"``): the policy's own training loss
  on cached anchor samples (token cross-entropy for pi0_fast, the policy loss for others).

Both run the student's retention forward with every module in ``eval()`` (dropout off,
normalization layers on running statistics), exactly as the teacher ran when the cache was
built, so ``L_ret`` measures drift and not dropout noise; each module's train/eval flag is
restored afterwards. A student identical to the teacher gets ``L_ret = 0``. The anchor
sampler is a seeded ``torch.Generator`` whose state rides in ``state_dict()``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from craft_plugin.cache.anchor_cache import AnchorCache
from craft_plugin.cache.builder import decode_inputs
from craft_plugin.cache.manifest import CacheError
from craft_plugin.config import CraftConfig
from craft_plugin.core.losses import hidden_loss, slot_scale, standardize
from craft_plugin.taps import make_tap

__all__ = ["HiddenRetention", "TokenCERetention", "eval_mode", "make_retention"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in ``eval()``; restore each one's own ``training`` flag on exit."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training


class _AnchorSampler:
    """Seeded anchor batches; the generator state checkpoints with ``state_dict``."""

    def __init__(self, cache: AnchorCache, batch_size: int, seed: int) -> None:
        if batch_size > len(cache):
            raise CacheError(
                f"anchor_batch_size={batch_size} exceeds the {len(cache)} anchors in {cache.directory}; "
                "lower anchor_batch_size or build a larger cache (--num-anchors)"
            )
        self.cache = cache
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> Any:
        return self.cache.sample(self.batch_size, self.generator)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


class _CachedRetention:
    """What both modes share: the policy, the cache, the device and the seeded sampler."""

    def __init__(
        self, policy: nn.Module, cache: AnchorCache, config: CraftConfig, *, seed: int = 0, device: str | None = None
    ) -> None:
        self.policy = policy
        self.cache = cache
        self.config = config
        self.device = device or str(next(policy.parameters()).device)
        self.sampler = _AnchorSampler(cache, config.anchor_batch_size, seed)

    def _inputs(self, batch: Any) -> dict[str, Tensor]:
        return decode_inputs(batch.inputs, self.cache.manifest.input_keys, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])


class HiddenRetention(_CachedRetention):
    """``L_ret`` for hidden mode. Call it (no arguments) for one anchor batch's loss."""

    def __init__(
        self, policy: nn.Module, cache: AnchorCache, config: CraftConfig, *, seed: int = 0, device: str | None = None
    ) -> None:
        if not cache.manifest.stores_inputs:
            raise CacheError(
                f"anchor cache {cache.directory} was built with --no-inputs (dataset indices only); "
                "training from indices is not supported yet: rebuild it without --no-inputs"
            )
        # One tap for the run: entered (hooks installed) only around each retention forward.
        self.tap = make_tap(policy)
        cache.check_compatible(
            retention_mode="hidden",
            layers=config.layers,
            pooling=config.pooling,
            policy_type=_policy_type(policy),
            num_layers=self.tap.num_layers,
        )
        super().__init__(policy, cache, config, seed=seed, device=device)
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        if config.feature_norm == "standardize":
            mean, std = cache.feature_stats()
            self.mean, self.std = mean.to(self.device), slot_scale(std).to(self.device)
        self._check_shape()

    def _check_shape(self) -> None:
        probe = self.cache.rows([0])
        with torch.no_grad():
            student = self._features(probe)
        if tuple(student.shape[1:]) != self.cache.feature_shape:
            raise CacheError(
                f"anchor cache {self.cache.directory} does not fit this policy: student features "
                f"{list(student.shape[1:])} vs cached {list(self.cache.feature_shape)} "
                "([n_layers, n_vectors, hidden size]). Build the right cache with:\n  "
                + self.cache.build_command(layers=self.config.layers, pooling=self.config.pooling)
            )

    def _features(self, batch: Any) -> Tensor:
        with eval_mode(self.policy), self.tap:
            return self.tap.features(self._inputs(batch), self.config.layers, self.config.pooling)

    def __call__(self) -> Tensor:
        batch = self.sampler.next()
        student = self._features(batch)
        teacher = batch.features.to(self.device)
        if self.mean is not None and self.std is not None:
            student = standardize(student, self.mean, self.std)
            teacher = standardize(teacher, self.mean, self.std)
        return hidden_loss(student, teacher, self.config.hidden_loss)


class TokenCERetention(_CachedRetention):
    """``L_ret`` for token_ce mode: the policy's own loss on a cached anchor batch."""

    def __init__(
        self, policy: nn.Module, cache: AnchorCache, config: CraftConfig, *, seed: int = 0, device: str | None = None
    ) -> None:
        cache.check_compatible(
            retention_mode="token_ce", layers=config.layers, pooling=config.pooling, policy_type=_policy_type(policy)
        )
        super().__init__(policy, cache, config, seed=seed, device=device)

    def __call__(self) -> Tensor:
        inputs = self._inputs(self.sampler.next())
        with eval_mode(self.policy):
            out = self.policy.forward(inputs)
        return out[0] if isinstance(out, tuple) else out


def make_retention(
    policy: nn.Module, cache: AnchorCache, config: CraftConfig, *, seed: int = 0, device: str | None = None
) -> HiddenRetention | TokenCERetention:
    """The retention loss for ``config.retention_mode``."""
    cls = HiddenRetention if config.retention_mode == "hidden" else TokenCERetention
    return cls(policy, cache, config, seed=seed, device=device)


def _policy_type(policy: nn.Module) -> str | None:
    return getattr(getattr(policy, "config", None), "type", None)
