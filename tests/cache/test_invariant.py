"""Hidden mode's invariant, per policy family: a student identical to its teacher starts at
``L_ret = 0`` (to 1e-5) with backbone features *and* the action pathway anchored.

The raw batch (images quantized as a dataset decodes them) goes through the teacher's
preprocessor and tap, is written with the cache writer as ``craft build-cache`` writes it
(raw frames, pooled features, action targets and their stored randomness), read back through
``AnchorCache`` and run through the student's own preprocessor and tap by ``HiddenRetention``.
Changing the stored noise of a family that draws one changes the teacher's target.
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch

from craft_plugin import CraftConfig
from craft_plugin.retention import HiddenRetention
from craft_plugin.taps import make_tap
from support.policy_cache import cache_from_policy, preprocessed_rows

# family -> (support module, builder of (policy, pre, post), builder of a raw batch)
FAMILIES = {
    "act": ("support.tiny_classic", lambda m: m.make_tiny("act"), lambda m: m.make_batch("act", 3, seed=1)),
    "diffusion": ("support.tiny_classic", lambda m: m.make_tiny("diffusion"), lambda m: m.make_batch("diffusion", 3, seed=1)),
    "pi0": ("support.tiny_vla", lambda m: m.make_tiny_vla("pi0"), lambda m: m.make_vla_batch("pi0", 3, seed=1)),
    "pi05": ("support.tiny_vla", lambda m: m.make_tiny_vla("pi05"), lambda m: m.make_vla_batch("pi05", 3, seed=1)),
    "pi0_fast": ("support.tiny_vla", lambda m: m.make_tiny_vla("pi0_fast"), lambda m: m.make_vla_batch("pi0_fast", 3, seed=1)),
    "smolvla": ("support.tiny_smolvla", lambda m: m.make_tiny_smolvla(), lambda m: m.make_smolvla_batch(3, seed=1)),
}
DRAWS_NOISE = {"diffusion", "pi0", "pi05", "smolvla"}


def _world(family, tmp_path):
    module_name, make_policy, make_batch = FAMILIES[family]
    support = importlib.import_module(module_name)
    arch = support.tiny_paligemma_architecture() if family.startswith("pi") else contextlib.nullcontext()
    return support, make_policy, make_batch, arch


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_identical_student_has_zero_retention_loss_with_actions_anchored(family, tmp_path):
    support, make_policy, make_batch, arch = _world(family, tmp_path)
    with arch:
        policy, preprocessor, _ = make_policy(support)
        raw = make_batch(support)
        for key, value in raw.items():  # as decoded from a dataset: 8-bit images scaled to [0, 1]
            if "image" in key and isinstance(value, torch.Tensor) and value.is_floating_point():
                raw[key] = torch.round(value.clamp(0, 1) * 255) / 255
        cache = cache_from_policy(policy, preprocessor, raw, tmp_path / "c", actions=True)
        m = cache.manifest
        assert m.anchor_targets == ["features", "actions"] and m.action_kind is not None
        spec = m.input_keys
        image_keys = [k for k in spec if "image" in k and not k.endswith("mask")]
        assert image_keys and all(spec[k]["encoding"] == "uint8/255" for k in image_keys), spec
        assert ("noise" in m.draw_keys) == (family in DRAWS_NOISE)

        policy.train()  # the retention forward itself switches dropout off
        ret = HiddenRetention(policy, cache, CraftConfig(anchor_batch_size=3), preprocessor=preprocessor)
        value = float(ret().detach())
        assert value <= 1e-5, (family, ret.last_parts)
        assert set(ret.last_parts) == {"features", "actions"}

        if family in DRAWS_NOISE:
            anchors, batch = preprocessed_rows(cache, preprocessor)
            other = {k: v.clone() for k, v in anchors.draw.items()}
            other["noise"] = other["noise"] + 0.5
            with make_tap(policy.eval()) as tap, torch.no_grad():
                same = tap.action_output(batch, anchors.draw)
                moved = tap.action_output(batch, other)
            torch.testing.assert_close(same, anchors.action_target, atol=1e-5, rtol=0)
            assert (moved - anchors.action_target).abs().max() > 1e-3
