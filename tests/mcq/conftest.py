"""Shared fixtures: a generated MCQ set and tiny checkpoints (random weights, local files only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from craft_plugin.mcq.scenes import make_scene_mcq


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: per-op overhead dominates, and on a busy 2-core machine two threads make
    training ~6x slower (measured); run each test single-threaded, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def scene_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 questions (4 of each kind), seed 0: the JSONL path."""
    return make_scene_mcq(tmp_path_factory.mktemp("scenes"), 12, seed=0)


@pytest.fixture(scope="session")
def vlm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.tiny_smolvla import build_tiny_vlm_folder

    return build_tiny_vlm_folder(tmp_path_factory.mktemp("tiny-smolvlm"))


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory: pytest.TempPathFactory, vlm_folder: Path) -> Path:
    """A tiny SmolVLM saved as a Hugging Face image-text-to-text folder (weights + processor)."""
    import shutil

    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    out = tmp_path_factory.mktemp("hf-model")
    shutil.copytree(vlm_folder, out, dirs_exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = SmolVLMForConditionalGeneration(SmolVLMConfig.from_pretrained(vlm_folder))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def paligemma_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ``PaliGemmaForConditionalGeneration`` folder (the pi0 family's backbone, as a plain
    Hugging Face model): the tests' word-level PaliGemma tokenizer plus ``<image>``, a SigLIP
    image processor at 32x32 (16 image tokens), random weights."""
    from transformers import (
        AutoTokenizer,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    from support.tiny_vla import _write_paligemma_tokenizer

    out = tmp_path_factory.mktemp("hf-paligemma")
    _write_paligemma_tokenizer(out / "tokenizer")
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    if "<image>" not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token = tok.convert_tokens_to_ids("<image>")
    config = PaliGemmaConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8, "projection_dim": 64},
        text_config={"model_type": "gemma", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": len(tok)},
        projection_dim=64, image_token_index=image_token,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        PaliGemmaForConditionalGeneration(config).save_pretrained(out)
    processor = PaliGemmaProcessor(
        image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}, image_seq_length=16), tokenizer=tok
    )
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smolvla_ckpt(tmp_path_factory: pytest.TempPathFactory, vlm_folder: Path) -> Path:
    """A saved tiny smolvla ``pretrained_model`` folder (its VLM folder lives for the session)."""
    from support.tiny_smolvla import make_tiny_smolvla

    policy, _, _ = make_tiny_smolvla(seed=0, vlm_folder=vlm_folder)
    out = tmp_path_factory.mktemp("smolvla") / "pretrained_model"
    policy.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def pi0_fast_policy():
    """One tiny pi0_fast for the session (building one takes seconds: a 257152-word embedding).

    Tests must not modify it.
    """
    from support.tiny_vla import make_tiny_vla

    policy, _, _ = make_tiny_vla("pi0_fast", seed=0)
    return policy
