"""A tiny, real LeRobot ``smolvla`` policy with random weights, built entirely offline.

SmolVLA normally reads its VLM (``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``) from the Hub:
the VLM config (``AutoConfig``), the processor (``AutoProcessor``, of which it uses the
tokenizer's ``fake_image_token_id`` / ``global_image_token_id``) and, in the preprocessor's
``TokenizerProcessorStep``, the tokenizer (``AutoTokenizer``) — all from
``config.vlm_model_name``. Everything here is built locally instead and saved to one folder
that ``vlm_model_name`` points at:

* ``config.json`` — a ``SmolVLMConfig`` with a Llama text model (width 64, 8 heads, 4 KV heads,
  6 layers of which SmolVLA keeps the first :data:`NUM_VLM_LAYERS`) and a 1-layer SigLIP-style
  vision tower (32x32 images, patch 8, pixel shuffle 2 → :data:`IMAGE_TOKENS` tokens per image);
* a byte-level BPE tokenizer without merges (every UTF-8 string tokenizes, one token per byte,
  so different task strings never collapse onto the same ids) plus SmolVLM's special tokens
  (``<fake_token_around_image>``, ``<image>``, ``<global-img>``, ``<end_of_utterance>``, ``<pad>``);
* SmolVLM's image and video processors and its processor config.

``load_vlm_weights=False`` makes SmolVLA instantiate the VLM from that config with random
weights; nothing touches the network. Pre/post processors come from LeRobot's own factory
(:func:`lerobot.policies.factory.make_pre_post_processors`) with made-up dataset statistics.

Usage::

    policy, pre, post = make_tiny_smolvla(seed=0)
    batch = pre(make_smolvla_batch(batch_size=2, seed=0))
    loss, _ = policy.forward(batch)
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ACTION_DIM",
    "CHUNK_SIZE",
    "IMAGE_KEY",
    "IMAGE_SIZE",
    "IMAGE_TOKENS",
    "NUM_VLM_LAYERS",
    "STATE_DIM",
    "TASKS",
    "TEXT_HIDDEN",
    "build_tiny_vlm_folder",
    "make_smolvla_batch",
    "make_tiny_smolvla",
    "tiny_smolvla_config",
]

logger = logging.getLogger(__name__)

IMAGE_KEY = "observation.images.cam"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_SIZE = 32  #: camera images are 3 x IMAGE_SIZE x IMAGE_SIZE, the vision tower's own size
PATCH_SIZE = 8
SCALE_FACTOR = 2  #: SmolVLM's pixel-shuffle factor
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  #: tokens per image in the prefix
STATE_DIM = 6
ACTION_DIM = 4
CHUNK_SIZE = 4
TEXT_HIDDEN = 64
TEXT_LAYERS = 6  #: layers in the VLM's text model config ...
NUM_VLM_LAYERS = 4  #: ... of which SmolVLA runs the first NUM_VLM_LAYERS
TOKENIZER_MAX_LENGTH = 32

#: Default task strings, of different lengths so that a batch's language tokens are padded.
TASKS: tuple[str, ...] = (
    "pick up the red cube",
    "push",
    "open the top drawer slowly",
    "reach the goal",
)


_FOLDER_LOCK = threading.Lock()
_DEFAULT_FOLDER: Path | None = None


def _ensure_offline() -> None:
    """Never reach the Hub; keep any cache writes in a private temporary HF_HOME."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "HF_HOME" not in os.environ:
        os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="craft-hf-home-")


def build_tiny_vlm_folder(folder: str | os.PathLike[str]) -> Path:
    """Write a tiny SmolVLM (config + tokenizer + processors) into ``folder``; return its path.

    The folder can be given to ``SmolVLAConfig.vlm_model_name`` with ``load_vlm_weights=False``.
    No weights are written: SmolVLA instantiates the VLM from the config. (The builder is the
    package's own, :func:`craft_plugin.demo.small_smolvla.build_vlm_folder`, at the sizes above.)
    """
    _ensure_offline()
    from craft_plugin.demo.small_smolvla import VLMSizes, build_vlm_folder

    sizes = VLMSizes(
        text_hidden=TEXT_HIDDEN, text_layers=TEXT_LAYERS, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
        scale_factor=SCALE_FACTOR,
    )  # fmt: skip
    return build_vlm_folder(folder, sizes)


