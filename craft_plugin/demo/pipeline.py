"""``craft demo``: the forgetting experiment of SPEC §7, end to end, offline, on a CPU.

Two policy families (:attr:`DemoPlan.family`):

* ``smolvla`` — a small SmolVLA built from a config with random weights on a stand-in SmolVLM
  (:mod:`craft_plugin.demo.small_smolvla`; its folder lives in ``OUT/vlm`` and every checkpoint
  names it), whose VLM is first taught a scene-MCQ set (:func:`teach_mcq`) so that forgetting
  of the VLM's knowledge can be measured with ``craft eval-mcq``. ``train_expert_only``
  (:attr:`DemoPlan.train_expert_only`) is the value the base is built with, and so the value
  every fine-tune inherits: ``False`` (the demo's) trains the VLM too, so it can forget;
  ``True`` is LeRobot's default (the VLM frozen, only the action expert learns).
* ``act`` — a tiny ACT trained from scratch by stock ``lerobot-train --policy.type=act``:
  dim 128, 8 heads, feed-forward 512, 2 encoder / 1 decoder layers, no VAE, chunk 10, a
  ResNet-18 from scratch (``--policy.pretrained_backbone_weights=null``: nothing downloaded),
  lr 3e-4 for the transformer and the backbone (ACT's default 1e-5 barely moves from scratch;
  see ``LEROBOT-NOTES``: "A plain fine-tune on Meta-World"). ACT has no language model: the
  mcq stage and ``craft eval-mcq`` are skipped and the report shows "—" for MCQ.

Stages, each through the project's public commands where one exists (so the demo is also the
integration test a user would run):

1. **data** — task A = Meta-World ``faucet-open-v3``, task B = ``faucet-close-v3`` (one scene,
   opposite motions: ``md.TASK_A`` / ``md.TASK_B``), scripted expert episodes written as LeRobot datasets (:mod:`craft_plugin.demo.metaworld_data`;
   cached on disk, so a second demo skips it), held-out episodes of both, and (when ``replay``
   runs) the replay set (all B episodes + ``replay_episodes`` A episodes).
2. **mcq** (smolvla only) — generated scene questions (:func:`make_scene_mcq`), one set to
   teach, a disjoint one to test. Colour questions only: the small VLM learnt them to 97.5 %
   held-out accuracy in 200 teaching steps (13 s), while colour + position reached 65 % in 500
   steps (tried here).
3. **base** — the family's base trained on task A with stock ``lerobot-train`` (SmolVLA: from
   the MCQ-taught checkpoint ``OUT/base0``; ACT: ``--policy.type=act`` from scratch).
4. **cache** — ``craft build-cache`` from the base on task A with its *defaults* (layers,
   pooling, anchor targets, batch size): only the paths and ``--num-anchors`` are given.
5. **runs** — from the base, on task B, same steps, batch and seed (:data:`METHODS`):

   ``naive``
       ``--policy.path=BASE``, as LeRobot users run it (LeRobot then takes task B's
       normalization statistics).
   ``craft_off``
       the craft wrapper with CRaFT off (``--policy.type=craft --policy.base_path=BASE
       --policy.craft.enabled=false``) and the same normalization flag as the craft runs: the
       baseline that differs from the CRaFT runs in one thing only, the retention.
   ``replay``
       ``--policy.path=BASE`` on the replay set (20 % task-A episodes).
   ``craft_token_ce``
       CRaFT, ``retention_mode=token_ce`` (the base's own loss on cached task-A anchors).
   ``craft_hidden_features``
       CRaFT, hidden retention of the backbone features only
       (``--policy.craft.anchor_targets=[features]``).
   ``craft_hidden``
       CRaFT, hidden retention with CRaFT's default targets (what the cache holds: features and
       actions).

   Every CRaFT run uses CRaFT's *default* settings: only the cache (and the anchor batch size
   when the plan sets one: QUICK's 4) is passed. ``epsilon_end``, ``lambda_lr`` and
   ``conflict_threshold`` are passed only when the plan sets them (``None``: not passed); so
   is ``normalization`` (``--policy.normalization=base|dataset|merged``, to ``craft_off`` and
   every CRaFT run alike).
   Each run's console output is kept in ``OUT/runs/<method>/train.log``.
6. **eval** — per checkpoint and task, held-out action L1 (:func:`action_error`) and seeded
   rollouts with Wilson intervals (:func:`rollout_success`), and (smolvla) the MCQ comparison
   through :func:`~craft_plugin.mcq.evaluate.run_eval_mcq`, the function behind ``craft
   eval-mcq``, with the options that command would get (each fine-tuned run against
   ``naive``, paired); all into ``OUT/runs/<method>/eval.json``. These are independent jobs
   (:mod:`craft_plugin.demo.eval_stage`), run in one process per core (``spawn``): the
   renderer and the env are single-threaded, so two processes halve the stage on two cores.
7. **report** — ``craft report`` → ``OUT/report/report.md`` and the PNG plots; forgetting and
   task-B error are also given relative to ``naive`` (and to ``craft_off``).

Which methods ``make demo`` runs (:data:`DEMO_METHODS`): ``naive``, ``craft_off``, ``replay``
and ``craft_hidden``. All six do not fit its 10-minute budget on a 2-core CPU (each method
costs ~50-70 s of training and ~15 s of evaluation at :data:`STANDARD` sizes on two cores;
docs/benchmarks.md has the measured stage times). Kept: the user's baseline (``naive``), the fair
baseline that isolates CRaFT's effect (``craft_off``), the simple alternative CRaFT has to
beat (``replay``) and CRaFT as shipped (``craft_hidden``, default targets). Left to the
benchmark (``benchmarks/forgetting.py``, which always runs all six): ``craft_token_ce`` (the
legacy mode) and ``craft_hidden_features`` (an ablation of the default's targets).

Speed on a CPU (measured: docs/benchmarks.md): LeRobot 0.6.1's loader decodes a row's images
for every row of an action chunk, so with ``--num_workers=0`` a training step waited ~0.55 s on
data against ~0.15 s of update. Every ``lerobot-train`` run therefore gets
``--num_workers`` = :func:`default_num_workers` (one per core, at most 4), started by ``fork``
(``--dataloader_multiprocessing_context=fork``: LeRobot's default ``spawn`` re-imports LeRobot
in each worker of every run, and these PNG-frame datasets use no video decoder), and
``OMP_NUM_THREADS`` = the cores the workers leave, at least 1 (:func:`train_threads`; an
``OMP_NUM_THREADS`` in the environment wins). Runs are then not bit-identical to
``--num_workers=0`` ones (on a 40-step run the logged losses agreed to the printed decimals);
``fork`` and ``spawn`` workers gave the same demo table to the last digit. The datasets of A and B are
built in parallel processes when not cached (``metaworld_data.tasks_datasets``).

Every subprocess gets ``HF_HUB_OFFLINE=1``; nothing is downloaded. Actions are compared in
raw units (after each checkpoint's own un-normalization), so runs with different
normalization statistics are compared fairly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "DEMO_METHODS", "FAMILIES", "METHODS", "NORMALIZATIONS", "QUICK", "QUICK_ACT", "STANDARD", "STANDARD_ACT",
    "DemoPlan", "DemoResult", "craft_args", "default_num_workers", "plan_for", "plan_with", "run_demo",
]  # fmt: skip

logger = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = ("smolvla", "act")
#: Every method, in report order (see the module docstring).
METHODS: tuple[str, ...] = ("naive", "craft_off", "replay", "craft_token_ce", "craft_hidden_features", "craft_hidden")
#: ``make demo``'s four (why these: the module docstring).
DEMO_METHODS: tuple[str, ...] = ("naive", "craft_off", "replay", "craft_hidden")
NORMALIZATIONS: tuple[str, ...] = ("base", "dataset", "merged")
#: The CRaFT runs that read the anchor cache.
ANCHORED: tuple[str, ...] = ("craft_token_ce", "craft_hidden_features", "craft_hidden")
#: Learning rate of each family when the plan leaves ``lr`` unset.
FAMILY_LR: dict[str, float] = {"smolvla": 1e-3, "act": 3e-4}


def default_num_workers() -> int:
    """DataLoader workers of the demo's training runs: one per core, at most LeRobot's default 4."""
    return max(1, min(4, os.cpu_count() or 1))


def train_threads(workers: int) -> int:
    """Torch threads of a ``lerobot-train`` process beside ``workers`` loader processes: the
    cores the workers leave, at least one (2 cores, 2 workers: 1)."""
    return max(1, (os.cpu_count() or 1) - workers)


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and settings of one demo run. :data:`STANDARD` is ``make demo``; :data:`QUICK` the
    test's; :func:`plan_for` gives either for a family."""

    family: str = "smolvla"  #: "smolvla" or "act"
    train_expert_only: bool = False  #: smolvla: the base's (and so every run's) value; False lets the VLM forget
    train_episodes: int = 20
    heldout_episodes: int = 5
    replay_episodes: int = 5  #: task-A episodes mixed into B for the replay baseline (20 %)
    image_size: int = 64
    #: How the datasets and lean rollouts are rendered (``metaworld_data.LOOKS``): ``fast`` (the
    #: demo's) or ``lerobot_eval`` (what stock ``lerobot-eval`` shows the policy; 3-8x slower)
    look: str = "fast"
    mcq_train: int = 240  #: smolvla only, as every mcq_* / teach_* / text_hidden / vlm_layers field
    mcq_test: int = 80
    mcq_kinds: tuple[str, ...] = ("color",)  #: colours: learnt to ~97 % held-out in 200 steps here
    teach_steps: int = 200
    teach_lr: float = 3e-3
    #: base 250 and fine-tunes 100 steps (300 and 150 until 0.3): ``make demo`` at 300 / 150 took
    #: 653 s here and at 300 / 120 633 s, over its 10 minutes (docs/benchmarks.md)
    base_steps: int = 250
    finetune_steps: int = 100
    batch_size: int = 32
    lr: float | None = None  #: None: the family's (FAMILY_LR: smolvla 1e-3, act 3e-4)
    num_anchors: int | None = None  #: None: craft build-cache's default (every frame of task A)
    #: CRaFT settings: None = not passed (CRaFT's default: anchor batch 8, ε_end 0.05, λ lr 0.5,
    #: conflict threshold −0.1); nothing is tuned unless a field says so (QUICK sets only the batch)
    anchor_batch_size: int | None = None
    epsilon_end: float | None = None
    lambda_lr: float | None = None
    conflict_threshold: float | None = None
    #: ``--policy.normalization`` for craft_off and every CRaFT run; None: not passed (the wrapper's default)
    normalization: str | None = None
    rollout_episodes: int = 5
    rollout_max_steps: int = 150
    #: ``lerobot-train --num_workers`` of every training run; None: :func:`default_num_workers`
    #: (LeRobot's loader decodes a row's images with every action-chunk row, so on a CPU the
    #: loader, not the update, bounds a step: docs/benchmarks.md)
    num_workers: int | None = None
    #: worker processes of the data stage (tasks not cached yet) and the eval stage
    #: (``craft_plugin.demo.eval_stage``); None: one per core, at most one per task / job; 1: all
    #: in this process (QUICK's: a spawned worker re-imports LeRobot, ~10 s, more than its work)
    processes: int | None = None
    text_hidden: int = 64
    vlm_layers: int = 4
    act_dim: int = 128  #: act only, as every act_* field
    act_heads: int = 8
    act_feedforward: int = 512
    act_encoder_layers: int = 2
    act_decoder_layers: int = 1
    chunk_size: int = 10
    seed: int = 0
    methods: tuple[str, ...] = DEMO_METHODS

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}: expected one of {', '.join(FAMILIES)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}: expected some of {', '.join(METHODS)}")
        if "naive" not in self.methods:
            raise ValueError("methods must include 'naive' (the reference of the report's relative columns and of MCQ)")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {self.methods} name one twice")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={self.normalization!r}: expected None or one of {', '.join(NORMALIZATIONS)}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers}: expected None or >= 0")
        if self.processes is not None and self.processes < 1:
            raise ValueError(f"processes={self.processes}: expected None or >= 1")
        if "replay" in self.methods and self.replay_episodes < 1:
            raise ValueError("the replay method needs replay_episodes >= 1")
        from craft_plugin.demo.metaworld_data import look_render

        look_render(self.look, self.image_size)  # validates look

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else FAMILY_LR[self.family]

    @property
    def loader_workers(self) -> int:
        """``num_workers``, or :func:`default_num_workers` when unset."""
        return self.num_workers if self.num_workers is not None else default_num_workers()

    @property
    def has_mcq(self) -> bool:
        """MCQ applies to the VLA family only (ACT has no language model)."""
        return self.family == "smolvla"

    @property
    def ordered_methods(self) -> tuple[str, ...]:
        """``methods`` in :data:`METHODS` order (report order)."""
        return tuple(m for m in METHODS if m in self.methods)


