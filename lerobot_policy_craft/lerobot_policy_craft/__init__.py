"""Importing this registers the ``craft`` policy type (LeRobot imports it automatically).

It is installed by ``craft-plugin`` (a dependency of it) and needs it.
"""

try:
    import craft_plugin.policies  # noqa: F401
except ModuleNotFoundError as err:  # pragma: no cover - only without craft-plugin installed
    if err.name != "craft_plugin":
        raise
    raise ImportError(
        "lerobot_policy_craft registers craft-plugin's `craft` policy type, but craft-plugin is not installed: "
        "pip install craft-plugin"
    ) from err
