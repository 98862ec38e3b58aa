"""Meta-World expert datasets: real simulation, real LeRobot datasets on disk, the cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from craft_plugin.demo import metaworld_data as md


def _files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_dataset_on_disk_has_features_frames_and_instruction(push_sets) -> None:
    train, heldout = push_sets
    ds = train.load()
    assert ds.num_episodes == 2 == train.episodes
    assert ds.num_frames == train.frames == sum(e["length"] for e in train.info["episodes"])
    feats = ds.meta.features
    assert feats[md.CAMERA_KEY]["dtype"] == "image"  # images, not video
    assert tuple(feats[md.CAMERA_KEY]["shape"]) == (32, 32, 3)
    assert tuple(feats["observation.state"]["shape"]) == (7,)
    assert tuple(feats["action"]["shape"]) == (4,)
    assert ds.meta.fps == 80
    item = ds[5]
    assert tuple(item[md.CAMERA_KEY].shape) == (3, 32, 32)
    assert 0.0 <= float(item[md.CAMERA_KEY].min()) and float(item[md.CAMERA_KEY].max()) <= 1.0
    assert float(item[md.CAMERA_KEY].std()) > 0.02  # a real rendered scene, not a blank frame
    assert item["task"] == "push the puck to the goal"
    # state = hand xyz, gripper, goal xyz of the raw observation
    sim = item[md.SIM_OBS_KEY].numpy()
    np.testing.assert_allclose(item["observation.state"].numpy(), sim[[0, 1, 2, 3, 36, 37, 38]], atol=1e-6)
    actions = np.asarray(ds.hf_dataset["action"])
    assert np.abs(actions).max() <= 1.0 and np.abs(actions).max() > 0.1
    assert set(ds.meta.tasks.index) == {"push the puck to the goal"}


def test_expert_succeeds_in_every_episode(push_sets, reach_sets, render) -> None:
    for ds in (*push_sets, *reach_sets):
        info = ds.info
        assert info["expert_success_rate"] == 1.0
        for ep in info["episodes"]:
            assert 10 < ep["success_step"] <= render.max_steps
            assert ep["length"] == min(ep["success_step"] + render.steps_after_success, render.max_steps)
    reach_train = reach_sets[0].load()
    assert set(reach_train.meta.tasks.index) == {"reach the goal"}


def test_heldout_seeds_are_disjoint_and_scenes_reproducible(push_sets, render) -> None:
    train, heldout = push_sets
    train_seeds = {e["seed"] for e in train.info["episodes"]}
    held_seeds = {e["seed"] for e in heldout.info["episodes"]}
    assert train_seeds == {0, 1} and held_seeds == {100_000}
    # Re-simulating a seed gives the same frames as the cached episode (seeded scenes).
    seed = 1
    cached = np.load(md._episode_dir(Path(train.root).parents[1], "push-v3", render) / f"seed_{seed}.npz")
    with md.MetaWorldScene("push-v3", render.image_size) as scene:
        obs = scene.reset(seed)
        np.testing.assert_array_equal(obs, cached["obs"][0])
        np.testing.assert_array_equal(scene.image(), cached["images"][0])
        other = scene.reset(seed + 1)
    assert not np.allclose(other[36:39], obs[36:39])  # another seed, another goal


def test_second_call_is_a_cache_hit(demo_cache, push_sets, render) -> None:
    train, _ = push_sets
    before = _files(train.root)
    t0 = time.perf_counter()
    again, _ = md.task_datasets("push-v3", 2, 1, demo_cache, render=render, progress=False)
    assert time.perf_counter() - t0 < 1.0
    assert again.cached and again.root == train.root
    assert _files(again.root) == before
    # Anything that changes the data gets its own folder.
    other = md._dataset_key([md.EpisodeSet("push-v3", 3)], render, "agent_goal", 80)
    assert other != train.info["key"]
    assert md._dataset_key([md.EpisodeSet("push-v3", 2)], render, "agent", 80) != train.info["key"]


def test_replay_dataset_holds_all_new_episodes_plus_k_old(demo_cache, push_sets, reach_sets, render) -> None:
    t0 = time.perf_counter()
    replay = md.replay_dataset("reach-v3", 2, "push-v3", 1, demo_cache, render=render, progress=False)
    assert time.perf_counter() - t0 < 20  # episodes come from the raw cache, nothing re-simulated
    ds = replay.load()
    assert ds.num_episodes == 3
    tasks = [e["task"] for e in replay.info["episodes"]]
    assert tasks == ["reach-v3", "reach-v3", "push-v3"]
    push_first = push_sets[0].info["episodes"][0]
    assert replay.info["episodes"][2]["seed"] == push_first["seed"]  # the episode the base saw
    assert set(ds.meta.tasks.index) == {"reach the goal", "push the puck to the goal"}
    assert ds.num_frames == reach_sets[0].frames + push_first["length"]
    last = ds[ds.num_frames - 1]
    assert last["task"] == "push the puck to the goal"


def test_bad_arguments_have_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown task 'pick-v3'"):
        md.EpisodeSet("pick-v3", 2)
    with pytest.raises(ValueError, match="unknown state mode"):
        md.state_from_obs(np.zeros(39), "goal")
    with pytest.raises(ValueError, match="old_episodes >= 1"):
        md.replay_dataset("reach-v3", 2, "push-v3", 0)
    with pytest.raises(FileNotFoundError, match="craft_demo.json"):
        md.load_demo_info("/nonexistent")
