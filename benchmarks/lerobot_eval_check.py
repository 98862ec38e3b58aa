"""Success rates from stock ``lerobot-eval`` for one seed of a forgetting-benchmark run (not a test).

`benchmarks/forgetting.py` scores rollouts with the lean renderer loop (the same episode seeds,
success rule and float32 actions as ``lerobot-eval``, 150 steps per episode, its own renderer):
stock ``lerobot-eval --env.type=metaworld`` renders 480 x 480 and always runs 500-step
episodes, which cost 265 s per failed episode of the small SmolVLA on this 2-core CPU (with
a benchmark on the other core), too slow for every checkpoint of every seed. This script runs the tool users evaluate with on a chosen subset of
the checkpoints one seed left in ``--work-dir``:

* a craft checkpoint is first ``craft export``-ed to a plain base-policy checkpoint (the CLI, as
  a user would), then every checkpoint gets LeRobot's own resize step
  (:func:`craft_plugin.demo.evaluate.prepare_lerobot_eval_checkpoint`) and is evaluated by
  ``lerobot-eval`` as a subprocess (:func:`craft_plugin.demo.evaluate.lerobot_eval_success`),
  on the episode seeds of the benchmark's own rollouts (episode ``i`` is ``env.seed(S + i)``);
* beside each result it puts the lean loop's figure for the same checkpoint, task and episodes
  (read from the run's ``eval.json``): successes within 150 steps, and how many episodes the two
  evaluators call the same way. They need not agree on an image-driven policy: the renderers
  differ slightly and ``lerobot-eval`` allows 500 steps.

Results go to ``benchmarks/results/lerobot_eval_<tag>_seed<S>.json`` (written after every
checkpoint, to a temp name then renamed; a second invocation with the same output skips what is
there) and a markdown table on stdout.

    python benchmarks/lerobot_eval_check.py --work-dir /tmp/bench/smolvla/smolvla_vlm/seed0 \\
        --methods base naive replay craft_hidden --tasks A B --episodes 10
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

from craft_plugin.demo import metaworld_data as md
from craft_plugin.demo.evaluate import lerobot_eval_success, wilson_interval
from craft_plugin.mcq.evaluate import write_json

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = {"A": md.TASK_A, "B": md.TASK_B}


def _checkpoint(seed_dir: Path, method: str) -> Path:
    ckpt = seed_dir / "runs" / method / "train" / "checkpoints" / "last" / "pretrained_model"
    if not (ckpt / "config.json").is_file():
        raise SystemExit(f"{ckpt}: no checkpoint for {method!r} (is --work-dir one seed's folder of benchmarks/forgetting.py?)")
    return ckpt


def _plain(ckpt: Path, out: Path) -> Path:
    """``ckpt`` itself, or its ``craft export`` under ``out`` (a craft checkpoint)."""
    config = json.loads((ckpt / "config.json").read_text())
    if config.get("type") != "craft":
        return ckpt
    if (out / "config.json").is_file():
        return out
    craft = Path(sys.executable).parent / "craft"
    res = subprocess.run([str(craft), "export", str(ckpt), str(out)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"craft export {ckpt} {out} failed (exit {res.returncode}):\n{(res.stdout + res.stderr)[-2000:]}")
    return out


def _lean_success(seed_dir: Path, method: str) -> dict:
    """The lean loop's rollouts of ``method`` from its ``eval.json`` (empty before evaluation)."""
    path = seed_dir / "runs" / method / "eval.json"
    return json.loads(path.read_text()).get("success", {}) if path.is_file() else {}


