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
setting is restored afterwards, so the tap leaves the policy exactly as it found it. ``extract``
uses no forward hooks (``action_output`` one, removed before it returns); train/eval mode and
grad mode are the caller's.

Action pathway
--------------
**pi0 / pi05 (flow matching, ``action_kind = "velocity"``).** The anchor is the action expert's
predicted velocity ``v_t`` — the output of ``action_out_proj`` over the chunk, the quantity the
flow-matching loss ``mse(noise - actions, v_t)`` trains — at a *stored* noise and time.
``draw_action_randomness`` draws, from the caller's ``torch.Generator`` only, ``noise``
``[B, chunk_size, max_action_dim]`` ~ N(0, 1) (padded, exactly as ``policy.forward`` samples it)
and ``time`` ``[B]`` from the policy's own distribution, ``Beta(a, b) * scale + offset`` with
``config.time_sampling_beta_alpha / _beta / _scale / _offset`` (defaults 1.5, 1, 0.999, 0.001;
drawn exactly, see :func:`sample_beta`). The cache stores that draw, so teacher and student are
compared on the same ``x_t = time * noise + (1 - time) * actions``: without it the target would be
a different random variable at every step. ``action_output`` runs the policy's own training pass
(``_preprocess_images``, ``prepare_state`` for pi0, ``prepare_action``, then
``model.forward(..., noise, time)``) and returns ``v_t`` (read by a forward hook on
``action_out_proj`` that exists only during the call) restricted to the real action dims:
``[B, chunk_size, action_dim]``; ``mean((noise - actions - v_t)**2)`` is the policy's own loss.
With ``train_expert_only=True`` the expert (and its projections) is all that trains, so this is
the anchor that keeps the old actions. Cache bytes per anchor (float32):
``chunk_size * action_dim * 4`` (output) + ``chunk_size * max_action_dim * 4`` (noise) + ``4``
(time) — 7,804 bytes for LeRobot's defaults (chunk 50, max_action_dim 32) and a 7-dim action.

