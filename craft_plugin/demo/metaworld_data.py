"""Task A / task B datasets from Meta-World's scripted experts, written as LeRobot datasets.

Decisions (see ``../shared/LEROBOT-NOTES.md`` for the measurements behind them):

* **Tasks**: A = ``push-v3`` ("Push the puck to a goal"), B = ``reach-v3`` ("Reach a goal
  position": LeRobot's own task descriptions, which ``lerobot-eval`` passes as ``task``). Both
  share one scene (table, red puck, goal marker); only the goal differs. Push comes
  first because the push expert also "solves" reach most of the time, never the reverse.
* **LeRobot's conventions**: the datasets follow what stock ``lerobot-eval
  --env.type=metaworld`` feeds a policy (``lerobot.envs.metaworld`` + ``preprocess_observation``;
  LeRobot 0.6.1), so a policy trained on them is evaluated by LeRobot's own evaluator:
  ``observation.image`` (one camera: the env's ``pixels`` array becomes ``observation.image``,
  ``[B, 3, 480, 480]`` float in [0, 1]) and ``observation.state`` = ``agent_pos`` = the first 4
  numbers of the raw observation (hand xyz, gripper), float32. The env renders camera
  ``corner2`` moved to ``(0.75, 0.075, 0.7)``, flipped on both axes (a 180° turn), always at
  480 x 480 (its config has no size or camera option), 4x MSAA, shadows on. A policy trained
  at ``image_size`` is evaluated through a stock ``image_crop_resize_processor`` step (bilinear,
  antialiased: :func:`lerobot_view` is the same transform) that
  :func:`craft_plugin.demo.evaluate.prepare_lerobot_eval_checkpoint` adds to its preprocessor.
* **Rendering**: ``renderer="lean"`` (default): one direct :class:`mujoco.Renderer` per scene
  with anti-aliasing (``offsamples=0``), shadows and reflections off — ~10x faster than
  ``env.render()`` on a software GL. Same camera pose, flip and size as the env's view
  downscaled; it differs in lighting (no shadow of the arm on the table) and edge
  anti-aliasing. Measured at 64 px (push and reach, 20 expert states each, mean |difference|
  to the env's view downscaled, frames/s of the renderer alone on 2 lightly loaded cores):
  lean 9.1/255 at ~110 fps; ``supersample=2`` 7.4/255, ~33 fps; ``shadows=True`` 4.3/255,
  ~18 fps; ``shadows=True, supersample=2`` 1.2/255, ~13 fps; ``renderer="env"`` renders
  exactly what ``lerobot-eval`` sees (Meta-World's own 480 x 480 render, then
  :func:`lerobot_view`; 0-1/255 from uint8 rounding), ~5-7 fps. ``MUJOCO_GL`` is set to ``egl`` when unset, *before* mujoco is
  imported (importing this module does it); set ``MUJOCO_GL=osmesa`` yourself where EGL is missing.
* **Episodes**: ``env._freeze_rand_vec=False``, ``env.seeded_rand_vec=True`` and
  ``env.seed(k)`` before each reset, so episode ``k`` has the same puck and goal every time.
  Seeds are ``seed * 1_000_000 + SPLIT_OFFSET[split] + i``: ``train``, ``heldout`` and
  ``rollout`` (simulated evaluation) never share a seed. An episode runs the expert until
  its first success, then ``steps_after_success`` more steps (the policy also sees "stay
  there"), at most ``max_steps``. A seed whose expert fails is skipped (logged, recorded in
  the dataset's ``craft_demo.json``) and the next seed is used, so a dataset always holds
  ``episodes`` successful demonstrations. The recorded action is the expert's action clipped
  to [-1, 1], as float32 (what ``lerobot-eval`` hands the env: float64 actions give slightly
  different trajectories).
* **Features**: ``observation.image`` (H x W x 3 uint8, stored as PNG *images*, not
  video), ``observation.state`` (see :data:`STATE_MODES`; default ``agent`` = LeRobot's
  ``agent_pos``, the only state ``lerobot-eval`` gives; ``agent_goal`` = + goal xyz etc. stay
  selectable for lean-only experiments), ``action`` (4),
  ``sim.obs`` (the raw 39-number Meta-World observation; LeRobot policies ignore keys outside
  ``observation.*``/``action``), and the instruction as the frame's ``task``. fps 80 (LeRobot's
  Meta-World env).
* **Cache**: raw episodes are kept as ``.npz`` per episode seed (so a 40-episode set reuses a
  20-episode one's episodes), and each written dataset lives in a folder named by a hash of
  everything that makes it (generator version, task(s), split, seed, episode count, image size,
  camera, state mode, fps, episode limits). A complete dataset has ``craft_demo.json``; it is
  built under a temporary name and renamed, under a file lock, so a second call (or a
  concurrent one) returns the same folder at once. Bump :data:`GENERATOR_VERSION` whenever
  what is generated changes.
* **Writer tuning**: measured here (2 cores, 64x64): LeRobot's image writer itself is not the
  bottleneck once LeRobot is imported — ~300 frames/s with the defaults (PNG level 6, no
  threads), no faster with ``image_writer_threads`` 2 or 4. The cost is the simulation:
  ``env.render()`` runs 6–15 frames/s, the lean renderer ~130 (render ~8 ms, sim ~1 ms per
  step). So frames are simulated and rendered first (in memory; raw episodes cached), then
  written with ``use_videos=False`` and the writer's defaults (``image_writer_threads`` is
  exposed). Datasets' per-episode "Map" progress bars are silenced while writing.
* **Replay**: :func:`replay_dataset` writes *all* task-B train episodes plus the first ``k``
  task-A train episodes (the very episodes the base was trained on: a replay buffer of old
  data) into one dataset; each frame keeps its own instruction. The task-A share of the
  episodes is ``k / (n_B + k)``.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported anywhere below

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "CAMERA_KEY",
    "DemoDataset",
    "EpisodeSet",
    "GENERATOR_VERSION",
    "INSTRUCTIONS",
    "MetaWorldScene",
    "RenderOptions",
    "SIM_OBS_KEY",
    "SPLIT_OFFSET",
    "STATE_MODES",
    "TASK_A",
    "TASK_B",
    "DEFAULT_STATE_MODE",
    "LEROBOT_EVAL_IMAGE_SIZE",
    "LEROBOT_EVAL_MAX_STEPS",
    "build_dataset",
    "lerobot_view",
    "close_scenes",
    "default_cache_dir",
    "episode_seeds",
    "is_built",
    "load_demo_info",
    "replay_dataset",
    "shared_scene",
    "state_from_obs",
    "task_datasets",
    "tasks_datasets",
]

#: Bump when anything that is generated changes (images, state, episode rules...).
GENERATOR_VERSION = 2  # 2: LeRobot's metaworld conventions (observation.image, agent_pos), float32 actions

TASK_A = "faucet-open-v3"
TASK_B = "faucet-close-v3"
#: The frames' ``task``: LeRobot's own Meta-World task descriptions
#: (``lerobot/envs/metaworld_config.json``), which ``lerobot-eval`` hands a policy as ``task``.
INSTRUCTIONS: dict[str, str] = {
    "push-v3": "Push the puck to a goal",
    "reach-v3": "Reach a goal position",
    "faucet-open-v3": "Rotate the faucet counter-clockwise",
    "faucet-close-v3": "Rotate the faucet clockwise",
    "drawer-open-v3": "Open a drawer",
    "drawer-close-v3": "Push and close a drawer",
}

CAMERA_KEY = "observation.image"  #: lerobot-eval's key for the metaworld env's one camera
STATE_KEY = "observation.state"
ACTION_KEY = "action"
SIM_OBS_KEY = "sim.obs"
INFO_FILE = "craft_demo.json"

Split = Literal["train", "heldout", "rollout"]
SPLIT_OFFSET: dict[str, int] = {"train": 0, "heldout": 100_000, "rollout": 200_000}
_SEED_STRIDE = 1_000_000

StateMode = Literal["agent", "agent_goal", "agent_puck_goal", "full"]
DEFAULT_STATE_MODE = "agent"  #: lerobot-eval's ``observation.state`` (``agent_pos``)
#: What ``lerobot-eval --env.type=metaworld`` renders (LeRobot 0.6.1: fixed, not configurable).
LEROBOT_EVAL_IMAGE_SIZE = 480
LEROBOT_EVAL_MAX_STEPS = 500  #: ``MetaworldEnv._max_episode_steps`` (``--env.episode_length`` is ignored)
#: Which numbers of the 39-d Meta-World observation form ``observation.state``.
#: ``agent``: hand xyz + gripper (LeRobot's ``agent_pos``, 4); ``agent_goal``: + goal xyz (7);
#: ``agent_puck_goal``: + puck xyz + goal xyz (10); ``full``: all 39.
STATE_MODES: dict[str, list[int]] = {
    "agent": [0, 1, 2, 3],
    "agent_goal": [0, 1, 2, 3, 36, 37, 38],
    "agent_puck_goal": [0, 1, 2, 3, 4, 5, 6, 36, 37, 38],
    "full": list(range(39)),
}

# LeRobot's Meta-World env moves corner2 to see the table and flips its image both ways.
_CORNER2_POS = (0.75, 0.075, 0.7)


def default_cache_dir() -> Path:
    """``$CRAFT_DEMO_CACHE``, else ``~/.cache/craft-plugin/demo-data``."""
    env = os.environ.get("CRAFT_DEMO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "craft-plugin" / "demo-data"


def state_from_obs(obs: np.ndarray, mode: str) -> np.ndarray:
    """``observation.state`` from a raw Meta-World observation (``[..., 39]``), as float32."""
    if mode not in STATE_MODES:
        raise ValueError(f"unknown state mode {mode!r}; expected one of {sorted(STATE_MODES)}")
    return np.asarray(obs)[..., STATE_MODES[mode]].astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """What an episode looks like and how long it runs (part of every cache key)."""

    image_size: int = 64
    camera: str = "corner2"
    max_steps: int = 150
    steps_after_success: int = 10
    #: ``"lean"``: direct low-resolution MuJoCo render (fast); ``"env"``: Meta-World's own
    #: 480 x 480 render downscaled like ``lerobot-eval``'s resize step (exact, slow).
    renderer: Literal["lean", "env"] = "lean"
    shadows: bool = False  #: lean only: the arm's shadow, as the env draws it (~6x slower)
    supersample: int = 1  #: lean only: render this many times larger, then downscale (anti-aliasing)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size={self.image_size}: use at least 8 pixels")
        if self.max_steps < 1 or self.steps_after_success < 0:
            raise ValueError("max_steps must be >= 1 and steps_after_success >= 0")
        if self.max_steps > LEROBOT_EVAL_MAX_STEPS:
            raise ValueError(f"max_steps={self.max_steps}: Meta-World episodes end at {LEROBOT_EVAL_MAX_STEPS} steps")
        if self.renderer not in ("lean", "env"):
            raise ValueError(f"renderer={self.renderer!r}: expected 'lean' or 'env'")
        if self.supersample < 1:
            raise ValueError(f"supersample={self.supersample}: must be >= 1")
        if self.renderer == "env" and (self.shadows or self.supersample != 1):
            raise ValueError("shadows / supersample are lean-renderer options; renderer='env' always draws the env's view")

    @property
    def scene_key(self) -> tuple[int, str, str, bool, int]:
        """What a :class:`MetaWorldScene` renders (everything but the episode rules)."""
        return (int(self.image_size), self.camera, self.renderer, bool(self.shadows), int(self.supersample))


#: The two looks a dataset (and the lean rollouts scored against it) can have. ``fast``: the
#: lean renderer as is (fast, but no shadows and no anti-aliasing: at 64 px it
#: differs from ``lerobot-eval``'s view by 8.8 / 255 per pixel on average, 14 % of pixels by
#: more than 20). ``lerobot_eval``: shadows on and a 4x supersampled render (0.5 / 255 mean,
#: no pixel off by more than ~20; 3-8x slower), so a policy trained on it sees at
#: ``lerobot-eval`` time what it was trained on (:func:`look_render`; the gap is measured by
#: ``tests/demo/test_metaworld_data.py`` and ``benchmarks/look_gap.py``).
LOOKS: tuple[str, ...] = ("fast", "lerobot_eval")


def look_render(look: str, image_size: int = 64) -> RenderOptions:
    """The :class:`RenderOptions` of ``look`` (one of :data:`LOOKS`) at ``image_size``."""
    if look == "fast":
        return RenderOptions(image_size=image_size)
    if look == "lerobot_eval":
        return RenderOptions(image_size=image_size, shadows=True, supersample=4)
    raise ValueError(f"look={look!r}: expected one of {', '.join(LOOKS)}")


@dataclass(frozen=True)
class EpisodeSet:
    """``episodes`` successful expert episodes of ``task`` from ``split`` seeds of ``seed``."""

    task: str
    episodes: int
    split: Split = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in INSTRUCTIONS:
            raise ValueError(f"unknown task {self.task!r}; this generator knows {sorted(INSTRUCTIONS)}")
        if self.split not in SPLIT_OFFSET:
            raise ValueError(f"unknown split {self.split!r}; expected one of {sorted(SPLIT_OFFSET)}")
        if self.episodes < 0:
            raise ValueError(f"episodes={self.episodes}: must be >= 0")

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS[self.task]


@dataclass
class DemoDataset:
    """A written LeRobot dataset: open it with ``LeRobotDataset(repo_id, root=root)``."""

    root: Path
    repo_id: str
    info: dict[str, Any] = field(default_factory=dict)
    cached: bool = False  #: True when this call found it on disk
    seconds: float = 0.0  #: time this call took

    @property
    def frames(self) -> int:
        return int(self.info["frames"])

    @property
    def episodes(self) -> int:
        return len(self.info["episodes"])

    @property
    def state_mode(self) -> str:
        return str(self.info["state_mode"])

    @property
    def render(self) -> RenderOptions:
        """The :class:`RenderOptions` the episodes were made with."""
        return RenderOptions(**self.info["render"])

    def load(self) -> Any:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        return LeRobotDataset(self.repo_id, root=self.root)


def episode_seeds(split: str, seed: int, start: int = 0) -> Iterator[int]:
    """The endless, ordered seed stream of a split (``start`` skips that many)."""
    base = seed * _SEED_STRIDE + SPLIT_OFFSET[split]
    i = start
    while True:
        if i >= _SEED_STRIDE - SPLIT_OFFSET["rollout"]:
            raise ValueError(f"split {split!r} ran out of seeds")
        yield base + i
        i += 1


def lerobot_view(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` (``H x W x 3`` uint8) resized to ``size x size`` the way a checkpoint prepared
    by :func:`craft_plugin.demo.evaluate.prepare_lerobot_eval_checkpoint` resizes the env's
    480 x 480 view inside ``lerobot-eval`` (LeRobot's ``image_crop_resize_processor``:
    torchvision bilinear, antialiased, on [0, 1] floats), rounded back to uint8."""
    if image.shape[0] == size and image.shape[1] == size:
        return np.ascontiguousarray(image)
    import torch
    import torchvision.transforms.functional as TF

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    out = TF.resize(t[None], [size, size]).clamp_(0.0, 1.0)[0]
    return out.mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