def _table(rows: list[dict]) -> str:
    lines = [
        "| method | task | lerobot-eval (500 steps) | 95 % CI | lean loop (150 steps) | same call | eval s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        le, lean = r["lerobot_eval"], r["lean"]
        ci = f"{le['ci95'][0]:.2f}–{le['ci95'][1]:.2f}"
        lean_txt = "—" if lean is None else f"{lean['successes']}/{lean['episodes']}"
        same = "—" if r["same_call"] is None else f"{r['same_call']}/{le['episodes']}"
        lines.append(f"| {r['method']} | {r['task']} | {le['successes']}/{le['episodes']} | {ci} | {lean_txt} | {same} | {le['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, required=True, help="one seed's folder of a forgetting.py --work-dir (holds plan.json, runs/)")
    p.add_argument("--methods", nargs="+", default=["base", "naive", "replay", "craft_hidden"])
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["A", "B"])
    p.add_argument("--episodes", type=int, default=10, help="episodes per checkpoint and task (the first N of the benchmark's)")
    p.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/lerobot_eval_<tag>_seed<S>.json")
    args = p.parse_args()
    seed_dir = args.work_dir
    if not (seed_dir / "plan.json").is_file():
        p.error(f"--work-dir {seed_dir}: no plan.json (pass one seed's folder of a benchmarks/forgetting.py "
                "--work-dir, e.g. <work>/smolvla_vlm/seed0)")  # fmt: skip
    plan = json.loads((seed_dir / "plan.json").read_text())
    seed = int(plan["seed"])
    tag = seed_dir.parent.name
    out_path = args.output or RESULTS / f"lerobot_eval_{tag}_seed{seed}.json"
    data = json.loads(out_path.read_text()) if out_path.is_file() else {}
    done = {(r["method"], r["task"], r["lerobot_eval"]["episodes"]) for r in data.get("rows", [])}
    data.update({
        "benchmark": tag, "seed": seed, "work_dir": str(seed_dir),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
    })  # fmt: skip
    # every invocation that wrote to this file, in order (a file of an older version holds one "command")
    commands = data.get("commands") or ([data.pop("command")] if "command" in data else [])
    command = " ".join(sys.argv)
    data["commands"] = [c for c in commands if c != command] + [command]
    data.setdefault("rows", [])
    for method in args.methods:
        ckpt = _plain(_checkpoint(seed_dir, method), seed_dir / "lerobot_eval" / method / "exported")
        lean_all = _lean_success(seed_dir, method)
        for key in args.tasks:
            if (method, key, args.episodes) in done:
                continue
            t0 = time.perf_counter()
            res = lerobot_eval_success(ckpt, TASKS[key], episodes=args.episodes, seed=seed,
                                       output_dir=seed_dir / "lerobot_eval" / method / key)  # fmt: skip
            lean, same = None, None
            if key in lean_all and len(lean_all[key]["success_steps"]) >= args.episodes:
                steps = lean_all[key]["success_steps"][: args.episodes]
                ok = [s >= 0 for s in steps]
                k = sum(ok)
                lean = {"successes": k, "episodes": args.episodes, "max_steps": lean_all[key]["max_steps"],
                        "ci95": list(wilson_interval(k, args.episodes)), "seeds": lean_all[key]["seeds"][: args.episodes]}  # fmt: skip
                assert lean["seeds"] == res.seeds, (lean["seeds"], res.seeds)
                same = sum(a == b for a, b in zip(ok, res.episode_successes, strict=True))
            row = {"method": method, "task": key, "env_task": TASKS[key], "checkpoint": str(ckpt),
                   "lerobot_eval": {"successes": res.successes, "episodes": res.episodes, "ci95": list(res.ci95),
                                    "episode_successes": res.episode_successes, "seeds": res.seeds,
                                    "max_steps": res.max_steps, "command": res.command,
                                    "seconds": time.perf_counter() - t0, "eval_seconds": res.eval_seconds},
                   "lean": lean, "same_call": same}  # fmt: skip
            data["rows"] = [r for r in data["rows"] if (r["method"], r["task"]) != (method, key)] + [row]
            write_json(data, out_path)
            print(f"{method:<14} {key}: lerobot-eval {res.successes}/{res.episodes}"
                  + ("" if lean is None else f", lean {lean['successes']}/{args.episodes}, same call {same}/{args.episodes}")
                  + f" ({row['lerobot_eval']['seconds']:.0f} s)", flush=True)  # fmt: skip
    print(_table(data["rows"]))
    print(f"-> {out_path}")


if __name__ == "__main__":
    main()
