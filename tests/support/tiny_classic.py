"""Tiny real ACT and Diffusion policies for tests: random weights, LeRobot's own factories, no Hub.

Each builder returns ``(policy, preprocessor, postprocessor)``: the policy is the real LeRobot
class (``get_policy_class``) built from a shrunk config with ``pretrained_backbone_weights=None``
(nothing is downloaded), and the processors come from ``make_pre_post_processors`` with
made-up dataset statistics so normalization runs for real.

Features (both families): one camera ``observation.images.top`` (3 x 64 x 64: the smallest
size that leaves ACT's ResNet-18 a 2 x 2 feature map, i.e. several image tokens),
``observation.state`` of dim 4, ``action`` of dim 4.

``make_batch(kind, batch_size, seed)`` gives a *raw* training batch (images in ``[0, 1]``,
state, action chunk, ``action_is_pad``) and ``make_observation(kind, batch_size, seed)`` a raw
single-step observation for ``select_action``; pass either through the preprocessor.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = [
    "ACTION_DIM",
    "CAMERA",
    "IMAGE_SHAPE",
    "leftover_hooks",
    "STATE_DIM",
    "make_batch",
    "make_observation",
    "make_tiny",
    "make_tiny_act",
    "make_tiny_diffusion",
]

PolicyKind = Literal["act", "diffusion"]

CAMERA = "observation.images.top"
IMAGE_SHAPE = (3, 64, 64)
STATE_DIM = 4
ACTION_DIM = 4

# ACT: chunk of 6 actions; Diffusion: 2 observation steps, horizon 8 (multiple of 2**len(down_dims)).
ACT_CHUNK = 6
DIFFUSION_N_OBS = 2
DIFFUSION_HORIZON = 8


def _features() -> tuple[dict[str, Any], dict[str, Any]]:
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {
        CAMERA: PolicyFeature(type=FeatureType.VISUAL, shape=IMAGE_SHAPE),
        "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
    }
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}
    return inputs, outputs


def _stats() -> dict[str, dict[str, torch.Tensor]]:
    """Made-up dataset statistics with every key either normalization mode may read."""
    c = IMAGE_SHAPE[0]

    def vec(n: int, lo: float, hi: float, mean: float, std: float) -> dict[str, torch.Tensor]:
        return {
            "min": torch.full((n,), lo),
            "max": torch.full((n,), hi),
            "mean": torch.full((n,), mean),
            "std": torch.full((n,), std),
        }

    image = {
        "min": torch.zeros(c, 1, 1),
        "max": torch.ones(c, 1, 1),
        "mean": torch.tensor([0.485, 0.456, 0.406]).reshape(c, 1, 1),
        "std": torch.tensor([0.229, 0.224, 0.225]).reshape(c, 1, 1),
    }
    return {
        CAMERA: image,
        "observation.state": vec(STATE_DIM, -1.0, 1.0, 0.1, 0.5),
        "action": vec(ACTION_DIM, -1.0, 1.0, -0.1, 0.4),
    }


def _build(config: Any, seed: int) -> tuple[Any, Any, Any]:
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    torch.manual_seed(seed)
    policy = get_policy_class(config.type)(config)
    policy.to(config.device)
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=_stats())
    policy.eval()
    return policy, preprocessor, postprocessor


def make_tiny_act(
    seed: int = 0, n_encoder_layers: int = 3, use_vae: bool = True, dropout: float = 0.1
) -> tuple[Any, Any, Any]:
    """A ~11M-parameter ACT (ResNet-18 from scratch, dim 32) in eval mode: (policy, pre, post)."""
    from lerobot.policies.act.configuration_act import ACTConfig

    inputs, outputs = _features()
    config = ACTConfig(
        input_features=inputs,
        output_features=outputs,
        device="cpu",
        chunk_size=ACT_CHUNK,
        n_action_steps=ACT_CHUNK,
        pretrained_backbone_weights=None,
        dim_model=32,
        n_heads=4,
        dim_feedforward=64,
        n_encoder_layers=n_encoder_layers,
        n_decoder_layers=1,
        use_vae=use_vae,
        latent_dim=8,
        n_vae_encoder_layers=1,
        dropout=dropout,
        push_to_hub=False,
    )
    return _build(config, seed)


def make_tiny_diffusion(seed: int = 0, use_group_norm: bool = True) -> tuple[Any, Any, Any]:
    """A tiny Diffusion Policy (ResNet-18 from scratch, 2-level U-Net, 4 denoising steps): (policy, pre, post).

    Images are center/random-cropped to 56 x 56 so the tap's crop handling is exercised.
    """
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    inputs, outputs = _features()
    config = DiffusionConfig(
        input_features=inputs,
        output_features=outputs,
        device="cpu",
        n_obs_steps=DIFFUSION_N_OBS,
        horizon=DIFFUSION_HORIZON,
        n_action_steps=4,
        drop_n_last_frames=DIFFUSION_HORIZON - 4 - DIFFUSION_N_OBS + 1,
        crop_shape=(56, 56),
        crop_is_random=True,
        pretrained_backbone_weights=None,
        use_group_norm=use_group_norm,
        spatial_softmax_num_keypoints=8,
        down_dims=(16, 32),
        kernel_size=3,
        n_groups=4,
        diffusion_step_embed_dim=16,
        num_train_timesteps=20,
        num_inference_steps=4,
        push_to_hub=False,
    )
    return _build(config, seed)


def make_tiny(kind: PolicyKind, seed: int = 0, **kwargs: Any) -> tuple[Any, Any, Any]:
    """``make_tiny_act`` or ``make_tiny_diffusion`` by name."""
    if kind == "act":
        return make_tiny_act(seed=seed, **kwargs)
    if kind == "diffusion":
        return make_tiny_diffusion(seed=seed, **kwargs)
    raise ValueError(f"unknown tiny policy kind {kind!r}; expected 'act' or 'diffusion'")


def make_batch(kind: PolicyKind, batch_size: int = 2, seed: int = 0) -> dict[str, Any]:
    """A raw training batch, as a LeRobot dataloader would give it (before the preprocessor).

    ACT: image ``[B, 3, H, W]``, state ``[B, 4]``, action ``[B, chunk, 4]``, ``action_is_pad [B, chunk]``.
    Diffusion: image ``[B, n_obs, 3, H, W]``, state ``[B, n_obs, 4]``, action ``[B, horizon, 4]``,
    ``action_is_pad [B, horizon]``. The last action of each chunk is marked as padding.
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "act":
        obs_shape: tuple[int, ...] = (batch_size,)
        horizon = ACT_CHUNK
    elif kind == "diffusion":
        obs_shape = (batch_size, DIFFUSION_N_OBS)
        horizon = DIFFUSION_HORIZON
    else:
        raise ValueError(f"unknown tiny policy kind {kind!r}; expected 'act' or 'diffusion'")
    # Images quantised like uint8 frames converted to float.
    image = torch.randint(0, 256, (*obs_shape, *IMAGE_SHAPE), generator=g).float() / 255.0
    is_pad = torch.zeros(batch_size, horizon, dtype=torch.bool)
    is_pad[:, -1] = True
    return {
        CAMERA: image,
        "observation.state": torch.rand(*obs_shape, STATE_DIM, generator=g) * 2 - 1,
        "action": torch.rand(batch_size, horizon, ACTION_DIM, generator=g) * 2 - 1,
        "action_is_pad": is_pad,
        "task": ["tiny"] * batch_size,
    }


def make_observation(kind: PolicyKind, batch_size: int = 1, seed: int = 0) -> dict[str, Any]:
    """A raw single-step observation for ``select_action`` (image ``[B, 3, H, W]``, state ``[B, 4]``)."""
    if kind not in ("act", "diffusion"):
        raise ValueError(f"unknown tiny policy kind {kind!r}; expected 'act' or 'diffusion'")
    g = torch.Generator().manual_seed(seed)
    return {
        CAMERA: torch.randint(0, 256, (batch_size, *IMAGE_SHAPE), generator=g).float() / 255.0,
        "observation.state": torch.rand(batch_size, STATE_DIM, generator=g) * 2 - 1,
        "task": ["tiny"] * batch_size,
    }


def leftover_hooks(module: torch.nn.Module) -> list[str]:
    """Names of submodules that still carry forward / pre-forward / backward hooks."""
    out = []
    for name, m in module.named_modules():
        kinds = {
            "forward": m._forward_hooks,
            "forward_pre": m._forward_pre_hooks,
            "backward": m._backward_hooks,
            "backward_pre": m._backward_pre_hooks,
        }
        out += [f"{name or '<root>'}:{kind}" for kind, hooks in kinds.items() if len(hooks) > 0]
    return out
