"""LeRobot glue: the ``craft`` policy type (imported by ``lerobot-train --discover_packages_path=craft_plugin``)."""

from craft_plugin.policies.craft.configuration_craft import CRaFTConfig

__all__ = ["CRaFTConfig"]
