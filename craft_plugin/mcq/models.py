"""Language-model backbones to score MCQ choices with, one adapter per model family.

Every adapter turns ``(image, question)`` into a **prefix** and a choice into **continuation
token ids**, and computes next-token logits two ways:

* ``full_logits(prefix, conts)`` — the *naive* reference: each row is the whole sequence
  ``prefix + continuation``, run from scratch (vision tower included);
* ``prefix_forward(prefix)`` then ``continuation_logits(prefix, state, conts)`` — the prefix is
  encoded **once** (one forward, KV cache kept), and all continuations run on top of it.

Both return, per continuation token ``j``, the logits that predict it (``j = 0`` from the last
prefix position). They are equal up to float rounding (a test holds them to 1e-4).

Prompt format per family (explicit, so scores are comparable between checkpoints of a family)
-----------------------------------------------------------------------------------------------
``pi0`` / ``pi05`` / ``pi0_fast`` — PaliGemma as the policy runs it (``PaliGemmaAdapter``):
    prefix = the policy's own image embedding of the image put on its **first camera**
    (``config.image_features`` order; other cameras are absent, masked as LeRobot masks a
    missing camera; ``_preprocess_images`` resizes with padding and maps to [-1, 1]) followed by
    the language tokens ``<bos> {question}\\n`` (PaliGemma text tokenizer, ids built
    explicitly: BOS + ``tokenize(question + "\\n")``). The prefix attends **bidirectionally**
    (PaliGemma's prefix-LM, as the policies do); continuation = ``tokenize(choice)`` (no space,
    no EOS), attending causally to the prefix and to itself; embedded with the policy's
    ``embed_language_tokens``; read out by PaliGemma's ``lm_head``; positions ``cumsum(valid) - 1``;
    eager attention. The action expert / FAST action tokens take no part.
``smolvla`` — the SmolVLM inside the policy (``policy.model.vlm_with_expert.vlm``) run as
    Hugging Face runs SmolVLM (``HFAdapter``): its own processor, causal attention, its
    ``lm_head``. SmolVLA keeps only the first ``num_vlm_layers`` decoder layers; the score is
    that truncated VLM's (final norm + ``lm_head`` after the kept layers). Compare smolvla
    checkpoints with each other, not with the full, untruncated VLM.
Hugging Face ``AutoModelForImageTextToText`` folders (``HFAdapter``):
    with a chat template: ``apply_chat_template([{"role": "user", "content": [image,
    question]}], add_generation_prompt=True)``; without one: ``{image_token}{question}\\nAnswer:``.
    Continuation = ``tokenize(" " + choice)`` (leading space, no special tokens, no EOS).
    PaliGemma (``PaliGemmaForConditionalGeneration``, the pi0 family's backbone): its processor
    builds ``<image>×N <bos> {prompt}\n`` and returns ``token_type_ids`` (0 = prefix, attended
    bidirectionally) and ``labels``; ``labels`` is dropped (scoring computes no loss) and the
    continuation gets ``token_type_ids`` 1 (suffix: causal), PaliGemma's own prefix-LM layout.
``craft`` checkpoints — their base policy (``base/config.json`` and the ``base.``-prefixed
    weights), scored as that base's family.

Continuations are right-padded within a batch; padded positions are masked and never scored.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "HFAdapter",
    "MCQAdapter",
    "PaliGemmaAdapter",
    "Prefix",
    "adapter_for_policy",
    "load_adapter",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

PI_TYPES = ("pi0", "pi05", "pi0_fast")
DEFAULT_PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | None) -> torch.dtype | None:
    """``"float32" | "bfloat16" | "float16"`` → torch dtype; None keeps the model's own."""
    if name is None or name == "auto":
        return None
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)} (or auto)")
    return _DTYPES[name]


@dataclass
class Prefix:
    """An adapter's prepared inputs for one ``(image, question)``: tensors only, no model call yet."""

    inputs: dict[str, Any]
    length: int  #: token ids in the prefix (HF: the whole prompt; PaliGemma: the text part)


