"""Hidden mode's invariant, per policy family: features recomputed from the inputs the cache
stores, by the same policy with dropout off, equal the cached teacher features (1e-5).

The batch goes through the policy's own preprocessor, is written with the cache writer
(images as uint8 where lossless), read back through `AnchorCache`, decoded, and fed to the
tap again.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from craft_plugin.cache import AnchorCache, CacheWriter
from craft_plugin.cache.builder import decode_inputs, encode_inputs
from craft_plugin.core.losses import hidden_mse
from craft_plugin.taps import make_tap

from support.synthetic_cache import make_manifest as _manifest

# family -> (support module, builder of (policy, pre, post), builder of a raw batch)
FAMILIES = {
    "act": ("support.tiny_classic", lambda m: m.make_tiny("act"), lambda m: m.make_batch("act", 3, seed=1)),
    "diffusion": ("support.tiny_classic", lambda m: m.make_tiny("diffusion"), lambda m: m.make_batch("diffusion", 3, seed=1)),
    "pi0": ("support.tiny_vla", lambda m: m.make_tiny_vla("pi0"), lambda m: m.make_vla_batch("pi0", 3, seed=1)),
    "pi05": ("support.tiny_vla", lambda m: m.make_tiny_vla("pi05"), lambda m: m.make_vla_batch("pi05", 3, seed=1)),
    "pi0_fast": ("support.tiny_vla", lambda m: m.make_tiny_vla("pi0_fast"), lambda m: m.make_vla_batch("pi0_fast", 3, seed=1)),
    "smolvla": ("support.tiny_smolvla", lambda m: m.make_tiny_smolvla(), lambda m: m.make_smolvla_batch(3, seed=1)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_features_from_stored_inputs_equal_cached_features(family, tmp_path):
    module_name, make_policy, make_batch = FAMILIES[family]
    support = importlib.import_module(module_name)
    policy, preprocessor, _ = make_policy(support)
    policy.eval()
    raw = make_batch(support)
    for key, value in raw.items():  # as decoded from a dataset: 8-bit images scaled to [0, 1]
        if "image" in key and isinstance(value, torch.Tensor) and value.is_floating_point():
            raw[key] = torch.round(value.clamp(0, 1) * 255) / 255
    batch = preprocessor(raw)
    with make_tap(policy) as tap, torch.no_grad():
        layers = [-2, -1]
        pooling = list(tap.default_pooling)
        teacher = tap.features(batch, layers, pooling)
        stored, spec = encode_inputs(batch)

    m = _manifest(num_anchors=teacher.shape[0])
    m.feature_shape = list(teacher.shape[1:])
    m.input_keys = spec
    m.pooling = pooling
    w = CacheWriter(tmp_path / "c", m)
    for k, rows in w.pending():
        w.add_shard(
            k,
            {"features": teacher[rows], "index": torch.tensor(rows), **{f"input.{key}": t[rows] for key, t in stored.items()}},
        )
    w.finalize()
    if family in ("pi0", "pi05", "pi0_fast", "smolvla"):
        image_keys = [k for k in spec if "image" in k and not k.endswith("mask")]
        assert image_keys and all(spec[k]["encoding"] == "uint8/255" for k in image_keys), spec

    cache = AnchorCache(tmp_path / "c")
    got = cache.rows(list(range(len(cache))))
    inputs = decode_inputs(got.inputs, cache.manifest.input_keys)
    for key, t in batch.items():
        if isinstance(t, torch.Tensor) and key in inputs:
            assert torch.equal(inputs[key], t), f"{key} did not survive the cache bit-exactly"
    with make_tap(policy) as tap, torch.no_grad():
        student = tap.features(inputs, layers, pooling)
    torch.testing.assert_close(student, got.features, atol=1e-5, rtol=0)
    assert float(hidden_mse(student, got.features)) < 1e-10