STANDARD = DemoPlan()
QUICK = DemoPlan(
    train_episodes=3, heldout_episodes=2, replay_episodes=1, image_size=32, mcq_train=24, mcq_test=16,
    teach_steps=10, base_steps=6, finetune_steps=4, batch_size=8, num_anchors=8, anchor_batch_size=4,
    rollout_episodes=1, rollout_max_steps=10, methods=("naive", "craft_hidden"), num_workers=0,
    processes=1,
)  # fmt: skip
# QUICK leaves out replay (the same lerobot-train path as naive on another dataset, which
# tests/demo/test_metaworld_data.py covers), craft_off (the wrapper with CRaFT off, which
# tests/policies/test_lerobot_train.py compares step by step with a plain run) and the token_ce /
# features-only CRaFT runs (the same wrapper path as craft_hidden with another flag;
# tests/policies cover token_ce under lerobot-train) to keep the test suite under its budget.
STANDARD_ACT = replace(STANDARD, family="act")
QUICK_ACT = replace(QUICK, family="act")  # the real tiny ACT: its ResNet-18 dominates the cost anyway


def plan_for(family: str = "smolvla", *, quick: bool = False, **changes: Any) -> DemoPlan:
    """The :data:`STANDARD` (or :data:`QUICK`) plan of ``family``, with ``changes``."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}: expected one of {', '.join(FAMILIES)}")
    plan = {("smolvla", False): STANDARD, ("smolvla", True): QUICK, ("act", False): STANDARD_ACT,
            ("act", True): QUICK_ACT}[(family, quick)]  # fmt: skip
    return replace(plan, **changes)


def plan_with(plan: DemoPlan, **changes: Any) -> DemoPlan:
    """``plan`` with some fields changed (e.g. a different seed)."""
    return replace(plan, **changes)


@dataclass
class DemoResult:
    output_dir: Path
    report_md: Path
    plots: list[Path]
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


def _env(threads: int | None = None) -> dict[str, str]:
    """The subprocesses' environment: offline; ``threads`` sets ``OMP_NUM_THREADS`` unless the
    user's environment already does."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _bin(name: str) -> str:
    """A console script of this environment (``lerobot-train``, ``craft``)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the demo from craft-plugin's environment (make demo)")
    return str(path)


def _run(cmd: Sequence[str], log_file: Path | None = None, threads: int | None = None) -> str:
    """Run ``cmd`` (``threads``: see :func:`_env`); keep its output in ``log_file``; on failure
    raise with the output's tail."""
    res = subprocess.run(list(cmd), capture_output=True, text=True, env=_env(threads))
    out = res.stdout + res.stderr
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(out)
    if res.returncode != 0:
        where = f" (full output: {log_file})" if log_file else ""
        raise RuntimeError(f"command failed with exit code {res.returncode}{where}: {' '.join(cmd)}\n{out[-3000:]}")
    return out


