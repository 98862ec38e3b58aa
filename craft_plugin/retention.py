"""Retention losses computed from an anchor cache (SPEC.md §4), for ``CraftHook``'s ``retention_fn``.

* :class:`HiddenRetention` (``retention_mode="hidden"``): a random anchor batch from the
  cache, run through the **student's own preprocessor** (the cache holds raw frames), then
  - ``features``: the student's pooled backbone features (the same feature tap as the
    teacher's) against the cached teacher features, standardized when
    ``feature_norm="standardize"`` (minus the teacher's per-dimension mean, divided by the
    teacher's feature scale of each layer and pooled vector, :func:`slot_scale`);
  - ``actions``: the student's action-pathway output under the anchor's stored randomness
    (flow-matching noise and time, diffusion noise and timestep) against the teacher's, the
    teacher's target first mapped from the teacher's action normalization to the student's
    (:func:`craft_plugin.core.actions.map_action_target`), both divided by the teacher
    target's scale (RMS of its per-element std over the anchors);
  ``L_ret`` is the mean of the anchored parts (``anchor_targets``; default: all the cache
  holds), so one ε means "one teacher standard deviation" for each part and for their mean.
* :class:`TokenCERetention` (``retention_mode="token_ce"``): the policy's own training loss
  on cached anchor samples (token cross-entropy for pi0_fast, the policy loss for others),
  also through the student's preprocessor.

Both run the student's retention forward with every module in ``eval()`` (dropout off,
normalization layers on running statistics), exactly as the teacher ran when the cache was
built, so ``L_ret`` measures drift and not dropout noise; each module's train/eval flag is
restored afterwards. A student identical to the teacher, with the teacher's statistics, gets
``L_ret = 0``. The anchor sampler is counter-based: draw *n* of a sampler seeded *s* uses a
``torch.Generator`` seeded from ``(s, n)``, so its whole state is ``{"seed", "draws"}`` (in
``state_dict()``). A run of several processes seeds rank *r*'s sampler with *r* and every
rank draws once per retention step, so restoring the draw count restores each rank's own
sampler, whichever rank wrote the checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from craft_plugin.cache.anchor_cache import AnchorCache
from craft_plugin.cache.inputs import action_affine, raw_batch, run_preprocessor
from craft_plugin.cache.manifest import CacheError
from craft_plugin.config import DEFAULT_ANCHOR_BATCH_SIZE, CraftConfig
from craft_plugin.core.actions import affine_between, map_action_target
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
    """Seeded anchor batches, counter-based (see the module docstring)."""

    def __init__(self, cache: AnchorCache, batch_size: int | None, seed: int) -> None:
        if batch_size is None:  # the default: DEFAULT_ANCHOR_BATCH_SIZE, or every anchor of a smaller cache
            batch_size = min(DEFAULT_ANCHOR_BATCH_SIZE, len(cache))
            if batch_size < DEFAULT_ANCHOR_BATCH_SIZE:
                logger.info(
                    "anchor_batch_size: the cache %s holds %d anchors, fewer than the default %d: "
                    "every anchor in each retention step", cache.directory, len(cache), DEFAULT_ANCHOR_BATCH_SIZE,
                )
        elif batch_size > len(cache):
            raise CacheError(
                f"anchor_batch_size={batch_size} exceeds the {len(cache)} anchors in {cache.directory}; "
                "lower anchor_batch_size or build a larger cache (--num-anchors)"
            )
        self.cache = cache
        self.batch_size = batch_size
        self.seed = int(seed)
        self.draws = 0

    def generator(self, draw: int) -> torch.Generator:
        """The generator of draw number ``draw``."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + draw) % (2**63 - 1))

    def next(self) -> Any:
        batch = self.cache.sample(self.batch_size, self.generator(self.draws))
        self.draws += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "draws": self.draws}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the draw count; the seed stays this sampler's own (each rank has its own)."""
        self.draws = int(state["draws"])


