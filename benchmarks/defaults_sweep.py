"""CRaFT settings on one seed of the forgetting benchmark (not a test): the sweep behind the defaults.

Reuses a `benchmarks/forgetting.py --work-dir W` seed folder (its base checkpoint, datasets and
cache), fine-tunes the base on task B with `lerobot-train --policy.type=craft` once per setting,
and prints held-out task-A / task-B action L1, 20 seeded rollouts per task, and the final λ and
`L_ret`. Each setting is NAME='--policy.craft.x=... --policy.craft.y=...':

    python benchmarks/defaults_sweep.py W/smolvla_vlm/seed0 [--cache DIR] \\
        'original=--policy.craft.epsilon_start=1.0 --policy.craft.epsilon_end=0.1 --policy.craft.lambda_lr=0.01' \\
        'tight=--policy.craft.epsilon_start=0.05 --policy.craft.epsilon_end=0.02 --policy.craft.lambda_lr=1.0'

With ``--results FILE`` each setting's figures (flags, cache, steps, L1, successes, final λ and
``L_ret``, training seconds) are merged into FILE by name, written to a temporary name and renamed,
so a second invocation (another ``--cache``, other ``--steps``) adds its rows to the same file.

The seed folder's own runs (base, naive, craft_off, replay, craft_hidden) go into FILE as
``"reference"``; `benchmarks/sweep_report.py FILE...` averages several seeds' files.

Results in benchmarks/results/NOTES.md came from this script (2-core CPU, 2 threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from craft_plugin.cache.shards import atomic_write_bytes
from craft_plugin.demo import metaworld_data as md
from craft_plugin.demo.evaluate import action_error, load_policy, rollout_success
from craft_plugin.demo.report import read_metrics_jsonl, versus


def _dataset_root(run: Path) -> str:
    cfg = json.loads((run / "train" / "checkpoints" / "last" / "pretrained_model" / "train_config.json").read_text())
    return cfg["dataset"]["root"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("seed_dir", type=Path, help="a forgetting.py seed folder (holds runs/base, runs/naive, cache)")
    p.add_argument("settings", nargs="+", help="NAME=FLAGS")
    p.add_argument("--cache", type=Path, default=None, help="anchor cache (default: the seed folder's)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rollouts", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("/tmp/craft-sweep"))
    p.add_argument("--results", type=Path, default=None, help="merge each setting's figures into this JSON file")
    args = p.parse_args()
    plan = json.loads((args.seed_dir / "plan.json").read_text())
    runs = args.seed_dir / "runs"
    b_train = _dataset_root(runs / "naive")
    a_train = _dataset_root(runs / "base")
    held = {k: json.loads((runs / "base" / "eval.json").read_text())["action_error"][k]["dataset"] for k in ("A", "B")}
    base = runs / "base" / "train" / "checkpoints" / "last" / "pretrained_model"
    cache = args.cache or args.seed_dir / "cache"
    reference = _reference(args.seed_dir)
    ref = {m: v["l1"] for m, v in reference.items()}
    if args.results:
        _merge_reference(args.results, reference)
    binary = Path(sys.executable).parent / "lerobot-train"
    for item in args.settings:
        name, _, flags = item.partition("=")
        out = args.out / name
        seconds = None
        if not (out / "checkpoints").exists():
            cmd = [
                str(binary), "--policy.type=craft", f"--policy.base_path={base}", f"--policy.craft.anchor_cache_dir={cache}",
                *flags.split(), "--policy.push_to_hub=false", "--policy.device=cpu", f"--dataset.repo_id=local/{Path(b_train).name}",
                f"--dataset.root={b_train}", f"--output_dir={out}", f"--steps={args.steps}", f"--batch_size={plan['batch_size']}",
                "--log_freq=10", f"--save_freq={args.steps}", "--num_workers=0", "--wandb.enable=false", f"--seed={plan['seed']}",
            ]  # fmt: skip
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if res.returncode:
                print(f"{name}: lerobot-train failed\n{res.stderr[-2000:]}", flush=True)
                continue
            seconds = time.perf_counter() - t0
            print(f"{name}: trained in {seconds:.0f} s", flush=True)
        policy = load_policy(out / "checkpoints" / "last" / "pretrained_model")
        l1 = {k: action_error(policy, held[k], progress=False).l1 for k in ("A", "B")}
        wins = {
            k: rollout_success(policy, task, episodes=args.rollouts, max_steps=plan["rollout_max_steps"], seed=plan["seed"],
                               like=like, progress=False).successes
            for k, task, like in (("A", md.TASK_A, a_train), ("B", md.TASK_B, b_train))
        }  # fmt: skip
        last = _last_metrics(out)
        vs = {m: versus(l1, ref[m], ref["base"]) for m in ("naive", "replay") if m in ref}
        print(
            f"{name}: task-A L1 {l1['A']:.3f} | task-B L1 {l1['B']:.3f} | success A {wins['A']}/{args.rollouts} "
            f"B {wins['B']}/{args.rollouts} | "
            + (f"final λ {last['lambda']:.2f} L_ret {last.get('L_ret', float('nan')):.3f}" if last else "CRaFT off")
            + "".join(f" | vs {m}: {v['forgetting_less']:.0%} less forgetting, task-B L1 x{v['error_B_ratio']:.2f}"
                      for m, v in vs.items()),
            flush=True,
        )
        if args.results:
            _merge(args.results, name, {
                "flags": flags.split(), "cache": str(cache), "steps": args.steps, "seed": plan["seed"],
                "l1": l1, "successes": wins, "rollouts": args.rollouts, "final_lambda": last.get("lambda"),
                "final_L_ret": last.get("L_ret"), "versus": vs, "train_seconds": seconds, "torch_threads": torch.get_num_threads(),
                "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "seed_dir": str(args.seed_dir),
            })  # fmt: skip


def _last_metrics(out: Path) -> dict:
    """The run's last `craft_metrics.jsonl` record; ``{}`` when CRaFT was off (the file is not written)."""
    path = out / "craft_metrics.jsonl"
    rows = read_metrics_jsonl(path) if path.exists() else []
    return rows[-1] if rows else {}


def _reference(seed_dir: Path) -> dict[str, dict]:
    """The seed folder's own runs (base, naive, craft_off, replay, craft_hidden): L1 and successes per task.

    Stored in the results file (``"reference"``) so that `benchmarks/sweep_report.py` needs no seed folder.
    """
    out = {}
    for m in ("base", "naive", "craft_off", "replay", "craft_hidden"):
        path = seed_dir / "runs" / m / "eval.json"
        if path.exists():
            ev = json.loads(path.read_text())
            out[m] = {
                "l1": {k: ev["action_error"][k]["l1"] for k in ("A", "B")},
                "successes": {k: ev["success"][k]["successes"] for k in ("A", "B")} if "success" in ev else None,
                "rollouts": ev["success"]["A"]["episodes"] if "success" in ev else None,
            }
    return out


def _merge_reference(path: Path, reference: dict[str, dict]) -> None:
    _update(path, lambda data: data.update(reference=reference))


def _merge(path: Path, name: str, row: dict) -> None:
    _update(path, lambda data: data["settings"].update({name: row}))


def _update(path: Path, change) -> None:
    """Read FILE (or a new one), apply ``change`` to its dict, write it to a temporary name and rename."""
    data = json.loads(path.read_text()) if path.exists() else {"schema": 1, "settings": {}}
    change(data)
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
