"""Pre/post-processors of the ``craft`` policy: the base policy's own.

By default the base checkpoint's processors are loaded *with its normalization statistics*
(``--policy.base_path``): a recent study found per-task re-normalization alone collapses
retention, and the anchor cache was built with the teacher's statistics.
``--policy.renormalize=true`` builds the base's processors with the new dataset's statistics
instead. A base trained from ``--policy.base_type`` always uses the dataset's statistics.
"""

from __future__ import annotations

import logging
from typing import Any

from lerobot.policies.factory import make_pre_post_processors

from craft_plugin.policies.craft.configuration_craft import CRaFTConfig

logger = logging.getLogger(__name__)


def make_craft_pre_post_processors(
    config: CRaFTConfig, dataset_stats: dict[str, Any] | None = None, dataset_meta: Any = None
) -> tuple[Any, Any]:
    base_cfg = config.base_config
    if config.base_path and not config.renormalize:
        logger.info("CRaFT: keeping the base checkpoint's processors and normalization statistics (%s)", config.base_path)
        return make_pre_post_processors(base_cfg, pretrained_path=config.base_path)
    return make_pre_post_processors(base_cfg, dataset_stats=dataset_stats, dataset_meta=dataset_meta)
