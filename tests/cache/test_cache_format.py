"""The cache format without LeRobot: shards, manifest, resumable writer, AnchorCache loader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from craft_plugin.cache import AnchorCache, CacheError, CacheWriter, Manifest
from craft_plugin.cache.manifest import SCHEMA_VERSION, load_manifest
from craft_plugin.cache.shards import ShardReader, file_sha256, write_shard
from support.synthetic_cache import SHAPE, make_manifest, make_rows

N, SHARD = 10, 4
_manifest, _rows = make_manifest, make_rows


def _build(directory: Path, manifest: Manifest | None = None, overwrite: bool = False) -> CacheWriter:
    w = CacheWriter(directory, manifest or _manifest(), overwrite=overwrite)
    for k, rows in w.pending():
        w.add_shard(k, _rows(rows))
    w.finalize()
    return w


def test_shard_round_trip_is_memory_mapped_and_exact(tmp_path):
    t = {"a": torch.randn(5, 3), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(5, 2).to(torch.bfloat16)}
    digest = write_shard(tmp_path / "s.safetensors", t)
    assert digest == file_sha256(tmp_path / "s.safetensors")
    assert not list(tmp_path.glob("*.tmp"))
    r = ShardReader(tmp_path / "s.safetensors")
    got = r.rows(["a", "b", "c"], [4, 1])
    assert torch.equal(got["a"], t["a"][[4, 1]]) and torch.equal(got["b"], t["b"][[4, 1]])
    assert got["c"].dtype == torch.bfloat16 and torch.equal(got["c"], t["c"][[4, 1]])
    assert isinstance(r._map("a"), np.memmap)


def test_build_layout_and_manifest(tmp_path):
    w = _build(tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["manifest.json", "shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]
    m = load_manifest(tmp_path / "c")
    assert m.complete and m.schema_version == SCHEMA_VERSION
    assert [s.rows for s in m.shards] == [4, 4, 2]
    assert all(s.sha256 == file_sha256(tmp_path / "c" / s.file) for s in m.shards)
    # per-dimension stats of features = row + k/10 for rows 0..9: mean 4.5 + k/10, std = std(0..9)
    mean, std = AnchorCache(tmp_path / "c").feature_stats()
    assert mean.shape == tuple(SHAPE)
    torch.testing.assert_close(mean.flatten(), 4.5 + torch.arange(12) / 10)
    torch.testing.assert_close(std.flatten(), torch.full((12,), float(np.std(np.arange(10)))))
    assert w.total_bytes() > 0


def test_anchor_cache_rows_and_seeded_sampling(tmp_path):
    _build(tmp_path / "c")
    cache = AnchorCache(tmp_path / "c")
    assert len(cache) == N and cache.feature_shape == tuple(SHAPE)
    b = cache.rows([9, 0, 5])
    assert b.features[:, 0, 0, 0].tolist() == [9.0, 0.0, 5.0]
    assert b["index"].tolist() == [18, 0, 10]
    assert b.inputs["observation.image"].dtype == torch.uint8 and b.inputs["observation.image"].shape == (3, 3, 2, 2)
    assert b.inputs["action"][:, 0].tolist() == [9.0, 0.0, 5.0]
    s1 = cache.sample(6, torch.Generator().manual_seed(3))
    s2 = cache.sample(6, torch.Generator().manual_seed(3))
    assert torch.equal(s1["index"], s2["index"]) and len(set(s1["index"].tolist())) == 6
    assert not torch.equal(s1["index"], cache.sample(6, torch.Generator().manual_seed(4))["index"])
    with pytest.raises(ValueError, match="exceeds the 10 anchors"):
        cache.sample(11, torch.Generator())


def test_flipped_byte_is_reported_by_name(tmp_path):
    _build(tmp_path / "c")
    shard = tmp_path / "c" / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"shard shard_00001\.safetensors is corrupt"):
        AnchorCache(tmp_path / "c")


def test_truncated_manifest_and_future_schema_give_clear_errors(tmp_path):
    _build(tmp_path / "c")
    path = tmp_path / "c" / "manifest.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(CacheError, match="manifest.json is not valid JSON .*truncated or corrupt"):
        AnchorCache(tmp_path / "c")
    raw = json.loads(text)
    raw["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(raw))
    with pytest.raises(CacheError, match=f"schema_version {SCHEMA_VERSION + 1}, newer than this craft-plugin"):
        AnchorCache(tmp_path / "c")
    with pytest.raises(CacheError, match="does not exist"):
        AnchorCache(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match="manifest.json is missing"):
        AnchorCache(tmp_path / "empty")


def test_partial_cache_says_how_to_resume(tmp_path):
    w = CacheWriter(tmp_path / "c", _manifest())
    k, rows = w.pending()[0]
    w.add_shard(k, _rows(rows))
    with pytest.raises(CacheError, match=r"partial: 4 of 10 anchors .*Rerun the same `craft build-cache`"):
        AnchorCache(tmp_path / "c")


def test_rerun_of_a_finished_build_is_complete_and_different_args_need_overwrite(tmp_path):
    _build(tmp_path / "c")
    again = CacheWriter(tmp_path / "c", _manifest())
    assert again.state == "complete" and again.pending() == []
    with pytest.raises(CacheError, match=r"different arguments \(dataset: .*seed 0 vs 1.*--overwrite"):
        CacheWriter(tmp_path / "c", _manifest(seed=1))
    w = CacheWriter(tmp_path / "c", _manifest(seed=1), overwrite=True)
    assert w.state == "new" and len(w.pending()) == 3


def test_not_a_cache_directory_is_left_alone(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(CacheError, match="is not an anchor cache .*notes.txt"):
        CacheWriter(d, _manifest())
    assert (d / "notes.txt").read_text() == "keep me"


def test_compatibility_errors_name_field_values_and_the_command(tmp_path):
    _build(tmp_path / "c")
    cache = AnchorCache(tmp_path / "c")
    cache.check_compatible(retention_mode="hidden", layers=[-2, -1], pooling=["mean_image_tokens", "cls_token"], num_layers=6)
    with pytest.raises(CacheError) as info:
        cache.check_compatible(
            retention_mode="hidden", layers=[-3, -1], pooling=["mean_masked"], policy_type="pi0", hidden_dim=8, num_layers=6
        )
    msg = str(info.value)
    assert "layers: config [-3, -1] (absolute [3, 5]), cache [4, 5]" in msg
    assert "pooling: config ['mean_masked'], cache ['mean_image_tokens', 'cls_token']" in msg
    assert "policy type: training 'pi0', cache teacher 'act'" in msg
    assert "hidden size: policy 8, cache 3" in msg
    assert "craft build-cache --dataset.repo_id=local/x --dataset.root=/data --policy.path=/teacher" in msg
    assert "--layers=-3,-1 --pooling=mean_masked" in msg


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from support.synthetic_cache import make_manifest as _manifest, make_rows as _rows
    from craft_plugin.cache import CacheWriter
    w = CacheWriter({out!r}, _manifest(num_anchors=30))
    for k, rows in w.pending():
        if k == 4:
            # die mid-write: a half-written temp file, and a shard renamed but not yet in the manifest
            open(os.path.join({out!r}, "shard_00004.safetensors.tmp"), "wb").write(b"half")
            open(os.path.join({out!r}, "shard_00004.safetensors"), "wb").write(b"not in the manifest")
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the build
        w.add_shard(k, _rows(rows))
    """
)


