"""Pre/post-processors of the ``craft`` policy: the base policy's own, with the normalization
statistics chosen by ``--policy.normalization``:

- ``base`` (default): the base checkpoint's saved processors, *with its normalization
  statistics* (``--policy.base_path``): a recent study found per-task re-normalization alone
  collapses retention, and the anchor cache was built with the teacher's statistics.
- ``dataset``: the base's processors built with the new dataset's statistics (what a plain
  ``lerobot-train --policy.path=<base>`` fine-tune does).
- ``merged``: the base's processors built with the statistics of the 50/50 mixture of the
  base checkpoint's and the new dataset's (:func:`merge_normalization_stats`).

A base built from ``--policy.base_type`` (no checkpoint) always uses the dataset's statistics.
``--policy.renormalize=true`` is the deprecated spelling of ``--policy.normalization=dataset``.

:func:`craft_normalization_stats` is the one place the choice is made: every caller of
:func:`make_craft_pre_post_processors` with the same ``(config, dataset_stats)`` gets a
preprocessor with the same statistics (``lerobot-train`` and the policy's own copy alike).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
from lerobot.policies.factory import make_pre_post_processors

from craft_plugin.policies.craft.configuration_craft import CRaFTConfig

logger = logging.getLogger(__name__)

__all__ = [
    "base_checkpoint_stats",
    "craft_normalization_stats",
    "make_craft_pre_post_processors",
    "merge_normalization_stats",
]

_QUANTILE = re.compile(r"^q(\d+)$")


def make_craft_pre_post_processors(
    config: CRaFTConfig, dataset_stats: dict[str, Any] | None = None, dataset_meta: Any = None
) -> tuple[Any, Any]:
    """The base's (pre, post)-processors with the statistics of :func:`craft_normalization_stats`."""
    base_cfg = config.base_config
    stats = craft_normalization_stats(config, dataset_stats)
    if config.base_path and stats is None:
        logger.info("CRaFT: keeping the base checkpoint's processors and normalization statistics (%s)", config.base_path)
        return make_pre_post_processors(base_cfg, pretrained_path=config.base_path)
    return make_pre_post_processors(base_cfg, dataset_stats=stats, dataset_meta=dataset_meta)


def craft_normalization_stats(config: CRaFTConfig, dataset_stats: dict[str, Any] | None) -> dict | None:
    """The normalization statistics the craft processors are built with, for ``config.normalization``.

    Returns ``None`` for ``base`` with a ``base_path``: use the base checkpoint's saved
    processors unchanged. Otherwise a ``{feature: {stat: array}}`` dict: ``dataset_stats``
    itself for ``dataset`` (and for any mode with a ``base_type`` base, which has no checkpoint;
    then ``dataset_stats`` may be ``None``: no statistics, as in LeRobot), or
    :func:`merge_normalization_stats` of the base checkpoint's and ``dataset_stats`` for
    ``merged``. Deterministic: the same arguments give the same statistics.

    Raises ``ValueError`` for ``dataset`` or ``merged`` with a checkpoint base and no ``dataset_stats``.
    """
    mode = config.normalization
    if not config.base_path:
        if mode != "dataset" and config.base_type:
            logger.info("CRaFT: the base is built from --policy.base_type: the dataset's statistics are used")
        return dataset_stats
    if mode == "base":
        return None
    if dataset_stats is None:
        raise ValueError(
            f"--policy.normalization={mode} needs the new dataset's statistics, and none were given "
            "(dataset_stats=None); use --policy.normalization=base to keep the base checkpoint's"
        )
    if mode == "dataset":
        logger.info("CRaFT: the base's processors with the new dataset's normalization statistics")
        return dataset_stats
    if mode == "merged":
        logger.info("CRaFT: the base's processors with the base checkpoint's and the dataset's statistics merged")
        return merge_normalization_stats(base_checkpoint_stats(config.base_path), dataset_stats)
    raise ValueError(f"unknown normalization mode {mode!r}")  # CRaFTConfig.__post_init__ checked it


