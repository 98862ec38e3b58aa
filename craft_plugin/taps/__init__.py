"""Feature taps: hidden states and token masks out of LeRobot policies, one module per family.

See :mod:`craft_plugin.taps.base` for the contract. Families: ``act`` (act.py),
``diffusion`` (diffusion.py), ``pi0`` / ``pi05`` / ``pi0_fast`` (paligemma.py), ``smolvla``
(smolvla.py).
"""

from craft_plugin.taps.base import FeatureTap, TapOutput, make_tap, register_tap, resolve_layers, tap_for_type

__all__ = ["FeatureTap", "TapOutput", "make_tap", "register_tap", "resolve_layers", "tap_for_type"]
