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

from craft_plugin.demo.tiny_world import (  # the tiny ACT and its features are the package's own
    ACT_CHUNK,
    ACTION_DIM,
    CAMERA,
    IMAGE_SHAPE,
    STATE_DIM,
    build_policy,
    make_tiny_act,
    policy_features,
)

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

# ACT (craft_plugin.demo.tiny_world): chunk of 6 actions; Diffusion: 2 observation steps,
# horizon 8 (multiple of 2**len(down_dims)).
DIFFUSION_N_OBS = 2
DIFFUSION_HORIZON = 8


def make_tiny_diffusion(seed: int = 0, use_group_norm: bool = True) -> tuple[Any, Any, Any]:
    """A tiny Diffusion Policy (ResNet-18 from scratch, 2-level U-Net, 4 denoising steps): (policy, pre, post).

    Images are center/random-cropped to 56 x 56 so the tap's crop handling is exercised.
    """
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    inputs, outputs = policy_features()
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
    return build_policy(config, seed)


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
