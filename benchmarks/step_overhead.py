"""Step time of a `craft` run against a plain `lerobot-train` run of its base (not a test).

Both are real `lerobot-train` subprocesses on the same data and base: an ACT policy built from
a config with random weights (ResNet-18 from scratch, dim 256, 4 encoder layers) at 96x96,
batch 32, fine-tuned from a saved checkpoint. The craft runs use an anchor cache of that
checkpoint, `anchor_batch_size` 8, `retention_freq` 1 and 4. Step time is the median of
LeRobot's logged `updt_s` (forward + backward + optimizer) over the steps after warm-up. Runs
go one at a time. Peak memory is each training process's peak resident set size (the runs go
through `_train_peak_rss.py`, which calls the same `main` as the `lerobot-train` executable);
the extra memory of a craft run is its peak minus the plain run's, reported as a multiple of one
fp32 copy of the trainable parameters (goal <= 1.2x). It includes everything CRaFT adds: the
second gradient, the anchor batch's activations, the tap and the cache reader.

    python benchmarks/step_overhead.py [--steps 12] [--threads 2]
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_build import make_world  # noqa: E402  (dataset + ACT checkpoint, offline)


def run(cmd: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return res.stdout + res.stderr


def step_times(log: str, warmup: int) -> list[float]:
    rows = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"step:(\d+) .*?updt_s:([0-9.]+)", log)]
    return [t for s, t in rows if s > warmup]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--anchor-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf"), "OMP_NUM_THREADS": str(args.threads)}
        data, act = make_world(root, frames=200, size=96)
        subprocess.run(
            [str(BIN / "craft"), "build-cache", f"--policy.path={act}", f"--dataset.root={data}",
             "--dataset.repo_id=local/bench", f"--output-dir={root / 'cache'}", "--num-anchors=64", "--batch-size=16"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        common = [
            "--policy.push_to_hub=false", "--policy.device=cpu", "--dataset.repo_id=local/bench",
            f"--dataset.root={data}", f"--steps={args.steps}", f"--batch_size={args.batch_size}", "--log_freq=1",
            "--save_checkpoint=false", "--num_workers=0", "--wandb.enable=false", "--seed=1",
        ]  # fmt: skip
        craft = [
            "--policy.type=craft", f"--policy.base_path={act}", f"--policy.craft.anchor_cache_dir={root / 'cache'}",
            f"--policy.craft.anchor_batch_size={args.anchor_batch_size}", "--policy.craft.pooling=[mean_image_tokens,cls_token]",
        ]  # fmt: skip
        train = [sys.executable, str(Path(__file__).with_name("_train_peak_rss.py"))]
        runs = {
            "plain": [*train, f"--policy.path={act}", f"--output_dir={root / 'plain'}", *common],
            "craft freq 1": [*train, *craft, "--policy.craft.retention_freq=1", f"--output_dir={root / 'c1'}", *common],
            "craft freq 4": [*train, *craft, "--policy.craft.retention_freq=4", f"--output_dir={root / 'c4'}", *common],
        }
        results = {}
        for name, cmd in runs.items():
            t0 = time.perf_counter()
            log = run(cmd, env)
            times = step_times(log, args.warmup)
            peak = float(re.search(r"PEAK_RSS_MB ([0-9.]+)", log).group(1))
            results[name] = (statistics.median(times), time.perf_counter() - t0, peak)
        n_params = re.search(r"num_learnable_params=(\d+)", log)
    base, base_peak = results["plain"][0], results["plain"][2]
    params_mb = int(n_params.group(1)) * 4 / 2**20
    print(f"machine: {platform.machine()} {platform.processor() or ''} | threads={args.threads} | python {sys.version.split()[0]}")
    print(
        f"base: ACT dim 256, 4 encoder layers, ResNet-18, 96x96 ({int(n_params.group(1)) / 1e6:.1f}M trainable params) | "
        f"batch {args.batch_size}, anchor batch {args.anchor_batch_size}, {args.steps} steps (median after {args.warmup})"
    )
    print(f"one fp32 copy of the trainable parameters: {params_mb:.1f} MB")
    for name, (t, _wall, peak) in results.items():
        extra = "" if name == "plain" else f" | ratio {t / base:.3f} | extra {peak - base_peak:6.1f} MB = {(peak - base_peak) / params_mb:.2f}x params"
        print(f"{name:<13} step {1e3 * t:7.1f} ms | peak RSS {peak:7.1f} MB{extra}")
    print("goals: ratio <= 1.6 at retention_freq 1, <= 1.15 at retention_freq 4; extra memory <= 1.2x params")


if __name__ == "__main__":
    main()
