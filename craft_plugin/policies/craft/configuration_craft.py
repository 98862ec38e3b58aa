"""``CRaFTConfig``: the ``craft`` policy type (LeRobot naming: ``CRaFTConfig`` → ``CRaFTPolicy``),
a wrapper config around a base policy. Not to be confused with :class:`craft_plugin.CraftConfig`,
the CRaFT settings it carries as its ``craft`` block.

    lerobot-train --discover_packages_path=craft_plugin --policy.type=craft \
        --policy.base_path=<pretrained_model dir or hub id> \
        --policy.craft.anchor_cache_dir=<cache> --policy.craft.epsilon_end=0.05 ...

The base is named by ``base_path`` (a pretrained checkpoint) or ``base_type`` (a base trained
from its default config). The base's own config is loaded here and *not* stored as a field
(a nested ``PreTrainedConfig`` field sends draccus into infinite recursion): features,
normalization mapping, delta indices and optimizer/scheduler presets are the base's, so
every other ``lerobot-train`` flag keeps its meaning. The CRaFT settings are the ``craft``
block, a :class:`craft_plugin.CraftConfig` (a pydantic dataclass draccus parses directly), or
a file given by ``craft_config_file``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lerobot.configs.policies import PreTrainedConfig

from craft_plugin.config import CraftConfig

logger = logging.getLogger(__name__)

BASE_CONFIG_DIR = "base"


@PreTrainedConfig.register_subclass("craft")
@dataclass
class CRaFTConfig(PreTrainedConfig):
    """A base LeRobot policy fine-tuned with CRaFT."""

    base_path: str | None = None
    base_type: str | None = None
    craft: CraftConfig = field(default_factory=CraftConfig)
    craft_config_file: str | None = None
    renormalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.craft_config_file:
            self.craft = CraftConfig.from_file(self.craft_config_file)
        self._base_config: PreTrainedConfig | None = None

    # ------------------------------------------------------------------ the base config
    @property
    def base_config(self) -> PreTrainedConfig:
        if self._base_config is None:
            self._base_config = self._load_base_config()
            self._base_config.device = self.device
        return self._base_config

    def _load_base_config(self) -> PreTrainedConfig:
        if self.pretrained_path is not None:
            saved = Path(str(self.pretrained_path)) / BASE_CONFIG_DIR
            if (saved / "config.json").is_file():
                return PreTrainedConfig.from_pretrained(str(saved))
        if self.base_path:
            return PreTrainedConfig.from_pretrained(self.base_path)
        if self.base_type:
            if self.base_type == "craft":
                raise ValueError("--policy.base_type cannot be 'craft'")
            return PreTrainedConfig.get_choice_class(self.base_type)()
        raise ValueError(
            "the craft policy needs a base: --policy.base_path=<pretrained_model dir or hub id> "
            "or --policy.base_type=<act|diffusion|pi0|pi05|pi0_fast|smolvla|...>"
        )

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)
        base_dir = Path(save_directory) / BASE_CONFIG_DIR
        base_dir.mkdir(parents=True, exist_ok=True)
        self.base_config._save_pretrained(base_dir)
        # The live policy's CRaFT state (λ, step, schedule, sampler) rides with the config: with
        # `--peft.*`, LeRobot saves only adapter weights and then this config, never calling the
        # policy's own `_save_pretrained`.
        writer = getattr(self, "_craft_state_writer", None)
        if writer is not None and writer() is not None:
            writer()(Path(save_directory))

    # ------------------------------------------------------------------ delegation
    @property
    def observation_delta_indices(self) -> list | None:
        return self.base_config.observation_delta_indices

    @property
    def action_delta_indices(self) -> list | None:
        return self.base_config.action_delta_indices

    @property
    def reward_delta_indices(self) -> list | None:
        return self.base_config.reward_delta_indices

    def get_optimizer_preset(self) -> Any:
        return self.base_config.get_optimizer_preset()

    def get_scheduler_preset(self) -> Any:
        return self.base_config.get_scheduler_preset()

    def validate_features(self) -> None:
        self.sync_features_to_base()
        self.base_config.validate_features()

    def sync_features_to_base(self) -> None:
        """A base built from its type takes the dataset's features; a pretrained base keeps its own."""
        base = self.base_config
        if not base.input_features and self.input_features:
            base.input_features = dict(self.input_features)
        if not base.output_features and self.output_features:
            base.output_features = dict(self.output_features)
        if base.input_features:
            self.input_features = dict(base.input_features)
        if base.output_features:
            self.output_features = dict(base.output_features)

    @property
    def normalization_mapping(self) -> dict:
        return getattr(self.base_config, "normalization_mapping", {})

    def describe(self) -> str:
        return json.dumps({"base": self.base_path or self.base_type, "craft": self.craft.to_dict()})
