"""``craft demo``: the forgetting experiment of SPEC §7, end to end, offline, on a CPU.

Stages, each through the project's public commands where one exists (so the demo is also the
integration test a user would run):

1. **data** — task A = Meta-World ``push-v3``, task B = ``reach-v3`` (one scene), scripted
   expert episodes written as LeRobot datasets (:mod:`craft_plugin.demo.metaworld_data`;
   cached on disk, so a second demo skips it), held-out episodes of both, and the replay set
   (all B episodes + ``replay_episodes`` A episodes).
2. **mcq** — generated scene questions (:func:`make_scene_mcq`), one set to teach, a disjoint
   one to test. Colour questions only: the small VLM learnt them to 97.5 % held-out accuracy in
   200 teaching steps (13 s), while colour + position reached 65 % in 500 steps (tried here).
3. **base** — a small SmolVLA built from a config with random weights on a stand-in SmolVLM
   (:mod:`craft_plugin.demo.small_smolvla`; its folder lives in ``OUT/vlm`` and every
   checkpoint names it), whose VLM is first taught the MCQ set (:func:`teach_mcq`), then trained
   on task A with stock ``lerobot-train``. ``train_expert_only=False``: the VLM trains too, so
   it can forget.
4. **cache** — ``craft build-cache`` from the base on task A.
5. **runs** — from the base, on task B, same steps, batch and seed: ``naive``
   (``--policy.path``), ``replay`` (same, on the replay set), ``craft_token_ce`` and
   ``craft_hidden`` (``--policy.type=craft --policy.base_path``). Each run's console output is
   kept in ``OUT/runs/<method>/train.log``.
6. **eval** — each checkpoint loaded once: held-out action L1 on A and B (:func:`action_error`),
   seeded rollouts with Wilson intervals (:func:`rollout_success`), and ``craft eval-mcq``
   (each fine-tuned run against ``naive``, paired); all into ``OUT/runs/<method>/eval.json``.
7. **report** — ``craft report`` → ``OUT/report/report.md`` and the PNG plots.

Every subprocess gets ``HF_HUB_OFFLINE=1``; nothing is downloaded. Normalization: plain
``--policy.path`` runs take task B's statistics (LeRobot's behaviour), craft runs keep the
base's (the wrapper's default); actions are compared in raw units, so both are fair.
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

__all__ = ["METHODS", "QUICK", "STANDARD", "DemoPlan", "DemoResult", "run_demo"]

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("naive", "replay", "craft_token_ce", "craft_hidden")


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run. :data:`STANDARD` is ``make demo``; :data:`QUICK` the test's."""

    train_episodes: int = 20
    heldout_episodes: int = 5
    replay_episodes: int = 5  #: task-A episodes mixed into B for the replay baseline (20 %)
    image_size: int = 64
    mcq_train: int = 240
    mcq_test: int = 80
    mcq_kinds: tuple[str, ...] = ("color",)  #: colours: learnt to ~97 % held-out in 200 steps here
    teach_steps: int = 200
    teach_lr: float = 3e-3
    base_steps: int = 300
    finetune_steps: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    num_anchors: int = 96
    anchor_batch_size: int = 8
    epsilon_end: float = 0.05
    lambda_lr: float = 0.5
    conflict_threshold: float = 0.0
    rollout_episodes: int = 5
    rollout_max_steps: int = 100
    text_hidden: int = 64
    vlm_layers: int = 4
    chunk_size: int = 10
    seed: int = 0
    methods: tuple[str, ...] = METHODS


STANDARD = DemoPlan()
QUICK = DemoPlan(
    train_episodes=3, heldout_episodes=2, replay_episodes=1, image_size=32, mcq_train=24, mcq_test=16,
    teach_steps=10, base_steps=6, finetune_steps=4, batch_size=8, num_anchors=8, anchor_batch_size=4,
    rollout_episodes=1, rollout_max_steps=10, methods=("naive", "craft_token_ce", "craft_hidden"),
)  # fmt: skip
# QUICK leaves out replay (the same lerobot-train path as naive on another dataset, which
# tests/demo/test_metaworld_data.py covers) to keep the test suite under its 10-minute budget.


