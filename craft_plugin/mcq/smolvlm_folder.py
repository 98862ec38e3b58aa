"""A stand-in SmolVLM folder, built offline (config, tokenizer, processors; no weights).

SmolVLM and SmolVLA read their VLM (``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``) from the
Hub: the config, the processor (for the image token ids) and the tokenizer. The Hub is out of
reach here, so :func:`build_vlm_folder` writes a folder that stands in for that repo:

* ``config.json``: a ``SmolVLMConfig`` with a Llama text model and a SigLIP-style vision tower,
  both sized by :class:`VLMSizes`;
* a byte-level BPE tokenizer without merges (every UTF-8 string tokenizes, one token per
  byte, so no two instructions collapse onto the same ids) plus SmolVLM's special tokens;
* SmolVLM's image and video processors and its processor config.

Used by the MCQ tools' tiny model (:mod:`craft_plugin.mcq.tiny`), the demo's small SmolVLA
(:mod:`craft_plugin.demo.small_smolvla`) and the tests. It lives in ``mcq``, the lowest room
that needs it, so imports keep running one way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SPECIAL_TOKENS", "VLMSizes", "build_tokenizer", "build_vlm_folder"]

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}


@dataclass(frozen=True)
class VLMSizes:
    """Sizes of the stand-in SmolVLM. ``image_size`` is the vision tower's own input size;
    tokens per image = ``(image_size // patch_size) ** 2 // scale_factor ** 2``."""

    text_hidden: int = 64
    text_layers: int = 6
    text_heads: int = 8
    text_kv_heads: int = 4
    vision_hidden: int = 32
    vision_layers: int = 1
    vision_heads: int = 4
    image_size: int = 32
    patch_size: int = 8
    scale_factor: int = 2
    text_intermediate: int | None = None  #: default 2 x text_hidden
    vision_intermediate: int | None = None  #: default 2 x vision_hidden
    max_positions: int = 512
    rms_norm_eps: float = 1e-5
    vocab_size: int | None = None  #: default: the tokenizer's size (a larger one pads the embedding)

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2


def build_tokenizer() -> Any:
    """A byte-level BPE tokenizer with no merges (256 byte tokens) and SmolVLM's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token=SPECIAL_TOKENS["end_of_utterance_token"],
        unk_token=None,
        extra_special_tokens=dict(SPECIAL_TOKENS),
        model_max_length=4096,
    )
    for name in ("fake_image_token_id", "global_image_token_id", "image_token_id"):
        if not isinstance(getattr(tokenizer, name, None), int):
            raise RuntimeError(f"the byte-level tokenizer lacks {name}; transformers' extra_special_tokens API changed")
    return tokenizer


def build_vlm_folder(folder: str | os.PathLike[str], sizes: VLMSizes = VLMSizes(), tokenizer: Any = None) -> Path:
    """Write the stand-in SmolVLM (config, tokenizer, processors; no weights) into ``folder``.

    ``tokenizer``: any tokenizer with SmolVLM's special tokens (default: :func:`build_tokenizer`).
    """
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    text_config = {
        "model_type": "llama",
        "vocab_size": max(len(tokenizer), sizes.vocab_size or 0),
        "hidden_size": sizes.text_hidden,
        "intermediate_size": sizes.text_intermediate or 2 * sizes.text_hidden,
        "num_hidden_layers": sizes.text_layers,
        "num_attention_heads": sizes.text_heads,
        "num_key_value_heads": sizes.text_kv_heads,
        "head_dim": sizes.text_hidden // sizes.text_heads,
        "max_position_embeddings": sizes.max_positions,
        "rms_norm_eps": sizes.rms_norm_eps,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    vision_config = {
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": sizes.vision_intermediate or 2 * sizes.vision_hidden,
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "image_size": sizes.image_size,
        "patch_size": sizes.patch_size,
    }
    config = SmolVLMConfig(
        text_config=text_config,
        vision_config=vision_config,
        scale_factor=sizes.scale_factor,
        image_token_id=tokenizer.image_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config.save_pretrained(folder)
    image_processor = SmolVLMImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": sizes.image_size},
        max_image_size={"longest_edge": sizes.image_size},
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=sizes.image_tokens,
    )
    processor.save_pretrained(folder)
    logger.debug("stand-in SmolVLM written to %s (vocab %d)", folder, len(tokenizer))
    return folder
