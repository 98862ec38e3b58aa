"""Feature tap for LeRobot's ``smolvla``: hidden states of the VLM over the prefix.

What is tapped
--------------
SmolVLA runs a SmolVLM text decoder (the "VLM", only its first ``num_vlm_layers`` layers) and
an action expert side by side, layer by layer (``SmolVLMWithExpertModel.forward``). It calls
the pieces of each decoder layer itself (``input_layernorm``, ``self_attn.q/k/v/o_proj``,
``post_attention_layernorm``, ``mlp``) instead of the layers' ``forward``, and returns no
hidden states, so the tap records them with forward hooks:

* **Layer ``i``'s hidden state** is the **output of VLM decoder layer ``i``** over the prefix
  tokens — Hugging Face's ``output_hidden_states[i + 1]`` convention, as in the PaliGemma tap:
  for ``i < n - 1`` the residual stream after the layer's MLP, read as the input of layer
  ``i + 1``'s ``input_layernorm``; for the last layer, as in transformers, the stream *after*
  the text model's final RMSNorm (the output of ``text_model.norm``, i.e. the prefix output
  ``SmolVLMWithExpertModel.forward`` returns). The embeddings (layer input 0) are not a layer.
* **Layers** are the ones SmolVLA actually runs: ``num_layers`` =
  ``len(text_model.layers)`` after SmolVLA truncated the VLM to ``num_vlm_layers``
  (e.g. 16 of SmolVLM2-500M's 32); ``-1`` is the last layer run, not the VLM config's last.
* ``hidden_dim`` is the VLM text model's hidden size (960 for SmolVLM2-500M).

Which pass
----------
``extract`` runs the policy's own prefix code path — ``prepare_images``, ``prepare_state``,
``VLAFlowMatching.embed_prefix``, ``make_att_2d_masks``, position ids from the pad mask — and
then ``SmolVLMWithExpertModel.forward`` with ``inputs_embeds=[prefix, None]`` and a throw-away
KV cache: exactly the prefix pass ``sample_actions`` makes at inference (no action expert, no
noise, no RNG use). It gives the same prefix hidden states as the training pass
(``VLAFlowMatching.forward``, prefix and suffix together): in SmolVLA's attention masks no
prefix token attends to a suffix token (the suffix's block comes after every prefix block),
prefix position ids do not depend on the suffix, and the cross-attention layers attend the
prefix over the prefix alone — so the prefix stream never sees the actions. (Tested to float
rounding.) ``adapt_to_pi_aloha`` state decoding is applied as ``forward`` does, on a copy.

Masks (``[B, T]``, ``T`` = prefix length)
-----------------------------------------
* ``valid``  — SmolVLA's prefix pad mask: image tokens of present cameras (a camera padded
  in via ``empty_cameras`` / ``*_padding_mask`` is invalid), non-padding language tokens, the
  state token; padding up to ``prefix_length`` is invalid.
* ``vision`` — the image-embedding tokens of every camera (not the optional
  ``<fake_token_around_image>`` / ``<global-img>`` marker tokens of ``add_image_special_tokens``).
* ``text``   — the language-token positions (the tokenized task, ``\\n``-terminated; padding
  positions are in ``text`` but not ``valid``).
* The **state token** (``state_proj`` of the proprioceptive state, right after the language
  tokens, before any ``prefix_length`` padding) is valid but
  **neither vision nor text**: ``last_token`` is the last real language token.

Note for CRaFT: with LeRobot's default ``train_expert_only=True`` the whole VLM is frozen and
image / language tokens never attend to the state token, so these features cannot drift
(only the state token's can, via ``state_proj``); retention on them is meaningful when the
VLM is trained (``train_expert_only=False``). Even then LeRobot freezes the last VLM layer
(two when the expert has half as many layers) and the final norm, whose prefix output the loss
never uses: the last layers' features drift only through the layers before them.

Action pathway (``action_kind = "velocity"``)
---------------------------------------------
The anchor is the action expert's predicted flow-matching velocity ``v_t`` — the output of
``VLAFlowMatching.action_out_proj`` over the chunk, what the loss ``mse(noise - actions, v_t)``
trains — at a *stored* noise and time:

* ``draw_action_randomness`` draws, from the caller's ``torch.Generator`` only, ``noise``
  ``[B, chunk_size, max_action_dim]`` ~ N(0, 1) (padded, the shape ``forward`` samples) and
  ``time`` ``[B]`` from SmolVLA's own ``sample_time``: ``Beta(1.5, 1) * 0.999 + 0.001``
  (hard-coded in LeRobot, not in the config), drawn exactly as ``U**(1/1.5)``. The cache stores
  the draw, so teacher and student are compared on the same
  ``x_t = time * noise + (1 - time) * actions``: a fresh draw would make the target a different
  random variable at every step.
* ``action_output`` runs SmolVLA's own training pass — ``SmolVLAPolicy.forward``'s preparation
  (``adapt_to_pi_aloha`` on a copy, ``prepare_images``, ``prepare_state``, ``prepare_action``)
  then ``VLAFlowMatching.forward(..., noise, time)`` — and returns ``v_t``, read by a forward
  hook on ``action_out_proj`` that exists only during the call (the ``with`` block's hooks are
  the VLM ones above), restricted to the real action dims:
  ``[B, chunk_size, action_dim]``. ``(noise - actions - v_t)**2`` over the real dims is exactly
  the policy's per-element loss (``forward(..., reduction="none")`` averages it over the valid
  steps).

With LeRobot's default ``train_expert_only=True`` the expert (and the state / action / time
projections) is the only trainable part, so this is the anchor that keeps the old actions.
Cache bytes per anchor (float32): ``chunk_size * action_dim * 4`` (output) +
``chunk_size * max_action_dim * 4`` (noise) + ``4`` (time) — 7,804 bytes for SmolVLA's defaults
(chunk 50, max_action_dim 32) and a 7-dim action.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from craft_plugin.core.pooling import TokenMasks
from craft_plugin.taps.base import FeatureTap, TapOutput, register_tap
from craft_plugin.taps.paligemma import check_flow_draw, draw_flow_matching, record_velocity

__all__ = ["SmolVLATap"]

logger = logging.getLogger(__name__)

#: SmolVLA's flow-matching time distribution, ``VLAFlowMatching.sample_time`` (hard-coded there).
TIME_BETA_ALPHA, TIME_BETA_BETA, TIME_SCALE, TIME_OFFSET = 1.5, 1.0, 0.999, 0.001


@register_tap
class SmolVLATap(FeatureTap):
    """Hidden states of SmolVLA's VLM decoder layers over the prefix (see the module docstring)."""

    policy_types = ("smolvla",)
    default_pooling = ("mean_image_tokens", "last_token")
    action_kind = "velocity"

    def __init__(self, policy: nn.Module) -> None:
        super().__init__(policy)
        model = getattr(policy, "model", None)
        vlm_with_expert = getattr(model, "vlm_with_expert", None)
        if vlm_with_expert is None or not hasattr(model, "embed_prefix"):
            raise TypeError(
                f"SmolVLATap needs a LeRobot SmolVLAPolicy (policy.model.vlm_with_expert); got {type(policy).__name__}"
            )
        self._model = model
        self._vlm_with_expert = vlm_with_expert
        vlm = vlm_with_expert.get_vlm_model()
        self._text_model: nn.Module = vlm.text_model
        self._connector: nn.Module = vlm.connector
        # What hooks record while armed (only inside extract/capture; otherwise they do nothing).
        self._armed: set[int] | None = None
        self._captured: dict[int, Tensor] = {}
        self._image_token_counts: list[int] = []

    # -- sizes -----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """VLM decoder layers SmolVLA runs (``num_vlm_layers`` after truncation)."""
        return len(self._text_model.layers)

    @property
    def hidden_dim(self) -> int:
        """The VLM text model's hidden size."""
        return int(self._vlm_with_expert.config.text_config.hidden_size)

    # -- hooks -------------------------------------------------------------------------------
    def _install(self) -> None:
        layers = self._text_model.layers
        n = len(layers)
        # Output of layer i == input of layer i+1's input_layernorm; the last layer's entry is the
        # output of the final norm (HF's convention). These modules only ever see the VLM
        # (prefix) stream: the action expert has its own layers and norm.
        for i in range(n - 1):
            self.add_hook(layers[i + 1].input_layernorm, self._recorder(i, from_output=False))
        self.add_hook(self._text_model.norm, self._recorder(n - 1, from_output=True))
        self.add_hook(self._connector, self._count_image_tokens)
        logger.debug("SmolVLATap: %d hooks on %d VLM layers", len(self._handles), n)

    def _recorder(self, layer: int, from_output: bool) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        """A hook recording the module's input (or output) as layer ``layer``'s hidden state."""

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self._armed is None or layer not in self._armed:
                return
            if layer in self._captured:
                raise RuntimeError(
                    f"SmolVLATap: VLM layer {layer} ran twice while recording; record one prefix pass at a time"
                )
            self._captured[layer] = output if from_output else args[0]

        return hook

    def _count_image_tokens(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._armed is not None:
            self._image_token_counts.append(int(output.shape[1]))

    @contextlib.contextmanager
    def capture(self, layers: Sequence[int]) -> Iterator[dict[int, Tensor]]:
        """Record the prefix hidden states of ``layers`` during any policy call in the block.

        Yields a dict ``absolute layer -> [B, T, D]``, filled as the VLM runs (e.g. around
        ``policy.forward(batch)`` to see the training pass's prefix stream). One pass per block.
        """
        if not self._handles:
            raise RuntimeError("SmolVLATap is not installed: use it as `with make_tap(policy) as tap:`")
        absolute = self.resolve_layers(layers)
        store: dict[int, Tensor] = {}
        self._captured = store
        self._image_token_counts = []
        self._armed = set(absolute)
        try:
            yield store
        finally:
            self._armed = None
            self._captured = {}
            self._image_token_counts = []

    # -- extraction --------------------------------------------------------------------------
    def extract(self, batch: dict[str, Any], layers: Sequence[int]) -> TapOutput:
        """Run SmolVLA's prefix pass on a preprocessed ``batch``; hidden states of ``layers``.

        ``batch`` must have been through the policy's preprocessor (tokenized task, normalized
        state, images in [0, 1]); it is not modified. Mode and grad are the caller's.
        """
        from lerobot.policies.smolvla import modeling_smolvla as msv
        from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE

        absolute = self.resolve_layers(layers)
        policy: Any = self.policy
        for key in (OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK, OBS_STATE):
            if key not in batch:
                raise KeyError(f"SmolVLATap.extract: batch has no {key!r}; pass it through the policy's preprocessor")
        batch = dict(batch)
        if policy.config.adapt_to_pi_aloha:  # as SmolVLAPolicy.forward does, but on a copy
            batch[OBS_STATE] = policy._pi_aloha_decode_state(batch[OBS_STATE].clone())
        images, img_masks = policy.prepare_images(batch)
        state = policy.prepare_state(batch)
        lang_tokens = batch[OBS_LANGUAGE_TOKENS]
        lang_masks = batch[OBS_LANGUAGE_ATTENTION_MASK]

        with self.capture(absolute) as store:
            prefix_embs, prefix_pad_masks, prefix_att_masks = self._model.embed_prefix(
                images, img_masks, lang_tokens, lang_masks, state=state
            )
            # The prefix pass of VLAFlowMatching.sample_actions. use_cache=True makes every layer
            # self-attend over the prefix (with use_cache=False the cross-attention layers would
            # require an expert stream); the cache itself is discarded.
            att_2d = msv.make_att_2d_masks(prefix_pad_masks, prefix_att_masks)
            position_ids = torch.cumsum(prefix_pad_masks, dim=1) - 1
            self._vlm_with_expert.forward(
                attention_mask=att_2d,
                position_ids=position_ids,
                past_key_values=None,
                inputs_embeds=[prefix_embs, None],
                use_cache=True,
            )
            image_token_counts = list(self._image_token_counts)
            hidden = [store[layer] for layer in absolute]

        masks = self._prefix_masks(prefix_pad_masks, image_token_counts, len(images), int(lang_tokens.shape[1]))
        return TapOutput(layers=absolute, hidden=hidden, masks=masks)

    def _prefix_masks(self, pad_masks: Tensor, image_token_counts: list[int], n_images: int, n_lang: int) -> TokenMasks:
        """Masks over ``embed_prefix``'s layout: per camera [markers] image tokens [marker], language, state, padding."""
        if len(image_token_counts) != n_images:
            raise RuntimeError(
                f"SmolVLATap: {n_images} camera images but the connector ran {len(image_token_counts)} times; "
                "SmolVLA's prefix layout is not what this tap expects"
            )
        special = bool(getattr(self._model, "add_image_special_tokens", False))
        before, after = (2, 1) if special else (0, 0)  # <fake_token_around_image><global-img> ... <fake_token_around_image>
        B, T = pad_masks.shape
        vision = torch.zeros(B, T, dtype=torch.bool, device=pad_masks.device)
        text = torch.zeros_like(vision)
        pos = 0
        for count in image_token_counts:
            pos += before
            vision[:, pos : pos + count] = True
            pos += count + after
        text[:, pos : pos + n_lang] = True
        pos += n_lang + 1  # the state token
        prefix_length = int(getattr(self._model, "prefix_length", -1))
        if pos != T and not (pos < prefix_length == T):
            raise RuntimeError(
                f"SmolVLATap: prefix has {T} tokens but its layout accounts for {pos} "
                f"(images {image_token_counts}, language {n_lang}, 1 state); SmolVLA's embed_prefix changed"
            )
        return TokenMasks(valid=pad_masks.bool(), vision=vision, text=text)

    # -- the action pathway (see the module docstring) ----------------------------------------
    def draw_action_randomness(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """``{"noise": [B, chunk_size, max_action_dim], "time": [B]}`` from ``generator`` only."""
        from lerobot.utils.constants import OBS_LANGUAGE_TOKENS

        if OBS_LANGUAGE_TOKENS not in batch:
            raise KeyError(f"batch has no {OBS_LANGUAGE_TOKENS!r}; pass it through the policy's preprocessor")
        c: Any = self.policy.config
        return draw_flow_matching(
            int(batch[OBS_LANGUAGE_TOKENS].shape[0]),
            int(c.chunk_size),
            int(c.max_action_dim),
            generator,
            alpha=TIME_BETA_ALPHA,
            beta=TIME_BETA_BETA,
            scale=TIME_SCALE,
            offset=TIME_OFFSET,
        )

    def action_output(self, batch: dict[str, Any], draw: dict[str, Tensor]) -> Tensor:
        """The expert's velocity ``v_t`` ``[B, chunk_size, action_dim]`` at ``draw``'s noise and time."""
        from lerobot.utils.constants import ACTION, OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE

        for key in (OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK, OBS_STATE, ACTION):
            if key not in batch:
                raise KeyError(
                    f"SmolVLATap.action_output: batch has no {key!r}; pass a batch with actions through the "
                    "policy's preprocessor"
                )
        policy: Any = self.policy
        batch = dict(batch)
        if policy.config.adapt_to_pi_aloha:  # as SmolVLAPolicy.forward does, but on a copy
            batch[OBS_STATE] = policy._pi_aloha_decode_state(batch[OBS_STATE].clone())
            batch[ACTION] = policy._pi_aloha_encode_actions_inv(batch[ACTION].clone())
        images, img_masks = policy.prepare_images(batch)
        state = policy.prepare_state(batch)
        actions = policy.prepare_action(batch)
        noise, time = check_flow_draw(draw, actions)
        with record_velocity(self._model.action_out_proj, type(self).__name__) as store:
            self._model.forward(
                images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK], state, actions,
                noise, time,
            )  # fmt: skip
        return store[0][:, :, : self.action_dim].to(torch.float32)
