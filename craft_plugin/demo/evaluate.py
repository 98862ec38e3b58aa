"""Evaluate a LeRobot policy on the Meta-World demo tasks: held-out action error and sim success.

Decisions:

* **Loading** (:func:`load_policy`): any LeRobot ``pretrained_model`` folder, including a
  ``craft`` checkpoint (``craft_plugin.policies`` is imported so the type is registered; the
  wrapper delegates ``select_action`` / ``predict_action_chunk`` to its base). Config via
  ``PreTrainedConfig.from_pretrained``, weights via ``get_policy_class(type).from_pretrained``,
  processors via ``make_pre_post_processors(cfg, pretrained_path=...)`` with the device
  overridden, like ``lerobot-eval``. The policy is put in ``eval()``.
* **Action error** (:func:`action_error`): on a held-out dataset written by
  :mod:`craft_plugin.demo.metaworld_data`, the mean absolute difference, in raw action units
  (after the postprocessor's un-normalization), between the policy's predicted actions and the
  expert's recorded ones. ``method="chunk"`` (default when the policy has
  ``predict_action_chunk`` and looks at one observation step): from each frame ``t`` the
  predicted chunk ``a_t .. a_{t+T-1}`` is compared with the recorded actions of the same
  episode; steps past the episode's end are left out. ``l1`` averages over every compared
  step and action dimension, ``l1_first`` over the first step of each chunk only.
  ``method="sequential"`` (policies with observation history, e.g. diffusion): per episode,
  ``reset()`` then ``select_action`` frame by frame, compared with ``a_t``. Sampling policies
  (diffusion, flow matching) draw noise: the torch RNG is seeded (and restored afterwards), so
  a result is reproducible.
* **Success, lean** (:func:`rollout_success`): seeded rollouts in the same scenes the data came
  from (seeds from the ``rollout`` split, disjoint from train and held-out), same renderer,
  camera, image size and state layout as the dataset (pass ``like=`` a dataset), LeRobot's task
  description as ``task``; an episode succeeds when Meta-World reports success within
  ``max_steps``. The success rate comes with a 95 % Wilson score interval
  (:func:`wilson_interval`).
* **Success, LeRobot's evaluator** (:func:`lerobot_eval_success`): the stock ``lerobot-eval
  --env.type=metaworld`` executable on a plain checkpoint folder, per-episode successes read
  from its ``eval_info.json``. Both evaluators agree by construction where they can: the same
  episode seeds (``lerobot-eval --seed=S`` runs episode ``i`` with ``env.seed(S + i)``, exactly
  :class:`~craft_plugin.demo.metaworld_data.MetaWorldScene.reset`; ``rollout_success`` uses
  ``S = seed * 1e6 + 200_000`` and so does ``lerobot_eval_success``), the same success rule
  (Meta-World's ``info["success"]`` at any step, the episode ends there), actions passed to
  the env unclipped as float32, one ``policy.reset()`` per episode. What cannot be matched with
  the stock tool (LeRobot 0.6.1): its metaworld env always runs up to **500** steps
  (``MetaworldEnv._max_episode_steps`` is hard-coded, ``--env.episode_length`` is ignored), so
  pass ``max_steps=500`` to ``rollout_success`` to compare rates; it always renders 480 x 480
  with shadows and 4x MSAA (the lean renderer's images differ by ~9/255 on average: see
  ``metaworld_data``; a ``renderer="env"`` dataset / :class:`RenderOptions` gives the same
  picture up to uint8 rounding, at the env's speed), so a policy that looks at the image takes
  slightly different actions and trajectories can part; its torch RNG has been used to build
  the policy before the rollouts, so sampling policies (diffusion, flow matching) draw other
  noise. With a deterministic policy whose actions do not depend on the image both give the
  same per-episode success and the same steps to success (tested).
* **Checkpoints for lerobot-eval** (:func:`prepare_lerobot_eval_checkpoint`): the env hands the
  policy 480 x 480 images; a folder of symlinks whose ``policy_preprocessor.json`` has LeRobot's
  stock ``image_crop_resize_processor`` step (to the policy's image size) makes a policy trained
  at 64 px see what it was trained on. Stock LeRobot has no other way to set the render size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported (see metaworld_data)

import numpy as np
import torch

from craft_plugin.demo.metaworld_data import (
    CAMERA_KEY,
    DEFAULT_STATE_MODE,
    INSTRUCTIONS,
    LEROBOT_EVAL_IMAGE_SIZE,
    LEROBOT_EVAL_MAX_STEPS,
    STATE_KEY,
    DemoDataset,
    RenderOptions,
    episode_seeds,
    load_demo_info,
    shared_scene,
    state_from_obs,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ActionErrorResult",
    "LeRobotEvalResult",
    "LoadedPolicy",
    "SuccessResult",
    "QUEUED_TYPES",
    "action_error",
    "evaluate_checkpoint_action_error",
    "lerobot_eval_command",
    "lerobot_eval_success",
    "observation_period",
    "load_policy",
    "prepare_lerobot_eval_checkpoint",
    "rollout_seeds",
    "rollout_success",
    "wilson_interval",
]

Z95 = 1.959963984540054


# ---------------------------------------------------------------------- statistics
def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95 % by default); ``(0, 1)`` when ``n == 0``."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


# ---------------------------------------------------------------------- loading
@dataclass
class LoadedPolicy:
    """A policy with its processors. ``preprocessor``/``postprocessor`` are callables (LeRobot
    pipelines, or anything that maps a batch / an action tensor)."""

    policy: Any
    preprocessor: Callable[[dict[str, Any]], dict[str, Any]]
    postprocessor: Callable[[torch.Tensor], torch.Tensor]
    path: Path | None = None
    load_seconds: float = 0.0

    @property
    def config(self) -> Any:
        return self.policy.config

    @property
    def type(self) -> str:
        return str(getattr(self.config, "type", type(self.policy).__name__))


def load_policy(path: str | os.PathLike[str], device: str = "cpu") -> LoadedPolicy:
    """Load a LeRobot ``pretrained_model`` folder (any registered type, ``craft`` included)."""
    t0 = time.perf_counter()
    folder = Path(path)
    if not (folder / "config.json").is_file():
        hint = ""
        if (folder / "pretrained_model" / "config.json").is_file():
            hint = f" (did you mean {folder / 'pretrained_model'}?)"
        elif (folder / "checkpoints" / "last" / "pretrained_model").is_dir():
            hint = f" (did you mean {folder / 'checkpoints' / 'last' / 'pretrained_model'}?)"
        raise FileNotFoundError(f"{folder} is not a LeRobot checkpoint folder: no config.json{hint}")
    import craft_plugin.policies  # noqa: F401  (registers the ``craft`` policy type)
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    cfg = PreTrainedConfig.from_pretrained(str(folder))
    cfg.device = device
    policy = get_policy_class(cfg.type).from_pretrained(str(folder), config=cfg)
    policy.to(device)
    policy.eval()
    pre, post = make_pre_post_processors(
        cfg, pretrained_path=str(folder), preprocessor_overrides={"device_processor": {"device": device}}
    )
    seconds = time.perf_counter() - t0
    logger.info("loaded %s policy from %s in %.1f s", cfg.type, folder, seconds)
    return LoadedPolicy(policy, pre, post, folder, seconds)


def _n_obs_steps(policy: Any) -> int:
    cfg = policy.config
    base = getattr(cfg, "base_config", None)  # craft wrapper
    return int(getattr(base if base is not None else cfg, "n_obs_steps", 1) or 1)


#: Policy types whose ``select_action`` (LeRobot 0.6.1) reads the observation only when its action
#: queue is empty, refills it with ``n_action_steps`` actions and keeps no observation history
#: when ``n_obs_steps == 1`` (ACT only without temporal ensembling).
QUEUED_TYPES: frozenset[str] = frozenset({"act", "smolvla"})


def observation_period(policy: Any) -> int:
    """Every how many env steps ``policy.select_action`` reads its observation after a
    ``reset()``: ``n_action_steps`` for :data:`QUEUED_TYPES` with one observation step and no
    temporal ensembling, else 1 (every step). A craft wrapper answers for its base."""
    cfg = policy.config
    cfg = getattr(cfg, "base_config", None) or cfg
    if str(getattr(cfg, "type", "")) not in QUEUED_TYPES:
        return 1
    if int(getattr(cfg, "n_obs_steps", 1) or 1) != 1 or getattr(cfg, "temporal_ensemble_coeff", None) is not None:
        return 1
    return max(1, int(getattr(cfg, "n_action_steps", 1) or 1))


def _input_keys(policy: Any) -> set[str]:
    feats = getattr(policy.config, "input_features", None) or {}
    return set(feats)


def _check_inputs(policy: Any, available: dict[str, tuple[int, ...]]) -> None:
    """Fail early, naming the keys, when the policy wants inputs this evaluation cannot give."""
    feats = getattr(policy.config, "input_features", None) or {}
    missing = [k for k in feats if k not in available]
    if missing:
        raise ValueError(
            f"the policy expects inputs {missing} that this evaluation does not provide "
            f"(it gives {sorted(available)}); train it on a dataset from craft_plugin.demo.metaworld_data"
        )
    for key, ft in feats.items():
        shape = tuple(getattr(ft, "shape", ()) or ())
        if key == STATE_KEY and shape and shape != available[key]:
            raise ValueError(
                f"the policy's {key} has shape {shape} but the data gives {available[key]}: "
                "use the same state_mode as its training data"
            )


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _postprocess(post: Callable[[torch.Tensor], torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
    """Un-normalize ``[B, A]`` or ``[B, T, A]`` actions (processors are applied per action row)."""
    if actions.ndim == 3:
        b, t, a = actions.shape
        return post(actions.reshape(b * t, a)).reshape(b, t, -1)
    return post(actions)


# ---------------------------------------------------------------------- action error
@dataclass
class ActionErrorResult:
    """Held-out action error in raw action units."""

    l1: float  #: mean |pred - expert| over every compared chunk step and action dimension
    l1_first: float  #: the same over the first step of each chunk only
    frames: int  #: frames evaluated
    episodes: int
    compared: int  #: (frame, chunk step) pairs compared
    chunk: int  #: predicted steps per frame (1 for sequential)
    method: str
    seconds: float  #: wall time of this evaluation (model loading not included)
    dataset: str = ""
    per_dimension: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dataset_root(dataset: DemoDataset | str | os.PathLike[str]) -> tuple[Path, str]:
    if isinstance(dataset, DemoDataset):
        return Path(dataset.root), dataset.repo_id
    root = Path(dataset)
    info = load_demo_info(root)
    return root, str(info["repo_id"])


def action_error(
    loaded: LoadedPolicy,
    dataset: DemoDataset | str | os.PathLike[str],
    *,
    batch_size: int = 32,
    method: Literal["auto", "chunk", "sequential"] = "auto",
    max_frames: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ActionErrorResult:
    """Mean L1 between the policy's actions and the expert's on a held-out dataset (see module doc).

    ``max_frames`` evaluates only the first that many frames (whole dataset by default).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    root, repo_id = _dataset_root(dataset)
    ds = LeRobotDataset(repo_id, root=root)
    policy = loaded.policy
    if method == "auto":
        method = "chunk" if hasattr(policy, "predict_action_chunk") and _n_obs_steps(policy) == 1 else "sequential"
    actions = torch.as_tensor(np.asarray(ds.hf_dataset["action"], dtype=np.float32))
    episode = torch.as_tensor(np.asarray(ds.hf_dataset["episode_index"], dtype=np.int64))
    # Row position of each dataset ``index`` (they coincide for a freshly written dataset).
    index_col = torch.as_tensor(np.asarray(ds.hf_dataset["index"], dtype=np.int64))
    position = torch.full((int(index_col.max()) + 1,), -1, dtype=torch.int64)
    position[index_col] = torch.arange(len(index_col))
    n = len(actions) if max_frames is None else min(len(actions), int(max_frames))
    state_dim = tuple(ds.meta.features[STATE_KEY]["shape"])
    img_shape = tuple(ds.meta.features[CAMERA_KEY]["shape"])
    _check_inputs(policy, {STATE_KEY: state_dim, CAMERA_KEY: (img_shape[2], img_shape[0], img_shape[1])})

    abs_sum = torch.zeros(actions.shape[1], dtype=torch.float64)
    first_sum = 0.0
    count = 0
    first_count = 0
    chunk_len = 1
    with _seeded(seed), torch.no_grad():
        if method == "chunk":
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(ds, range(n)), batch_size=batch_size, shuffle=False, num_workers=0
            )
            bar = tqdm(total=n, desc="action error", unit="frame", disable=not progress, leave=False)
            for batch in loader:
                raw = {k: v for k, v in batch.items() if k.startswith("observation.")}
                raw["task"] = list(batch["task"])
                raw["index"] = batch["index"]
                if hasattr(policy, "reset"):
                    policy.reset()
                pred = policy.predict_action_chunk(loaded.preprocessor(raw))
                if pred.ndim == 2:
                    pred = pred[:, None]
                pred = _postprocess(loaded.postprocessor, pred).to("cpu", torch.float64)
                idx = position[batch["index"].long()]
                chunk_len = pred.shape[1]
                steps = idx[:, None] + torch.arange(chunk_len)[None, :]  # [B, T]
                in_range = steps < len(actions)
                safe = steps.clamp(max=len(actions) - 1)
                valid = in_range & (episode[safe] == episode[idx][:, None])
                target = actions[safe].to(torch.float64)[..., : pred.shape[-1]]
                diff = (pred[..., : target.shape[-1]] - target).abs()
                abs_sum += (diff * valid[..., None]).sum(dim=(0, 1))
                count += int(valid.sum())
                first_sum += float(diff[:, 0].sum())
                first_count += diff.shape[0]
                bar.update(len(idx))
            bar.close()
        elif method == "sequential":
            ep_ids = episode[:n].unique().tolist()
            bar = tqdm(total=n, desc="action error", unit="frame", disable=not progress, leave=False)
            for ep in ep_ids:
                policy.reset()
                frames = (episode[:n] == ep).nonzero().flatten().tolist()
                for i in frames:
                    item = ds[i]
                    raw = {k: v[None] for k, v in item.items() if k.startswith("observation.")}
                    raw["task"] = [item["task"]]
                    raw["index"] = item["index"][None]
                    act = _postprocess(loaded.postprocessor, policy.select_action(loaded.preprocessor(raw)))
                    diff = (act.reshape(-1).to("cpu", torch.float64) - actions[i].to(torch.float64)).abs()
                    abs_sum += diff
                    first_sum += float(diff.sum())
                    count += 1
                    first_count += 1
                    bar.update(1)
            bar.close()
        else:
            raise ValueError(f"unknown method {method!r}; expected 'auto', 'chunk' or 'sequential'")
    dims = actions.shape[1]
    per_dim = (abs_sum / max(count, 1)).tolist()
    result = ActionErrorResult(
        l1=float(abs_sum.sum() / max(count * dims, 1)),
        l1_first=first_sum / max(first_count * dims, 1),
        frames=n,
        episodes=int(episode[:n].unique().numel()),
        compared=count,
        chunk=chunk_len if method == "chunk" else 1,
        method=method,
        seconds=time.perf_counter() - t0,
        dataset=str(root),
        per_dimension=per_dim,
    )
    logger.info(
        "action error on %s: L1 %.4f (first step %.4f) over %d frames, %s, %.1f s",
        root.name, result.l1, result.l1_first, n, method, result.seconds,
    )
    return result


