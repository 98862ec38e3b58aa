"""Why does CRaFT `hidden` forget task A? Variants of the craft_hidden run (not a test).

Reuses one seed's base checkpoint, anchor cache and datasets from a `benchmarks/forgetting.py`
work folder (`--work-dir`), trains the craft wrapper on task B with changed settings through
stock `lerobot-train`, and prints task-A / task-B held-out action L1 of each variant next to
the base and naive runs of that seed. One run at a time.

    python benchmarks/hidden_variants.py /tmp/craft-forgetting/seed0 [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from craft_plugin.demo import metaworld_data as md
from craft_plugin.demo.evaluate import action_error, load_policy

BIN = Path(sys.executable).parent
VARIANTS: dict[str, list[str]] = {
    "hidden (demo settings)": [],
    "wrapper, CRaFT off": ["--policy.craft.enabled=false"],
    "hidden, renormalize": ["--policy.renormalize=true"],
    "hidden, ε_end 0.5 (looser budget)": ["--policy.craft.epsilon_end=0.5"],
    "hidden, no projection": ["--policy.craft.use_grad_projection=false"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("seed_dir", type=Path, help="a seed folder of benchmarks/forgetting.py's --work-dir")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    args = p.parse_args()
    plan = json.loads((args.seed_dir / "plan.json").read_text())
    render = md.RenderOptions(image_size=plan["image_size"])
    kw = {"seed": plan["seed"], "render": render, "progress": False}
    _, a_held = md.task_datasets(md.TASK_A, plan["train_episodes"], plan["heldout_episodes"], **kw)
    b_train, b_held = md.task_datasets(md.TASK_B, plan["train_episodes"], plan["heldout_episodes"], **kw)
    base = args.seed_dir / "runs" / "base" / "train" / "checkpoints" / "last" / "pretrained_model"
    rows = []
    for name in ("base", "naive"):
        ev = json.loads((args.seed_dir / "runs" / name / "eval.json").read_text())
        rows.append((name, ev["action_error"]["A"]["l1"], ev["action_error"]["B"]["l1"], float("nan")))
    for name, extra in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        out = args.seed_dir / "variants" / name.split(",")[0].replace(" ", "_") / str(abs(hash(name)) % 10_000)
        cmd = [
            str(BIN / "lerobot-train"), "--policy.type=craft", f"--policy.base_path={base}",
            f"--policy.craft.anchor_cache_dir={args.seed_dir / 'cache'}",
            f"--policy.craft.anchor_batch_size={plan['anchor_batch_size']}",
            f"--policy.craft.epsilon_end={plan['epsilon_end']}", f"--policy.craft.lambda_lr={plan['lambda_lr']}",
            f"--policy.craft.conflict_threshold={plan['conflict_threshold']}", "--policy.craft.retention_mode=hidden",
            *extra, "--policy.push_to_hub=false", "--policy.device=cpu", f"--dataset.repo_id={b_train.repo_id}",
            f"--dataset.root={b_train.root}", f"--output_dir={out}", f"--steps={args.steps}",
            f"--batch_size={plan['batch_size']}", "--log_freq=10", f"--save_freq={args.steps}", "--num_workers=0",
            "--wandb.enable=false", f"--seed={plan['seed']}",
        ]  # fmt: skip
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{name}: lerobot-train failed\n{res.stderr[-2000:]}")
        loaded = load_policy(out / "checkpoints" / "last" / "pretrained_model")
        a = action_error(loaded, a_held, progress=False).l1
        b = action_error(loaded, b_held, progress=False).l1
        rows.append((name, a, b, time.perf_counter() - t0))
        print(f"{name:<36} task-A L1 {a:.4f} | task-B L1 {b:.4f}", flush=True)
    print(f"\nseed {plan['seed']}, {args.steps} steps on task B")
    print(f"{'run':<36} {'task-A L1':>9} {'task-B L1':>9}")
    for name, a, b, _ in rows:
        print(f"{name:<36} {a:9.4f} {b:9.4f}")


if __name__ == "__main__":
    main()