def _pad_right(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(ids [R, L], valid [R, L] bool)`` with rows right-padded to the longest."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every continuation needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long, device=device)
        valid[i, : len(r)] = True
    return ids, valid


class MCQAdapter(ABC):
    """A backbone with a language-model head, seen through the calls MCQ scoring needs."""

    family: ClassVar[str] = "?"
    prompt_format: ClassVar[str] = ""

    def __init__(self, module: nn.Module, source: str) -> None:
        self.module = module  #: what :func:`craft_plugin.mcq.teach.teach_mcq` trains
        self.source = source

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @abstractmethod
    def encode(self, image: Any, question: str) -> Prefix:
        """Prepare ``(PIL image, question)``; no forward pass."""

    @abstractmethod
    def choice_ids(self, choice: str) -> list[int]:
        """Token ids of a choice as a continuation of the prompt (at least one)."""

    @abstractmethod
    def full_logits(self, prefix: Prefix, conts: Sequence[Sequence[int]]) -> Tensor:
        """Naive: ``[R, L, V]`` logits predicting each continuation token, whole sequences from scratch."""

    @abstractmethod
    def prefix_forward(self, prefix: Prefix) -> tuple[Tensor, Any]:
        """``(logits [V] predicting the first continuation token, cache state)``: one prefix pass."""

    @abstractmethod
    def continuation_logits(self, prefix: Prefix, state: Any, conts: Sequence[Sequence[int]]) -> Tensor:
        """``[R, L, V]``: entry ``j`` predicts continuation token ``j + 1`` (the last entry is unused).

        Runs only the continuation tokens on top of ``state`` (left untouched for the next call).
        """

    @abstractmethod
    def batch_logits(self, items: Sequence[tuple[Prefix, Sequence[int]]]) -> list[Tensor]:
        """Whole sequences of *different* questions in one forward (used for training).

        ``items`` are ``(prefix, continuation ids)``; returns, per item, ``[len(ids), V]`` logits
        predicting each continuation token (same numbers as :meth:`full_logits`).
        """

    def describe(self) -> dict[str, Any]:
        n = sum(p.numel() for p in self.module.parameters())
        return {"family": self.family, "source": self.source, "parameters": n, "prompt_format": self.prompt_format}


# ------------------------------------------------------------------------------------------
# Hugging Face image-text-to-text models (and SmolVLA's SmolVLM)
# ------------------------------------------------------------------------------------------
def _copy_cache_repeated(cache: Any, repeats: int) -> Any:
    """A cache for ``repeats`` rows on top of ``cache`` (batch 1), which stays untouched.

    A plain ``DynamicCache`` of full-attention layers is rebuilt from broadcast views of the
    prefix keys/values (``update`` concatenates them into fresh tensors); any other cache type is
    deep-copied and repeated.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if type(cache) is DynamicCache and layers and all(type(layer) is DynamicLayer for layer in layers):
        new = DynamicCache()
        for i, layer in enumerate(layers):
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                k, v = layer.keys, layer.values
                new.update(k.expand(repeats, *k.shape[1:]), v.expand(repeats, *v.shape[1:]), i)
        return new
    new = copy.deepcopy(cache)
    if repeats != 1:
        new.batch_repeat_interleave(repeats)
    return new


class HFAdapter(MCQAdapter):
    """An ``AutoModelForImageTextToText`` model with its processor (see the module docstring)."""

    family = "hf"
    prompt_format = (
        "chat template with the image and the question, add_generation_prompt=True "
        "(without a template: '{image_token}{question}\\nAnswer:'); continuation ' {choice}'; causal attention"
    )

    def __init__(self, model: nn.Module, processor: Any, source: str, family: str = "hf") -> None:
        super().__init__(model, source)
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.family = family  # type: ignore[misc]
        if family == "smolvla":
            self.prompt_format = "SmolVLM inside SmolVLA (first num_vlm_layers layers): " + HFAdapter.prompt_format  # type: ignore[misc]
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0

    def prompt(self, question: str) -> str:
        template = getattr(self.processor, "chat_template", None)
        if template:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        image_token = getattr(self.processor, "image_token", None) or ""
        return f"{image_token}{question}\nAnswer:"

    #: Processor outputs that are not model inputs when scoring (PaliGemma's processor returns
    #: ``labels``, which would make the model compute a loss against the prompt's length).
    _NOT_INPUTS = ("labels",)

    def encode(self, image: Any, question: str) -> Prefix:
        enc = self.processor(text=self.prompt(question), images=[image], return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        inputs: dict[str, Any] = {}
        for k, v in enc.items():
            if k in self._NOT_INPUTS:
                continue
            if isinstance(v, Tensor):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(dtype)
            inputs[k] = v
        ids = inputs.get("input_ids")
        if ids is None or ids.shape[0] != 1:
            raise ValueError(f"{self.source}: the processor returned no single-row input_ids for a prompt")
        return Prefix(inputs=inputs, length=int(ids.shape[1]))

    def choice_ids(self, choice: str) -> list[int]:
        ids = list(self.tokenizer(" " + choice, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"choice {choice!r} tokenizes to nothing")
        return ids

    #: Processor outputs that hold one image's patches flattened along dim 0 (Qwen2-VL-style
    #: models), with the key of the per-image grid that says how many: repeated per row by
    #: concatenation, as the processor batches several images.
    _FLAT_PATCHES = {"pixel_values": "image_grid_thw", "pixel_values_videos": "video_grid_thw"}
    #: Per-token type ids a continuation extends: PaliGemma's ``token_type_ids`` (1: the causal
    #: suffix) and the multimodal ``mm_token_type_ids`` of Qwen2-VL-style models (0: text).
    _TOKEN_TYPES = {"token_type_ids": 1, "mm_token_type_ids": 0}

    def _batch(self, prefix: Prefix, rows: int) -> dict[str, Any]:
        if rows == 1:
            return dict(prefix.inputs)
        out: dict[str, Any] = {}
        for k, v in prefix.inputs.items():
            if isinstance(v, Tensor) and k in self._FLAT_PATCHES and self._FLAT_PATCHES[k] in prefix.inputs:
                out[k] = v.repeat(rows, *([1] * (v.dim() - 1)))
                continue
            if isinstance(v, Tensor) and v.dim() > 0:
                if v.shape[0] != 1:
                    raise ValueError(
                        f"{self.source}: processor output {k!r} is not batch-first ({tuple(v.shape)}); "
                        "this model's inputs cannot be repeated per choice (use --batch-size 1)"
                    )
                v = v.expand(rows, *v.shape[1:])
            out[k] = v
        return out

    def _forward(self, **kwargs: Any) -> Any:
        try:
            return self.model(**kwargs)
        except TypeError as err:  # models without logits_to_keep
            if "logits_to_keep" not in str(err):
                raise
            kwargs.pop("logits_to_keep")
            return self.model(**kwargs)

    def full_logits(self, prefix: Prefix, conts: Sequence[Sequence[int]]) -> Tensor:
        ids, valid = _pad_right(conts, self.pad_id, self.device)
        rows, width = ids.shape
        inputs = self._batch(prefix, rows)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], ids], dim=1)
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(rows, prefix.length, dtype=torch.long, device=self.device)
        inputs["attention_mask"] = torch.cat([mask, valid.to(mask.dtype)], dim=1)
        for key, value in self._TOKEN_TYPES.items():  # PaliGemma: the (causal) suffix; Qwen2-VL: text
            if key in inputs:
                tti = inputs[key]
                inputs[key] = torch.cat([tti, torch.full_like(ids, value, dtype=tti.dtype)], dim=1)
        out = self._forward(**inputs, use_cache=False, logits_to_keep=width + 1)
        logits = out.logits
        return logits[:, -(width + 1) : -1]

    def batch_logits(self, items: Sequence[tuple[Prefix, Sequence[int]]]) -> list[Tensor]:
        rows = [prefix.inputs["input_ids"][0].tolist() + list(ids) for prefix, ids in items]
        ids, valid = _pad_right(rows, self.pad_id, self.device)
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": valid.long()}
        for key, fill in self._TOKEN_TYPES.items():  # PaliGemma: prefix 0, continuation and padding 1
            if key in items[0][0].inputs:
                types = [prefix.inputs[key][0].tolist() + [fill] * len(c) for prefix, c in items]
                inputs[key] = _pad_right(types, fill, self.device)[0]
        for key, value in items[0][0].inputs.items():
            if key in inputs or not isinstance(value, Tensor):
                continue
            if key in self._FLAT_PATCHES and self._FLAT_PATCHES[key] in items[0][0].inputs:
                inputs[key] = torch.cat([prefix.inputs[key] for prefix, _ in items], dim=0)
                continue
            parts = [prefix.inputs[key] for prefix, _ in items]
            if any(p.shape != value.shape for p in parts):
                raise ValueError(
                    f"{self.source}: processor output {key!r} differs in shape between questions "
                    f"({sorted({tuple(p.shape) for p in parts})}); train with batch_size=1"
                )
            inputs[key] = torch.cat(parts, dim=0)
        logits = self.model(**inputs, use_cache=False).logits
        return [logits[i, p.length - 1 : p.length - 1 + len(c)] for i, (p, c) in enumerate(items)]

    def prefix_forward(self, prefix: Prefix) -> tuple[Tensor, Any]:
        out = self._forward(**prefix.inputs, use_cache=True, logits_to_keep=1)
        if out.past_key_values is None:
            raise RuntimeError(f"{self.source}: the model returned no KV cache; use --naive")
        return out.logits[0, -1], out.past_key_values

    def continuation_logits(self, prefix: Prefix, state: Any, conts: Sequence[Sequence[int]]) -> Tensor:
        ids, valid = _pad_right(conts, self.pad_id, self.device)
        rows = ids.shape[0]
        cache = _copy_cache_repeated(state, rows)
        mask = prefix.inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(1, prefix.length, dtype=torch.long, device=self.device)
        attention = torch.cat([mask.expand(rows, -1), valid.to(mask.dtype)], dim=1)
        extra: dict[str, Any] = {}
        deltas = getattr(getattr(self.model, "model", None), "rope_deltas", None)
        if isinstance(deltas, Tensor):
            # Qwen2-VL-style multimodal RoPE: text after the prefix sits at its position plus the
            # prefix's rope delta (what generate() passes); the model cannot infer it from a mask
            # that spans the cached prefix too.
            positions = torch.arange(prefix.length, prefix.length + ids.shape[1], device=self.device)
            positions = positions.view(1, 1, -1).expand(3, rows, -1) + deltas.to(self.device).view(1, -1, 1)[:, :1]
            extra["position_ids"] = positions
        out = self.model(input_ids=ids, attention_mask=attention, past_key_values=cache, use_cache=True, **extra)
        return out.logits


# ------------------------------------------------------------------------------------------
# LeRobot pi0 / pi05 / pi0_fast: PaliGemma
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _eager(config: Any) -> Iterator[None]:
    previous = getattr(config, "_attn_implementation", None)
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous


class PaliGemmaAdapter(MCQAdapter):
    """PaliGemma inside a LeRobot pi0 / pi05 / pi0_fast policy (see the module docstring)."""

    family = "pi0_fast"
    prompt_format = (
        "[image tokens, first camera][<bos> {question}\\n] bidirectional prefix (PaliGemma prefix-LM); "
        "continuation '{choice}' causal; PaliGemma lm_head"
    )

    def __init__(self, policy: nn.Module, tokenizer: Any, source: str) -> None:
        core = getattr(policy, "model", None)
        pwe = getattr(core, "paligemma_with_expert", None)
        if pwe is None:
            raise ValueError(f"{source}: not a LeRobot pi0/pi05/pi0_fast policy (no model.paligemma_with_expert)")
        super().__init__(pwe.paligemma, source)
        self.policy = policy
        self.family = policy.config.type  # type: ignore[misc]
        self._core = core
        self._pwe = pwe
        self._lm = pwe.paligemma.model.language_model
        self._lm_head = pwe.paligemma.lm_head
        self._fast = hasattr(core, "embed_prefix_fast")
        self.tokenizer = tokenizer
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise ValueError(f"{source}: the PaliGemma tokenizer has no BOS token")
        self.bos_id = int(bos)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.camera = next(iter(policy.config.image_features), None)
        if self.camera is None:
            raise ValueError(f"{source}: the policy has no image feature to put the MCQ image on")

    @property
    def _dtype(self) -> torch.dtype:
        return self._lm.layers[0].self_attn.q_proj.weight.dtype

    def encode(self, image: Any, question: str) -> Prefix:
        import numpy as np

        arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        images, img_masks = self.policy._preprocess_images({self.camera: arr.to(self.device)})
        text = list(self.tokenizer(question + "\n", add_special_tokens=False)["input_ids"])
        tokens = torch.tensor([[self.bos_id, *text]], dtype=torch.long, device=self.device)
        masks = torch.ones_like(tokens, dtype=torch.bool)
        return Prefix(
            inputs={"images": images, "img_masks": img_masks, "tokens": tokens, "masks": masks},
            length=int(tokens.shape[1]),
        )

    def choice_ids(self, choice: str) -> list[int]:
        ids = list(self.tokenizer(choice, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"choice {choice!r} tokenizes to nothing")
        return ids

    def _embed_prefix(self, prefix: Prefix, rows: int) -> tuple[Tensor, Tensor]:
        x = prefix.inputs
        images = [im.expand(rows, *im.shape[1:]) for im in x["images"]]
        img_masks = [m.expand(rows) for m in x["img_masks"]]
        tokens = x["tokens"].expand(rows, -1)
        masks = x["masks"].expand(rows, -1)
        if self._fast:
            embs, pad, *_ = self._core.embed_prefix_fast(images, img_masks, tokens, masks, None, None)
        else:
            embs, pad, _ = self._core.embed_prefix(images, img_masks, tokens, masks)
        return embs.to(self._dtype), pad.bool()

    def _embed_tokens(self, ids: Tensor) -> Tensor:
        return self._pwe.embed_language_tokens(ids).to(self._dtype)

    def _additive(self, allowed: Tensor) -> Tensor:
        """bool ``[R, Q, K]`` → additive ``[R, 1, Q, K]`` mask in the LM's dtype."""
        neg = torch.finfo(self._dtype).min
        zero = torch.zeros((), dtype=self._dtype, device=allowed.device)
        return torch.where(allowed[:, None], zero, torch.full((), neg, dtype=self._dtype, device=allowed.device))

    def _run(self, embs: Tensor, mask: Tensor, positions: Tensor, cache: Any, use_cache: bool) -> Any:
        with _eager(self._lm.config):
            return self._lm(
                inputs_embeds=embs,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=use_cache,
            )

    def full_logits(self, prefix: Prefix, conts: Sequence[Sequence[int]]) -> Tensor:
        ids, valid = _pad_right(conts, self.pad_id, self.device)
        rows, width = ids.shape
        p_embs, p_valid = self._embed_prefix(prefix, rows)
        P = p_embs.shape[1]
        embs = torch.cat([p_embs, self._embed_tokens(ids)], dim=1)
        allowed_cols = torch.cat([p_valid, valid], dim=1)  # [R, T]
        T = P + width
        q = torch.arange(T, device=self.device)
        structure = (q[None, :] < P) | ((q[:, None] >= P) & (q[None, :] <= q[:, None]))  # [T, T]
        allowed = structure[None] & allowed_cols[:, None, :]
        positions = (torch.cumsum(allowed_cols.long(), dim=1) - 1).clamp(min=0)
        out = self._run(embs, self._additive(allowed), positions, None, False)
        hidden = out.last_hidden_state[:, P - 1 : P + width - 1]
        return self._lm_head(hidden)

    def batch_logits(self, items: Sequence[tuple[Prefix, Sequence[int]]]) -> list[Tensor]:
        seqs, valids, lengths = [], [], []
        for prefix, ids in items:
            p_embs, p_valid = self._embed_prefix(prefix, 1)
            c = torch.as_tensor([list(ids)], dtype=torch.long, device=self.device)
            seqs.append(torch.cat([p_embs, self._embed_tokens(c)], dim=1)[0])
            valids.append(torch.cat([p_valid, torch.ones_like(c, dtype=torch.bool)], dim=1)[0])
            lengths.append(p_embs.shape[1])
        T = max(s.shape[0] for s in seqs)
        embs = torch.stack([torch.nn.functional.pad(s, (0, 0, 0, T - s.shape[0])) for s in seqs])
        valid = torch.stack([torch.nn.functional.pad(v, (0, T - v.shape[0])) for v in valids])
        P = torch.tensor(lengths, device=self.device)[:, None, None]
        q = torch.arange(T, device=self.device)
        qi, ki = q[None, :, None], q[None, None, :]
        structure = ((qi < P) & (ki < P)) | ((qi >= P) & (ki <= qi))
        allowed = structure & valid[:, None, :]
        positions = (torch.cumsum(valid.long(), dim=1) - 1).clamp(min=0)
        hidden = self._run(embs, self._additive(allowed), positions, None, False).last_hidden_state
        return [self._lm_head(hidden[i, n - 1 : n - 1 + len(c)]) for i, (n, (_, c)) in enumerate(zip(lengths, items))]

    def prefix_forward(self, prefix: Prefix) -> tuple[Tensor, Any]:
        embs, valid = self._embed_prefix(prefix, 1)
        allowed = valid[:, None, :].expand(1, embs.shape[1], -1)
        positions = (torch.cumsum(valid.long(), dim=1) - 1).clamp(min=0)
        out = self._run(embs, self._additive(allowed), positions, None, True)
        logits = self._lm_head(out.last_hidden_state[:, -1])[0]
        return logits, (out.past_key_values, valid)

    def continuation_logits(self, prefix: Prefix, state: Any, conts: Sequence[Sequence[int]]) -> Tensor:
        cache, p_valid = state
        ids, valid = _pad_right(conts, self.pad_id, self.device)
        rows, width = ids.shape
        cache = _copy_cache_repeated(cache, rows)
        j = torch.arange(width, device=self.device)
        causal = j[None, :] <= j[:, None]  # [L, L]
        allowed = torch.cat(
            [p_valid[:, None, :].expand(rows, width, -1), causal[None] & valid[:, None, :]], dim=2
        )
        positions = int(p_valid.sum()) + j[None, :].expand(rows, -1)
        out = self._run(self._embed_tokens(ids), self._additive(allowed), positions, cache, True)
        return self._lm_head(out.last_hidden_state)


# ------------------------------------------------------------------------------------------
# Building adapters
# ------------------------------------------------------------------------------------------
def _paligemma_tokenizer(policy: nn.Module, checkpoint: Path | None) -> Any:
    """The PaliGemma text tokenizer the policy's preprocessor uses (pi0 / pi05 keep none themselves)."""

    name = getattr(policy.config, "text_tokenizer_name", None)
    if checkpoint is not None and name is None:
        pre = checkpoint / "policy_preprocessor.json"
        if pre.is_file():
            name = _find_key(json.loads(pre.read_text()), "tokenizer_name")
    name = name or DEFAULT_PALIGEMMA_TOKENIZER
    try:
        return _load_tokenizer(name)
    except Exception as err:
        raise RuntimeError(
            f"cannot load the PaliGemma tokenizer {name!r} ({err}); it must be in the Hugging Face cache "
            "or reachable (it is the one the policy's preprocessor uses)"
        ) from err


@functools.lru_cache(maxsize=4)
def _load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _find_key(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        if key in obj and isinstance(obj[key], str):
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


_NO_LM_HEAD = (
    "{source}: policy type {ptype!r} has no language-model head to score answers with; eval-mcq supports "
    + ", ".join(PI_TYPES)
    + ", smolvla, craft (with one of those as base) and Hugging Face image-text-to-text model folders"
)


def adapter_for_policy(policy: nn.Module, *, source: str = "<policy>", tokenizer: Any = None, checkpoint: Path | None = None) -> MCQAdapter:
    """The MCQ adapter of an in-memory LeRobot policy (``pi0``/``pi05``/``pi0_fast``/``smolvla``/``craft``)."""
    ptype = getattr(getattr(policy, "config", None), "type", None)
    if ptype == "craft":
        return adapter_for_policy(policy.base, source=source, tokenizer=tokenizer)
    if ptype in PI_TYPES:
        # pi0_fast keeps its PaliGemma tokenizer; ids are built with add_special_tokens=False, so its
        # add_bos/add_eos settings do not matter.
        tokenizer = tokenizer or getattr(policy, "_paligemma_tokenizer", None) or _paligemma_tokenizer(policy, checkpoint)
        return PaliGemmaAdapter(policy, tokenizer, source)
    if ptype == "smolvla":
        vwe = policy.model.vlm_with_expert
        return HFAdapter(vwe.vlm, tokenizer or vwe.processor, source, family="smolvla")
    raise ValueError(_NO_LM_HEAD.format(source=source, ptype=ptype))


def _resolve_folder(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file() and (p / "pretrained_model" / "config.json").is_file():
            p = p / "pretrained_model"
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p} has no config.json: pass a LeRobot pretrained_model folder or a HF model folder")
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path))
    except Exception as err:
        raise FileNotFoundError(
            f"{path} is neither a local folder nor a downloadable hub repo ({type(err).__name__}: {err})"
        ) from err