# ---------------------------------------------------------------------- the scene
class MetaWorldScene:
    """One Meta-World task env plus an offscreen renderer. Close it (or use ``with``).

    ``reset(seed)`` puts the puck and goal of episode ``seed`` (exactly as LeRobot's
    ``MetaworldEnv.reset(seed=seed)`` does); ``image()`` renders the camera as
    ``H x W x 3`` uint8; ``step(action)`` returns ``(obs, success)``. ``renderer``,
    ``shadows`` and ``supersample``: see :class:`RenderOptions`.
    """

    def __init__(
        self,
        task: str,
        image_size: int = 64,
        camera: str = "corner2",
        *,
        renderer: str = "lean",
        shadows: bool = False,
        supersample: int = 1,
    ) -> None:
        import metaworld
        import mujoco

        if task not in INSTRUCTIONS:
            raise ValueError(f"unknown task {task!r}; this generator knows {sorted(INSTRUCTIONS)}")
        RenderOptions(image_size=image_size, camera=camera, renderer=renderer, shadows=shadows, supersample=supersample)
        self.task = task
        self.camera = camera
        self.image_size = int(image_size)
        self.kind = renderer
        self.supersample = int(supersample)
        self.renderer = None
        mt1 = metaworld.MT1(task, seed=0)
        if renderer == "env":  # Meta-World's own renderer, set up as lerobot.envs.metaworld does
            env = mt1.train_classes[task](render_mode="rgb_array", camera_name=camera)
        else:
            env = mt1.train_classes[task]()
        env.set_task(mt1.train_tasks[0])
        env._freeze_rand_vec = False  # new object / goal positions each reset ...
        env.seeded_rand_vec = True  # ... drawn from env.seed(k)'s generator
        if camera == "corner2":
            env.model.cam_pos[2] = list(_CORNER2_POS)
        self.env = env
        self._mujoco = mujoco
        try:
            if renderer == "env":
                env.reset()
                env.render()  # creates the GL context now, so a missing platform fails here
                self.renderer = env.mujoco_renderer
            else:
                env.model.vis.quality.offsamples = 0  # no multisample anti-aliasing
                side = self.image_size * self.supersample
                self.renderer = mujoco.Renderer(env.model, side, side)
                flags = self.renderer.scene.flags
                flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(bool(shadows))
                flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        except Exception as err:  # mujoco.FatalError: no GL platform loaded
            raise RuntimeError(
                f"cannot create an offscreen MuJoCo renderer (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): {err}. "
                "Set MUJOCO_GL=egl (or osmesa) before anything imports mujoco — importing "
                "craft_plugin.demo.metaworld_data first does it"
            ) from err
        self.max_path_length = int(env.max_path_length)
        self._steps = 0
        _track_open_scene(self)

    def reset(self, seed: int) -> np.ndarray:
        self.env.seed(int(seed))
        obs, _ = self.env.reset()
        self._steps = 0
        return np.asarray(obs, dtype=np.float64)

    def image(self) -> np.ndarray:
        if self.kind == "env":
            # gymnasium's offscreen viewer does not make its GL context current when it renders:
            # after another context (a lean scene, another env) it would draw into that one.
            self.renderer._get_viewer("rgb_array").make_context_current()
            img = self.env.render()
        else:
            self.renderer.update_scene(self.env.data, camera=self.camera)
            img = self.renderer.render()
        if self.camera == "corner2":
            img = img[::-1, ::-1]
        return lerobot_view(img, self.image_size)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """One env step with ``action`` as float32 (what ``lerobot-eval`` passes the env)."""
        if self._steps >= self.max_path_length:
            raise RuntimeError(f"episode longer than Meta-World's max_path_length {self.max_path_length}")
        obs, _reward, _term, _trunc, info = self.env.step(np.asarray(action, dtype=np.float32))
        self._steps += 1
        return np.asarray(obs, dtype=np.float64), bool(info.get("success", 0.0))

    def close(self) -> None:
        renderer = getattr(self, "renderer", None)
        if renderer is not None and getattr(self, "kind", "lean") == "lean":
            renderer.close()
        self.renderer = None  # type: ignore[assignment]
        env = getattr(self, "env", None)
        if env is not None:
            with contextlib.suppress(Exception):
                env.close()
            self.env = None  # type: ignore[assignment]

    def __enter__(self) -> MetaWorldScene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:  # no contextlib here: module globals may already be gone at interpreter exit
            self.close()
        except Exception:
            pass