def _checkpoint(train_dir: Path) -> Path:
    ckpt = train_dir / "checkpoints" / "last" / "pretrained_model"
    if not (ckpt / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}")
    return ckpt.resolve()


def _lerobot_train(policy_args: Sequence[str], dataset: Any, out: Path, steps: int, plan: DemoPlan) -> list[str]:
    # Loader workers by fork, not LeRobot's default spawn: a spawned worker re-imports LeRobot
    # (~10 s of CPU each, every run); LeRobot keeps spawn for PyAV / torchcodec, which these
    # image datasets (PNG frames, no video) never touch.
    workers = [f"--num_workers={plan.loader_workers}"]
    if plan.loader_workers:
        workers.append("--dataloader_multiprocessing_context=fork")
    return [
        _bin("lerobot-train"), *policy_args, "--policy.push_to_hub=false", "--policy.device=cpu",
        f"--dataset.repo_id={dataset.repo_id}", f"--dataset.root={dataset.root}", f"--output_dir={out}",
        f"--steps={steps}", f"--batch_size={plan.batch_size}", f"--log_freq={max(1, min(10, steps // 10))}",
        f"--save_freq={steps}", *workers, "--wandb.enable=false", f"--seed={plan.seed}",
    ]  # fmt: skip


def _act_args(plan: DemoPlan) -> list[str]:
    """``lerobot-train`` flags of the tiny ACT base (see the module docstring)."""
    return [
        "--policy.type=act", f"--policy.dim_model={plan.act_dim}", f"--policy.n_heads={plan.act_heads}",
        f"--policy.dim_feedforward={plan.act_feedforward}", f"--policy.n_encoder_layers={plan.act_encoder_layers}",
        f"--policy.n_decoder_layers={plan.act_decoder_layers}", "--policy.use_vae=false",
        f"--policy.chunk_size={plan.chunk_size}", f"--policy.n_action_steps={plan.chunk_size}",
        "--policy.pretrained_backbone_weights=null", f"--policy.optimizer_lr={plan.learning_rate}",
        f"--policy.optimizer_lr_backbone={plan.learning_rate}",
    ]  # fmt: skip


