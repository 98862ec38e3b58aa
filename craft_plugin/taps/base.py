"""The feature-tap interface: hidden states and token masks out of a LeRobot policy.

A *tap* knows one policy family. Given the policy and a batch that has already been through
the policy's own preprocessor, it runs the part of the policy that builds the backbone's
token sequence and returns, for each requested layer, the hidden states ``[B, T, D]`` plus
the boolean token masks pooling needs (:class:`craft_plugin.core.TokenMasks`: valid, vision,
text). Pooling itself is the core's (:func:`craft_plugin.core.pool`), so padded positions
never matter.

Contract, for every family:

* ``with make_tap(policy) as tap:`` — entering may install forward hooks; leaving removes
  every one of them, even on error. Outside the ``with`` block the policy is untouched.
* ``tap.resolve_layers([-2, -1])`` → absolute indices (``[n-2, n-1]``), recorded in caches.
* ``tap.extract(batch, layers)`` → :class:`TapOutput`. It neither switches the policy's
  train/eval mode nor wraps the call in ``no_grad``: the caller decides (the teacher runs in
  ``eval()`` under ``no_grad``; the student keeps its graph for ``L_ret``).
* ``tap.features(batch, layers, pooling)`` → ``[B, n_layers, n_vectors, D]`` pooled features.
* The tap never changes what the policy computes: ``select_action`` / ``forward`` give
  identical results with and without it.

The action pathway (SPEC.md §4: ``hidden`` mode anchors it too), for every family:

* ``tap.draw_action_randomness(batch, generator)`` → ``{name: [B, ...] tensor}``: every random
  number the family's action side uses (flow-matching noise and time, diffusion noise and
  timestep), drawn from ``generator`` only (never the global RNG). ``{}`` for families whose
  anchored action output is deterministic (ACT in eval mode, pi0_fast under teacher forcing).
  The cache stores the draw per anchor (``draw.<name>``), so teacher and student see the same.
* ``tap.action_output(batch, draw)`` → ``[B, *action_shape]`` float tensor: the action side's
  output on ``batch`` with exactly that ``draw``; same mode / grad contract as ``extract``;
  deterministic given ``(batch, draw)``; independent of the other rows of the batch.
* ``tap.action_kind`` says what the output is, which is how a target made under the teacher's
  normalization statistics is mapped to a student's (``craft_plugin.core.actions``):
  ``"action"`` (normalized actions: ``a_S = α·a_T + β``), ``"velocity"`` (flow matching
  ``v = noise − actions``: ``v_S = noise + α·(v_T − noise) − β``; needs ``draw["noise"]``),
  ``"epsilon"`` (predicted diffusion noise: ``ε_S = noise + α·(ε_T − noise)``), or ``"hidden"``
  (hidden states: not in action units, no map). For the first three the last axis of the
  output is the action dimension (``tap.action_dim`` entries, real dims only, no padding).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from craft_plugin.core.pooling import PoolingKind, TokenMasks, pool

__all__ = ["FeatureTap", "TapOutput", "make_tap", "register_tap", "resolve_layers", "tap_for_type"]


@dataclass(frozen=True)
class TapOutput:
    """Hidden states of the requested layers and the masks of their token sequence.

    ``hidden[i]`` is ``[B, T, D]`` for absolute layer ``layers[i]``; ``masks`` are ``[B, T]``.
    """

    layers: list[int]
    hidden: list[Tensor]
    masks: TokenMasks

    def pooled(self, pooling: Sequence[PoolingKind]) -> Tensor:
        """``[B, n_layers, n_vectors, D]``: each layer pooled with each strategy, in order."""
        return torch.stack([pool(h, self.masks, pooling) for h in self.hidden], dim=1)


def resolve_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """Negative indices count from the end (``-1`` = last); every index must exist.

    Raises ``ValueError`` naming the bad index and the valid range.
    """
    if n_layers < 1:
        raise ValueError(f"the tapped stack has no layers (n_layers={n_layers})")
    out = []
    for layer in layers:
        absolute = layer + n_layers if layer < 0 else layer
        if not 0 <= absolute < n_layers:
            raise ValueError(
                f"layer {layer} does not exist: this policy's tapped stack has {n_layers} layers "
                f"(valid: 0..{n_layers - 1} or -{n_layers}..-1)"
            )
        out.append(absolute)
    if len(set(out)) != len(out):
        raise ValueError(f"layers {list(layers)} name the same layer twice (absolute: {out})")
    return out


class FeatureTap(abc.ABC):
    """Base class of the per-family taps; see the module docstring for the contract."""

    #: LeRobot ``policy.config.type`` values this tap serves.
    policy_types: ClassVar[tuple[str, ...]] = ()
    #: Pooling used when the user names none (``craft build-cache --pooling``).
    default_pooling: ClassVar[tuple[PoolingKind, ...]] = ("mean_image_tokens", "last_token")

    def __init__(self, policy: nn.Module) -> None:
        self.policy = policy
        self._handles: list[Any] = []

    # -- hooks lifecycle (families that need forward hooks override _install) -----------
    def __enter__(self) -> FeatureTap:
        try:
            self._install()
        except BaseException:
            self.remove_hooks()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove_hooks()

    def _install(self) -> None:
        """Install forward hooks; keep their handles in ``self._handles``."""

    def add_hook(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        self._handles.append(module.register_forward_hook(fn))

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- what each family provides --------------------------------------------------------
    @property
    @abc.abstractmethod
    def num_layers(self) -> int:
        """Number of layers in the tapped stack (what negative indices count from)."""

    @property
    @abc.abstractmethod
    def hidden_dim(self) -> int:
        """Width ``D`` of the tapped hidden states."""

    @abc.abstractmethod
    def extract(self, batch: dict[str, Any], layers: Sequence[int]) -> TapOutput:
        """Run the policy's backbone on a preprocessed ``batch``; see :class:`TapOutput`."""

    # -- the action pathway (see the module docstring) ---------------------------------------
    #: What :meth:`action_output` returns: "action", "velocity", "epsilon" or "hidden".
    action_kind: ClassVar[str] = "action"

    @property
    def action_dim(self) -> int:
        """Real action dimensions (the last axis of :meth:`action_output` unless ``hidden``)."""
        feature = self.policy.config.output_features["action"]
        return int(feature.shape[0])

    def draw_action_randomness(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """The action side's random numbers for ``batch``, from ``generator`` only (CPU tensors)."""
        return {}

    def action_output(self, batch: dict[str, Any], draw: dict[str, Tensor]) -> Tensor:
        """The action side's output on a preprocessed ``batch`` under ``draw``: ``[B, ...]``."""
        raise NotImplementedError(f"{type(self).__name__} does not anchor the action pathway yet")

    # -- shared ---------------------------------------------------------------------------
    def resolve_layers(self, layers: Sequence[int]) -> list[int]:
        return resolve_layers(layers, self.num_layers)

    def features(self, batch: dict[str, Any], layers: Sequence[int], pooling: Sequence[PoolingKind]) -> Tensor:
        """Pooled features ``[B, n_layers, n_vectors, D]`` (float32)."""
        return self.extract(batch, layers).pooled(pooling).float()


_REGISTRY: dict[str, type[FeatureTap]] = {}


def register_tap(cls: type[FeatureTap]) -> type[FeatureTap]:
    """Class decorator: make ``cls`` the tap for each of its ``policy_types``."""
    for t in cls.policy_types:
        _REGISTRY[t] = cls
    return cls


def tap_for_type(policy_type: str) -> type[FeatureTap]:
    _load_builtin_taps()
    try:
        return _REGISTRY[policy_type]
    except KeyError:
        raise ValueError(
            f"no feature tap for policy type {policy_type!r}; supported: {', '.join(sorted(_REGISTRY))}"
        ) from None


def make_tap(policy: nn.Module) -> FeatureTap:
    """The tap for ``policy`` (by ``policy.config.type``); use it as a context manager."""
    policy_type = getattr(getattr(policy, "config", None), "type", None) or getattr(policy, "name", None)
    if not isinstance(policy_type, str):
        raise ValueError(f"cannot tell the policy type of {type(policy).__name__}: it has no config.type")
    return tap_for_type(policy_type)(policy)


def _load_builtin_taps() -> None:
    # Imported lazily: each family module imports its LeRobot policy code only when used.
    import importlib

    for name in ("act", "diffusion", "paligemma", "smolvla"):
        try:
            importlib.import_module(f"craft_plugin.taps.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"craft_plugin.taps.{name}":
                raise
