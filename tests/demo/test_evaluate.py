"""Held-out action error and simulated success, on real Meta-World data and real LeRobot policies."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from craft_plugin.demo import evaluate as ev
from craft_plugin.demo.eval_stage import EvalJob, jobs_for, run_jobs


# ---------------------------------------------------------------------- Wilson
@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        # Hand-computed: center = (p + z²/2n)/(1 + z²/n), half = z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n)
        (5, 20, (0.11186, 0.46870)),
        (0, 10, (0.0, 0.27753)),
        (10, 10, (0.72247, 1.0)),
        (1, 2, (0.09453, 0.90547)),
    ],
)
def test_wilson_interval_matches_hand_computed_values(k: int, n: int, expected: tuple[float, float]) -> None:
    lo, hi = ev.wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=5e-5)
    assert hi == pytest.approx(expected[1], abs=5e-5)


def test_wilson_interval_edge_cases() -> None:
    assert ev.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        ev.wilson_interval(3, 2)
    lo, hi = ev.wilson_interval(50, 100)
    assert lo + hi == pytest.approx(1.0)  # symmetric at p = 0.5


# ---------------------------------------------------------------------- oracle policies
class _Oracle:
    """Returns the expert's recorded actions (looked up by the frame's dataset index)."""

    def __init__(self, actions: np.ndarray, chunk: int, offset: float = 0.0, n_obs_steps: int = 1) -> None:
        self.actions = torch.as_tensor(actions, dtype=torch.float32)
        self.chunk = chunk
        self.offset = torch.tensor([offset, 0.0, 0.0, 0.0])
        self.config = SimpleNamespace(type="oracle", input_features={}, n_obs_steps=n_obs_steps)
        self._seen: list[int] = []

    def reset(self) -> None:
        pass

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        idx = batch["index"].long()
        steps = idx[:, None] + torch.arange(self.chunk)[None]
        out = self.actions[steps.clamp(max=len(self.actions) - 1)] + self.offset
        out[steps >= len(self.actions)] = 100.0
        # Past an episode's end the oracle runs into the next episode's actions: those
        # steps must not be compared (they are not the expert's continuation).
        return out

    def select_action(self, batch: dict) -> torch.Tensor:
        return self.actions[batch["index"].long()] + self.offset


def _identity(x):
    return x


def test_oracle_action_error_is_zero_and_offset_is_exact(push_sets) -> None:
    heldout = push_sets[0]  # two episodes: chunks must stop at the episode boundary
    actions = np.asarray(heldout.load().hf_dataset["action"], dtype=np.float32)
    oracle = ev.LoadedPolicy(_Oracle(actions, chunk=7), _identity, _identity)
    res = ev.action_error(oracle, heldout, batch_size=16, progress=False)
    assert res.method == "chunk" and res.chunk == 7
    assert res.l1 == 0.0 and res.l1_first == 0.0
    assert res.frames == heldout.frames and res.episodes == 2
    # every frame compares min(7, frames left in its episode) steps
    lengths = [e["length"] for e in heldout.info["episodes"]]
    assert res.compared == sum(min(7, L - t) for L in lengths for t in range(L))

    shifted = ev.LoadedPolicy(_Oracle(actions, chunk=7, offset=0.1), _identity, _identity)
    res = ev.action_error(shifted, heldout, batch_size=16, progress=False)
    assert res.l1 == pytest.approx(0.1 / 4, abs=1e-6)  # 0.1 on one of 4 dimensions
    assert res.l1_first == pytest.approx(0.1 / 4, abs=1e-6)
    assert res.per_dimension == pytest.approx([0.1, 0.0, 0.0, 0.0], abs=1e-6)


def test_oracle_sequential_method(push_sets) -> None:
    heldout = push_sets[1]
    actions = np.asarray(heldout.load().hf_dataset["action"], dtype=np.float32)
    oracle = ev.LoadedPolicy(_Oracle(actions, chunk=1, offset=-0.2, n_obs_steps=2), _identity, _identity)
    res = ev.action_error(oracle, heldout, max_frames=30, progress=False)  # auto: history -> sequential
    assert res.method == "sequential" and res.frames == 30 and res.compared == 30
    assert res.l1 == pytest.approx(0.05, abs=1e-6)


# ---------------------------------------------------------------------- real policies
def test_act_checkpoint_action_error_and_rollouts(act_checkpoint, push_sets, reach_sets) -> None:
    loaded = ev.load_policy(act_checkpoint)
    assert loaded.type == "act"
    res = ev.action_error(loaded, push_sets[1], progress=False)
    assert res.method == "chunk" and res.chunk == 5
    assert math.isfinite(res.l1) and res.l1 > 0.0
    again = ev.action_error(loaded, push_sets[1], progress=False)
    assert again.l1 == pytest.approx(res.l1, rel=1e-6)  # deterministic

    out = ev.rollout_success(loaded, "reach-v3", episodes=2, max_steps=15, like=reach_sets[1], progress=False)
    assert out.episodes == 2 and len(out.success_steps) == 2 and out.max_steps == 15
    assert out.env_steps == sum(15 if s < 0 else s for s in out.success_steps)
    assert out.ci95 == pytest.approx(ev.wilson_interval(out.successes, 2))
    assert out.seeds == [200_000, 200_001]  # the rollout split, disjoint from train / held-out
    assert out.steps_per_s > 0


def test_craft_checkpoint_evaluates_like_its_base(act_checkpoint, craft_checkpoint, push_sets) -> None:
    base = ev.action_error(ev.load_policy(act_checkpoint), push_sets[1], progress=False)
    wrapped = ev.load_policy(craft_checkpoint)
    assert wrapped.type == "craft"
    res = ev.action_error(wrapped, push_sets[1], progress=False)
    assert res.l1 == pytest.approx(base.l1, rel=1e-6)
    out = ev.evaluate_checkpoint_action_error(craft_checkpoint, {"A": push_sets[1]}, progress=False)
    assert out["A"]["l1"] == pytest.approx(base.l1, rel=1e-6) and out["A"]["load_seconds"] > 0


def test_policy_expecting_other_inputs_is_refused(act_checkpoint, push_sets) -> None:
    loaded = ev.load_policy(act_checkpoint)
    with pytest.raises(ValueError, match="same state_mode"):
        ev.rollout_success(loaded, "push-v3", episodes=1, max_steps=2, state_mode="agent_goal", progress=False)
    with pytest.raises(FileNotFoundError, match="did you mean"):
        ev.load_policy(act_checkpoint.parent)


def test_tiny_smolvla_checkpoint_action_error(smolvla_checkpoint, push_sets) -> None:
    """A VLA (tiny SmolVLA, random weights, offline) takes image + state + instruction."""
    loaded = ev.load_policy(smolvla_checkpoint)
    assert loaded.type == "smolvla"
    res = ev.action_error(loaded, push_sets[1], max_frames=24, batch_size=12, progress=False)
    assert res.method == "chunk" and res.chunk == 4 and res.frames == 24
    assert math.isfinite(res.l1) and res.l1 > 0
    again = ev.action_error(loaded, push_sets[1], max_frames=24, batch_size=12, progress=False)
    assert again.l1 == pytest.approx(res.l1, rel=1e-5)  # seeded flow-matching noise
    out = ev.rollout_success(loaded, "push-v3", episodes=1, max_steps=6, like=push_sets[1], progress=False)
    assert out.env_steps == 6 and out.successes == 0


# ---------------------------------------------------------------------- LeRobot's own evaluator
def test_prepare_lerobot_eval_checkpoint_adds_a_stock_resize_step(act_checkpoint, tmp_path) -> None:
    import json

    out = ev.prepare_lerobot_eval_checkpoint(act_checkpoint, tmp_path / "view")
    steps = json.loads((out / ev.PREPROCESSOR_FILE).read_text())["steps"]
    names = [st["registry_name"] for st in steps]
    assert names.index(ev.RESIZE_STEP) == names.index("normalizer_processor") - 1
    assert steps[names.index(ev.RESIZE_STEP)]["config"] == {"crop_params_dict": None, "resize_size": [32, 32]}
    assert (out / "model.safetensors").resolve() == (act_checkpoint / "model.safetensors").resolve()
    assert json.loads((act_checkpoint / ev.PREPROCESSOR_FILE).read_text())["steps"] != steps  # original untouched
    # The patched pipeline loads with LeRobot's own registry and resizes the env's 480 px view.
    loaded = ev.load_policy(out)
    batch = loaded.preprocessor({"observation.image": torch.rand(1, 3, 480, 480), "observation.state": torch.zeros(1, 4),
                                 "task": ["Reach a goal position"]})  # fmt: skip
    assert tuple(batch["observation.image"].shape) == (1, 3, 32, 32)
    assert ev.prepare_lerobot_eval_checkpoint(out, tmp_path / "again") == out  # already resizes

    old = tmp_path / "old"  # a policy trained on generator-version-1 data
    old.mkdir()
    cfg = json.loads((act_checkpoint / "config.json").read_text())
    cfg["input_features"] = {"observation.images.cam": {"type": "VISUAL", "shape": [3, 32, 32]},
                             "observation.state": {"type": "STATE", "shape": [7]}}  # fmt: skip
    (old / "config.json").write_text(json.dumps(cfg))
    (old / ev.PREPROCESSOR_FILE).write_text((act_checkpoint / ev.PREPROCESSOR_FILE).read_text())
    with pytest.raises(ValueError, match=r"observation.images.cam.*agent_pos, 4 numbers"):
        ev.prepare_lerobot_eval_checkpoint(old)
    with pytest.raises(ValueError, match="always runs up to 500 steps"):
        ev.lerobot_eval_success(act_checkpoint, "reach-v3", episodes=1, max_steps=100)


def _first_frame(video: str) -> np.ndarray:
    import av

    with av.open(video) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def test_lerobot_eval_agrees_with_lean_rollouts(constant_act_checkpoint, reach_line, tmp_path) -> None:
    """Stock ``lerobot-eval --env.type=metaworld`` and the lean evaluator on the same 2 episode
    seeds: same initial scenes, same per-episode success, same steps to success. The policy's
    action does not depend on its inputs (see conftest), so the two renderers' different
    pictures cannot make the trajectories differ; with an image-driven policy they would."""
    from craft_plugin.demo import metaworld_data as md

    seeds = reach_line["seeds"]
    start = seeds[0]
    lean = ev.rollout_success(ev.load_policy(constant_act_checkpoint), "reach-v3", episodes=2, max_steps=500,
                              start_seed=start, progress=False)  # fmt: skip
    assert lean.seeds == list(seeds)
    assert lean.success_steps == [26, 24], "Meta-World's dynamics changed: re-pick REACH_LINE_* (conftest)"

    res = ev.lerobot_eval_success(constant_act_checkpoint, "reach-v3", episodes=2, start_seed=start,
                                  output_dir=tmp_path / "le", timeout=300)  # fmt: skip
    assert "--env.type=metaworld" in res.command and f"--seed={start}" in res.command
    assert res.seeds == lean.seeds and res.max_steps == 500
    assert res.episode_successes == [True, True] and res.successes == lean.successes == 2
    assert res.success_steps == lean.success_steps  # counted from lerobot-eval's episode videos
    assert res.ci95 == pytest.approx(lean.ci95) and res.pc_success == 100.0
    assert res.env_steps == sum(lean.success_steps) and res.steps_per_s > 0

    # Initial scenes: each episode video's first frame is the env's view of that seed.
    with md.MetaWorldScene("reach-v3", md.LEROBOT_EVAL_IMAGE_SIZE, renderer="env") as scene:
        views = {s: (scene.reset(s), scene.image().astype(np.float64))[1] for s in seeds}
    moved = np.abs(views[seeds[0]] - views[seeds[1]]).max(-1) > 40  # where the two scenes differ (goal, puck)
    assert moved.sum() > 100
    for video, seed in zip(res.videos, seeds, strict=True):
        frame = _first_frame(video).astype(np.float64)  # H.264: ~2.6 / 255 mean codec error
        assert np.abs(frame - views[seed]).mean() < 4.0
        same = np.abs(frame - views[seed])[moved].mean()  # measured ~6
        other = np.abs(frame - views[seeds[1] if seed == seeds[0] else seeds[0]])[moved].mean()  # ~86
        assert same < 20 < 50 < other, (seed, same, other)


# ---------------------------------------------------------------------- rendering only what is read
@pytest.mark.parametrize("fixture", ["act_checkpoint", "smolvla_checkpoint"])
def test_rendering_only_when_the_policy_reads_gives_the_same_actions(fixture, request, reach_sets, monkeypatch) -> None:
    loaded = ev.load_policy(request.getfixturevalue(fixture))
    period = ev.observation_period(loaded.policy)
    expected = loaded.policy.config.n_action_steps if fixture == "smolvla_checkpoint" else 5  # ACT's chunk
    assert period == expected > 1
    from craft_plugin.demo.metaworld_data import MetaWorldScene

    real_image = MetaWorldScene.image
    renders = []
    monkeypatch.setattr(MetaWorldScene, "image", lambda self: (renders.append(1), real_image(self))[1])

    def run(render_every):
        actions: list[torch.Tensor] = []
        recording = ev.LoadedPolicy(loaded.policy, loaded.preprocessor,
                                    lambda a: (actions.append(a.clone()), loaded.postprocessor(a))[1])  # fmt: skip
        renders.clear()
        res = ev.rollout_success(recording, "reach-v3", episodes=2, max_steps=12, seed=1, like=reach_sets[0],
                                 progress=False, render_every=render_every)  # fmt: skip
        return res, torch.stack(actions), len(renders)

    every_step, a_every, n_every = run(1)
    skipping, a_skip, n_skip = run(None)
    assert n_every == every_step.env_steps
    assert n_skip == sum(-(-(s if s > 0 else 12) // period) for s in skipping.success_steps) < n_every
    assert skipping.success_steps == every_step.success_steps
    assert torch.equal(a_skip, a_every) and len(a_skip) == every_step.env_steps


def test_observation_period_is_one_for_temporal_ensembling_and_history(act_checkpoint, craft_checkpoint) -> None:
    assert ev.observation_period(ev.load_policy(craft_checkpoint).policy) == 5  # the wrapper answers for its ACT
    loaded = ev.load_policy(act_checkpoint)
    loaded.policy.config.temporal_ensemble_coeff = 0.01
    assert ev.observation_period(loaded.policy) == 1
    loaded.policy.config.temporal_ensemble_coeff = None
    loaded.policy.config.n_action_steps = 1
    assert ev.observation_period(loaded.policy) == 1


# ---------------------------------------------------------------------- the demo's eval jobs (eval_stage)
# Here rather than in a file of their own: they share this file's fixtures (one xdist worker).


def _eval_jobs(checkpoint, push_sets, reach_sets) -> list[EvalJob]:
    tasks = (("A", "push-v3", push_sets[1], push_sets[0]), ("B", "reach-v3", reach_sets[1], reach_sets[0]))
    return jobs_for("act", checkpoint, tasks=tasks, episodes=1, max_steps=8, seed=3)


def test_jobs_in_two_processes_agree_with_one_process(act_checkpoint, push_sets, reach_sets) -> None:
    jobs = _eval_jobs(act_checkpoint, push_sets, reach_sets)
    assert [(j.kind, j.key, j.task) for j in jobs] == [("task", "A", "push-v3"), ("task", "B", "reach-v3")]
    inline = {r["job"].key: r for r in run_jobs(jobs, processes=1)}
    pooled = {r["job"].key: r for r in run_jobs(jobs, processes=2)}
    assert set(inline) == set(pooled) == {"A", "B"}
    for key in ("A", "B"):
        assert pooled[key]["action_error"]["l1"] == pytest.approx(inline[key]["action_error"]["l1"], rel=1e-5)
        assert pooled[key]["action_error"]["frames"] == inline[key]["action_error"]["frames"] > 0
        for field in ("success_steps", "seeds", "env_steps", "episodes"):
            assert pooled[key]["success"][field] == inline[key]["success"][field], (key, field)
        assert pooled[key]["success"]["env_steps"] > 0


def test_a_failing_job_raises_in_the_caller(act_checkpoint) -> None:
    # In this process; from a worker, ProcessPoolExecutor re-raises the same exception in future.result().
    bad = [EvalJob("x", act_checkpoint, "nonsense"), EvalJob("y", act_checkpoint, "nonsense")]
    with pytest.raises(ValueError, match="unknown job kind 'nonsense'"):
        list(run_jobs(bad, processes=1))
