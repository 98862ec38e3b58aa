"""A tiny SmolVLM built from a config, for demos, benchmarks and trying ``craft eval-mcq`` offline.

:func:`build_tiny_smolvlm` writes a Hugging Face image-text-to-text folder (``config.json``,
random weights, tokenizer, processor) that ``AutoModelForImageTextToText`` /
``AutoProcessor`` load — and so ``craft eval-mcq --policy.path=<folder>``. The tokenizer is a
byte-level BPE whose merges are learnt on the generated scene set's words (so a choice is one
or two tokens, as with a real tokenizer); images are ``image_size`` pixels, cut into 8-pixel
patches and pixel-shuffled by 2 (``(image_size / 16)**2`` image tokens). Nothing is downloaded.

``python -m craft_plugin.mcq.tiny OUT`` writes a ready-made A/B example into ``OUT``:
``train/`` and ``test/`` scene sets (colour questions; different seeds), ``vlm-random/`` (random
weights) and ``vlm-taught/`` (the same weights after :func:`craft_plugin.mcq.teach.teach_mcq`
on ``train/``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

import torch

from craft_plugin.mcq.smolvlm_folder import SPECIAL_TOKENS, VLMSizes, build_vlm_folder

__all__ = ["build_tiny_smolvlm", "make_example"]

logger = logging.getLogger(__name__)

_WORDS = [
    "What color is the square?", "What color is the circle?", "How many squares are there?",
    "Where is the square?", "Where is the circle?", "Answer:", " red", " green", " blue", " yellow",
    " one", " two", " three", " four", " top left", " top right", " bottom left", " bottom right",
]


def _tokenizer() -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        _WORDS * 50,
        trainers.BpeTrainer(vocab_size=420, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token=SPECIAL_TOKENS["end_of_utterance_token"],
        extra_special_tokens=dict(SPECIAL_TOKENS),
        model_max_length=4096,
    )


def build_tiny_smolvlm(
    folder: str | os.PathLike[str],
    *,
    image_size: int = 32,
    width: int = 64,
    layers: int = 4,
    vision_layers: int = 1,
    seed: int = 0,
) -> Path:
    """Write a random-weight SmolVLM (text width ``width``, ``layers`` decoder layers) into ``folder``."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    if image_size % 16:
        raise ValueError(f"image_size must be a multiple of 16 (8-pixel patches, pixel shuffle 2), got {image_size}")
    if width % 8:
        raise ValueError(f"width must be a multiple of 8 (8 attention heads), got {width}")
    sizes = VLMSizes(
        text_hidden=width, text_layers=layers, text_intermediate=4 * width, max_positions=1024, rms_norm_eps=1e-6,
        vision_hidden=max(width // 2, 32), vision_intermediate=2 * width, vision_layers=vision_layers,
        image_size=image_size, patch_size=8, scale_factor=2,
    )  # fmt: skip
    folder = build_vlm_folder(folder, sizes, tokenizer=_tokenizer())
    config = SmolVLMConfig.from_pretrained(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmolVLMForConditionalGeneration(config)
    model.save_pretrained(folder)
    return folder


def make_example(out: str | os.PathLike[str], *, steps: int = 300, seed: int = 0) -> dict[str, Path]:
    """Write the A/B example of the module docstring into ``out``; return its paths."""
    from craft_plugin.mcq.data import load_mcq
    from craft_plugin.mcq.models import load_adapter
    from craft_plugin.mcq.scenes import make_scene_mcq
    from craft_plugin.mcq.teach import teach_mcq

    out = Path(out)
    paths = {
        "train": make_scene_mcq(out / "train", 96, seed=seed + 1, kinds=("color",)),
        "test": make_scene_mcq(out / "test", 48, seed=seed + 2, kinds=("color",)),
        "random": build_tiny_smolvlm(out / "vlm-random", seed=seed),
    }
    taught = out / "vlm-taught"
    shutil.rmtree(taught, ignore_errors=True)
    shutil.copytree(paths["random"], taught)
    adapter = load_adapter(str(taught))
    result = teach_mcq(adapter, load_mcq(paths["train"]).questions, steps=steps, batch_size=8, lr=3e-3, seed=seed)
    logger.info("taught %d steps in %.1f s, loss %.3f -> %.3f", steps, result.seconds, result.losses[0], result.final_loss)
    adapter.module.save_pretrained(taught)
    paths["taught"] = taught
    return paths


def main() -> None:  # pragma: no cover - exercised through the README
    ap = argparse.ArgumentParser(description="Write a tiny SmolVLM, untaught and taught, and scene MCQ sets.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = make_example(args.out, steps=args.steps, seed=args.seed)
    for name, path in paths.items():
        print(f"{name:7s} {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