**pi0_fast (``action_kind = "hidden"``).** pi0_fast has no action expert: its action side is the
PaliGemma LM predicting FAST action tokens under teacher forcing. The anchor is the LM's last
hidden state after the final norm — what feeds ``lm_head`` — at the batch's action-token
positions (``action.tokens``: the ``<bos>Action: `` header, the FAST tokens and the ``|``
terminator, as the preprocessor builds them), in the training pass (``embed_prefix_fast`` with
the action tokens, its causal-over-actions mask), mean-pooled over the valid positions
(``action.token_mask``): ``[B, hidden_dim]``. It is deterministic (no draw: ``{}``); attention is
eager as in ``extract``. Cache bytes per anchor: ``hidden_dim * 4`` (8,192 for ``gemma_2b``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from craft_plugin.core.pooling import PoolingKind, TokenMasks
from craft_plugin.taps.base import FeatureTap, TapOutput, register_tap

__all__ = ["PaliGemmaTap", "check_flow_draw", "draw_flow_matching", "record_velocity", "sample_beta"]

logger = logging.getLogger(__name__)

_LANG_TOKENS = "observation.language.tokens"
_LANG_MASK = "observation.language.attention_mask"
_ACTION = "action"
_ACTION_TOKENS = "action.tokens"
_ACTION_TOKEN_MASK = "action.token_mask"


def _sample_gamma(shape: float, n: int, generator: torch.Generator) -> Tensor:
    """``n`` exact Gamma(``shape``, 1) draws (float64) from ``generator`` only.

    Marsaglia & Tsang (2000) rejection sampling for ``shape >= 1`` (vectorized: rounds of
    proposals until every entry is accepted; acceptance > 95 %), and
    ``Gamma(k) = Gamma(k + 1) * U**(1/k)`` for ``shape < 1``. (``torch._standard_gamma`` takes no
    generator.)
    """
    if shape < 1.0:
        boost = _sample_gamma(shape + 1.0, n, generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return boost * u.pow(1.0 / shape)
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while todo.numel():
        m = todo.numel()
        x = torch.randn(m, generator=generator, dtype=torch.float64)
        u = torch.rand(m, generator=generator, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        ok = v > 0
        log_v = torch.log(torch.where(ok, v, torch.ones_like(v)))
        ok &= torch.log(u) < 0.5 * x * x + d - d * v + d * log_v
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    return out


def sample_beta(alpha: float, beta: float, n: int, generator: torch.Generator) -> Tensor:
    """``n`` exact Beta(``alpha``, ``beta``) draws (float64) from ``generator`` only.

    ``Beta(a, 1)`` by inverse CDF, ``U**(1/a)`` (one uniform per draw: LeRobot's default
    ``Beta(1.5, 1)``); ``Beta(1, b)`` as ``1 - U**(1/b)``; otherwise ``X / (X + Y)`` with
    ``X ~ Gamma(a)``, ``Y ~ Gamma(b)`` (:func:`_sample_gamma`). Same distribution as LeRobot's
    ``sample_beta`` (``torch.distributions.Beta``, global RNG), not the same numbers.
    """
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"Beta({alpha}, {beta}): both parameters must be positive")
    if beta == 1.0:
        return torch.rand(n, generator=generator, dtype=torch.float64).pow(1.0 / alpha)
    if alpha == 1.0:
        return 1.0 - torch.rand(n, generator=generator, dtype=torch.float64).pow(1.0 / beta)
    x = _sample_gamma(alpha, n, generator)
    y = _sample_gamma(beta, n, generator)
    return x / (x + y)


def draw_flow_matching(
    batch_size: int,
    chunk_size: int,
    max_action_dim: int,
    generator: torch.Generator,
    *,
    alpha: float,
    beta: float,
    scale: float,
    offset: float,
) -> dict[str, Tensor]:
    """LeRobot's flow-matching randomness from ``generator`` only (CPU, float32).

    ``noise`` ``[B, chunk_size, max_action_dim]`` ~ N(0, 1) (LeRobot's ``sample_noise`` over the
    padded action shape) and ``time`` ``[B]`` = ``Beta(alpha, beta) * scale + offset``
    (``sample_time_beta``). Noise is drawn first, then time, as ``forward`` does.
    """
    noise = torch.randn(batch_size, chunk_size, max_action_dim, generator=generator, dtype=torch.float32)
    time = sample_beta(alpha, beta, batch_size, generator) * scale + offset
    return {"noise": noise, "time": time.to(torch.float32)}


def check_flow_draw(draw: dict[str, Tensor], actions: Tensor) -> tuple[Tensor, Tensor]:
    """``(noise, time)`` of ``draw`` on ``actions``' device; their shapes checked against ``actions``."""
    missing = [k for k in ("noise", "time") if k not in draw]
    if missing:
        raise KeyError(f"the flow-matching draw lacks {missing}: make it with tap.draw_action_randomness")
    noise, time = draw["noise"], draw["time"]
    if tuple(noise.shape) != tuple(actions.shape) or tuple(time.shape) != (actions.shape[0],):
        raise ValueError(
            f"draw does not fit the batch: noise {tuple(noise.shape)} and time {tuple(time.shape)}, "
            f"but the padded actions are {tuple(actions.shape)} (expected noise of that shape and time [B])"
        )
    return noise.to(device=actions.device, dtype=torch.float32), time.to(device=actions.device, dtype=torch.float32)


@contextlib.contextmanager
def record_velocity(module: nn.Module, owner: str) -> Iterator[list[Tensor]]:
    """Record ``module``'s (``action_out_proj``'s) outputs during the block: one forward hook,
    registered on entry and removed on exit (even on error), so no hook outlives the call."""
    store: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        store.append(output)

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
    if len(store) != 1:
        raise RuntimeError(f"{owner}: action_out_proj ran {len(store)} times in one training pass (expected once)")


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
        forward = getattr(core, "forward", None)
        # pi0's model.forward takes the state (it enters the expert as a token); pi05's does not.
        self._takes_state = (
            not self._fast and forward is not None and "state" in inspect.signature(forward).parameters
        )

    @property
    def action_kind(self) -> str:  # type: ignore[override]
        """``"hidden"`` for pi0_fast (LM hidden states), ``"velocity"`` for pi0 / pi05."""
        return "hidden" if self._fast else "velocity"

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
    def _prefix(self, batch: dict[str, Any], with_action_tokens: bool = False) -> tuple[Tensor, Tensor, Tensor, int]:
        """``(embeddings [B,T,D], pad mask [B,T], 4-D additive attention mask, n_image_tokens)``.

        ``with_action_tokens`` (pi0_fast only): the training pass's sequence, the batch's FAST
        action tokens appended (``T`` grows by ``action.tokens.shape[1]``, the last positions).
        """
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

        action_tokens = action_masks = None
        if with_action_tokens:
            if not self._fast:
                raise ValueError("only pi0_fast has action tokens")
            missing = [k for k in (_ACTION_TOKENS, _ACTION_TOKEN_MASK) if k not in batch]
            if missing:
                raise KeyError(
                    f"batch lacks {missing}: pi0_fast's action pathway needs a batch with actions that went "
                    "through the policy's own preprocessor (it FAST-tokenizes the actions)"
                )
            action_tokens = batch[_ACTION_TOKENS].to(device)
            action_masks = batch[_ACTION_TOKEN_MASK].to(device)

        if self._fast:
            embs, pad_masks, att_2d, _, _ = self._core.embed_prefix_fast(
                images, img_masks, tokens, lang_masks, fast_action_tokens=action_tokens, fast_action_masks=action_masks
            )
        else:
            embs, pad_masks, att_1d = self._core.embed_prefix(images, img_masks, tokens, lang_masks)
            att_2d = make_att_2d_masks(pad_masks, att_1d)

        if self._lm.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16:
            embs = embs.to(dtype=torch.bfloat16)
        # Same mask dtype as the policy's own prefix pass (pi0_fast casts it, pi0/pi05 do not).
        att_4d = prepare_attention_masks_4d(att_2d, dtype=embs.dtype if self._fast else None)
        n_image_tokens = embs.shape[1] - tokens.shape[1] - (0 if action_tokens is None else action_tokens.shape[1])
        return embs, pad_masks.bool(), att_4d, n_image_tokens

    def _run_lm(self, embs: Tensor, pad_masks: Tensor, att_4d: Tensor, output_hidden_states: bool) -> Any:
        """The PaliGemma LM over a sequence from :meth:`_prefix`, eager attention, no KV cache."""
        position_ids = torch.cumsum(pad_masks.long(), dim=1) - 1
        with _eager_attention(self._lm.config):
            return self._lm(
                inputs_embeds=embs,
                attention_mask=att_4d,
                position_ids=position_ids,
                past_key_values=None,
                use_cache=False,
                output_hidden_states=output_hidden_states,
            )

    def extract(self, batch: dict[str, Any], layers: Sequence[int]) -> TapOutput:
        """Run the PaliGemma LM over the prefix of a preprocessed ``batch``; see the module doc."""
        absolute = self.resolve_layers(layers)
        embs, pad_masks, att_4d, n_img = self._prefix(batch)
        states = self._run_lm(embs, pad_masks, att_4d, output_hidden_states=True).hidden_states
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

    # -- the action pathway (see the module docstring) ----------------------------------------
    def draw_action_randomness(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """pi0 / pi05: ``{"noise": [B, chunk, max_action_dim], "time": [B]}``; pi0_fast: ``{}``."""
        if self._fast:
            return {}
        if _LANG_TOKENS not in batch:
            raise KeyError(f"batch lacks {_LANG_TOKENS!r}: pass it through the policy's preprocessor")
        c = self.policy.config
        return draw_flow_matching(
            int(batch[_LANG_TOKENS].shape[0]),
            int(c.chunk_size),
            int(c.max_action_dim),
            generator,
            alpha=float(c.time_sampling_beta_alpha),
            beta=float(c.time_sampling_beta_beta),
            scale=float(c.time_sampling_scale),
            offset=float(c.time_sampling_offset),
        )

    def action_output(self, batch: dict[str, Any], draw: dict[str, Tensor]) -> Tensor:
        """pi0 / pi05: ``v_t`` ``[B, chunk, action_dim]``; pi0_fast: pooled ``[B, hidden_dim]``."""
        if self._fast:
            hidden, mask = self.action_token_states(batch)
            m = mask.unsqueeze(-1)
            total = torch.where(m, hidden.float(), torch.zeros((), dtype=torch.float32, device=hidden.device)).sum(1)
            return total / m.sum(1).clamp_min(1).to(torch.float32)
        for key in (_LANG_TOKENS, _LANG_MASK, _ACTION):
            if key not in batch:
                raise KeyError(f"batch lacks {key!r}: pass a batch with actions through the policy's preprocessor")
        policy: Any = self.policy
        # PI0Policy / PI05Policy.forward's preparation, then the model's training pass.
        images, img_masks = policy._preprocess_images(batch)
        tokens, masks = batch[_LANG_TOKENS], batch[_LANG_MASK]
        actions = policy.prepare_action(batch)
        noise, time = check_flow_draw(draw, actions)
        state = (policy.prepare_state(batch),) if self._takes_state else ()
        with record_velocity(self._core.action_out_proj, type(self).__name__) as store:
            self._core.forward(images, img_masks, tokens, masks, *state, actions, noise, time)
        return store[0][:, :, : self.action_dim].to(torch.float32)

    def action_token_states(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """pi0_fast: ``(hidden [B, n_action_tokens, D], valid [B, n_action_tokens])``.

        The LM's last hidden states (after the final norm: what ``lm_head`` reads) at the action-
        token positions of the teacher-forced training pass; ``valid`` is ``action.token_mask``.
        """
        if not self._fast:
            raise ValueError(f"{type(self).__name__}: only pi0_fast has action tokens")
        embs, pad_masks, att_4d, _ = self._prefix(batch, with_action_tokens=True)
        n_action = int(batch[_ACTION_TOKENS].shape[1])
        last = self._run_lm(embs, pad_masks, att_4d, output_hidden_states=False).last_hidden_state
        return last[:, -n_action:], pad_masks[:, -n_action:]