_SCENES: dict[tuple[Any, ...], MetaWorldScene] = {}
_OPEN_SCENES: weakref.WeakSet[MetaWorldScene] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _track_open_scene(scene: MetaWorldScene) -> None:
    """Close every still-open scene at interpreter exit, *before* mujoco's own atexit
    ``eglTerminate`` (registered when the first GL context is made; atexit runs last-in,
    first-out, so this is registered after that first context). Without it, a scene left open
    prints a harmless ``TypeError ... __del__`` (EGL) when Python shuts down."""
    global _ATEXIT_REGISTERED
    _OPEN_SCENES.add(scene)
    if not _ATEXIT_REGISTERED:
        atexit.register(_close_open_scenes)
        _ATEXIT_REGISTERED = True


def _close_open_scenes() -> None:
    close_scenes()
    for scene in list(_OPEN_SCENES):
        scene.close()


def shared_scene(
    task: str, image_size: int = 64, camera: str = "corner2", *, render: RenderOptions | None = None
) -> MetaWorldScene:
    """A per-process scene for ``(task, image_size, camera)`` — or for ``render``'s view when
    given (it overrides both) — built once (building one costs ~1–2 s: Meta-World's MT1 set-up
    plus a GL context). Closed by :func:`close_scenes` or at exit."""
    opts = render if render is not None else RenderOptions(image_size=image_size, camera=camera)
    key = (task, *opts.scene_key)
    scene = _SCENES.get(key)
    if scene is None or scene.renderer is None:
        scene = _SCENES[key] = MetaWorldScene(
            task, opts.image_size, opts.camera, renderer=opts.renderer, shadows=opts.shadows, supersample=opts.supersample
        )
    return scene


