"""craft-plugin: CRaFT (Constrained Retention Fine-Tuning) for Hugging Face LeRobot.

The public surface is small on purpose::

    from craft_plugin import CraftHook, CraftConfig
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from craft_plugin.config import CraftConfig, CraftConfigError
from craft_plugin.hook import CraftHook

try:
    __version__ = version("craft-plugin")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["CraftConfig", "CraftConfigError", "CraftHook", "__version__"]
