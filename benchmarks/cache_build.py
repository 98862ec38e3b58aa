"""`craft build-cache` throughput against a bare teacher loop (not a test).

The bare loop does only what any cache build must: load the same anchor frames with the same
`DataLoader` (same batch size, workers, device), run the teacher's preprocessor and its
feature forward under `no_grad`. The build adds storing inputs, writing safetensors shards
(temp file, fsync, sha256, rename), the manifest after every shard, the progress bar and the
feature statistics. Runs alternate (bare, build, bare, build, ...) in one process; the script
prints the median throughputs and their ratio (goal >= 0.9).

The teacher is an ACT policy built from a config with random weights (ResNet-18 from scratch,
dim 256, 4 encoder layers) at 96x96, over a dataset written locally with
`LeRobotDataset.create` — no download.

    python benchmarks/cache_build.py [--anchors 128] [--batch-size 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_world(root: Path, frames: int, size: int) -> tuple[Path, Path]:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    features = {
        "observation.images.top": {"dtype": "image", "shape": (size, size, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (6,), "names": None},
        "action": {"dtype": "float32", "shape": (6,), "names": None},
    }
    ds = LeRobotDataset.create(repo_id="local/bench", fps=30, features=features, root=root / "data", use_videos=False)
    rng = np.random.default_rng(0)
    per_ep = 50
    for e in range(max(1, frames // per_ep)):
        for _ in range(per_ep):
            ds.add_frame(
                {
                    "observation.images.top": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                    "observation.state": rng.standard_normal(6).astype(np.float32),
                    "action": rng.uniform(-1, 1, 6).astype(np.float32),
                    "task": "bench",
                }
            )
        ds.save_episode()
    ds.finalize()
    cfg = ACTConfig(
        input_features={
            "observation.images.top": PolicyFeature(type=FeatureType.VISUAL, shape=(3, size, size)),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(6,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(6,))},
        device="cpu",
        pretrained_backbone_weights=None,
        dim_model=256,
        n_encoder_layers=4,
        chunk_size=10,
        n_action_steps=10,
    )
    torch.manual_seed(0)
    policy = get_policy_class("act")(cfg)
    stats = {k: {s: torch.as_tensor(v) for s, v in d.items()} for k, d in ds.meta.stats.items()}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    out = root / "act"
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return root / "data", out


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def bare_loop(
    data: Path, policy_dir: Path, anchors: int, batch_size: int, workers: int, seed: int, device: str = "cpu",
    dtype: str = "float32",
) -> float:  # fmt: skip
    """Seconds for: load anchor frames, preprocess, teacher features. Nothing stored."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    from craft_plugin.taps import make_tap

    t0 = time.perf_counter()
    cfg = PreTrainedConfig.from_pretrained(str(policy_dir))
    cfg.device = device
    policy = get_policy_class(cfg.type).from_pretrained(str(policy_dir), config=cfg).to(device).eval()
    autocast = torch.autocast(torch.device(device).type, dtype=_DTYPES[dtype], enabled=dtype != "float32")
    pre, _ = make_pre_post_processors(cfg, pretrained_path=str(policy_dir))
    meta = LeRobotDataset("local/bench", root=data)
    ds = LeRobotDataset("local/bench", root=data, delta_timestamps=resolve_delta_timestamps(cfg, meta.meta))
    idx = sorted(torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:anchors].tolist())
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=batch_size, num_workers=workers)
    with make_tap(policy) as tap, torch.no_grad(), autocast:
        for raw in loader:
            tap.features(pre(raw), [-2, -1], list(tap.default_pooling))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def build(
    data: Path, policy_dir: Path, out: Path, anchors: int, batch_size: int, workers: int, seed: int, device: str = "cpu",
    dtype: str = "float32",
) -> float:  # fmt: skip
    from craft_plugin.cache.builder import BuildOptions, build_cache

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    build_cache(
        BuildOptions(
            policy_path=str(policy_dir), output_dir=str(out), dataset_root=str(data), dataset_repo_id="local/bench",
            num_anchors=anchors, batch_size=batch_size, num_workers=workers, seed=seed, shard_size=64,
            device=device, dtype=dtype,
        ),
        progress=False,
    )  # fmt: skip
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anchors", type=int, default=128)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (the teacher's device, both sides)")
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES), help="teacher pass dtype (autocast), both sides")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and exit")
    args = p.parse_args()
    if args.dry_run:
        print(f"cache_build.py --dry-run: arguments ok (device {args.device}, dtype {args.dtype})")
        return
    torch.set_num_threads(args.threads)
    dev = {"device": args.device, "dtype": args.dtype}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("HF_HOME", str(root / "hf"))
        data, policy_dir = make_world(root, args.frames, args.size)
        bare_loop(data, policy_dir, min(16, args.anchors), args.batch_size, args.workers, 1, **dev)  # warm-up
        bare_s, build_s = [], []
        for _ in range(args.repeats):
            bare_s.append(bare_loop(data, policy_dir, args.anchors, args.batch_size, args.workers, 0, **dev))
            build_s.append(build(data, policy_dir, root / "cache", args.anchors, args.batch_size, args.workers, 0, **dev))
        size = sum(f.stat().st_size for f in (root / "cache").iterdir())
    b, c = statistics.median(bare_s), statistics.median(build_s)
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{platform.machine()} {platform.processor() or ''}"
    print(f"machine: {where} | device {args.device}, {args.dtype} | torch {torch.__version__} | threads={torch.get_num_threads()} | python {sys.version.split()[0]}")
    print(f"teacher: ACT dim 256, 4 encoder layers, ResNet-18, {args.size}x{args.size} images | {args.anchors} anchors, batch {args.batch_size}, workers {args.workers}")
    print(f"bare teacher loop: {args.anchors / b:.1f} anchors/s ({b:.2f} s) | craft build-cache: {args.anchors / c:.1f} anchors/s ({c:.2f} s) | medians of {args.repeats}")
    print(f"throughput ratio build-cache / bare loop: {b / c:.3f} (goal >= 0.9)")
    print(f"cache size: {size / 2**20:.2f} MiB, {size / args.anchors / 1024:.1f} KiB per anchor")


if __name__ == "__main__":
    main()