def close_scenes() -> None:
    """Close every scene :func:`shared_scene` opened (their GL contexts included)."""
    while _SCENES:
        _, scene = _SCENES.popitem()
        scene.close()


def _expert(task: str) -> Any:
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[task]()


def _expert_action(expert: Any, obs: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Constant(s) may be too high" on every call
        action = expert.get_action(obs)
    return np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0).astype(np.float32)


def _run_expert_episode(scene: MetaWorldScene, expert: Any, seed: int, opts: RenderOptions) -> dict[str, np.ndarray]:
    obs = scene.reset(seed)
    images, observations, actions = [], [], []
    success_step = -1
    stop_at = opts.max_steps
    for t in range(opts.max_steps):
        images.append(scene.image())
        observations.append(obs)
        action = _expert_action(expert, obs)
        actions.append(action)
        obs, success = scene.step(action)
        if success and success_step < 0:
            success_step = t + 1  # steps taken when success was first reported
            stop_at = min(opts.max_steps, t + 1 + opts.steps_after_success)
        if t + 1 >= stop_at:
            break
    return {
        "images": np.stack(images),
        "obs": np.stack(observations),
        "actions": np.stack(actions),
        "success": np.array(success_step >= 0),
        "success_step": np.array(success_step),
        "seed": np.array(seed),
    }


