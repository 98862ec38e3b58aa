"""The ``craft`` policy type: any LeRobot base policy trained with CRaFT (LeRobot's file convention)."""

from craft_plugin.policies.craft.configuration_craft import CRaFTConfig

__all__ = ["CRaFTConfig"]
