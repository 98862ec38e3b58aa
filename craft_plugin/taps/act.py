"""Feature tap for LeRobot's ACT (Action Chunking Transformer) policy.

**Layers** are the layers of ACT's transformer *encoder* (``policy.model.encoder.layers``):
``hidden[i]`` is the output of encoder layer ``layers[i]`` (for ``pre_norm=True`` configs the
encoder's final LayerNorm, applied after the last layer, is not part of any layer's output).
``num_layers = config.n_encoder_layers`` and ``hidden_dim = config.dim_model``. The VAE encoder
(training-only) and the decoder are not tapped.

**Tokens** are the encoder's input sequence, in ACT's own order::

    [latent, robot_state?, env_state?, camera_0 feature-map positions (h*w, row-major), camera_1 ...]

The image-feature tokens (positions of each camera's ResNet ``layer4`` map) are the *vision*
tokens. ACT has no language: the ``text`` mask is ``None`` (so ``last_token`` is refused with a
clear error). ACT never pads its encoder sequence: ``valid`` is all True. ``cls_token`` (the first
token) is the latent token, which plays the role of a DETR/BERT-style summary token; the
family's default pooling is therefore ``("mean_image_tokens", "cls_token")``.

How it runs: the tap rebuilds the encoder input exactly as ``ACT.forward`` does at inference —
in particular the **latent is always zeros**, as ACT uses when it has no VAE sample, even when the
policy is in train mode with ``use_vae=True`` (sampling a VAE latent would make the anchor's
features random and would need the action chunk). It then runs the encoder layers one by one,
stopping after the deepest requested layer. No hooks are installed, no RNG is drawn by the tap
itself, and ``extract`` never runs the decoder. Dropout inside the encoder layers follows the
policy's train/eval mode, which is the caller's choice (see :mod:`craft_plugin.taps.base`).

The ``batch`` is one that has been through the policy's own preprocessor (normalized images
``[B, 3, H, W]`` per camera key, ``observation.state [B, S]``, ...), as ``policy.forward`` receives it.

**Action pathway** (``action_kind = "action"``): the anchored output is the action chunk
``[B, chunk_size, action_dim]`` that ACT's decoder and action head predict at inference, in the
normalized action space — exactly ``policy.model(batch)[0]`` in eval mode (what
``predict_action_chunk`` returns before the postprocessor). It reuses :meth:`ActTap.encoder_inputs`,
so the latent is again zeros, even in train mode with ``use_vae=True``: a VAE sample would make the
teacher target random and would need the ground-truth chunk. With the latent fixed, ACT's action
side is deterministic, so ``draw_action_randomness`` returns ``{}`` and ``action_output`` ignores
its ``draw``. Dropout (encoder and decoder) follows the caller's train/eval mode; the teacher runs
in ``eval()``. Cache cost per anchor: ``chunk_size * action_dim * 4`` bytes (float32), no draw.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from craft_plugin.core.pooling import PoolingKind, TokenMasks
from craft_plugin.taps.base import FeatureTap, TapOutput, register_tap

__all__ = ["ActTap"]

logger = logging.getLogger(__name__)

OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"


@register_tap
class ActTap(FeatureTap):
    """Hidden states of ACT's transformer encoder layers; see the module docstring."""

    policy_types: ClassVar[tuple[str, ...]] = ("act",)
    default_pooling: ClassVar[tuple[PoolingKind, ...]] = ("mean_image_tokens", "cls_token")

    def __init__(self, policy: nn.Module) -> None:
        super().__init__(policy)
        model = getattr(policy, "model", None)
        if model is None or not hasattr(model, "encoder") or not hasattr(model.encoder, "layers"):
            raise ValueError(
                f"{type(policy).__name__} does not look like a LeRobot ACTPolicy: expected "
                "`policy.model.encoder.layers` (ACT's transformer encoder)"
            )
        self.model: nn.Module = model
        self.config: Any = policy.config

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layers)

    @property
    def hidden_dim(self) -> int:
        return int(self.config.dim_model)

    # -- encoder input, as ACT.forward builds it at inference -------------------------------
    def _batch_size_and_device(self, batch: dict[str, Any]) -> tuple[int, torch.device]:
        if self.config.image_features:
            first = batch[next(iter(self.config.image_features))]
        elif self.config.env_state_feature:
            first = batch[OBS_ENV_STATE]
        else:  # ACTConfig.validate_features forbids this; keep the message clear anyway
            raise ValueError("ACT needs at least one camera or the environment state among its inputs")
        return first.shape[0], first.device

    def encoder_inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, TokenMasks]:
        """``(tokens [T, B, D], pos_embed [T, 1 or B, D], masks [B, T])`` for ACT's encoder."""
        cfg, model = self.config, self.model
        missing = [k for k in self._required_keys() if k not in batch]
        if missing:
            raise ValueError(
                f"ACT tap: batch lacks {missing}; pass a batch that has been through the policy's preprocessor"
            )
        batch_size, device = self._batch_size_and_device(batch)

        latent = torch.zeros(batch_size, cfg.latent_dim, dtype=torch.float32, device=device)
        tokens: list[Tensor] = [model.encoder_latent_input_proj(latent)]
        pos: list[Tensor] = list(model.encoder_1d_feature_pos_embed.weight.unsqueeze(1))
        if cfg.robot_state_feature:
            tokens.append(model.encoder_robot_state_input_proj(batch[OBS_STATE]))
        if cfg.env_state_feature:
            tokens.append(model.encoder_env_state_input_proj(batch[OBS_ENV_STATE]))
        n_1d = len(tokens)

        for key in cfg.image_features or ():
            cam_features = model.backbone(batch[key])["feature_map"]
            cam_pos = model.encoder_cam_feat_pos_embed(cam_features).to(dtype=cam_features.dtype)
            cam_features = model.encoder_img_feat_input_proj(cam_features)
            # (B, C, h, w) -> (h*w, B, C), as einops "b c h w -> (h w) b c"
            tokens.extend(list(cam_features.flatten(2).permute(2, 0, 1)))
            pos.extend(list(cam_pos.flatten(2).permute(2, 0, 1)))

        x = torch.stack(tokens, dim=0)
        pos_embed = torch.stack(pos, dim=0)
        T = x.shape[0]
        valid = torch.ones(batch_size, T, dtype=torch.bool, device=device)
        vision = None
        if cfg.image_features:
            vision = torch.zeros(batch_size, T, dtype=torch.bool, device=device)
            vision[:, n_1d:] = True
        return x, pos_embed, TokenMasks(valid=valid, vision=vision, text=None)

    def _required_keys(self) -> list[str]:
        keys = list(self.config.image_features or ())
        if self.config.robot_state_feature:
            keys.append(OBS_STATE)
        if self.config.env_state_feature:
            keys.append(OBS_ENV_STATE)
        return keys

    # -- the tap ------------------------------------------------------------------------------
    def extract(self, batch: dict[str, Any], layers: Sequence[int]) -> TapOutput:
        """Run the encoder up to the deepest requested layer; hidden states ``[B, T, dim_model]``."""
        absolute = self.resolve_layers(layers)
        x, pos_embed, masks = self.encoder_inputs(batch)
        wanted = set(absolute)
        outputs: dict[int, Tensor] = {}
        for i, layer in enumerate(self.model.encoder.layers):
            if i > max(absolute):
                break
            x = layer(x, pos_embed=pos_embed, key_padding_mask=None)
            if i in wanted:
                outputs[i] = x.transpose(0, 1)  # (T, B, D) -> (B, T, D)
        logger.debug("ACT tap: layers %s, sequence length %d", absolute, x.shape[0])
        return TapOutput(layers=absolute, hidden=[outputs[i] for i in absolute], masks=masks)

    # -- the action pathway ---------------------------------------------------------------------
    def action_output(self, batch: dict[str, Any], draw: dict[str, Tensor]) -> Tensor:
        """The predicted action chunk ``[B, chunk_size, action_dim]`` (normalized), latent zeros.

        The full encoder (with its final norm), then the decoder and action head, as
        ``ACTModel.forward`` runs them. ``draw`` is ignored: ACT's action side draws nothing.
        """
        model = self.model
        x, pos_embed, _ = self.encoder_inputs(batch)
        encoder_out = model.encoder(x, pos_embed=pos_embed)
        batch_size = x.shape[1]
        decoder_in = torch.zeros(
            (self.config.chunk_size, batch_size, self.config.dim_model),
            dtype=pos_embed.dtype,
            device=pos_embed.device,
        )
        decoder_out = model.decoder(
            decoder_in,
            encoder_out,
            encoder_pos_embed=pos_embed,
            decoder_pos_embed=model.decoder_pos_embed.weight.unsqueeze(1),
        )
        return model.action_head(decoder_out.transpose(0, 1))  # (chunk, B, D) -> (B, chunk, action_dim)
