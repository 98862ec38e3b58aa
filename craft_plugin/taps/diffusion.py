"""Feature tap for LeRobot's Diffusion Policy: the ResNet of its observation (RGB) encoder.

Diffusion Policy has no transformer over observations: each camera image goes through a
``DiffusionRgbEncoder`` (optional resize / crop → ResNet backbone → spatial softmax → linear),
and the U-Net denoiser is conditioned on the concatenated result. The tapped "backbone" is
that encoder's ResNet, with these definitions:

**Layers** are the ResNet's residual blocks, in order through all stages (``layer1[0]``,
``layer1[1]``, ..., ``layer4[-1]``; 8 blocks for ResNet-18/34-style ``[2,2,2,2]`` — ResNet-34
has 16, ResNet-50 16 bottlenecks). ``hidden[i]`` is the output feature map of block ``layers[i]``
— the analogue of a transformer layer's output. The stem (conv1/bn/relu/maxpool) is not a layer,
and neither is the head after the backbone (spatial-softmax keypoints and the final linear
projection), which collapses the map to a single vector of a different width.

**Tokens** are the spatial positions of that feature map, for every camera and every
observation step: ``T = n_cameras * n_obs_steps * h * w``, ordered camera-major, then
observation step, then row-major position. **D** is the block's channel width.

Widths grow by stage (64, 128, 256, 512 for ResNet-18), so pooled features
``[B, n_layers, n_vectors, D]`` are only defined for layers of one width: requesting layers of
different widths raises a ``ValueError`` naming them and their widths. ``hidden_dim`` is the width
of the last block (the backbone's output channels), which is what the usual choice, the last
layers (e.g. ``-2, -1`` = both blocks of ``layer4`` on ResNet-18), gives; ``layer_widths`` lists
every block's width.

Masks: ``valid`` and ``vision`` are all True (no padding; every token is an image position);
``text`` is ``None``. Default pooling: ``("mean_image_tokens",)`` — the mean over all positions of
all cameras; ``cls_token`` (camera 0's top-left position) is allowed but carries little meaning.

How it runs: the batch is one that went through the policy's own preprocessor (normalized
``observation.images.<cam>`` as ``[B, n_obs, 3, H, W]``, or ``[B, 3, H, W]`` for one observation
step). For each camera the tap applies the encoder's resize (if configured) and its **center
crop** (if configured) — the deterministic, eval-time view even when the policy is in train mode,
so the random-crop augmentation does not turn anchor features into noise — then runs the
backbone's stem and blocks one by one, stopping after the deepest requested block. No hooks
are installed, and the tap draws no random numbers. The policy's train/eval mode is the caller's
(:mod:`craft_plugin.taps.base`): note that with ``use_group_norm=False`` the backbone has
BatchNorm, which in train mode normalizes with batch statistics and updates its running
statistics — as the policy's own training forward does.

**Action pathway**: the anchored output is the U-Net denoiser's prediction in the training
objective's own setting, ``[B, horizon, action_dim]``: the observations give the global conditioning
(through the policy's own ``_prepare_global_conditioning``, so the full RGB encoder, keypoint head
included), ``batch["action"]`` (normalized) is noised with the scheduler's ``add_noise`` at a stored
``noise`` and ``timestep``, and ``unet(noisy, timestep, global_cond)`` is the output — exactly the
``pred`` of ``DiffusionModel.compute_loss``. That noise and timestep are the only randomness of the
objective, so ``draw_action_randomness`` draws them (from the caller's generator, with the
distributions ``compute_loss`` uses: ``noise ~ N(0, 1)`` ``[B, horizon, action_dim]``, ``timestep``
int64 ``[B]`` uniform in ``[0, num_train_timesteps)``) and the cache stores them, so teacher and
student are compared on the same noised trajectory. ``action_kind`` is ``"epsilon"`` for
``prediction_type="epsilon"`` (the predicted noise) and ``"action"`` for ``"sample"`` (the
predicted clean trajectory). Unlike :meth:`DiffusionTap.extract`, the conditioning goes through
the encoder's own ``forward``, which **random-crops in train mode** (global RNG): the caller runs
the retention pass in ``eval()`` (center crop), as the teacher does. Cache cost per anchor
(float32): ``horizon * action_dim * 4`` bytes for the output, the same again for ``draw.noise``,
and 8 bytes for ``draw.timestep``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from craft_plugin.core.pooling import PoolingKind, TokenMasks
from craft_plugin.taps.base import FeatureTap, TapOutput, register_tap

__all__ = ["DiffusionTap"]

logger = logging.getLogger(__name__)

OBS_STATE = "observation.state"
OBS_IMAGES = "observation.images"
ACTION = "action"


def _block_width(block: nn.Module) -> int:
    """Output channels of a torchvision ResNet block (BasicBlock: conv2; Bottleneck: conv3)."""
    for name in ("conv3", "conv2"):
        conv = getattr(block, name, None)
        if isinstance(conv, nn.Conv2d):
            return int(conv.out_channels)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"cannot tell the output width of backbone block {type(block).__name__}")
    return int(convs[-1].out_channels)


def _split_backbone(backbone: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(stem modules, residual blocks)`` of the encoder's ``nn.Sequential`` ResNet trunk.

    The trunk is ``Sequential(conv1, bn1, relu, maxpool, layer1, ..., layer4)``; every child that
    is itself a ``Sequential`` is a stage whose children are the blocks.
    """
    if not isinstance(backbone, nn.Sequential):
        raise ValueError(
            f"the diffusion RGB encoder's backbone is a {type(backbone).__name__}, expected the "
            "nn.Sequential ResNet trunk LeRobot builds"
        )
    stem: list[nn.Module] = []
    blocks: list[nn.Module] = []
    for child in backbone.children():
        if isinstance(child, nn.Sequential):
            blocks.extend(child.children())
        elif blocks:
            raise ValueError(
                f"unexpected {type(child).__name__} after the residual stages of the diffusion backbone"
            )
        else:
            stem.append(child)
    if not blocks:
        raise ValueError("the diffusion RGB encoder's backbone has no residual stage to tap")
    return stem, blocks


