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
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_features_from_stored_inputs_equal_cached_features(family, tmp_path):
    module_name, make_policy, make_batch = FAMILIES[family]
    support = importlib.import_module(module_name)
    policy, preprocessor, _ = make_policy(support)
    policy.eval()
    batch = preprocessor(make_batch(support))
    with make_tap(policy) as tap, torch.no_grad():
        layers = [-2, -1] if family != "diffusion" else [-2, -1]
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