class _CachedRetention:
    """What both modes share: the policy, its preprocessor, the cache, the device and the sampler."""

    def __init__(
        self,
        policy: nn.Module,
        cache: AnchorCache,
        config: CraftConfig,
        *,
        preprocessor: Any,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        if preprocessor is None:
            raise ValueError(
                "retention needs the student's preprocessor (the pipeline that turns a dataset batch into "
                "the policy's inputs: LeRobot's make_pre_post_processors(...)[0]); the cache holds raw frames"
            )
        if not cache.manifest.stores_inputs:
            raise CacheError(
                f"anchor cache {cache.directory} was built with --no-inputs (dataset indices only); "
                "training from indices is not supported yet: rebuild it without --no-inputs"
            )
        self._fit(policy, cache, config)
        self.policy = policy
        self.cache = cache
        self.config = config
        self.preprocessor = preprocessor
        self.device = device or str(next(policy.parameters()).device)
        self.sampler = _AnchorSampler(cache, config.anchor_batch_size, seed)
        self._setup()

    def _fit(self, policy: nn.Module, cache: AnchorCache, config: CraftConfig) -> None:
        """Raise :class:`CacheError` when ``cache`` cannot serve ``policy`` under ``config``."""

    def _setup(self) -> None:
        """Mode-specific set-up once the shared state is in place."""

    def _batch(self, anchors: Any) -> dict[str, Any]:
        """The anchors as the student's preprocessor makes them (what it would see at deploy time)."""
        m = self.cache.manifest
        raw = raw_batch(anchors.inputs, m.input_keys, anchors.task_index, m.tasks)
        return run_preprocessor(self.preprocessor, raw, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])