# ---------------------------------------------------------------------- raw episode cache
def _episode_dir(cache_dir: Path, task: str, opts: RenderOptions) -> Path:
    view = opts.renderer + ("-shadows" if opts.shadows else "") + (f"-ss{opts.supersample}" if opts.supersample > 1 else "")
    name = (
        f"v{GENERATOR_VERSION}-{task}-{opts.camera}-{opts.image_size}px-{view}-"
        f"max{opts.max_steps}-tail{opts.steps_after_success}"
    )
    return cache_dir / "episodes" / name


def _atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _collect_episodes(
    sets: Sequence[EpisodeSet], cache_dir: Path, opts: RenderOptions, progress: bool
) -> list[tuple[EpisodeSet, list[dict[str, np.ndarray]], list[int]]]:
    """Load or simulate the episodes of every set: ``[(set, episodes, skipped_seeds)]``."""
    from tqdm.auto import tqdm

    out = []
    total = sum(s.episodes for s in sets)
    bar = tqdm(total=total, desc="expert episodes", unit="ep", disable=not progress, leave=False)
    try:
        for s in sets:
            ep_dir = _episode_dir(cache_dir, s.task, opts)
            episodes: list[dict[str, np.ndarray]] = []
            skipped: list[int] = []
            for seed in episode_seeds(s.split, s.seed):
                if len(episodes) >= s.episodes:
                    break
                if len(skipped) > 10 + s.episodes:
                    raise RuntimeError(
                        f"the {s.task} expert failed on {len(skipped)} seeds ({skipped[:10]}...) within "
                        f"max_steps={opts.max_steps}: raise max_steps"
                    )
                path = ep_dir / f"seed_{seed}.npz"
                if path.is_file():
                    with np.load(path) as z:
                        ep = {k: z[k] for k in z.files}
                else:
                    scene = shared_scene(s.task, render=opts)
                    ep = _run_expert_episode(scene, _expert(s.task), seed, opts)
                    _atomic_save_npz(path, ep)
                if not bool(ep["success"]):
                    logger.warning("%s expert failed on seed %d within %d steps; skipping it", s.task, seed, opts.max_steps)
                    skipped.append(seed)
                    continue
                episodes.append(ep)
                bar.update(1)
            out.append((s, episodes, skipped))
    finally:
        bar.close()
    return out


