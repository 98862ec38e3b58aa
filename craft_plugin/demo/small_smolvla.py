"""A small SmolVLA, built offline from a config with random weights (the demo's VLA).

SmolVLA reads its VLM (``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``) from the Hub: the VLM
config, the processor (for the image token ids) and the tokenizer, all from
``config.vlm_model_name``. The Hub is out of reach here, so :func:`build_vlm_folder` (from
:mod:`craft_plugin.mcq.smolvlm_folder`, re-exported here) writes a folder that stands in for
that repo:

* ``config.json``: a ``SmolVLMConfig`` with a Llama text model and a SigLIP-style vision tower,
  both sized by :class:`VLMSizes`;
* a byte-level BPE tokenizer without merges (every UTF-8 string tokenizes, one token per
  byte, so no two instructions collapse onto the same ids) plus SmolVLM's special tokens;
* SmolVLM's image and video processors and its processor config.

``load_vlm_weights=False`` makes SmolVLA build the VLM from that config with random weights.
A checkpoint saved from such a policy names the folder in ``vlm_model_name``, so keep the
folder for as long as the checkpoint is used. The tests' tiny SmolVLA uses the same builder.
"""

from __future__ import annotations

import os
from typing import Any

from craft_plugin.mcq.smolvlm_folder import SPECIAL_TOKENS, VLMSizes, build_tokenizer, build_vlm_folder

__all__ = ["SPECIAL_TOKENS", "VLMSizes", "build_tokenizer", "build_vlm_folder", "smolvla_config"]


def smolvla_config(
    vlm_folder: str | os.PathLike[str],
    *,
    input_features: dict[str, Any],
    output_features: dict[str, Any],
    image_size: int,
    num_vlm_layers: int,
    chunk_size: int,
    **overrides: Any,
) -> Any:
    """A ``SmolVLAConfig`` on the stand-in VLM, on CPU. ``train_expert_only=False``: the VLM,
    which CRaFT's hidden retention anchors, is trainable (LeRobot's default freezes it)."""
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    max_state = max(8, *(f.shape[0] for k, f in input_features.items() if k == "observation.state"))
    kwargs: dict[str, Any] = {
        "vlm_model_name": str(vlm_folder),
        "load_vlm_weights": False,
        "num_vlm_layers": num_vlm_layers,
        "chunk_size": chunk_size,
        "n_action_steps": chunk_size,
        "max_state_dim": max_state,
        "max_action_dim": max(8, *(f.shape[0] for f in output_features.values())),
        "resize_imgs_with_padding": (image_size, image_size),
        "train_expert_only": False,
        "device": "cpu",
        "input_features": input_features,
        "output_features": output_features,
    }
    kwargs.update(overrides)
    return SmolVLAConfig(**kwargs)