def craft_args(method: str, plan: DemoPlan, base: str | os.PathLike[str], cache: str | os.PathLike[str]) -> list[str]:
    """The ``--policy.*`` flags of a ``craft_*`` method (``craft_off`` included); see the module docstring."""
    wrapper = ["--policy.type=craft", f"--policy.base_path={base}"]
    if plan.normalization is not None:
        wrapper.append(f"--policy.normalization={plan.normalization}")
    if method == "craft_off":
        return [*wrapper, "--policy.craft.enabled=false"]
    args = [*wrapper, f"--policy.craft.anchor_cache_dir={cache}"]
    for name in ("anchor_batch_size", "epsilon_end", "lambda_lr", "conflict_threshold"):
        value = getattr(plan, name)
        if value is not None:
            args.append(f"--policy.craft.{name}={value}")
    if method == "craft_token_ce":
        return [*args, "--policy.craft.retention_mode=token_ce"]
    if method == "craft_hidden_features":
        return [*args, "--policy.craft.retention_mode=hidden", "--policy.craft.anchor_targets=[features]"]
    if method == "craft_hidden":
        return [*args, "--policy.craft.retention_mode=hidden"]
    raise ValueError(f"{method!r} is not a craft method")


def _check_flags(plan: DemoPlan) -> None:
    """Fail before any training when the plan needs a flag this version of the plugin lacks."""
    from craft_plugin.config import CraftConfig
    from craft_plugin.policies.craft.configuration_craft import CRaFTConfig

    missing = []
    if "craft_hidden_features" in plan.methods and "anchor_targets" not in CraftConfig.field_names():
        missing.append("--policy.craft.anchor_targets (method craft_hidden_features)")
    if plan.normalization is not None and "normalization" not in CRaFTConfig.__dataclass_fields__:
        missing.append("--policy.normalization (plan field normalization)")
    if missing:
        raise ValueError("this craft plugin has no " + " nor ".join(missing) + "; drop it from the plan")


