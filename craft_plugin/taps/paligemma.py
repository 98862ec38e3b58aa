"""Feature tap for LeRobot's PaliGemma-based VLAs: ``pi0``, ``pi05``, ``pi0_fast``.

What is tapped
--------------
The PaliGemma **language model** (``policy.model.paligemma_with_expert.paligemma.model.language_model``,
a LeRobot ``PiGemmaModel``) run over the **prefix** — the token sequence the policy itself builds
with its own code (``policy._preprocess_images`` then ``model.embed_prefix`` for pi0 / pi05,
``model.embed_prefix_fast`` without action tokens for pi0_fast) — with the policy's own attention
mask (``make_att_2d_masks`` / the FAST prefix mask, turned 4-D by ``prepare_attention_masks_4d``)
and position ids ``cumsum(pad_mask) - 1``, exactly as ``sample_actions`` / ``forward`` do, and
``output_hidden_states=True``. The expert (pi0 / pi05) and the action tokens (pi0_fast) are not
part of it: in every family the prefix tokens never attend to them, so these hidden states equal
the prefix positions of both the training pass and inference.

Sequence ``[B, T]``, ``T = n_cameras * n_patches + tokenizer_max_length``:

* ``vision`` — the image-token positions (every configured camera, in config order);
* ``text``   — the language-token positions, i.e. the tokenized prompt the preprocessor built:
  pi0 ``"<bos>{task}\\n"``; pi05 ``"<bos>Task: {task}, State: {discretized state};\\nAction: "``
  (state enters pi05 as text, so it is text here); pi0_fast ``"<bos>Task: {task}, State: {state};\\n"``
  — pi0_fast's BOS / ``Action:`` / FAST action tokens that follow the prompt are *not* tapped;
* ``valid``  — the prefix pad mask: padded language tokens and cameras missing from the batch
  (LeRobot fills them with a blank image and mask 0) are invalid, and never pooled.

Layers
------
Layer ``i`` (``0 <= i < num_layers``, ``num_layers`` = the LM's decoder layers) is the output of
decoder layer ``i``: ``hidden_states[i + 1]`` of the transformers output, so the embeddings
(``hidden_states[0]``) are excluded. As in transformers, the last layer's entry is taken after the
LM's final RMSNorm (it is the prefix output LeRobot uses). ``hidden_dim`` is the LM width (2048
for ``gemma_2b``).

Attention runs in ``eager`` mode during the tap (LeRobot's training pass always computes the
prefix attention eagerly, and ``sample_actions`` switches the LM to eager for good); the previous
setting is restored afterwards, so the tap leaves the policy exactly as it found it. No forward
hooks are used; train/eval mode and grad mode are the caller's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from craft_plugin.core.pooling import PoolingKind, TokenMasks
from craft_plugin.taps.base import FeatureTap, TapOutput, register_tap

__all__ = ["PaliGemmaTap"]

logger = logging.getLogger(__name__)

_LANG_TOKENS = "observation.language.tokens"
_LANG_MASK = "observation.language.attention_mask"


@contextlib.contextmanager
def _eager_attention(config: Any) -> Iterator[None]:
    """Run ``config``'s model with eager attention, then restore the previous implementation."""
    previous = getattr(config, "_attn_implementation", None)
    if previous == "eager":
        yield
        return
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous


@register_tap
class PaliGemmaTap(FeatureTap):
    """Hidden states of the PaliGemma language model over the pi-family prefix (see module doc)."""

    policy_types: ClassVar[tuple[str, ...]] = ("pi0", "pi05", "pi0_fast")
    default_pooling: ClassVar[tuple[PoolingKind, ...]] = ("mean_image_tokens", "last_token")

    def __init__(self, policy: nn.Module) -> None:
        super().__init__(policy)
        core = getattr(policy, "model", None)
        pwe = getattr(core, "paligemma_with_expert", None)
        if pwe is None or not hasattr(pwe, "paligemma"):
            raise ValueError(
                f"{type(policy).__name__} does not look like a LeRobot pi0/pi05/pi0_fast policy: "
                "expected policy.model.paligemma_with_expert.paligemma"
            )
        self._core = core
        self._lm = pwe.paligemma.model.language_model
        self._fast = hasattr(core, "embed_prefix_fast")

    # -- sizes ------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Number of PaliGemma decoder layers."""
        return len(self._lm.layers)

    @property
    def hidden_dim(self) -> int:
        """PaliGemma LM width."""
        return int(self._lm.config.hidden_size)

    # -- extraction -------------------------------------------------------------------------
    def _prefix(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, int]:
        """``(embeddings [B,T,D], pad mask [B,T], 4-D additive attention mask, n_image_tokens)``."""
        from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

        missing = [k for k in (_LANG_TOKENS, _LANG_MASK) if k not in batch]
        if missing:
            raise KeyError(
                f"batch lacks {missing}: the tap needs a batch that went through the policy's own "
                "preprocessor (it tokenizes the task)"
            )
        images, img_masks = self.policy._preprocess_images(batch)
        device = images[0].device
        tokens = batch[_LANG_TOKENS].to(device)
        lang_masks = batch[_LANG_MASK].to(device)

        if self._fast:
            embs, pad_masks, att_2d, _, _ = self._core.embed_prefix_fast(
                images, img_masks, tokens, lang_masks, fast_action_tokens=None, fast_action_masks=None
            )
        else:
            embs, pad_masks, att_1d = self._core.embed_prefix(images, img_masks, tokens, lang_masks)
            att_2d = make_att_2d_masks(pad_masks, att_1d)

        if self._lm.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16:
            embs = embs.to(dtype=torch.bfloat16)
        # Same mask dtype as the policy's own prefix pass (pi0_fast casts it, pi0/pi05 do not).
        att_4d = prepare_attention_masks_4d(att_2d, dtype=embs.dtype if self._fast else None)
        n_image_tokens = embs.shape[1] - tokens.shape[1]
        return embs, pad_masks.bool(), att_4d, n_image_tokens

    def extract(self, batch: dict[str, Any], layers: Sequence[int]) -> TapOutput:
        """Run the PaliGemma LM over the prefix of a preprocessed ``batch``; see the module doc."""
        absolute = self.resolve_layers(layers)
        embs, pad_masks, att_4d, n_img = self._prefix(batch)
        position_ids = torch.cumsum(pad_masks.long(), dim=1) - 1

        with _eager_attention(self._lm.config):
            out = self._lm(
                inputs_embeds=embs,
                attention_mask=att_4d,
                position_ids=position_ids,
                past_key_values=None,
                use_cache=False,
                output_hidden_states=True,
            )
        states = out.hidden_states
        if states is None or len(states) != self.num_layers + 1:
            raise RuntimeError(
                f"the PaliGemma LM returned {None if states is None else len(states)} hidden states, "
                f"expected {self.num_layers + 1} (embeddings + one per decoder layer)"
            )

        B, T = pad_masks.shape
        vision = torch.zeros(B, T, dtype=torch.bool, device=pad_masks.device)
        vision[:, :n_img] = True
        masks = TokenMasks(valid=pad_masks, vision=vision, text=~vision)
        return TapOutput(layers=absolute, hidden=[states[i + 1] for i in absolute], masks=masks)