@register_tap
class DiffusionTap(FeatureTap):
    """Feature maps of the residual blocks of Diffusion Policy's RGB encoder; see the module docstring."""

    policy_types: ClassVar[tuple[str, ...]] = ("diffusion",)
    default_pooling: ClassVar[tuple[PoolingKind, ...]] = ("mean_image_tokens",)

    def __init__(self, policy: nn.Module) -> None:
        super().__init__(policy)
        model = getattr(policy, "diffusion", None)
        self.config: Any = policy.config
        if model is None:
            raise ValueError(
                f"{type(policy).__name__} does not look like a LeRobot DiffusionPolicy: expected `policy.diffusion`"
            )
        if not self.config.image_features or not hasattr(model, "rgb_encoder"):
            raise ValueError(
                "this diffusion policy has no camera input, so no vision backbone to tap "
                "(the diffusion tap reads the RGB encoder's ResNet)"
            )
        self.model: nn.Module = model
        self.cameras: list[str] = list(self.config.image_features)
        encoders = model.rgb_encoder
        if isinstance(encoders, nn.ModuleList):
            self.encoders: list[nn.Module] = list(encoders)
        else:
            self.encoders = [encoders] * len(self.cameras)
        if len(self.encoders) != len(self.cameras):
            raise ValueError(
                f"diffusion policy has {len(self.encoders)} RGB encoders for {len(self.cameras)} cameras"
            )
        _, blocks = _split_backbone(self.encoders[0].backbone)
        self._widths = [_block_width(b) for b in blocks]

    @property
    def num_layers(self) -> int:
        return len(self._widths)

    @property
    def action_kind(self) -> str:  # type: ignore[override]
        """``"epsilon"`` (predicted noise) or ``"action"`` (``prediction_type="sample"``)."""
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            return "epsilon"
        if prediction_type == "sample":
            return "action"
        raise ValueError(f"diffusion tap: unsupported prediction_type {prediction_type!r}")

    @property
    def hidden_dim(self) -> int:
        """Width of the last residual block (the backbone's output channels)."""
        return self._widths[-1]

    @property
    def layer_widths(self) -> list[int]:
        """Channel width ``D`` of every layer (residual block), in order."""
        return list(self._widths)

    def extract(self, batch: dict[str, Any], layers: Sequence[int]) -> TapOutput:
        """Feature maps of the requested blocks as ``[B, n_cams * n_obs * h * w, width]``."""
        absolute = self.resolve_layers(layers)
        widths = {i: self._widths[i] for i in absolute}
        if len(set(widths.values())) > 1:
            detail = ", ".join(f"layer {i}: {w}" for i, w in widths.items())
            raise ValueError(
                f"diffusion tap: layers {list(layers)} have different channel widths ({detail}); pooled "
                "features need one width — pick layers of one ResNet stage (layer widths: "
                f"{self._widths})"
            )
        missing = [k for k in self.cameras if k not in batch]
        if missing:
            raise ValueError(
                f"diffusion tap: batch lacks {missing}; pass a batch that has been through the policy's preprocessor"
            )

        deepest = max(absolute)
        per_layer: dict[int, list[Tensor]] = {i: [] for i in absolute}
        batch_size = None
        for key, encoder in zip(self.cameras, self.encoders, strict=True):
            images = batch[key]
            if images.ndim == 4:  # [B, C, H, W]: one observation step
                images = images.unsqueeze(1)
            if images.ndim != 5:
                raise ValueError(
                    f"diffusion tap: {key} must be [B, n_obs, C, H, W] or [B, C, H, W], got {tuple(images.shape)}"
                )
            b, s = images.shape[:2]
            batch_size = b
            x = images.flatten(0, 1)  # (B*s, C, H, W), batch-major like LeRobot's "(b s)"
            if encoder.resize is not None:
                x = encoder.resize(x)
            if encoder.do_crop:
                x = encoder.center_crop(x)
            stem, blocks = _split_backbone(encoder.backbone)
            for module in stem:
                x = module(x)
            for i, block in enumerate(blocks[: deepest + 1]):
                x = block(x)
                if i in per_layer:
                    c, h, w = x.shape[1:]
                    # (B*s, C, h, w) -> (B, s*h*w, C)
                    per_layer[i].append(x.reshape(b, s, c, h * w).permute(0, 1, 3, 2).reshape(b, s * h * w, c))

        hidden = [torch.cat(per_layer[i], dim=1) for i in absolute]
        assert batch_size is not None
        T = hidden[0].shape[1]
        device = hidden[0].device
        valid = torch.ones(batch_size, T, dtype=torch.bool, device=device)
        masks = TokenMasks(valid=valid, vision=valid.clone(), text=None)
        logger.debug("diffusion tap: layers %s, %d tokens of width %d", absolute, T, hidden[0].shape[-1])
        return TapOutput(layers=absolute, hidden=hidden, masks=masks)

    # -- the action pathway ---------------------------------------------------------------------
    def draw_action_randomness(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """``{"noise": [B, horizon, action_dim] float32, "timestep": [B] int64}``, from ``generator`` only.

        The distributions of ``DiffusionModel.compute_loss``: standard normal noise, timesteps
        uniform in ``[0, num_train_timesteps)``. Returned on the CPU.
        """
        key = ACTION if ACTION in batch else OBS_STATE
        if key not in batch:
            raise ValueError(f"diffusion tap: batch lacks {ACTION!r} and {OBS_STATE!r}; cannot tell its size")
        batch_size = int(batch[key].shape[0])
        device = generator.device
        noise = torch.randn(
            (batch_size, int(self.config.horizon), self.action_dim),
            generator=generator,
            dtype=torch.float32,
            device=device,
        )
        n_steps = int(self.model.noise_scheduler.config.num_train_timesteps)
        timestep = torch.randint(0, n_steps, (batch_size,), generator=generator, dtype=torch.int64, device=device)
        return {"noise": noise.cpu(), "timestep": timestep.cpu()}

    def action_output(self, batch: dict[str, Any], draw: dict[str, Tensor]) -> Tensor:
        """The denoiser's output ``[B, horizon, action_dim]`` on ``batch["action"]`` noised with ``draw``.

        Reproduces ``DiffusionModel.compute_loss``'s ``pred`` with its noise and timesteps
        replaced by ``draw["noise"]`` and ``draw["timestep"]``.
        """
        missing = [k for k in (*self.cameras, OBS_STATE, ACTION) if k not in batch]
        if missing:
            raise ValueError(
                f"diffusion tap: batch lacks {missing}; pass a batch that has been through the policy's "
                "preprocessor, with its action chunk"
            )
        lacking = [k for k in ("noise", "timestep") if k not in draw]
        if lacking:
            raise ValueError(f"diffusion tap: draw lacks {lacking}; make it with draw_action_randomness")
        trajectory = batch[ACTION]
        batch_size, horizon = trajectory.shape[:2]
        shape = (batch_size, horizon, self.action_dim)
        if tuple(trajectory.shape) != shape or horizon != self.config.horizon:
            raise ValueError(
                f"diffusion tap: batch['action'] must be [B, horizon={self.config.horizon}, "
                f"{self.action_dim}], got {tuple(trajectory.shape)}"
            )
        if tuple(draw["noise"].shape) != shape or tuple(draw["timestep"].shape) != (batch_size,):
            raise ValueError(
                f"diffusion tap: draw does not fit the batch: noise {tuple(draw['noise'].shape)} "
                f"(expected {shape}), timestep {tuple(draw['timestep'].shape)} (expected ({batch_size},))"
            )
        noise = draw["noise"].to(device=trajectory.device, dtype=trajectory.dtype)
        timestep = draw["timestep"].to(device=trajectory.device, dtype=torch.long)

        global_cond = self.model._prepare_global_conditioning(self._with_stacked_images(batch))
        noisy = self.model.noise_scheduler.add_noise(trajectory, noise, timestep)
        return self.model.unet(noisy, timestep, global_cond=global_cond)

    def _with_stacked_images(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A shallow copy of ``batch`` with ``observation.images`` stacked as ``DiffusionPolicy.forward`` does."""
        out = dict(batch)
        for key in self.cameras:
            if self.config.n_obs_steps == 1 and out[key].ndim == 4:
                out[key] = out[key].unsqueeze(1)
        out[OBS_IMAGES] = torch.stack([out[key] for key in self.cameras], dim=-4)
        return out