def evaluate_checkpoint_action_error(
    checkpoint: str | os.PathLike[str],
    datasets: dict[str, DemoDataset | str | os.PathLike[str]],
    *,
    device: str = "cpu",
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Load ``checkpoint`` once and measure :func:`action_error` on each named dataset
    (e.g. ``{"A": push_heldout, "B": reach_heldout}``). Each entry's ``seconds`` is its own
    evaluation; ``load_seconds`` (shared) is added to every entry."""
    loaded = load_policy(checkpoint, device=device)
    out = {}
    for name, ds in datasets.items():
        res = action_error(loaded, ds, **kwargs).to_dict()
        res["load_seconds"] = loaded.load_seconds
        out[name] = res
    return out


# ---------------------------------------------------------------------- simulated success
@dataclass
class SuccessResult:
    task: str
    successes: int
    episodes: int
    rate: float
    ci95: tuple[float, float]  #: Wilson score interval
    max_steps: int
    seeds: list[int]
    success_steps: list[int]  #: per episode: steps to success, -1 when it failed
    env_steps: int
    seconds: float
    steps_per_s: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d


def rollout_seeds(seed: int, episodes: int, start_seed: int | None = None) -> list[int]:
    """Episode seeds of a success evaluation: ``start_seed + i`` when given, else the
    ``rollout`` split of ``seed`` (``seed * 1_000_000 + 200_000 + i``, disjoint from the data).
    Both evaluators use these, so episode ``i`` starts from the same state in both."""
    if start_seed is not None:
        return [int(start_seed) + i for i in range(episodes)]
    return list(_take(episode_seeds("rollout", seed), episodes))


def rollout_success(
    loaded: LoadedPolicy,
    task: str,
    *,
    episodes: int = 20,
    max_steps: int = 150,
    seed: int = 0,
    like: DemoDataset | str | os.PathLike[str] | None = None,
    render: RenderOptions | None = None,
    state_mode: str | None = None,
    instruction: str | None = None,
    progress: bool = True,
    start_seed: int | None = None,
    render_every: int | None = None,
) -> SuccessResult:
    """Success rate of ``episodes`` seeded rollouts of ``task`` (see module doc).

    Observations are made as the dataset ``like`` was (image size, camera, renderer, state
    layout); without it pass ``render`` and ``state_mode`` (defaults: 64 px lean corner2,
    ``agent``). ``max_steps=500`` is what ``lerobot-eval`` runs (:func:`lerobot_eval_success`).
    A policy that samples (SmolVLA's flow-matching noise per action chunk) draws from torch's
    generator, seeded here with ``seed`` and by ``lerobot-eval`` with its ``--seed`` after its
    own set-up, so on the same episodes the two agree on success rates, not episode by episode
    (``benchmarks/look_gap.py --policy-seeds`` shows how much one draw moves an episode).

    ``render_every`` (None: :func:`observation_period`) renders the camera on the steps the
    policy reads it (its queue empty: steps 0, k, 2k, ... after ``reset()``) and hands it the
    last picture on the others, which it discards unread; the state is read every step. Rendering
    took 54 % of a SmolVLA rollout's time in a profile on a CPU, and the actions are the same as
    with ``render_every=1`` (tested).
    """
    from tqdm.auto import tqdm

    if like is not None:
        info = like.info if isinstance(like, DemoDataset) else load_demo_info(like)
        if render is None:
            r = {k: v for k, v in info["render"].items() if k in RenderOptions.__dataclass_fields__}
            r.pop("max_steps", None)
            r.pop("steps_after_success", None)
            render = RenderOptions(**r)
        state_mode = state_mode or info["state_mode"]
    render = render or RenderOptions()
    state_mode = state_mode or DEFAULT_STATE_MODE
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(INSTRUCTIONS)}")
    if not 1 <= max_steps <= LEROBOT_EVAL_MAX_STEPS:
        raise ValueError(f"max_steps={max_steps}: Meta-World episodes are 1..{LEROBOT_EVAL_MAX_STEPS} steps")
    text = instruction or INSTRUCTIONS[task]
    policy = loaded.policy
    size = render.image_size
    state_dim = len(state_from_obs(np.zeros(39), state_mode))
    _check_inputs(policy, {STATE_KEY: (state_dim,), CAMERA_KEY: (3, size, size)})
    every = observation_period(policy) if render_every is None else render_every
    if every < 1:
        raise ValueError(f"render_every={render_every}: expected None or >= 1")
    scene = shared_scene(task, render=render)
    seeds = rollout_seeds(seed, episodes, start_seed)
    success_steps: list[int] = []
    env_steps = 0
    t0 = time.perf_counter()
    bar = tqdm(seeds, desc=f"rollouts {task}", unit="ep", disable=not progress, leave=False)
    with _seeded(seed), torch.no_grad():
        for ep_seed in bar:
            obs = scene.reset(ep_seed)
            policy.reset()
            done_at = -1
            for t in range(max_steps):
                if t % every == 0:
                    img = torch.from_numpy(scene.image()).permute(2, 0, 1).float().div_(255.0)
                raw = {
                    CAMERA_KEY: img[None],
                    STATE_KEY: torch.from_numpy(state_from_obs(obs, state_mode))[None],
                    "task": [text],
                }
                action = _postprocess(loaded.postprocessor, policy.select_action(loaded.preprocessor(raw)))
                # As lerobot-eval: float32, unclipped (Meta-World clips the xyz part itself).
                act = action.reshape(-1)[:4].to("cpu", torch.float32).numpy()
                obs, success = scene.step(act)
                env_steps += 1
                if success:
                    done_at = t + 1
                    break
            success_steps.append(done_at)
            bar.set_postfix(success=sum(s > 0 for s in success_steps))
    bar.close()
    seconds = time.perf_counter() - t0
    k = sum(s > 0 for s in success_steps)
    result = SuccessResult(
        task=task,
        successes=k,
        episodes=episodes,
        rate=k / episodes if episodes else 0.0,
        ci95=wilson_interval(k, episodes),
        max_steps=max_steps,
        seeds=seeds,
        success_steps=success_steps,
        env_steps=env_steps,
        seconds=seconds,
        steps_per_s=env_steps / max(seconds, 1e-9),
    )
    logger.info(
        "%s success %d/%d = %.2f (95%% CI %.2f-%.2f), %d env steps at %.0f steps/s",
        task, k, episodes, result.rate, *result.ci95, env_steps, result.steps_per_s,
    )
    return result


# ---------------------------------------------------------------------- LeRobot's own evaluator
PREPROCESSOR_FILE = "policy_preprocessor.json"
RESIZE_STEP = "image_crop_resize_processor"  #: LeRobot's stock resize step (lerobot.processor.hil_processor)


def _policy_input_features(folder: Path) -> dict[str, dict[str, Any]]:
    cfg = json.loads((folder / "config.json").read_text())
    feats = cfg.get("input_features") or {}
    if not feats and isinstance(cfg.get("base_config"), dict):  # a craft wrapper's config
        feats = cfg["base_config"].get("input_features") or {}
    return feats


def prepare_lerobot_eval_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """A folder stock ``lerobot-eval --env.type=metaworld`` can evaluate ``checkpoint_dir`` from.

    The env hands the policy ``observation.image`` at 480 x 480; a policy trained on smaller
    images (the demo's 64 px) needs them resized. This writes ``out_dir`` (default: a new
    temporary folder) with every file of the checkpoint symlinked (copied where links fail),
    except ``policy_preprocessor.json``, which gains LeRobot's own ``image_crop_resize_processor``
    step (``resize_size`` = the policy's image size) just before normalization. A policy that
    already takes 480 x 480 images, or whose preprocessor already resizes, is returned as is.
    Raises ``ValueError`` when the policy wants inputs the env does not give (e.g. a dataset of
    generator version 1: ``observation.images.cam`` and a 7-number state).
    """
    folder = Path(checkpoint_dir)
    if not (folder / "config.json").is_file() or not (folder / PREPROCESSOR_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} is not a LeRobot checkpoint folder (needs config.json and {PREPROCESSOR_FILE}); "
            "pass a `pretrained_model` folder (for a craft run: `craft export` it first)"
        )
    feats = _policy_input_features(folder)
    images = {k: v for k, v in feats.items() if v.get("type") == "VISUAL"}
    wrong = sorted(set(images) - {CAMERA_KEY})
    state = feats.get(STATE_KEY)
    problems = []
    if wrong or not images:
        problems.append(f"image inputs {sorted(images)} (the env gives only {CAMERA_KEY!r})")
    if state is not None and tuple(state.get("shape", ())) != (4,):
        problems.append(f"{STATE_KEY} of shape {tuple(state.get('shape', ()))} (the env gives agent_pos, 4 numbers)")
    other = sorted(k for k, v in feats.items() if k not in images and k != STATE_KEY)
    if other:
        problems.append(f"inputs {other} the env does not give")
    if problems:
        raise ValueError(
            f"{folder}: lerobot-eval --env.type=metaworld cannot feed this policy: {'; '.join(problems)}. "
            "Train it on a dataset from craft_plugin.demo.metaworld_data with the default state_mode 'agent' "
            "(generator version >= 2)"
        )
    shape = tuple(images[CAMERA_KEY]["shape"])  # (C, H, W)
    size = [int(shape[1]), int(shape[2])]
    pre = json.loads((folder / PREPROCESSOR_FILE).read_text())
    steps = pre.get("steps", [])
    if size == [LEROBOT_EVAL_IMAGE_SIZE, LEROBOT_EVAL_IMAGE_SIZE] or any(st.get("registry_name") == RESIZE_STEP for st in steps):
        return folder
    at = next((i for i, st in enumerate(steps) if st.get("registry_name") == "normalizer_processor"), len(steps))
    steps.insert(at, {"registry_name": RESIZE_STEP, "config": {"crop_params_dict": None, "resize_size": size}})
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="craft-lerobot-eval-ckpt-"))
    out.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.name == PREPROCESSOR_FILE:
            continue
        target = out / item.name
        if target.is_symlink() or target.exists():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        try:
            target.symlink_to(item.resolve(), target_is_directory=item.is_dir())
        except OSError:
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
    (out / PREPROCESSOR_FILE).write_text(json.dumps(pre, indent=2))
    return out


def _lerobot_eval_executable() -> str:
    here = Path(sys.executable).parent / "lerobot-eval"
    found = str(here) if here.is_file() else shutil.which("lerobot-eval")
    if not found:
        raise FileNotFoundError("lerobot-eval not found next to this Python nor on PATH: install lerobot")
    return found


def lerobot_eval_command(
    checkpoint_dir: str | os.PathLike[str],
    task: str,
    *,
    episodes: int,
    start_seed: int,
    output_dir: str | os.PathLike[str],
    batch_size: int = 1,
    device: str = "cpu",
    use_async_envs: bool = False,
    executable: str | None = None,
) -> list[str]:
    """The stock ``lerobot-eval`` command line (what a user would type)."""
    return [
        executable or _lerobot_eval_executable(),
        "--env.type=metaworld",
        f"--env.task={task}",
        f"--eval.n_episodes={episodes}",
        f"--eval.batch_size={batch_size}",
        f"--eval.use_async_envs={str(bool(use_async_envs)).lower()}",
        f"--policy.path={checkpoint_dir}",
        f"--policy.device={device}",
        f"--seed={start_seed}",
        f"--output_dir={output_dir}",
    ]


@dataclass
class LeRobotEvalResult(SuccessResult):
    """:class:`SuccessResult` from stock ``lerobot-eval``. ``success_steps`` holds ``-1`` for a
    failed episode and the steps to success for a successful one when its video was written
    (``lerobot-eval`` writes the first 10 episodes' videos), else ``0`` (succeeded, steps
    unknown). ``env_steps`` counts the steps of those videos' episodes only; ``steps_per_s`` is
    ``env_steps`` over ``eval_seconds`` (lerobot-eval's own rollout time, start-up excluded);
    ``seconds`` is the whole subprocess."""

    episode_successes: list[bool] = field(default_factory=list)
    eval_seconds: float = 0.0  #: lerobot-eval's ``overall.eval_s``
    pc_success: float = 0.0  #: lerobot-eval's own aggregate (percent)
    command: list[str] = field(default_factory=list)
    output_dir: str = ""
    videos: list[str] = field(default_factory=list)


def _video_frames(path: str | os.PathLike[str]) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def lerobot_eval_success(
    checkpoint_dir: str | os.PathLike[str],
    task: str,
    episodes: int = 20,
    seed: int = 0,
    max_steps: int | None = None,
    *,
    start_seed: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    use_async_envs: bool = False,
    timeout: float | None = None,
    extra_args: Sequence[str] = (),
    executable: str | None = None,
) -> LeRobotEvalResult:
    """Success rate of ``checkpoint_dir`` on Meta-World ``task`` from stock ``lerobot-eval``.

    Runs ``lerobot-eval --env.type=metaworld --env.task=TASK --eval.n_episodes=N
    --eval.batch_size=B --eval.use_async_envs=false --policy.path=CKPT --policy.device=DEVICE
    --seed=S --output_dir=OUT`` as a subprocess (``HF_HUB_OFFLINE=1``, ``MUJOCO_GL=egl`` unless
    set), on the folder :func:`prepare_lerobot_eval_checkpoint` makes from ``checkpoint_dir``
    (a plain LeRobot ``pretrained_model`` folder), and reads ``OUT/eval_info.json``. Episode
    ``i`` is seeded ``S + i`` with ``S`` from :func:`rollout_seeds` (the same states as
    :func:`rollout_success` with the same ``seed`` / ``start_seed``). ``max_steps``: only
    ``None`` or 500 — the stock metaworld env always runs up to 500 steps. The log is
    ``OUT/lerobot_eval.log``; ``OUT`` defaults to a new temporary folder.
    """
    if max_steps not in (None, LEROBOT_EVAL_MAX_STEPS):
        raise ValueError(
            f"max_steps={max_steps}: stock lerobot-eval's metaworld env (LeRobot 0.6.1) always runs up to "
            f"{LEROBOT_EVAL_MAX_STEPS} steps (MetaworldEnv._max_episode_steps; --env.episode_length is ignored); "
            f"use max_steps=None/{LEROBOT_EVAL_MAX_STEPS}, and rollout_success(max_steps={LEROBOT_EVAL_MAX_STEPS}) to compare"
        )
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    seeds = rollout_seeds(seed, episodes, start_seed)
    out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="craft-lerobot-eval-"))
    out.mkdir(parents=True, exist_ok=True)
    ckpt = prepare_lerobot_eval_checkpoint(checkpoint_dir, out / "checkpoint")
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # stale videos / eval_info.json of an earlier run must not be read
    cmd = [
        *lerobot_eval_command(
            ckpt, task, episodes=episodes, start_seed=seeds[0], output_dir=run_dir,
            batch_size=batch_size, device=device, use_async_envs=use_async_envs, executable=executable,
        ),
        *extra_args,
    ]  # fmt: skip
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("MUJOCO_GL", "egl")
    log = out / "lerobot_eval.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as err:
            raise TimeoutError(f"lerobot-eval ran past {timeout} s; log: {log}") from err
    seconds = time.perf_counter() - t0
    info_path = run_dir / "eval_info.json"
    if proc.returncode != 0 or not info_path.is_file():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"lerobot-eval failed (exit {proc.returncode}); command: {' '.join(map(str, cmd))}\n{tail}")
    info = json.loads(info_path.read_text())
    tasks = info.get("per_task", [])
    if len(tasks) != 1:
        raise RuntimeError(f"{info_path}: expected one task's results, found {len(tasks)}")
    metrics = tasks[0]["metrics"]
    wins = [bool(x) for x in metrics["successes"]][:episodes]
    videos = [str(v) for v in metrics.get("video_paths", [])]
    steps: list[int] = []
    env_steps = 0
    for i, ok in enumerate(wins):
        n = _video_frames(videos[i]) if i < len(videos) and Path(videos[i]).is_file() else None
        if n is not None:
            env_steps += n
        steps.append(-1 if not ok else (n if n is not None else 0))
    k = sum(wins)
    eval_s = float(info.get("overall", {}).get("eval_s", seconds))
    result = LeRobotEvalResult(
        task=task,
        successes=k,
        episodes=len(wins),
        rate=k / len(wins),
        ci95=wilson_interval(k, len(wins)),
        max_steps=LEROBOT_EVAL_MAX_STEPS,
        seeds=seeds[: len(wins)],
        success_steps=steps,
        env_steps=env_steps,
        seconds=seconds,
        steps_per_s=env_steps / max(eval_s, 1e-9),
        episode_successes=wins,
        eval_seconds=eval_s,
        pc_success=float(info.get("overall", {}).get("pc_success", 100.0 * k / len(wins))),
        command=[str(c) for c in cmd],
        output_dir=str(out),
        videos=videos,
    )
    logger.info(
        "lerobot-eval %s: success %d/%d = %.2f (95%% CI %.2f-%.2f) in %.0f s", task, k, len(wins), result.rate,
        *result.ci95, seconds,
    )
    return result


def _take(it: Iterator[int], n: int) -> Sequence[int]:
    return [next(it) for _ in range(n)]
