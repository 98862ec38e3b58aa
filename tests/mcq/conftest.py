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


@pytest.fixture(scope="session")
def qwen2vl_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ``Qwen2VLForConditionalGeneration`` folder (a Qwen2-VL-style chat model: patches
    flattened along dim 0 with ``image_grid_thw``, multimodal RoPE, ``mm_token_type_ids``): a
    byte-level tokenizer with Qwen's special tokens and a ChatML template, 32x32 images (4 image
    tokens after the 2x2 merge), random weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out = tmp_path_factory.mktemp("hf-qwen2vl")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=specials, model_max_length=4096,
    )  # fmt: skip
    template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
        "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    config = Qwen2VLConfig(
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": len(tok), "max_position_embeddings": 4096,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "patch_size": 8,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        Qwen2VLForConditionalGeneration(config).save_pretrained(out)
    sizes = {"min_pixels": 32 * 32, "max_pixels": 32 * 32, "patch_size": 8, "merge_size": 2, "temporal_patch_size": 2}
    Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**sizes), video_processor=Qwen2VLVideoProcessor(**sizes),
        tokenizer=tok, chat_template=template,
    ).save_pretrained(out)
    return out

