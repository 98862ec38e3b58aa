"""Meta-World expert datasets: real simulation, real LeRobot datasets on disk, the cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from craft_plugin.demo import metaworld_data as md


def _files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_dataset_on_disk_has_features_frames_and_instruction(push_sets, render) -> None:
    train, heldout = push_sets
    ds = train.load()
    assert ds.num_episodes == 2 == train.episodes
    assert ds.num_frames == train.frames == sum(e["length"] for e in train.info["episodes"])
    feats = ds.meta.features
    assert feats[md.CAMERA_KEY]["dtype"] == "image"  # images, not video
    assert tuple(feats[md.CAMERA_KEY]["shape"]) == (32, 32, 3)
    assert md.CAMERA_KEY == "observation.image"  # lerobot-eval's key for the metaworld env's camera
    assert tuple(feats["observation.state"]["shape"]) == (4,)  # agent_pos
    assert tuple(feats["action"]["shape"]) == (4,)
    assert ds.meta.fps == 80
    item = ds[5]
    assert tuple(item[md.CAMERA_KEY].shape) == (3, 32, 32)
    assert 0.0 <= float(item[md.CAMERA_KEY].min()) and float(item[md.CAMERA_KEY].max()) <= 1.0
    assert float(item[md.CAMERA_KEY].std()) > 0.02  # a real rendered scene, not a blank frame
    assert item["task"] == "Push the puck to a goal"
    # state = LeRobot's agent_pos: hand xyz, gripper of the raw observation
    sim = item[md.SIM_OBS_KEY].numpy()
    np.testing.assert_allclose(item["observation.state"].numpy(), sim[:4], atol=1e-6)
    actions = np.asarray(ds.hf_dataset["action"])
    assert np.abs(actions).max() <= 1.0 and np.abs(actions).max() > 0.1
    assert set(ds.meta.tasks.index) == {"Push the puck to a goal"}
    assert train.info["lerobot_eval"]["state"]["compatible"] is True
    assert train.render == render


def test_instructions_are_lerobots_task_descriptions() -> None:
    import json

    import lerobot.envs

    table = json.loads((Path(lerobot.envs.__file__).parent / "metaworld_config.json").read_text())
    assert md.INSTRUCTIONS == {t: table["TASK_DESCRIPTIONS"][t] for t in md.INSTRUCTIONS}


def test_images_match_lerobot_evals_view(render) -> None:
    """Same camera pose, orientation and size as stock lerobot-eval's metaworld env (its 480 x 480
    view downscaled as a prepared checkpoint's resize step does); the lean renderer differs in
    lighting / anti-aliasing only, the "env" renderer not at all."""
    from lerobot.envs.metaworld import MetaworldEnv

    size, seed = render.image_size, 200_001
    env = MetaworldEnv("push-v3", obs_type="pixels_agent_pos")
    try:
        obs, _ = env.reset(seed=seed)
        view = md.lerobot_view(obs["pixels"], size).astype(np.float64)
        with md.MetaWorldScene("push-v3", size) as lean:
            raw = lean.reset(seed)
            np.testing.assert_array_equal(raw[:4], obs["agent_pos"])  # same state (agent_pos) ...
            lean_img = lean.image().astype(np.float64)
        looks = md.look_render("lerobot_eval", size)
        with md.MetaWorldScene("push-v3", size, shadows=looks.shadows, supersample=looks.supersample) as like:
            like.reset(seed)
            like_img = like.image().astype(np.float64)
    finally:
        env.close()
    with md.MetaWorldScene("push-v3", size, renderer="env") as exact:
        exact.reset(seed)
        exact_img = exact.image().astype(np.float64)
        exact.reset(seed + 5)
        other = exact.image().astype(np.float64)
    diff = np.abs(lean_img - view).mean()
    assert np.abs(exact_img - view).max() <= 1.0  # the env's own render: the same picture
    assert diff < 14.0, diff  # measured ~9-10 / 255 (no shadow, no MSAA)
    # The "lerobot_eval" look (shadows, 4x supersampling): measured ~0.5 / 255, ~20x closer.
    like_diff = np.abs(like_img - view).mean()
    assert like_diff < 1.5 and like_diff < diff / 4, (like_diff, diff)
    assert np.abs(like_img - view).max() < 60
    assert np.abs(lean_img[::-1, ::-1] - view).mean() > 2 * diff  # the 180-degree flip is right
    assert np.abs(other - view).max() > 20  # another seed: the puck / goal elsewhere


def test_expert_succeeds_in_every_episode(push_sets, reach_sets, render) -> None:
    for ds in (*push_sets, *reach_sets):
        info = ds.info
        assert info["expert_success_rate"] == 1.0
        for ep in info["episodes"]:
            assert 10 < ep["success_step"] <= render.max_steps
            assert ep["length"] == min(ep["success_step"] + render.steps_after_success, render.max_steps)
    reach_train = reach_sets[0].load()
    assert set(reach_train.meta.tasks.index) == {"Reach a goal position"}


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
        # Same state, same picture — up to a pixel or two: two GL contexts with different
        # render histories (this fresh scene vs the shared one that made the episodes) can
        # rasterize an edge pixel differently (seen: identical qpos/qvel, 1-3 pixels off by <= 2).
        img = scene.image().astype(int)
        assert (img != cached["images"][0]).any(-1).mean() < 0.01
        assert np.abs(img - cached["images"][0]).mean() < 0.05
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
    other = md._dataset_key([md.EpisodeSet("push-v3", 3)], render, "agent", 80)
    assert other != train.info["key"]
    assert md._dataset_key([md.EpisodeSet("push-v3", 2)], render, "agent_goal", 80) != train.info["key"]
    shadows = md.RenderOptions(**{**train.info["render"], "shadows": True})
    assert md._dataset_key([md.EpisodeSet("push-v3", 2)], shadows, "agent", 80) != train.info["key"]
    assert md._episode_dir(demo_cache, "push-v3", shadows) != md._episode_dir(demo_cache, "push-v3", render)


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
    assert set(ds.meta.tasks.index) == {"Reach a goal position", "Push the puck to a goal"}
    assert ds.num_frames == reach_sets[0].frames + push_first["length"]
    last = ds[ds.num_frames - 1]
    assert last["task"] == "Push the puck to a goal"


def test_bad_arguments_have_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown task 'pick-v3'"):
        md.EpisodeSet("pick-v3", 2)
    with pytest.raises(ValueError, match="unknown state mode"):
        md.state_from_obs(np.zeros(39), "goal")
    with pytest.raises(ValueError, match="old_episodes >= 1"):
        md.replay_dataset("reach-v3", 2, "push-v3", 0)
    with pytest.raises(FileNotFoundError, match="craft_demo.json"):
        md.load_demo_info("/nonexistent")
    with pytest.raises(ValueError, match="lean-renderer options"):
        md.RenderOptions(renderer="env", shadows=True)
    with pytest.raises(ValueError, match="500 steps"):
        md.RenderOptions(max_steps=501)
    with pytest.raises(ValueError, match="look='pretty': expected one of fast, lerobot_eval"):
        md.look_render("pretty")
    from craft_plugin.demo.pipeline import DemoPlan

    with pytest.raises(ValueError, match="look='env'"):
        DemoPlan(look="env")
    assert md.look_render("lerobot_eval", 32) == md.RenderOptions(image_size=32, shadows=True, supersample=4)


def test_tasks_built_in_parallel_processes_equal_the_ones_built_here(tmp_path, push_sets, reach_sets, render) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    fresh = tmp_path / "cache"
    assert not md.is_built([md.EpisodeSet("push-v3", 1, "heldout")], fresh, render=render)
    # One train episode each (kept small); the held-out sets are the fixtures' (one episode each).
    built = md.tasks_datasets(("push-v3", "reach-v3"), 1, 1, fresh, render=render, processes=2, progress=False)
    assert md.is_built([md.EpisodeSet("push-v3", 1, "heldout")], fresh, render=render)
    for (train, held), here in zip(built, (push_sets[1], reach_sets[1])):
        assert train.cached and held.cached  # found in the cache the workers wrote
        assert train.episodes == 1 and train.frames > 0
        assert held.info["key"] == here.info["key"] and held.root != here.root
        assert held.info["episodes"] == here.info["episodes"] and held.frames == here.frames
        a, b = LeRobotDataset(held.repo_id, root=held.root), LeRobotDataset(here.repo_id, root=here.root)
        for i in (0, 1, held.frames - 1):
            for key in ("action", "observation.state"):
                assert np.array_equal(a[i][key].numpy(), b[i][key].numpy()), (held.info["key"], i, key)
            # MuJoCo's first picture in a fresh renderer can differ by a level or two in a few pixels
            diff = np.abs(a[i][md.CAMERA_KEY].numpy() - b[i][md.CAMERA_KEY].numpy()) * 255
            assert diff.max() <= 2.0 + 1e-4 and (diff > 0.5).mean() < 0.01, (held.info["key"], i, diff.max(), (diff > 0.5).mean())
