"""Importing this registers the ``craft`` policy type (LeRobot imports it automatically)."""

import craft_plugin.policies  # noqa: F401
