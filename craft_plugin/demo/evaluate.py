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
* **Success** (:func:`rollout_success`): seeded rollouts in the same scenes the data came from
  (seeds from the ``rollout`` split, disjoint from train and held-out), same renderer, camera,
  image size and state layout as the dataset (pass ``like=`` a dataset), the instruction as
  ``task``; an episode succeeds when Meta-World reports success within ``max_steps``. The
  success rate comes with a 95 % Wilson score interval (:func:`wilson_interval`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
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
    INSTRUCTIONS,
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
    "LoadedPolicy",
    "SuccessResult",
    "action_error",
    "evaluate_checkpoint_action_error",
    "load_policy",
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
) -> SuccessResult:
    """Success rate of ``episodes`` seeded rollouts of ``task`` (see module doc).

    Observations are made as the dataset ``like`` was (image size, camera, state layout);
    without it pass ``render`` and ``state_mode`` (defaults: 64 px, corner2, ``agent_goal``).
    """
    from tqdm.auto import tqdm

    if like is not None:
        info = like.info if isinstance(like, DemoDataset) else load_demo_info(like)
        r = info["render"]
        render = render or RenderOptions(image_size=r["image_size"], camera=r["camera"])
        state_mode = state_mode or info["state_mode"]
    render = render or RenderOptions()
    state_mode = state_mode or "agent_goal"
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(INSTRUCTIONS)}")
    text = instruction or INSTRUCTIONS[task]
    policy = loaded.policy
    size = render.image_size
    state_dim = len(state_from_obs(np.zeros(39), state_mode))
    _check_inputs(policy, {STATE_KEY: (state_dim,), CAMERA_KEY: (3, size, size)})
    scene = shared_scene(task, size, render.camera)
    seeds = list(_take(episode_seeds("rollout", seed), episodes))
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
                img = torch.from_numpy(scene.image()).permute(2, 0, 1).float().div_(255.0)
                raw = {
                    CAMERA_KEY: img[None],
                    STATE_KEY: torch.from_numpy(state_from_obs(obs, state_mode))[None],
                    "task": [text],
                }
                action = _postprocess(loaded.postprocessor, policy.select_action(loaded.preprocessor(raw)))
                act = np.clip(action.reshape(-1)[:4].to("cpu", torch.float64).numpy(), -1.0, 1.0)
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


def _take(it: Iterator[int], n: int) -> Sequence[int]:
    return [next(it) for _ in range(n)]