def _make_base0(out: Path, a_train: Any, plan: DemoPlan, mcq_train: Path) -> tuple[Path, dict[str, Any]]:
    """The small SmolVLA, its VLM taught the MCQ set, saved as a checkpoint (before task A)."""
    import torch
    from lerobot.configs import FeatureType
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from lerobot.utils.feature_utils import dataset_to_policy_features

    from craft_plugin.demo.small_smolvla import VLMSizes, build_vlm_folder, smolvla_config
    from craft_plugin.mcq.data import load_mcq
    from craft_plugin.mcq.teach import teach_mcq

    meta = LeRobotDatasetMetadata(a_train.repo_id, root=a_train.root)
    feats = dataset_to_policy_features(meta.features)
    inputs = {k: v for k, v in feats.items() if k.startswith("observation.")}
    outputs = {k: v for k, v in feats.items() if v.type is FeatureType.ACTION}
    sizes = VLMSizes(
        text_hidden=plan.text_hidden, text_layers=plan.vlm_layers, image_size=plan.image_size, patch_size=8,
        vision_hidden=64, vision_layers=2,
    )  # fmt: skip
    vlm = build_vlm_folder(out / "vlm", sizes)
    config = smolvla_config(
        vlm, input_features=inputs, output_features=outputs, image_size=plan.image_size,
        num_vlm_layers=plan.vlm_layers, chunk_size=plan.chunk_size, tokenizer_max_length=16, num_steps=4,
        optimizer_lr=plan.learning_rate, scheduler_warmup_steps=max(1, plan.base_steps // 20),
        scheduler_decay_steps=plan.base_steps, train_expert_only=plan.train_expert_only,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed)
        policy = get_policy_class("smolvla")(config)
    questions = load_mcq(str(mcq_train)).questions
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster than two
    try:
        taught = teach_mcq(policy, questions, steps=plan.teach_steps, lr=plan.teach_lr, seed=plan.seed, log_every=0)
    finally:
        torch.set_num_threads(threads)
    pre, post = make_pre_post_processors(config, dataset_stats=meta.stats)
    base0 = out / "base0"
    policy.save_pretrained(base0)
    pre.save_pretrained(base0)
    post.save_pretrained(base0)
    info = {"teach_steps": taught.steps, "teach_final_loss": taught.final_loss, "teach_seconds": taught.seconds,
            "parameters": sum(p.numel() for p in policy.parameters()),
            "trainable_parameters": sum(p.numel() for p in policy.parameters() if p.requires_grad)}  # fmt: skip
    return base0, info


def _parameters(ckpt: Path) -> int | None:
    """Parameter count of a checkpoint's ``model.safetensors`` (read from its header)."""
    try:
        from safetensors import safe_open

        with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
            return sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception:  # noqa: BLE001 - informative only
        return None


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def run_demo(
    output_dir: str | os.PathLike[str],
    plan: DemoPlan = STANDARD,
    *,
    overwrite: bool = False,
    data_cache: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run every stage into ``output_dir`` (see the module docstring); ``echo`` gets progress lines.

    ``overwrite`` replaces a non-empty ``output_dir`` only once the new run is complete: the
    previous output waits beside it as ``.NAME.previous-PID`` (same folder, so paths inside the
    new run are final from the start) and is deleted after the report is written. When a stage
    fails or the run is interrupted, the previous output is put back and this attempt's files
    are kept as ``NAME.failed`` (its logs), replacing an older ``NAME.failed``. Only a hard kill
    leaves the previous output under its waiting name.
    """
    _check_flags(plan)
    out = Path(output_dir).resolve()
    previous = None
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite or choose another --output-dir")
        previous = out.with_name(f".{out.name}.previous-{os.getpid()}")
        os.replace(out, previous)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = _run_stages(out, plan, data_cache, echo)
    except BaseException as err:
        if previous is not None:
            failed = out.with_name(f"{out.name}.failed")
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(out, failed)
            os.replace(previous, out)
            note = f"the previous output is back in {out}; this attempt's files are in {failed}"
            if isinstance(err, Exception) and err.args and isinstance(err.args[0], str):
                err.args = (f"{err.args[0]}\n({note})", *err.args[1:])
            else:
                echo(f"craft demo: {note}")
        raise
    if previous is not None:
        shutil.rmtree(previous)
    return result


def _run_stages(
    out: Path, plan: DemoPlan, data_cache: str | os.PathLike[str] | None, echo: Callable[[str], None]
) -> DemoResult:
    """The stages of :func:`run_demo`, into the empty folder ``out``."""
    from craft_plugin.demo import metaworld_data as md
    from craft_plugin.demo.eval_stage import jobs_for, run_jobs
    from craft_plugin.demo.workers import per_core
    from craft_plugin.demo.report import dir_bytes, mcq_summary, update_eval_json

    methods = plan.ordered_methods
    (out / "plan.json").write_text(json.dumps({**asdict(plan), "learning_rate": plan.learning_rate}, indent=2))
    t_start = time.perf_counter()
    stages: dict[str, float] = {}

    def stage(name: str, text: str) -> Callable[[], None]:
        echo(f"[{name}] {text}")
        t0 = time.perf_counter()

        def done() -> None:
            stages[name] = time.perf_counter() - t0
            echo(f"[{name}] done in {stages[name]:.1f} s")

        return done

    # 1. data
    done = stage("data", f"Meta-World {md.TASK_A} (A) and {md.TASK_B} (B): {plan.train_episodes} + {plan.heldout_episodes} "
                 f"scripted episodes each at {plan.image_size}px (cached)")  # fmt: skip
    render = md.look_render(plan.look, plan.image_size)
    kw = {"seed": plan.seed, "render": render, "progress": False}
    (a_train, a_held), (b_train, b_held) = md.tasks_datasets(
        (md.TASK_A, md.TASK_B), plan.train_episodes, plan.heldout_episodes, data_cache, processes=plan.processes, **kw
    )  # the tasks not cached yet: built in parallel processes
    replay = None
    if "replay" in methods:
        replay = md.replay_dataset(md.TASK_B, plan.train_episodes, md.TASK_A, plan.replay_episodes, data_cache, **kw)
    echo(f"[data] A {a_train.frames} frames, B {b_train.frames} frames"
         + (f", replay {replay.frames} frames" if replay is not None else ""))  # fmt: skip
    done()

    # 2. mcq (smolvla only)
    mcq_train = mcq_test = None
    if plan.has_mcq:
        from craft_plugin.mcq.scenes import make_scene_mcq

        done = stage("mcq", f"{plan.mcq_train} + {plan.mcq_test} generated scene questions ({', '.join(plan.mcq_kinds)})")
        mcq_train = make_scene_mcq(out / "mcq" / "train", plan.mcq_train, seed=plan.seed, image_size=plan.image_size, kinds=plan.mcq_kinds)
        mcq_test = make_scene_mcq(out / "mcq" / "test", plan.mcq_test, seed=plan.seed + 10_000, image_size=plan.image_size, kinds=plan.mcq_kinds)
        done()

    # 3. base
    runs_dir = out / "runs"
    base_run = runs_dir / "base"
    if plan.family == "smolvla":
        done = stage("base", f"small SmolVLA (train_expert_only={plan.train_expert_only}): teach its VLM the MCQ set "
                     f"({plan.teach_steps} steps), then lerobot-train on A ({plan.base_steps} steps)")  # fmt: skip
        base0, base_info = _make_base0(out, a_train, plan, mcq_train)
        echo(f"[base] {base_info['parameters'] / 1e6:.2f}M parameters ({base_info['trainable_parameters'] / 1e6:.2f}M "
             f"trainable); MCQ teaching loss {base_info['teach_final_loss']:.3f} in {base_info['teach_seconds']:.1f} s")  # fmt: skip
        policy_args = [f"--policy.path={base0}"]
    else:
        done = stage("base", f"tiny ACT from scratch (dim {plan.act_dim}, {plan.act_encoder_layers} enc / "
                     f"{plan.act_decoder_layers} dec layers, ResNet-18 from scratch): lerobot-train on A ({plan.base_steps} steps)")  # fmt: skip
        base_info = {}
        policy_args = _act_args(plan)
    t0 = time.perf_counter()
    threads = train_threads(plan.loader_workers) if plan.loader_workers else None
    _run(_lerobot_train(policy_args, a_train, base_run / "train", plan.base_steps, plan), base_run / "train.log", threads)
    base_seconds = time.perf_counter() - t0
    base = _checkpoint(base_run / "train")
    if "parameters" not in base_info:
        base_info["parameters"] = _parameters(base)
        if base_info["parameters"]:
            echo(f"[base] {base_info['parameters'] / 1e6:.2f}M parameters")
    update_eval_json(base_run, {"method": "base", "role": "base", "seed": plan.seed, "steps": plan.base_steps,
                                "family": plan.family, "train_seconds": base_seconds, "teach": base_info})  # fmt: skip
    done()

    # 4. cache (only when an anchored CRaFT run needs it): build-cache's defaults, paths and size only
    cache = out / "cache"
    if any(m in ANCHORED for m in methods):
        done = stage("cache", f"craft build-cache from the base on task A ({plan.num_anchors or 'every frame as'} anchors, default settings)")
        _run([_bin("craft"), "build-cache", f"--policy.path={base}", f"--dataset.root={a_train.root}",
              f"--dataset.repo_id={a_train.repo_id}", f"--output-dir={cache}", *([f"--num-anchors={plan.num_anchors}"] if plan.num_anchors else [])],
             out / "cache.log")  # fmt: skip
        done()

    # 5. runs
    checkpoints: dict[str, Path] = {"base": base}
    for method in methods:
        done = stage(method, f"lerobot-train on B ({plan.finetune_steps} steps)")
        if method == "naive":
            args, data = [f"--policy.path={base}"], b_train
        elif method == "replay":
            args, data = [f"--policy.path={base}"], replay
        else:
            args, data = craft_args(method, plan, base, cache), b_train
        run_dir = runs_dir / method
        t0 = time.perf_counter()
        _run(_lerobot_train(args, data, run_dir / "train", plan.finetune_steps, plan), run_dir / "train.log", threads)
        seconds = time.perf_counter() - t0
        checkpoints[method] = _checkpoint(run_dir / "train")
        storage = {"checkpoint": dir_bytes(checkpoints[method])}
        if method in ANCHORED:
            storage["cache"] = dir_bytes(cache)
        update_eval_json(run_dir, {"method": method, "role": "finetune", "seed": plan.seed, "steps": plan.finetune_steps,
                                   "family": plan.family, "train_seconds": seconds, "storage_bytes": storage,
                                   "policy_args": args})  # fmt: skip
        done()

    # 6. eval
    done = stage("eval", "held-out action error, rollouts" + (" and MCQ (craft eval-mcq's run_eval_mcq)" if plan.has_mcq else "")
                 + " for every checkpoint")  # fmt: skip
    # Fine-tunes are scored against naive (paired); naive's own accuracy is checkpoint A of the
    # first such comparison, so it needs no job of its own. Jobs run in parallel processes
    # (craft_plugin.demo.eval_stage); their results are merged here, one writer per eval.json.
    compared = [n for n in checkpoints if n not in ("base", "naive")]
    tasks = (("A", md.TASK_A, a_held, a_train), ("B", md.TASK_B, b_held, b_train))
    jobs = []
    for name, ckpt in checkpoints.items():
        mcq = None
        if plan.has_mcq and not (name == "naive" and compared):
            compare_to = None if name in ("base", "naive") else checkpoints["naive"]
            mcq = (compare_to, mcq_test, runs_dir / name / "mcq.json")
        jobs += jobs_for(name, ckpt, tasks=tasks, episodes=plan.rollout_episodes, max_steps=plan.rollout_max_steps,
                         seed=plan.seed, mcq=mcq)  # fmt: skip
    processes = plan.processes if plan.processes is not None else per_core(len(jobs))
    echo(f"[eval] {len(jobs)} jobs in {processes} process(es)")
    results: dict[str, dict[str, Any]] = {name: {"action_error": {}, "success": {}} for name in checkpoints}
    for res in run_jobs(jobs, processes):
        job = res["job"]
        if job.kind == "task":
            results[job.name]["action_error"][job.key] = res["action_error"]
            if res["success"] is not None:
                results[job.name]["success"][job.key] = res["success"]
            echo(f"[eval] {job.name:<22} task-{job.key} L1 {res['action_error']['l1']:.4f}"
                 + (f", success {res['success']['successes']}/{res['success']['episodes']}" if res["success"] else "")
                 + f" ({res['seconds']:.0f} s)")  # fmt: skip
        else:
            name = job.name
            update_eval_json(runs_dir / name, {"mcq": mcq_summary(res["mcq_output"], "A" if name in ("base", "naive") else None)})
            if compared and name == compared[0]:
                update_eval_json(runs_dir / "naive", {"mcq": mcq_summary(res["mcq_output"], "A")})
            echo(f"[eval] {name:<22} MCQ ({res['seconds']:.0f} s)")
    for name, section in results.items():
        update_eval_json(runs_dir / name, section)
    done()

    # 7. report
    done = stage("report", "craft report")
    report_dir = out / "report"
    _run([_bin("craft"), "report", *[str(runs_dir / n) for n in checkpoints], "-o", str(report_dir), "--base", "base"],
         out / "report.log")  # fmt: skip
    done()
    seconds = time.perf_counter() - t_start
    (out / "timings.json").write_text(json.dumps({"total_seconds": seconds, "stages": stages}, indent=2))
    plots = sorted(report_dir.glob("*.png"))
    return DemoResult(out, report_dir / "report.md", plots, seconds, stages)
