"""Tiny, real LeRobot ``pi0`` / ``pi05`` / ``pi0_fast`` policies built offline with random weights.

Everything LeRobot would normally download is made here, on disk, from nothing:

* **the PaliGemma text tokenizer** (``google/paligemma-3b-pt-224``): a ``tokenizers`` WordLevel
  tokenizer with PaliGemma's layout — ``<pad>``=0, ``<eos>``=1, ``<bos>``=2, ``<unk>``=3, a BOS
  prepended by default, and exactly 257152 ids (the width of LeRobot's hard-coded PaliGemma
  embedding), so any id the random model emits decodes. It is written into the Hugging Face hub
  cache under that id (pi0 / pi05 processors load it by name) and used as a local folder by
  pi0_fast (``text_tokenizer_name``).
* **the FAST action tokenizer** (``lerobot/fast-action-tokenizer``, remote code): a local folder
  holding a small DCT + byte-level-BPE ``UniversalActionProcessor`` (same algorithm as
  physical-intelligence/fast), fitted here on random smooth action chunks.
* **the model sizes**: LeRobot 0.6.1 builds PaliGemma / the action expert from two fixed variants
  (``gemma_2b``, ``gemma_300m``) and a SigLIP-So400m vision tower. :func:`tiny_paligemma_architecture`
  temporarily swaps in a tiny Gemma (8 heads are kept: LeRobot's joint attention hard-codes
  ``8 * head_dim``) and a tiny SigLIP, and sets the projector width to the LM width (this also
  sidesteps the 0.6.1 bug where the projector is hard-coded 2048 wide). Anything that *re-builds*
  such a policy (``from_pretrained`` on a saved tiny checkpoint) must run inside the same context.

Hugging Face state: importing this module points ``HF_HOME`` at a private scratch folder
(``$CRAFT_TINY_HF_HOME`` if set, else a new temporary folder) and sets ``HF_HUB_OFFLINE=1``, also
in ``huggingface_hub``'s already-imported constants. The fake PaliGemma tokenizer is never written
over a real download (a marker file tells ours apart). A subprocess (e.g. ``lerobot-train``) that
must see it needs ``HF_HOME=`` :func:`hf_home` and ``HF_HUB_OFFLINE=1``.

Typical use::

    policy, pre, post = make_tiny_vla("pi05", seed=0)
    batch = pre(make_vla_batch("pi05", batch_size=2, seed=0))
    action = policy.select_action(batch)
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "ACTION_DIM",
    "CAMERA_KEY",
    "IMAGE_SIZE",
    "PALIGEMMA_TOKENIZER_ID",
    "PI_TYPES",
    "STATE_DIM",
    "TASKS",
    "TinySizes",
    "fast_tokenizer_dir",
    "hf_home",
    "make_tiny_vla",
    "make_tiny_vla_config",
    "make_vla_batch",
    "make_vla_stats",
    "paligemma_tokenizer_dir",
    "tiny_paligemma_architecture",
]

PI_TYPES: tuple[str, ...] = ("pi0", "pi05", "pi0_fast")
PALIGEMMA_TOKENIZER_ID = "google/paligemma-3b-pt-224"
PALIGEMMA_VOCAB_SIZE = 257152  # LeRobot 0.6.1 hard-codes this embedding width
CAMERA_KEY = "observation.images.cam"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_SIZE = 32
STATE_DIM = 6
ACTION_DIM = 4
CHUNK_SIZE = 4
TOKENIZER_MAX_LENGTH = 48
TASKS: tuple[str, ...] = (
    "pick the red cube",
    "push the blue block to the green drawer",
    "open the drawer",
    "press the button and put the cube on the block",
)

_MARKER = "craft_tiny_tokenizer.json"
_SNAPSHOT = "0" * 40
_LOCK = threading.Lock()
_DIRS: dict[str, Path] = {}


# ---------------------------------------------------------------------------------------------
# Hugging Face home
# ---------------------------------------------------------------------------------------------
def _init_hf_env() -> Path:
    """Point this process's Hugging Face home at a private scratch folder, offline.

    ``CRAFT_TINY_HF_HOME`` (if set) names the folder, so that several processes can share one;
    otherwise a fresh temporary folder is used. Whatever ``HF_HOME`` said before is overridden in
    this process: tests must never read or write a real cache. If ``huggingface_hub`` was imported
    earlier (its constants are read at import), its constants are updated too.
    """
    home = os.environ.get("CRAFT_TINY_HF_HOME")
    if not home:
        home = tempfile.mkdtemp(prefix="craft-tiny-hf-")
        atexit.register(shutil.rmtree, home, ignore_errors=True)
    Path(home).mkdir(parents=True, exist_ok=True)
    os.environ["CRAFT_TINY_HF_HOME"] = home
    os.environ["HF_HOME"] = home
    os.environ.pop("HF_HUB_CACHE", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HOME = home
        constants.HF_HUB_CACHE = os.path.join(home, "hub")
        constants.HF_HUB_OFFLINE = True
    return Path(home)


_HF_HOME = _init_hf_env()


def hf_home() -> Path:
    """The private ``HF_HOME`` of this process (pass it, with ``HF_HUB_OFFLINE=1``, to subprocesses)."""
    return _HF_HOME


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _work_dir() -> Path:
    """A private folder (inside ``HF_HOME``) for the local tokenizer folders."""
    d = hf_home() / "craft-tiny-vla"
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------------------------------------
# PaliGemma text tokenizer
# ---------------------------------------------------------------------------------------------
def _words() -> list[str]:
    special = ["<pad>", "<eos>", "<bos>", "<unk>"]
    punct = ["Task", "State", "Action", ":", ",", ";", "|", ".", "!", "?", "-"]
    numbers = [str(i) for i in range(256)]
    words: list[str] = []
    for task in TASKS:
        words += [w for w in task.split() if w not in words]
    extra = "place reach close the a an to of and on in with left right top bottom".split()
    words += [w for w in extra if w not in words]
    return special + punct + numbers + words


def _write_paligemma_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, __version__ as tf_version

    words = _words()
    vocab = {w: i for i, w in enumerate(words)}
    for i in range(len(words), PALIGEMMA_VOCAB_SIZE):
        vocab[f"<unused{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    # A config.json lets AutoTokenizer resolve the repo; a recent transformers_version keeps
    # transformers 5 from probing it as a Mistral tokenizer.
    config = {"model_type": "paligemma", "transformers_version": tf_version}
    (folder / "config.json").write_text(json.dumps(config))
    marker = {"what": "craft-plugin tiny test tokenizer", "vocab": PALIGEMMA_VOCAB_SIZE}
    (folder / _MARKER).write_text(json.dumps(marker))


def paligemma_tokenizer_dir() -> Path:
    """Snapshot folder of the tiny ``google/paligemma-3b-pt-224`` tokenizer in the hub cache.

    Built on first use. Refuses to touch a hub cache that already holds a real PaliGemma repo.
    """
    with _LOCK:
        repo = _hub_cache() / ("models--" + PALIGEMMA_TOKENIZER_ID.replace("/", "--"))
        snap = repo / "snapshots" / _SNAPSHOT
        if (snap / _MARKER).exists():
            return snap
        snapshots = repo / "snapshots"
        foreign = (repo / "blobs").exists() or (
            snapshots.exists()
            and any(p.name != _SNAPSHOT and not p.name.startswith(".tmp-") for p in snapshots.iterdir())
        )
        if foreign:
            raise RuntimeError(
                f"{repo} holds a real download, not craft-plugin's tiny tokenizer; point HF_HOME at a "
                "scratch folder before building tiny VLAs (the real one must not be shadowed)"
            )
        tmp = snapshots / f".tmp-{os.getpid()}-{threading.get_ident()}"
        _write_paligemma_tokenizer(tmp)  # writes the marker last
        if snap.exists():  # a half-written snapshot of ours, without its marker
            shutil.rmtree(snap)
        tmp.replace(snap)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(_SNAPSHOT)
        logger.info("wrote tiny PaliGemma tokenizer to %s", snap)
        return snap


# ---------------------------------------------------------------------------------------------
# FAST action tokenizer (remote code, local folder)
# ---------------------------------------------------------------------------------------------
_FAST_SOURCE = '''"""FAST action tokenizer (DCT + byte-level BPE), after physical-intelligence/fast."""
from typing import ClassVar

import numpy as np
from transformers.processing_utils import ProcessorMixin


class UniversalActionProcessor(ProcessorMixin):
    attributes: ClassVar[list[str]] = ["tokenizer"]
    tokenizer_class: str = "AutoTokenizer"

    def __init__(self, tokenizer, scale=10, vocab_size=1024, min_token=0, action_dim=None, time_horizon=None):
        self.scale = scale
        self.vocab_size = vocab_size
        self.min_token = min_token
        self.time_horizon = time_horizon
        self.action_dim = action_dim
        self.called_time_horizon = time_horizon
        self.called_action_dim = action_dim
        super().__init__(tokenizer)
        self.bpe_tokenizer = self.tokenizer

    def __call__(self, action_chunk):
        from scipy.fft import dct

        action_chunk = np.asarray(action_chunk)
        if action_chunk.ndim == 2:
            action_chunk = action_chunk[None, ...]
        self.called_time_horizon = action_chunk.shape[-2]
        self.called_action_dim = action_chunk.shape[-1]
        dct_coeff = np.around(dct(action_chunk, axis=1, norm="ortho") * self.scale)
        tokens = []
        for elem in dct_coeff:
            token_str = "".join(map(chr, np.maximum(elem.flatten() - self.min_token, 0).astype(int)))
            tokens.append(self.bpe_tokenizer(token_str)["input_ids"])
        return tokens

    def decode(self, tokens, *, time_horizon=None, action_dim=None):
        from scipy.fft import idct

        self.time_horizon = time_horizon or self.time_horizon or self.called_time_horizon
        self.action_dim = action_dim or self.action_dim or self.called_action_dim
        out = []
        for token in tokens:
            try:
                coeff = np.array(list(map(ord, self.bpe_tokenizer.decode(token)))) + self.min_token
                coeff = coeff.reshape(self.time_horizon, self.action_dim)
            except Exception:
                coeff = np.zeros((self.time_horizon, self.action_dim))
            out.append(idct(coeff / self.scale, axis=0, norm="ortho"))
        return np.stack(out)
'''


def _write_fast_tokenizer(folder: Path, horizon: int, action_dim: int, scale: float = 10.0) -> None:
    from scipy.fft import dct
    from tokenizers import ByteLevelBPETokenizer, trainers
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(0)
    chunks = [np.cumsum(rng.normal(0.0, 0.3, (horizon, action_dim)), axis=0) for _ in range(64)]
    coeffs = [np.around(dct(c, axis=0, norm="ortho").flatten() * scale).astype(int) for c in chunks]
    # Alphabet wider than what the fit saw, so unseen (normalized) actions still tokenize.
    min_token, max_token = -128, 127
    bpe = ByteLevelBPETokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=[chr(i) for i in range(max_token - min_token + 1)],
        max_token_length=10000,
    )
    bpe._tokenizer.train_from_iterator(("".join(map(chr, c - min_token)) for c in coeffs), trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False).save_pretrained(str(folder))
    (folder / "processing_action_tokenizer.py").write_text(_FAST_SOURCE)
    (folder / "processor_config.json").write_text(
        json.dumps(
            {
                "processor_class": "UniversalActionProcessor",
                "auto_map": {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"},
                "scale": scale,
                "vocab_size": 512,
                "min_token": min_token,
                "time_horizon": horizon,
                "action_dim": action_dim,
            }
        )
    )


def fast_tokenizer_dir(horizon: int = CHUNK_SIZE, action_dim: int = ACTION_DIM) -> Path:
    """Local folder of a tiny FAST action tokenizer (loadable with ``AutoProcessor``, remote code)."""
    with _LOCK:
        folder = _work_dir() / f"fast-action-tokenizer-h{horizon}-a{action_dim}"
        if not (folder / "processor_config.json").exists():
            tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
            _write_fast_tokenizer(tmp, horizon, action_dim)
            if not folder.exists():
                tmp.replace(folder)
            logger.info("wrote tiny FAST action tokenizer to %s", folder)
        return folder


# ---------------------------------------------------------------------------------------------
# Tiny architecture
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TinySizes:
    """Sizes of the tiny PaliGemma (LM + SigLIP) and action expert.

    ``num_heads`` must stay 8 (LeRobot's pi0/pi05 joint attention hard-codes ``8 * head_dim``);
    LM and expert must share depth, heads, kv heads and head_dim (their attention is joint).
    """

    width: int = 64
    depth: int = 2
    mlp_dim: int = 128
    expert_width: int = 32
    expert_mlp_dim: int = 64
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 8
    vision_width: int = 32
    vision_depth: int = 1
    vision_heads: int = 2
    vision_mlp_dim: int = 64
    patch_size: int = 8


_MODELING_MODULES = {
    "pi0": "lerobot.policies.pi0.modeling_pi0",
    "pi05": "lerobot.policies.pi05.modeling_pi05",
    "pi0_fast": "lerobot.policies.pi0_fast.modeling_pi0_fast",
}


@contextlib.contextmanager
def tiny_paligemma_architecture(sizes: TinySizes = TinySizes(), image_size: int = IMAGE_SIZE) -> Iterator[None]:
    """While active, LeRobot's pi0 / pi05 / pi0_fast build tiny PaliGemma models (see module doc).

    Patches, in each modeling module, ``get_gemma_config`` (both variants → tiny LM / expert) and
    the ``PaliGemmaForConditionalGenerationWithPiGemma`` constructor (tiny SigLIP for
    ``image_size`` images, projector as wide as the LM). Restores everything on exit.
    """
    import importlib

    modules = [importlib.import_module(name) for name in _MODELING_MODULES.values()]
    saved = [(m, m.get_gemma_config, m.PaliGemmaForConditionalGenerationWithPiGemma) for m in modules]

    def patched(module: Any, orig_cls: Any) -> tuple[Any, Any]:
        def get_gemma_config(variant: str) -> Any:
            attention = (sizes.num_heads, sizes.num_kv_heads, sizes.head_dim)
            if variant == "gemma_2b":
                return module.GemmaConfig(sizes.width, sizes.depth, sizes.mlp_dim, *attention)
            if variant == "gemma_300m":
                return module.GemmaConfig(sizes.expert_width, sizes.depth, sizes.expert_mlp_dim, *attention)
            raise ValueError(f"Unknown variant: {variant}")

        def build_paligemma(config: Any) -> Any:
            vc = config.vision_config
            vc.hidden_size = sizes.vision_width
            vc.intermediate_size = sizes.vision_mlp_dim
            vc.num_hidden_layers = sizes.vision_depth
            vc.num_attention_heads = sizes.vision_heads
            vc.patch_size = sizes.patch_size
            vc.image_size = image_size
            vc.projection_dim = config.text_config.hidden_size
            config.text_config.num_image_tokens = (image_size // sizes.patch_size) ** 2
            return orig_cls(config=config)

        return get_gemma_config, build_paligemma

    try:
        for m, _, orig_cls in saved:
            m.get_gemma_config, m.PaliGemmaForConditionalGenerationWithPiGemma = patched(m, orig_cls)
        yield
    finally:
        for m, get_cfg, cls in saved:
            m.get_gemma_config = get_cfg
            m.PaliGemmaForConditionalGenerationWithPiGemma = cls


# ---------------------------------------------------------------------------------------------
# Configs, stats, policies, batches
# ---------------------------------------------------------------------------------------------
def make_tiny_vla_config(policy_type: str, **overrides: Any) -> Any:
    """A LeRobot config of ``policy_type`` for one 32x32 camera, state 6, action 4, chunk 4."""
    from lerobot.configs import FeatureType, PolicyFeature
    from lerobot.policies.factory import make_policy_config

    if policy_type not in PI_TYPES:
        raise ValueError(f"unknown PaliGemma policy type {policy_type!r}; expected one of {PI_TYPES}")
    kwargs: dict[str, Any] = dict(
        input_features={
            CAMERA_KEY: PolicyFeature(type=FeatureType.VISUAL, shape=(3, IMAGE_SIZE, IMAGE_SIZE)),
            STATE_KEY: PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
        },
        output_features={ACTION_KEY: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))},
        device="cpu",
        dtype="float32",
        chunk_size=CHUNK_SIZE,
        n_action_steps=CHUNK_SIZE,
        max_state_dim=8,
        max_action_dim=8,
        image_resolution=(IMAGE_SIZE, IMAGE_SIZE),
        tokenizer_max_length=TOKENIZER_MAX_LENGTH,
    )
    if policy_type in ("pi0", "pi05"):
        kwargs["num_inference_steps"] = 2
    else:
        kwargs.update(
            text_tokenizer_name=str(paligemma_tokenizer_dir()),
            action_tokenizer_name=str(fast_tokenizer_dir(CHUNK_SIZE, ACTION_DIM)),
            max_action_tokens=24,
            max_decoding_steps=6,
            validate_action_token_prefix=False,  # random weights never emit "Action:"
        )
    kwargs.update(overrides)
    return make_policy_config(policy_type, **kwargs)


def make_vla_stats() -> dict[str, dict[str, torch.Tensor]]:
    """Made-up dataset statistics (mean/std/min/max/quantiles) for state and action."""

    def stats(dim: int, scale: float) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.zeros(dim),
            "std": torch.full((dim,), scale),
            "min": torch.full((dim,), -2 * scale),
            "max": torch.full((dim,), 2 * scale),
            "q01": torch.full((dim,), -2 * scale),
            "q10": torch.full((dim,), -1.2 * scale),
            "q50": torch.zeros(dim),
            "q90": torch.full((dim,), 1.2 * scale),
            "q99": torch.full((dim,), 2 * scale),
        }

    return {STATE_KEY: stats(STATE_DIM, 0.5), ACTION_KEY: stats(ACTION_DIM, 0.25)}


def make_tiny_vla(
    policy_type: str, seed: int = 0, sizes: TinySizes = TinySizes(), **config_overrides: Any
) -> tuple[Any, Any, Any]:
    """``(policy, preprocessor, postprocessor)``: a tiny real LeRobot VLA, random weights, eval mode.

    Deterministic in ``seed``. The processors come from LeRobot's own factory with
    :func:`make_vla_stats`. Offline: only the local tokenizers above are read.
    """
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    if policy_type in ("pi0", "pi05"):
        paligemma_tokenizer_dir()  # their processors load it by hub id
    config = make_tiny_vla_config(policy_type, **config_overrides)
    torch.manual_seed(seed)
    with tiny_paligemma_architecture(sizes, image_size=config.image_resolution[0]):
        policy = get_policy_class(policy_type)(config)
    policy.eval()
    pre, post = make_pre_post_processors(config, dataset_stats=make_vla_stats())
    return policy, pre, post


def make_vla_batch(
    policy_type: str,
    batch_size: int = 2,
    seed: int = 0,
    *,
    with_action: bool = True,
    tasks: list[str] | None = None,
) -> dict[str, Any]:
    """A raw (not yet preprocessed) batch for :func:`make_tiny_vla` policies.

    Keys: the camera ``[B, 3, 32, 32]`` in ``[0, 1]``, ``observation.state`` ``[B, 6]``, ``task``
    (list of strings of different lengths, so rows pad differently) and, if ``with_action``,
    ``action`` ``[B, chunk, 4]`` (pi0_fast's preprocessor turns it into FAST tokens).
    """
    if policy_type not in PI_TYPES:
        raise ValueError(f"unknown PaliGemma policy type {policy_type!r}; expected one of {PI_TYPES}")
    g = torch.Generator().manual_seed(seed)
    batch: dict[str, Any] = {
        CAMERA_KEY: torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
        STATE_KEY: torch.randn(batch_size, STATE_DIM, generator=g) * 0.5,
        "task": list(tasks) if tasks is not None else [TASKS[(seed + i) % len(TASKS)] for i in range(batch_size)],
    }
    if len(batch["task"]) != batch_size:
        raise ValueError(f"{len(batch['task'])} tasks for a batch of {batch_size}")
    if with_action:
        steps = torch.randn(batch_size, CHUNK_SIZE, ACTION_DIM, generator=g) * 0.05
        batch[ACTION_KEY] = torch.cumsum(steps, dim=1)
    return batch