def base_checkpoint_stats(base_path: str) -> dict[str, dict[str, np.ndarray]]:
    """The statistics of the normalizer in a checkpoint's saved preprocessor
    (``policy_preprocessor.json`` + its ``.safetensors`` state), as ``{feature: {stat: array}}``."""
    from lerobot.processor import NormalizerProcessorStep, PolicyProcessorPipeline, batch_to_transition, transition_to_batch
    from lerobot.utils.constants import POLICY_PREPROCESSOR_DEFAULT_NAME

    pipeline = PolicyProcessorPipeline.from_pretrained(
        pretrained_model_name_or_path=base_path,
        config_filename=f"{POLICY_PREPROCESSOR_DEFAULT_NAME}.json",
        to_transition=batch_to_transition,
        to_output=transition_to_batch,
    )
    for step in pipeline.steps:
        if isinstance(step, NormalizerProcessorStep):
            stats: dict[str, dict[str, np.ndarray]] = {}
            for flat_key, tensor in step.state_dict().items():
                key, stat = flat_key.rsplit(".", 1)
                stats.setdefault(key, {})[stat] = tensor.detach().cpu().numpy()
            return stats
    raise ValueError(f"the preprocessor saved in {base_path} has no normalizer step: no statistics to merge")


def merge_normalization_stats(base: dict[str, dict[str, Any]], dataset: dict[str, dict[str, Any]]) -> dict:
    """Per feature key present in both, the statistics of the 50/50 mixture of the two:
    ``mean = (m1 + m2) / 2``, ``std = sqrt((s1² + s2²) / 2 + ((m1 − m2) / 2)²)``, ``min``/``max``
    elementwise min/max, ``count`` summed, quantiles ``qNN`` the elementwise min below the median
    (``q01``, ``q10``), the max above it (``q90``, ``q99``) and the average at it (``q50``); any
    other statistic is averaged. A key, or a statistic of a key, present on one side only keeps
    that side's values. Arrays are numpy (float64; ``count`` int64)."""
    merged: dict[str, dict[str, np.ndarray]] = {}
    for key in list(dict.fromkeys([*base, *dataset])):
        if key not in dataset:
            merged[key] = {s: _array(v) for s, v in base[key].items()}
            continue
        if key not in base:
            merged[key] = {s: _array(v) for s, v in dataset[key].items()}
            continue
        a = {s: _array(v) for s, v in base[key].items()}
        b = {s: _array(v) for s, v in dataset[key].items()}
        for s in set(a) & set(b):
            a[s] = _match_shape(key, s, a[s], b[s])
        out: dict[str, np.ndarray] = {}
        for s in list(dict.fromkeys([*b, *a])):
            if s not in a or s not in b:
                out[s] = (a if s in a else b)[s]
                continue
            x, y = a[s], b[s]
            if s == "mean":
                out[s] = (x + y) / 2
            elif s == "std":
                spread = ((a["mean"] - b["mean"]) / 2) ** 2 if "mean" in a and "mean" in b else 0.0
                out[s] = np.sqrt((x**2 + y**2) / 2 + spread)
            elif s == "min":
                out[s] = np.minimum(x, y)
            elif s == "max":
                out[s] = np.maximum(x, y)
            elif s == "count":
                out[s] = np.asarray(x, dtype=np.int64) + np.asarray(y, dtype=np.int64)
            elif (m := _QUANTILE.match(s)) is not None:
                q = int(m.group(1)) / 10 ** len(m.group(1))
                out[s] = np.minimum(x, y) if q < 0.5 else np.maximum(x, y) if q > 0.5 else (x + y) / 2
            else:
                out[s] = (x + y) / 2
        merged[key] = out
    return merged


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    return arr.astype(np.float64) if arr.dtype.kind == "f" else arr


def _match_shape(key: str, stat: str, x: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``x`` in ``like``'s shape (image statistics are ``(C,)`` or ``(C, 1, 1)``)."""
    if x.shape == like.shape:
        return x
    if x.size == like.size:
        return x.reshape(like.shape)
    raise ValueError(
        f"cannot merge the normalization statistics of {key!r}.{stat}: the base checkpoint's have shape "
        f"{tuple(x.shape)}, the dataset's {tuple(like.shape)}"
    )
