"""`craft build-cache` / `craft cache-info` on a tiny local dataset and a tiny ACT teacher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from craft_plugin.cache import AnchorCache
from craft_plugin.cache.builder import BuildOptions, build_cache
from craft_plugin.cache.manifest import load_manifest
from support.cli import craft_cli
from craft_plugin.core.losses import hidden_mse
from craft_plugin.taps import make_tap
from support.policy_cache import preprocessed_rows, teacher_preprocessor

CRAFT = str(Path(sys.executable).parent / "craft")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 2x12-frame image dataset and a saved tiny ACT checkpoint (its `pretrained_model` folder)."""
    from support.tiny_classic import make_tiny_act
    from support.tiny_dataset import make_dataset, save_policy

    root = tmp_path_factory.mktemp("world")
    make_dataset(root / "data")
    save_policy(*make_tiny_act(seed=0), root / "act")
    return root


def _env(world: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(world / "hf"), "COLUMNS": "120"}


def _args(world: Path, out: Path, *extra: str) -> list[str]:
    return [
        CRAFT, "build-cache", f"--policy.path={world / 'act'}", f"--dataset.root={world / 'data'}",
        "--dataset.repo_id=local/tiny", f"--output-dir={out}", "--num-anchors=10", "--batch-size=4",
        "--shard-size=4", *extra,
    ]  # fmt: skip


def _load_teacher(world: Path):
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    cfg = PreTrainedConfig.from_pretrained(str(world / "act"))
    return get_policy_class(cfg.type).from_pretrained(str(world / "act"), config=cfg).eval()


def test_cli_build_summary_rerun_and_cache_info(world, tmp_path):
    out = tmp_path / "cache"
    res = subprocess.run(_args(world, out), capture_output=True, text=True, env=_env(world), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "built: " in res.stdout
    assert "anchors 10 | shards 3 |" in res.stdout and "KiB per anchor" in res.stdout
    assert "features [2, 2, 32]" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors",
    ]  # fmt: skip
    m = load_manifest(out)
    assert m.complete and m.layers == [1, 2] and m.layers_requested == [-2, -1] and m.num_layers_total == 3
    assert m.teacher.policy_type == "act" and m.retention_modes == ["hidden", "token_ce"]
    assert set(m.input_keys) == {"observation.images.top", "observation.state", "action", "action_is_pad"}
    assert len(m.dataset.anchor_indices) == 10 and m.versions["lerobot"].startswith("0.6")

    # The rest in-process (`craft_cli`; the subprocess above and the last one below check the console
    # output itself).
    again = craft_cli(*_args(world, out)[1:])
    assert again.exit_code == 0 and "already complete (10 anchors); nothing to do" in again.output

    other = craft_cli(*_args(world, out, "--seed=5")[1:])
    assert other.exit_code == 2 and "built with different arguments" in other.output and "--overwrite" in other.output

    info = craft_cli("cache-info", str(out))
    assert info.exit_code == 0, info.output
    assert "anchors   10/10 in 3 shard(s)" in info.output and info.output.count("ok        shard_") == 3

    shard = out / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    info = craft_cli("cache-info", str(out))
    assert info.exit_code == 1 and "CORRUPT   shard_00001.safetensors" in info.output

    (out / "manifest.json").write_text((out / "manifest.json").read_text()[:100])
    info = subprocess.run([CRAFT, "cache-info", str(out)], capture_output=True, text=True, env=_env(world), timeout=120)
    assert info.returncode == 1 and "not valid JSON" in info.stderr and "Traceback" not in info.stderr


def test_features_recomputed_from_stored_inputs_equal_the_cache(world, tmp_path):
    """The invariant of hidden mode: a student identical to the teacher starts at L_ret = 0."""
    out = tmp_path / "cache"
    build_cache(
        BuildOptions(
            policy_path=str(world / "act"), output_dir=str(out), dataset_root=str(world / "data"),
            dataset_repo_id="local/tiny", num_anchors=10, batch_size=3, shard_size=4,
        ),
        progress=False,
    )  # fmt: skip
    cache = AnchorCache(out)
    batch, inputs = preprocessed_rows(cache, teacher_preprocessor(world / "act"))
    student = _load_teacher(world)
    with make_tap(student) as tap, torch.no_grad():
        feats = tap.features(inputs, cache.manifest.layers_requested, cache.pooling)
    torch.testing.assert_close(feats, batch.features, atol=1e-5, rtol=0)
    assert float(hidden_mse(feats, batch.features)) < 1e-10


def test_kill_9_mid_build_then_rerun_equals_an_uninterrupted_build(world, tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    args = [*_args(world, killed, "--shard-size=2", "--batch-size=2")]
    args[args.index("--num-anchors=10")] = "--num-anchors=20"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(world))
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if len(json.loads((killed / "manifest.json").read_text())["shards"]) >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    partial = load_manifest(killed)
    assert not partial.complete and 2 <= len(partial.shards) < 10, "the build must have died part-way"

    # The rerun and the uninterrupted build in-process (`craft_cli`); only the build that is killed
    # needs a process of its own.
    res = craft_cli(*args[1:])
    assert res.exit_code == 0 and "resumed: " in res.output, res.output[-2000:]
    args_straight = [a if not a.startswith("--output-dir=") else f"--output-dir={straight}" for a in args]
    res = craft_cli(*args_straight[1:])
    assert res.exit_code == 0, res.output[-2000:]
    a, b = load_manifest(killed), load_manifest(straight)
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards] and len(a.shards) == 10

    def strip(m):
        d = m.model_dump()
        for k in ("created_at", "updated_at"):
            d.pop(k)
        d["build_args"].pop("output_dir")
        return d

    assert strip(a) == strip(b)


def test_build_from_a_video_dataset_decodes_and_keeps_the_invariant(world, tmp_path):
    """Frames decoded from AV1 video (PyAV here) go through the same build and round trip."""
    from support.tiny_dataset import make_dataset

    make_dataset(tmp_path / "video", episodes=1, frames=10, use_videos=True)
    out = tmp_path / "cache"
    summary = build_cache(
        BuildOptions(
            policy_path=str(world / "act"), output_dir=str(out), dataset_root=str(tmp_path / "video"),
            dataset_repo_id="local/tiny", num_anchors=6, batch_size=3, shard_size=4,
        ),
        progress=False,
    )  # fmt: skip
    assert summary.state == "built" and summary.shards == 2 and summary.bytes_per_anchor > 0
    cache = AnchorCache(out)
    batch, inputs = preprocessed_rows(cache, teacher_preprocessor(world / "act"))
    student = _load_teacher(world)
    with make_tap(student) as tap, torch.no_grad():
        feats = tap.features(inputs, [-2, -1], cache.pooling)
    torch.testing.assert_close(feats, batch.features, atol=1e-5, rtol=0)