# ---------------------------------------------------------------------- datasets
def _dataset_key(sets: Sequence[EpisodeSet], opts: RenderOptions, state_mode: str, fps: int) -> str:
    spec = {
        "generator": GENERATOR_VERSION,
        "sets": [dataclasses.asdict(s) for s in sets],
        "render": dataclasses.asdict(opts),
        "state_mode": state_mode,
        "fps": fps,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    label = "+".join(f"{s.task.removesuffix('-v3')}-{s.split}-s{s.seed}-n{s.episodes}" for s in sets)
    return f"{label}-{opts.image_size}px-{state_mode}-{digest}"


def load_demo_info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``craft_demo.json`` of a dataset this module wrote (what made it, per-episode seeds)."""
    path = Path(root) / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a complete dataset from craft_plugin.demo.metaworld_data "
            "(build it with build_dataset / task_datasets)"
        )
    return json.loads(path.read_text())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_dataset(
    sets: Sequence[EpisodeSet],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    render: RenderOptions = RenderOptions(),
    state_mode: str = DEFAULT_STATE_MODE,
    fps: int = 80,
    image_writer_threads: int = 0,
    progress: bool = True,
) -> DemoDataset:
    """Write (or find in the cache) one LeRobot image dataset holding the episodes of ``sets``.

    Returns at once when the same dataset is already in ``cache_dir`` (default
    :func:`default_cache_dir`). Episodes are written set by set, in seed order.
    """
    if not sets:
        raise ValueError("build_dataset needs at least one EpisodeSet")
    if state_mode not in STATE_MODES:
        raise ValueError(f"unknown state_mode {state_mode!r}; expected one of {sorted(STATE_MODES)}")
    t0 = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _dataset_key(sets, render, state_mode, fps)
    root = cache / "datasets" / key
    repo_id = f"local/{key}"
    with _file_lock(cache / "locks" / f"{key}.lock"):
        if (root / INFO_FILE).is_file():
            info = load_demo_info(root)
            logger.info("dataset cache hit: %s (%d frames)", root, info["frames"])
            return DemoDataset(root, repo_id, info, cached=True, seconds=time.perf_counter() - t0)
        if root.exists():  # an interrupted build left a partial folder: start over
            shutil.rmtree(root)
        collected = _collect_episodes(sets, cache, render, progress)
        t_sim = time.perf_counter()
        tmp = root.with_name(f".{key}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            info = _write_lerobot(tmp, repo_id, collected, render, state_mode, fps, image_writer_threads, progress)
            info["key"] = key
            info["seconds"] = {"simulate": t_sim - t0, "write": time.perf_counter() - t_sim}
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    seconds = time.perf_counter() - t0
    logger.info(
        "wrote %s: %d episodes, %d frames in %.1f s (%.0f frames/s)",
        root, len(info["episodes"]), info["frames"], seconds, info["frames"] / max(seconds, 1e-9),
    )
    return DemoDataset(root, repo_id, info, cached=False, seconds=seconds)


def _write_lerobot(
    root: Path,
    repo_id: str,
    collected: list[tuple[EpisodeSet, list[dict[str, np.ndarray]], list[int]]],
    opts: RenderOptions,
    state_mode: str,
    fps: int,
    image_writer_threads: int,
    progress: bool,
) -> dict[str, Any]:
    import datasets as hf_datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm.auto import tqdm

    size = opts.image_size
    state_dim = len(STATE_MODES[state_mode])
    features = {
        CAMERA_KEY: {"dtype": "image", "shape": (size, size, 3), "names": ["height", "width", "channels"]},
        STATE_KEY: {"dtype": "float32", "shape": (state_dim,), "names": None},
        ACTION_KEY: {"dtype": "float32", "shape": (4,), "names": None},
        SIM_OBS_KEY: {"dtype": "float32", "shape": (39,), "names": None},
    }
    ds = LeRobotDataset.create(
        repo_id=repo_id,
        fps=fps,
        features=features,
        root=root,
        use_videos=False,
        image_writer_threads=image_writer_threads,
    )
    episodes_info: list[dict[str, Any]] = []
    frames = 0
    n_total = sum(len(eps) for _, eps, _ in collected)
    bar = tqdm(total=n_total, desc="writing dataset", unit="ep", disable=not progress, leave=False)
    hf_bars_were_on = hf_datasets.is_progress_bar_enabled()  # one "Map" bar per episode otherwise
    hf_datasets.disable_progress_bars()
    try:
        for s, eps, _ in collected:
            for ep in eps:
                states = state_from_obs(ep["obs"], state_mode)
                sim_obs = ep["obs"].astype(np.float32)
                for t in range(len(ep["actions"])):
                    ds.add_frame(
                        {
                            CAMERA_KEY: ep["images"][t],
                            STATE_KEY: states[t],
                            ACTION_KEY: ep["actions"][t],
                            SIM_OBS_KEY: sim_obs[t],
                            "task": s.instruction,
                        }
                    )
                ds.save_episode()
                n = len(ep["actions"])
                episodes_info.append(
                    {
                        "episode_index": len(episodes_info),
                        "task": s.task,
                        "instruction": s.instruction,
                        "split": s.split,
                        "seed": int(ep["seed"]),
                        "length": n,
                        "success_step": int(ep["success_step"]),
                    }
                )
                frames += n
                bar.update(1)
        ds.finalize()
    finally:
        bar.close()
        if hf_bars_were_on:
            hf_datasets.enable_progress_bars()
        writer = getattr(ds, "writer", None)
        image_writer = getattr(writer, "image_writer", None)
        if image_writer is not None:
            with contextlib.suppress(Exception):
                image_writer.stop()
    return {
        "generator_version": GENERATOR_VERSION,
        "repo_id": repo_id,
        "fps": fps,
        "state_mode": state_mode,
        "state_indices": STATE_MODES[state_mode],
        "camera_key": CAMERA_KEY,
        "state_key": STATE_KEY,
        "render": dataclasses.asdict(opts),
        # What lerobot-eval gives a policy trained here (LeRobot 0.6.1's metaworld env).
        "lerobot_eval": {
            "env.type": "metaworld",
            "image": {"key": CAMERA_KEY, "env_shape": [LEROBOT_EVAL_IMAGE_SIZE, LEROBOT_EVAL_IMAGE_SIZE, 3],
                      "camera": "corner2 (moved, flipped 180 degrees)", "dataset_shape": [opts.image_size, opts.image_size, 3]},
            "state": {"key": STATE_KEY, "env": "agent_pos (obs[:4])", "compatible": state_mode == "agent"},
            "max_steps": LEROBOT_EVAL_MAX_STEPS,
        },
        "sets": [
            {**dataclasses.asdict(s), "instruction": s.instruction, "skipped_seeds": skipped}
            for s, _, skipped in collected
        ],
        "instructions": {s.task: s.instruction for s, _, _ in collected},
        "frames": frames,
        "episodes": episodes_info,
        "expert_success_rate": len(episodes_info)
        / max(len(episodes_info) + sum(len(sk) for _, _, sk in collected), 1),
    }


def task_datasets(
    task: str,
    train_episodes: int,
    heldout_episodes: int,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[DemoDataset, DemoDataset]:
    """``(train, heldout)`` datasets of one task; held-out episodes use disjoint seeds.

    ``kwargs`` go to :func:`build_dataset` (``render``, ``state_mode``, ``fps``, ...).
    """
    train_sets, heldout_sets = _task_sets(task, train_episodes, heldout_episodes, seed)
    return build_dataset(train_sets, cache_dir, **kwargs), build_dataset(heldout_sets, cache_dir, **kwargs)


def _task_sets(task: str, train_episodes: int, heldout_episodes: int, seed: int) -> tuple[list[EpisodeSet], list[EpisodeSet]]:
    return [EpisodeSet(task, train_episodes, "train", seed)], [EpisodeSet(task, heldout_episodes, "heldout", seed)]


def is_built(
    sets: Sequence[EpisodeSet],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    render: RenderOptions = RenderOptions(),
    state_mode: str = DEFAULT_STATE_MODE,
    fps: int = 80,
) -> bool:
    """Whether :func:`build_dataset` would find this dataset in the cache (a complete one)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return (cache / "datasets" / _dataset_key(sets, render, state_mode, fps) / INFO_FILE).is_file()


def tasks_datasets(
    tasks: Sequence[str],
    train_episodes: int,
    heldout_episodes: int,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    processes: int | None = None,
    **kwargs: Any,
) -> list[tuple[DemoDataset, DemoDataset]]:
    """:func:`task_datasets` of several tasks, in ``tasks`` order. The tasks whose datasets are not
    in the cache yet are simulated and written in parallel ``spawn`` processes (``processes``:
    None = one per task, at most one per core; 1 = here, one after another): simulation and
    rendering are single-threaded, so two tasks on two cores take about the time of one. The
    datasets are the same either way (each is a function of its seeds; the cache lock keeps two
    builders of one dataset apart), but for MuJoCo's first picture in a fresh renderer, which
    can differ by one or two uint8 levels in a few pixels from one drawn after other episodes
    (measured: under 1 % of a 32 px frame's values; tested)."""
    from craft_plugin.demo.workers import per_core, spawn_pool

    build_kw = {k: v for k, v in kwargs.items() if k in ("render", "state_mode", "fps")}
    missing = [
        t for t in dict.fromkeys(tasks)
        if not all(is_built(sets, cache_dir, **build_kw) for sets in _task_sets(t, train_episodes, heldout_episodes, seed))
    ]  # fmt: skip
    n = per_core(len(missing)) if processes is None else min(processes, len(missing))
    if n > 1:
        with spawn_pool(n) as pool:
            futures = [pool.submit(task_datasets, t, train_episodes, heldout_episodes, cache_dir, seed=seed, **kwargs) for t in missing]
            for future in futures:
                future.result()
    # Every task from the cache now (a cache hit reads one small JSON file), or built here.
    return [task_datasets(t, train_episodes, heldout_episodes, cache_dir, seed=seed, **kwargs) for t in tasks]


def replay_dataset(
    new_task: str,
    new_episodes: int,
    old_task: str,
    old_episodes: int,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    **kwargs: Any,
) -> DemoDataset:
    """The replay baseline's training set: all ``new_episodes`` train episodes of ``new_task``
    plus the first ``old_episodes`` train episodes of ``old_task`` (the same episodes the
    old-task training set starts with). The old task's share of episodes is
    ``old_episodes / (new_episodes + old_episodes)``; e.g. 20 B + 5 A = 20 %.
    """
    if old_episodes < 1:
        raise ValueError("replay needs old_episodes >= 1 (0 is plain fine-tuning: use task_datasets)")
    sets = [EpisodeSet(new_task, new_episodes, "train", seed), EpisodeSet(old_task, old_episodes, "train", seed)]
    return build_dataset(sets, cache_dir, **kwargs)