def _load_lerobot(folder: Path, ptype: str) -> nn.Module:
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    if ptype == "craft":
        import craft_plugin.policies  # noqa: F401  (registers the craft type)
    cfg = PreTrainedConfig.from_pretrained(str(folder))
    cfg.pretrained_path = folder
    cfg.device = "cpu"
    policy = get_policy_class(ptype).from_pretrained(str(folder), config=cfg)
    policy.eval()
    return policy


def load_adapter(path: str, *, device: str = "cpu", dtype: str | None = None) -> MCQAdapter:
    """Load a checkpoint (LeRobot policy folder, craft checkpoint or HF model folder) as an MCQ adapter.

    The family is read from ``config.json``: a LeRobot ``"type"`` or a Hugging Face ``"model_type"``.
    """
    folder = _resolve_folder(path)
    config = json.loads((folder / "config.json").read_text())
    torch_dtype = resolve_dtype(dtype)
    if "type" in config and "model_type" not in config:
        ptype = config["type"]
        if ptype == "craft":
            base = folder / "base" / "config.json"
            if not base.is_file():
                raise ValueError(f"{folder} is a craft checkpoint without base/config.json (saved by an older craft-plugin)")
            base_type = json.loads(base.read_text()).get("type")
            if base_type not in (*PI_TYPES, "smolvla"):
                raise ValueError(f"{folder}: the craft checkpoint's base is {base_type!r}, which has no language-model head")
        elif ptype not in (*PI_TYPES, "smolvla"):
            raise ValueError(_NO_LM_HEAD.format(source=folder, ptype=ptype))
        policy = _load_lerobot(folder, ptype)
        policy.to(device=device)
        if torch_dtype is not None:
            policy.to(dtype=torch_dtype)
        return adapter_for_policy(policy, source=str(folder), checkpoint=folder)
    if "model_type" in config:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch_dtype or "auto")
        model.to(device).eval()
        processor = AutoProcessor.from_pretrained(str(folder))
        return HFAdapter(model, processor, str(folder))
    raise ValueError(
        f"{folder / 'config.json'} has neither a LeRobot 'type' nor a Hugging Face 'model_type'; "
        "pass a LeRobot pretrained_model folder, a craft checkpoint or a HF image-text-to-text model folder"
    )


def log_softmax_gather(logits: Tensor, ids: Tensor) -> Tensor:
    """``log p(ids)`` from ``logits [R, L, V]`` and ``ids [R, L]`` (float32)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[..., None])[..., 0]