def _default_folder() -> Path:
    """One tiny VLM folder per process, built on first use, removed when the process exits.

    A policy (or a checkpoint saved from it) names this folder in ``vlm_model_name``: pass your
    own ``vlm_folder`` if a checkpoint must be loadable after this process ends.
    """
    global _DEFAULT_FOLDER
    with _FOLDER_LOCK:
        if _DEFAULT_FOLDER is None or not (_DEFAULT_FOLDER / "config.json").is_file():
            folder = Path(tempfile.mkdtemp(prefix="tiny-smolvlm-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            _DEFAULT_FOLDER = build_tiny_vlm_folder(folder)
        return _DEFAULT_FOLDER


def tiny_smolvla_config(vlm_folder: str | os.PathLike[str] | None = None, **overrides: Any) -> Any:
    """A ``SmolVLAConfig`` for the tiny VLM, on CPU; ``overrides`` replace any field.

    Differences from SmolVLA's defaults, besides the sizes: ``train_expert_only=False`` (the VLM
    — what CRaFT's retention anchors — is trainable; LeRobot's default freezes it) and
    ``num_steps=3`` denoising steps.
    """
    _ensure_offline()
    from lerobot.configs import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    folder = Path(vlm_folder) if vlm_folder is not None else _default_folder()
    kwargs: dict[str, Any] = {
        "vlm_model_name": str(folder),
        "load_vlm_weights": False,
        "num_vlm_layers": NUM_VLM_LAYERS,
        "chunk_size": CHUNK_SIZE,
        "n_action_steps": CHUNK_SIZE,
        "max_state_dim": 8,
        "max_action_dim": 8,
        "resize_imgs_with_padding": (IMAGE_SIZE, IMAGE_SIZE),
        "tokenizer_max_length": TOKENIZER_MAX_LENGTH,
        "num_steps": 3,
        "train_expert_only": False,
        "device": "cpu",
        "input_features": {
            IMAGE_KEY: PolicyFeature(type=FeatureType.VISUAL, shape=(3, IMAGE_SIZE, IMAGE_SIZE)),
            STATE_KEY: PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
        },
        "output_features": {ACTION_KEY: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))},
    }
    kwargs.update(overrides)
    return SmolVLAConfig(**kwargs)


def tiny_dataset_stats() -> dict[str, dict[str, torch.Tensor]]:
    """Made-up normalization statistics for the tiny policy's features."""

    def stats(dim: int, scale: float) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.linspace(-0.1, 0.1, dim),
            "std": torch.full((dim,), scale),
            "min": torch.full((dim,), -2.0 * scale),
            "max": torch.full((dim,), 2.0 * scale),
        }

    return {
        STATE_KEY: stats(STATE_DIM, 0.5),
        ACTION_KEY: stats(ACTION_DIM, 0.25),
        IMAGE_KEY: {
            "mean": torch.full((3, 1, 1), 0.5),
            "std": torch.full((3, 1, 1), 0.25),
            "min": torch.zeros(3, 1, 1),
            "max": torch.ones(3, 1, 1),
        },
    }


def make_tiny_smolvla(
    seed: int = 0, vlm_folder: str | os.PathLike[str] | None = None, **config_overrides: Any
) -> tuple[Any, Any, Any]:
    """``(policy, preprocessor, postprocessor)``: a tiny real ``SmolVLAPolicy`` with random weights.

    Weights depend only on ``seed``; the global torch RNG is left as it was. The policy is in
    ``train()`` mode as LeRobot leaves it after construction (SmolVLA itself keeps the frozen
    parts of the VLM in eval). ``config_overrides`` go to :func:`tiny_smolvla_config`.
    """
    _ensure_offline()
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    config = tiny_smolvla_config(vlm_folder, **config_overrides)
    policy_cls = get_policy_class("smolvla")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = policy_cls(config)
    policy.to(config.device)
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=tiny_dataset_stats())
    return policy, preprocessor, postprocessor


def make_smolvla_batch(
    batch_size: int = 2,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    with_action: bool = True,
) -> dict[str, Any]:
    """A raw (not yet preprocessed) batch for the tiny policy; feed it to the preprocessor.

    Keys: ``observation.images.cam`` ``[B, 3, 32, 32]`` in [0, 1], ``observation.state``
    ``[B, STATE_DIM]``, ``task`` (list of ``B`` strings; default: :data:`TASKS` cycled, so rows
    have different lengths) and, if ``with_action``, ``action`` ``[B, CHUNK_SIZE, ACTION_DIM]``
    with ``action_is_pad`` (all False). Values depend only on ``seed``.
    """
    if tasks is None:
        tasks = [TASKS[i % len(TASKS)] for i in range(batch_size)]
    if len(tasks) != batch_size:
        raise ValueError(f"{len(tasks)} tasks given for a batch of {batch_size}")
    g = torch.Generator().manual_seed(seed)
    batch: dict[str, Any] = {
        IMAGE_KEY: torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
        STATE_KEY: torch.randn(batch_size, STATE_DIM, generator=g) * 0.5,
        "task": list(tasks),
    }
    if with_action:
        batch[ACTION_KEY] = torch.randn(batch_size, CHUNK_SIZE, ACTION_DIM, generator=g) * 0.25
        batch["action_is_pad"] = torch.zeros(batch_size, CHUNK_SIZE, dtype=torch.bool)
    return batch