@dataclass
class DemoResult:
    output_dir: Path
    report_md: Path
    plots: list[Path]
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _bin(name: str) -> str:
    """A console script of this environment (``lerobot-train``, ``craft``)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the demo from craft-plugin's environment (make demo)")
    return str(path)


def _run(cmd: Sequence[str], log_file: Path | None = None) -> str:
    """Run ``cmd``; keep its output in ``log_file``; on failure raise with the output's tail."""
    res = subprocess.run(list(cmd), capture_output=True, text=True, env=_env())
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
    return [
        _bin("lerobot-train"), *policy_args, "--policy.push_to_hub=false", "--policy.device=cpu",
        f"--dataset.repo_id={dataset.repo_id}", f"--dataset.root={dataset.root}", f"--output_dir={out}",
        f"--steps={steps}", f"--batch_size={plan.batch_size}", f"--log_freq={max(1, min(10, steps // 10))}",
        f"--save_freq={steps}", "--num_workers=0", "--wandb.enable=false", f"--seed={plan.seed}",
    ]  # fmt: skip


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
        optimizer_lr=plan.lr, scheduler_warmup_steps=max(1, plan.base_steps // 20),
        scheduler_decay_steps=plan.base_steps,
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
            "parameters": sum(p.numel() for p in policy.parameters())}  # fmt: skip
    return base0, info


