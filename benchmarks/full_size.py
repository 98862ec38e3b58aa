"""Full-size SmolVLA under stock `lerobot-train`: craft steps against plain steps (not a test).

The real SmolVLA architecture with random weights, built offline: a stand-in SmolVLM at
SmolVLM2-500M's sizes (Llama text model 960 wide, 32 layers of which SmolVLA keeps 16, 15 heads,
5 KV heads, MLP 2560, vocabulary 49280; SigLIP vision tower 768 wide, 12 layers, 512x512 input,
patch 16, pixel shuffle 4 → 64 tokens per image) and LeRobot's default SmolVLA action expert;
VLM trainable (`train_expert_only=false`). The tokenizer is the demo's byte-level one padded to
the real vocabulary size (the Hub is unreachable; the embedding has its real size). A dataset of
random frames is written with `LeRobotDataset.create`, the random-weight policy saved as a
checkpoint, an anchor cache built with `craft build-cache` (defaults), then two real
`lerobot-train` runs of `--steps` steps each, one at a time:

    plain   --policy.path=CKPT
    craft   --policy.type=craft --policy.base_path=CKPT --policy.base_options='{train_expert_only: false}'
            (CRaFT defaults, retention_freq 1, anchor batch = task batch / 4)

Step time is the median of LeRobot's logged `updt_s` after `--warmup` steps; the time ratio is
craft / plain (goal <= 1.30). Peak memory is each training process's peak resident set (CPU) or
`torch.cuda.max_memory_allocated` (CUDA); the extra memory of the craft run is reported as a
multiple of one copy of the trainable parameters (goal <= 1.1x).

    python benchmarks/full_size.py [--steps 4] [--batch-size 4] [--device cpu|cuda] [--bf16] [--dry-run]

`--dry-run` builds nothing: it checks the arguments and prints the commands it would run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PROBE = Path(__file__).with_name("_train_peak_rss.py")
#: SmolVLM2-500M-Video-Instruct's sizes (its config.json), the backbone of lerobot/smolvla_base.
SMOLVLM2_500M = {
    "text_hidden": 960, "text_layers": 32, "text_heads": 15, "text_kv_heads": 5, "text_intermediate": 2560,
    "vision_hidden": 768, "vision_layers": 12, "vision_heads": 12, "vision_intermediate": 3072,
    "image_size": 512, "patch_size": 16, "scale_factor": 4, "max_positions": 8192,
}  # fmt: skip
VOCAB = 49280
NUM_VLM_LAYERS = 16  # SmolVLA's default


def make_world(root: Path, *, frames: int, image: int, seed: int = 0, smoke: bool = False) -> tuple[Path, Path]:
    """A dataset of random frames and a random-weight full-size SmolVLA checkpoint."""
    import numpy as np
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from craft_plugin.demo.small_smolvla import VLMSizes, build_tokenizer, build_vlm_folder, smolvla_config

    key = "observation.images.top"
    features = {
        key: {"dtype": "image", "shape": (image, image, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (6,), "names": None},
        "action": {"dtype": "float32", "shape": (6,), "names": None},
    }
    ds = LeRobotDataset.create(repo_id="local/full", fps=30, features=features, root=root / "data", use_videos=False)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        for _ in range(frames // 2):
            ds.add_frame({key: rng.integers(0, 256, (image, image, 3), dtype=np.uint8),
                          "observation.state": rng.standard_normal(6).astype(np.float32),
                          "action": rng.uniform(-1, 1, 6).astype(np.float32), "task": "pick up the cube"})  # fmt: skip
        ds.save_episode()
    ds.finalize()
    sizes = VLMSizes(image_size=32, patch_size=8) if smoke else VLMSizes(**SMOLVLM2_500M, vocab_size=VOCAB)
    vlm = build_vlm_folder(root / "vlm", sizes, tokenizer=build_tokenizer())
    cfg = smolvla_config(
        vlm,
        input_features={key: PolicyFeature(type=FeatureType.VISUAL, shape=(3, image, image)),
                        "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(6,))},
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(6,))},
        image_size=sizes.image_size, num_vlm_layers=4 if smoke else NUM_VLM_LAYERS, chunk_size=50,
        max_state_dim=32, max_action_dim=32,
    )  # fmt: skip
    torch.manual_seed(seed)
    policy = SmolVLAPolicy(cfg)
    stats = {k: {s: torch.as_tensor(v) for s, v in d.items()} for k, d in ds.meta.stats.items()}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    out = root / "smolvla"
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return root / "data", out


def commands(root: Path, data: Path, ckpt: Path, args: argparse.Namespace) -> dict[str, list[str]]:
    anchor_batch = max(1, args.batch_size // 4)
    common = [
        f"--policy.device={args.device}", "--policy.push_to_hub=false", "--dataset.repo_id=local/full",
        f"--dataset.root={data}", f"--steps={args.steps}", f"--batch_size={args.batch_size}", "--log_freq=1",
        "--save_checkpoint=false", "--num_workers=0", "--wandb.enable=false", "--seed=1",
    ]  # fmt: skip
    if args.bf16:
        common.append("--policy.use_amp=true")  # SmolVLA has no dtype field: LeRobot's AMP (bf16 autocast)
    train = [sys.executable, str(PROBE)]
    return {
        "build-cache": [str(BIN / "craft"), "build-cache", f"--policy.path={ckpt}", f"--dataset.root={data}",
                        "--dataset.repo_id=local/full", f"--output-dir={root / 'cache'}", f"--device={args.device}",
                        f"--num-anchors={args.anchors}", "--batch-size=2",
                        *(["--dtype=bfloat16"] if args.bf16 else [])],  # fmt: skip
        "plain": [*train, f"--policy.path={ckpt}", "--policy.train_expert_only=false", f"--output_dir={root / 'plain'}", *common],
        "craft": [*train, "--policy.type=craft", f"--policy.base_path={ckpt}", "--policy.base_options={train_expert_only: false}",
                  f"--policy.craft.anchor_cache_dir={root / 'cache'}", f"--policy.craft.anchor_batch_size={anchor_batch}",
                  f"--output_dir={root / 'craft'}", *common],  # fmt: skip
    }


def _run(cmd: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-4000:]}")
    return res.stdout + res.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--anchors", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--image", type=int, default=96, help="dataset image size (SmolVLA resizes to 512 itself)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="--policy.use_amp=true (bf16 autocast) and a bf16 cache build")
    p.add_argument("--smoke", action="store_true", help="the demo's small VLM sizes instead of full size: checks the pipeline in a minute")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (default: unset)")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--dry-run", action="store_true", help="check the arguments, print the commands, build nothing")
    args = p.parse_args()
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    if args.device.startswith("cuda"):
        import torch

        if not args.dry_run and not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device here")
    if args.dry_run:
        root = args.work_dir or Path(tempfile.gettempdir()) / "craft-full-size"
        for name, cmd in commands(root, root / "data", root / "smolvla", args).items():
            print(f"{name}: {' '.join(cmd)}")
        print("full_size.py --dry-run: arguments ok")
        return
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="craft-full-size-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    t0 = time.perf_counter()
    data, ckpt = make_world(root, frames=args.frames, image=args.image, smoke=args.smoke)
    cmds = commands(root, data, ckpt, args)
    t_build = time.perf_counter()
    _run(cmds["build-cache"], env)
    t_build = time.perf_counter() - t_build
    results = {}
    for name in ("plain", "craft"):
        log = _run(cmds[name], env)
        rows = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"step:(\d+) .*?updt_s:([0-9.]+)", log)]
        times = [t for s, t in rows if s > args.warmup]
        peak_key = "PEAK_CUDA_MB" if args.device.startswith("cuda") else "PEAK_RSS_MB"
        peak = float(re.search(rf"{peak_key} ([0-9.]+)", log).group(1))
        trainable = int(re.search(r"num_learnable_params=(\d+)", log).group(1))
        total = int(re.search(r"num_total_params=(\d+)", log).group(1))
        results[name] = {"step_s": statistics.median(times), "steps": times, "peak_mb": peak, "trainable": trainable, "total": total}
    bytes_per = 2 if args.bf16 else 4
    params_mb = results["plain"]["trainable"] * bytes_per / 2**20
    ratio = results["craft"]["step_s"] / results["plain"]["step_s"]
    extra = (results["craft"]["peak_mb"] - results["plain"]["peak_mb"]) / params_mb
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    if args.device.startswith("cuda"):
        import torch

        machine = torch.cuda.get_device_name(0)
    print(f"machine: {machine} | device {args.device} | {'bf16' if args.bf16 else 'fp32'} | threads {env.get('OMP_NUM_THREADS', 'default')}")
    print(f"SmolVLA {'smoke sizes' if args.smoke else 'full size'}: {results['plain']['total'] / 1e6:.0f}M parameters, {results['plain']['trainable'] / 1e6:.0f}M trainable "
          f"(VLM trainable) | batch {args.batch_size}, anchor batch {max(1, args.batch_size // 4)} | {args.steps} steps, median after {args.warmup}")  # fmt: skip
    print(f"craft build-cache: {args.anchors} anchors in {t_build:.0f} s (with start-up)")
    for name, r in results.items():
        print(f"{name:<6} step {r['step_s']:7.2f} s (steps {', '.join(f'{t:.2f}' for t in r['steps'])}) | peak {r['peak_mb']:8.0f} MB")
    print(f"time ratio craft/plain {ratio:.3f} (goal <= 1.30) | extra memory {results['craft']['peak_mb'] - results['plain']['peak_mb']:.0f} MB "
          f"= {extra:.2f}x one copy of the trainable parameters ({params_mb:.0f} MB; goal <= 1.1x)")  # fmt: skip
    print(f"total {time.perf_counter() - t0:.0f} s")
    print("JSON " + json.dumps({"ratio": ratio, "extra_x": extra, "results": results, "machine": machine}))


if __name__ == "__main__":
    main()