def test_kill_9_then_rerun_equals_an_uninterrupted_build(tmp_path):
    tests_dir = str(Path(__file__).resolve().parents[1])
    script = _KILL_SCRIPT.format(tests=tests_dir, out=str(tmp_path / "killed"))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ})
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert len(load_manifest(tmp_path / "killed").shards) == 4
    resumed = CacheWriter(tmp_path / "killed", _manifest(num_anchors=30))
    assert not (tmp_path / "killed" / "shard_00004.safetensors.tmp").exists()
    assert not (tmp_path / "killed" / "shard_00004.safetensors").exists()
    assert resumed.state == "resume" and [k for k, _ in resumed.pending()] == [4, 5, 6, 7]
    for k, rows in resumed.pending():
        resumed.add_shard(k, _rows(rows))
    resumed.finalize()
    _build(tmp_path / "straight", _manifest(num_anchors=30))
    a, b = load_manifest(tmp_path / "killed"), load_manifest(tmp_path / "straight")
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    strip = lambda m: {k: v for k, v in m.model_dump().items() if k not in ("created_at", "updated_at")}  # noqa: E731
    assert strip(a) == strip(b)


def test_cat_rows_right_pads_token_ids_and_masks_only():
    from craft_plugin.cache.shards import cat_rows

    ids = cat_rows([torch.tensor([[5, 6, 7]]), torch.tensor([[8]])], "tokens")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    mask = cat_rows([torch.tensor([[True, True]]), torch.tensor([[True]])], "mask")
    assert mask.tolist() == [[True, True], [True, False]]
    with pytest.raises(ValueError, match="features: row blocks differ in shape"):
        cat_rows([torch.zeros(1, 3), torch.zeros(1, 2)], "features")