def run_demo(
    output_dir: str | os.PathLike[str],
    plan: DemoPlan = STANDARD,
    *,
    overwrite: bool = False,
    data_cache: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run every stage into ``output_dir`` (see the module docstring); ``echo`` gets progress lines."""
    from craft_plugin.demo import metaworld_data as md
    from craft_plugin.demo.evaluate import action_error, load_policy, rollout_success
    from craft_plugin.demo.report import dir_bytes, mcq_summary, update_eval_json
    from craft_plugin.mcq.scenes import make_scene_mcq

    out = Path(output_dir).resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite or choose another --output-dir")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(asdict(plan), indent=2))
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
    done = stage("data", f"Meta-World push-v3 (A) and reach-v3 (B): {plan.train_episodes} + {plan.heldout_episodes} "
                 f"scripted episodes each at {plan.image_size}px (cached)")  # fmt: skip
    render = md.RenderOptions(image_size=plan.image_size)
    kw = {"seed": plan.seed, "render": render, "progress": False}
    a_train, a_held = md.task_datasets(md.TASK_A, plan.train_episodes, plan.heldout_episodes, data_cache, **kw)
    b_train, b_held = md.task_datasets(md.TASK_B, plan.train_episodes, plan.heldout_episodes, data_cache, **kw)
    replay = md.replay_dataset(md.TASK_B, plan.train_episodes, md.TASK_A, plan.replay_episodes, data_cache, **kw)
    echo(f"[data] A {a_train.frames} frames, B {b_train.frames} frames, replay {replay.frames} frames")
    done()

    # 2. mcq
    done = stage("mcq", f"{plan.mcq_train} + {plan.mcq_test} generated scene questions ({', '.join(plan.mcq_kinds)})")
    mcq_train = make_scene_mcq(out / "mcq" / "train", plan.mcq_train, seed=plan.seed, image_size=plan.image_size, kinds=plan.mcq_kinds)
    mcq_test = make_scene_mcq(out / "mcq" / "test", plan.mcq_test, seed=plan.seed + 10_000, image_size=plan.image_size, kinds=plan.mcq_kinds)
    done()

    # 3. base
    done = stage("base", f"small SmolVLA: teach its VLM the MCQ set ({plan.teach_steps} steps), then lerobot-train on A ({plan.base_steps} steps)")
    base0, base_info = _make_base0(out, a_train, plan, mcq_train)
    echo(f"[base] {base_info['parameters'] / 1e6:.2f}M parameters; MCQ teaching loss {base_info['teach_final_loss']:.3f} "
         f"in {base_info['teach_seconds']:.1f} s")  # fmt: skip
    runs_dir = out / "runs"
    base_run = runs_dir / "base"
    t0 = time.perf_counter()
    _run(_lerobot_train([f"--policy.path={base0}"], a_train, base_run / "train", plan.base_steps, plan), base_run / "train.log")
    base_seconds = time.perf_counter() - t0
    base = _checkpoint(base_run / "train")
    update_eval_json(base_run, {"method": "base", "role": "base", "seed": plan.seed, "steps": plan.base_steps,
                                "train_seconds": base_seconds, "teach": base_info})  # fmt: skip
    done()

    # 4. cache
    done = stage("cache", f"craft build-cache from the base on task A ({plan.num_anchors} anchors)")
    cache = out / "cache"
    _run([_bin("craft"), "build-cache", f"--policy.path={base}", f"--dataset.root={a_train.root}",
          f"--dataset.repo_id={a_train.repo_id}", f"--output-dir={cache}", f"--num-anchors={plan.num_anchors}",
          "--batch-size=16"], out / "cache.log")  # fmt: skip
    done()

    # 5. runs
    craft_common = [
        "--policy.type=craft", f"--policy.base_path={base}", f"--policy.craft.anchor_cache_dir={cache}",
        f"--policy.craft.anchor_batch_size={plan.anchor_batch_size}", f"--policy.craft.epsilon_end={plan.epsilon_end}",
        f"--policy.craft.lambda_lr={plan.lambda_lr}", f"--policy.craft.conflict_threshold={plan.conflict_threshold}",
    ]  # fmt: skip
    recipes: dict[str, tuple[list[str], Any]] = {
        "naive": ([f"--policy.path={base}"], b_train),
        "replay": ([f"--policy.path={base}"], replay),
        "craft_token_ce": ([*craft_common, "--policy.craft.retention_mode=token_ce"], b_train),
        "craft_hidden": ([*craft_common, "--policy.craft.retention_mode=hidden"], b_train),
    }
    checkpoints: dict[str, Path] = {"base": base}
    for method in plan.methods:
        done = stage(method, f"lerobot-train on B ({plan.finetune_steps} steps)")
        args, data = recipes[method]
        run_dir = runs_dir / method
        t0 = time.perf_counter()
        _run(_lerobot_train(args, data, run_dir / "train", plan.finetune_steps, plan), run_dir / "train.log")
        seconds = time.perf_counter() - t0
        checkpoints[method] = _checkpoint(run_dir / "train")
        storage = {"checkpoint": dir_bytes(checkpoints[method])}
        if method.startswith("craft"):
            storage["cache"] = dir_bytes(cache)
        update_eval_json(run_dir, {"method": method, "role": "finetune", "seed": plan.seed, "steps": plan.finetune_steps,
                                   "train_seconds": seconds, "storage_bytes": storage})  # fmt: skip
        done()

    # 6. eval
    done = stage("eval", "held-out action error, rollouts and craft eval-mcq for every checkpoint")
    # Fine-tunes are scored against naive (`--compare`); naive's own accuracy is checkpoint A of
    # the first such comparison, so it needs no run of its own.
    compared = [n for n in checkpoints if n not in ("base", "naive")]
    for name, ckpt in checkpoints.items():
        run_dir = runs_dir / name
        loaded = load_policy(ckpt)
        errors = {key: action_error(loaded, held, progress=False).to_dict() for key, held in (("A", a_held), ("B", b_held))}
        success: dict[str, Any] = {}
        if plan.rollout_episodes > 0:
            for key, task, like in (("A", md.TASK_A, a_train), ("B", md.TASK_B, b_train)):
                res = rollout_success(loaded, task, episodes=plan.rollout_episodes, max_steps=plan.rollout_max_steps,
                                      seed=plan.seed, like=like, progress=False)  # fmt: skip
                success[key] = res.to_dict()
        update_eval_json(run_dir, {"action_error": errors, "success": success})
        if not (name == "naive" and compared):
            if name in ("base", "naive"):
                cmd = [_bin("craft"), "eval-mcq", f"--policy.path={ckpt}"]
            else:
                cmd = [_bin("craft"), "eval-mcq", f"--policy.path={checkpoints['naive']}", f"--compare={ckpt}"]
            mcq_json = run_dir / "mcq.json"
            _run([*cmd, f"--data={mcq_test}", f"--output={mcq_json}", f"--seed={plan.seed}"], run_dir / "mcq.log")
            update_eval_json(run_dir, {"mcq": mcq_summary(mcq_json, "A" if name in ("base", "naive") else None)})
            if compared and name == compared[0]:
                update_eval_json(runs_dir / "naive", {"mcq": mcq_summary(mcq_json, "A")})
        a, b = errors["A"]["l1"], errors["B"]["l1"]
        echo(f"[eval] {name:<15} task-A L1 {a:.4f} | task-B L1 {b:.4f}")
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


def plan_with(plan: DemoPlan, **changes: Any) -> DemoPlan:
    """``plan`` with some fields changed (e.g. a different seed)."""
    return replace(plan, **changes)