class HiddenRetention(_CachedRetention):
    """``L_ret`` for hidden mode. Call it (no arguments) for one anchor batch's loss.

    After each call ``last_parts`` holds each anchored part's loss (``features``, ``actions``).
    """

    def _fit(self, policy: nn.Module, cache: AnchorCache, config: CraftConfig) -> None:
        # One tap for the run: entered (hooks installed) only around each retention forward.
        self.tap = make_tap(policy)
        cache.check_compatible(
            retention_mode="hidden",
            layers=config.layers,
            pooling=config.pooling,
            anchor_targets=config.anchor_targets,
            policy_type=_policy_type(policy),
            num_layers=self.tap.num_layers,
        )

    def _setup(self) -> None:
        cache, config = self.cache, self.config
        m = cache.manifest
        self.layers = list(config.layers) if config.layers is not None else list(m.layers)
        self.pooling = list(config.pooling) if config.pooling is not None else list(m.pooling)
        self.targets = list(config.anchor_targets) if config.anchor_targets is not None else list(m.anchor_targets)
        self.last_parts: dict[str, float] = {}
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        if config.feature_norm == "standardize":
            mean, std = cache.feature_stats()
            self.mean, self.std = mean.to(self.device), slot_scale(std).to(self.device)
        if "actions" in self.targets:
            self._init_actions()
        self._check_shape()
        logger.info(
            "CRaFT hidden retention: anchoring %s (layers %s, pooling %s%s)",
            " and ".join(self.targets), self.layers, self.pooling,
            f", action output: {m.action_kind} {m.action_shape}" if "actions" in self.targets else "",
        )  # fmt: skip

    def _init_actions(self) -> None:
        m = self.cache.manifest
        if m.action_kind != self.tap.action_kind:
            raise CacheError(
                f"anchor cache {self.cache.directory}: its action anchors are {m.action_kind!r} outputs, this "
                f"policy's action pathway gives {self.tap.action_kind!r}. Build the right cache with:\n  "
                + self.cache.build_command()
            )
        assert m.action_norm is not None
        teacher_scale = torch.tensor(m.action_norm["scale"])
        teacher_shift = torch.tensor(m.action_norm["shift"])
        student_scale, student_shift = action_affine(self.preprocessor, len(teacher_scale))
        self.alpha, self.beta = affine_between(teacher_scale, teacher_shift, student_scale, student_shift)
        self.alpha, self.beta = self.alpha.to(self.device), self.beta.to(self.device)
        _, std = self.cache.action_stats()
        self.action_scale = float(std.double().pow(2).mean().sqrt().clamp_min(1e-6))
        same = torch.allclose(self.alpha, torch.ones_like(self.alpha)) and torch.allclose(self.beta, torch.zeros_like(self.beta))
        logger.info(
            "CRaFT: action anchors %s from the teacher's normalization to the student's",
            "need no mapping" if same else "are mapped (other statistics)",
        )

    def _check_shape(self) -> None:
        probe = self.cache.rows([0])
        with torch.no_grad():
            student = self._student(probe)
        problems = []
        if "features" in self.targets and tuple(student["features"].shape[1:]) != self.cache.feature_shape:
            problems.append(
                f"student features {list(student['features'].shape[1:])} vs cached {list(self.cache.feature_shape)} "
                "([n_layers, n_vectors, hidden size])"
            )
        if "actions" in self.targets and list(student["actions"].shape[1:]) != list(self.cache.manifest.action_shape or []):
            problems.append(f"student action output {list(student['actions'].shape[1:])} vs cached {self.cache.manifest.action_shape}")
        if problems:
            raise CacheError(
                f"anchor cache {self.cache.directory} does not fit this policy: {'; '.join(problems)}. "
                "Build the right cache with:\n  " + self.cache.build_command(layers=self.layers, pooling=self.pooling)
            )

    def _student(self, anchors: Any) -> dict[str, Tensor]:
        batch = self._batch(anchors)
        out: dict[str, Tensor] = {}
        with eval_mode(self.policy), self.tap:
            if "features" in self.targets:
                out["features"] = self.tap.features(batch, self.layers, self.pooling)
            if "actions" in self.targets:
                draw = {k: v.to(self.device) for k, v in anchors.draw.items()}
                out["actions"] = self.tap.action_output(batch, draw).float()
        return out

    def __call__(self) -> Tensor:
        anchors = self.sampler.next()
        student = self._student(anchors)
        parts: dict[str, Tensor] = {}
        if "features" in student:
            s, t = student["features"], anchors.features.to(self.device)
            if self.mean is not None and self.std is not None:
                s, t = standardize(s, self.mean, self.std), standardize(t, self.mean, self.std)
            parts["features"] = hidden_loss(s, t, self.config.hidden_loss)
        if "actions" in student:
            assert anchors.action_target is not None
            noise = anchors.draw.get("noise")
            target = map_action_target(
                self.cache.manifest.action_kind,  # type: ignore[arg-type]
                anchors.action_target.to(self.device),
                self.alpha,
                self.beta,
                None if noise is None else noise.to(self.device),
            )
            parts["actions"] = hidden_loss(student["actions"] / self.action_scale, target / self.action_scale, self.config.hidden_loss)
        self.last_parts = {k: float(v.detach()) for k, v in parts.items()}
        return torch.stack(list(parts.values())).mean()


class TokenCERetention(_CachedRetention):
    """``L_ret`` for token_ce mode: the policy's own loss on a cached anchor batch."""

    def _fit(self, policy: nn.Module, cache: AnchorCache, config: CraftConfig) -> None:
        cache.check_compatible(retention_mode="token_ce", policy_type=_policy_type(policy))

    def __call__(self) -> Tensor:
        inputs = self._batch(self.sampler.next())
        with eval_mode(self.policy):
            out = self.policy.forward(inputs)
        return out[0] if isinstance(out, tuple) else out


def make_retention(
    policy: nn.Module,
    cache: AnchorCache,
    config: CraftConfig,
    *,
    preprocessor: Any,
    seed: int = 0,
    device: str | None = None,
) -> HiddenRetention | TokenCERetention:
    """The retention loss for ``config.retention_mode``; ``preprocessor`` is the student's own."""
    cls = HiddenRetention if config.retention_mode == "hidden" else TokenCERetention
    return cls(policy, cache, config, preprocessor=preprocessor, seed=seed, device=device)


def _policy_type(policy: nn.Module) -> str | None:
    return getattr(getattr(policy, "config", None), "type", None)
