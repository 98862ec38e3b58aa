"""The forgetting benchmark (not a test): `craft demo`'s experiment, longer, over several seeds.

For each seed: Meta-World push-v3 (task A) and reach-v3 (task B) expert data, a small SmolVLA
taught the scene-MCQ set and trained on A, then naive / replay / CRaFT token_ce / CRaFT hidden
fine-tunes on B with the same steps and seed; held-out action error on A and B, seeded
rollouts, `craft eval-mcq` against naive. Then one `craft report` over all runs (mean ± sd
per method), written to `benchmarks/results/forgetting/` with the plots, and the numbers to
`benchmarks/results/forgetting.json`. Runs go one after another (2 cores: never in parallel).

    python benchmarks/forgetting.py [--seeds 0 1 2] [--base-steps 400] [--finetune-steps 200] [--rollouts 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from craft_plugin.demo.pipeline import STANDARD, plan_with, run_demo
from craft_plugin.demo.report import build_report

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--base-steps", type=int, default=400)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--rollouts", type=int, default=5, help="rollout episodes per task, checkpoint and seed")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = p.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="craft-forgetting-"))
    t0 = time.perf_counter()
    run_dirs, per_seed = [], {}
    for seed in args.seeds:
        plan = plan_with(STANDARD, seed=seed, base_steps=args.base_steps, finetune_steps=args.finetune_steps,
                         rollout_episodes=args.rollouts)  # fmt: skip
        res = run_demo(work / f"seed{seed}", plan, overwrite=True, echo=lambda line, s=seed: print(f"seed {s} {line}", flush=True))
        run_dirs += sorted(p for p in (res.output_dir / "runs").iterdir() if p.is_dir())
        per_seed[seed] = {"seconds": res.seconds, "stages": res.stage_seconds, "plan": asdict(plan)}
    out = RESULTS / "forgetting"
    if out.exists():
        shutil.rmtree(out)
    report = build_report(run_dirs, out)
    summary = {
        "command": "python benchmarks/forgetting.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", torch threads={torch.get_num_threads()}",
        "python": sys.version.split()[0],
        "total_seconds": time.perf_counter() - t0,
        "seeds": per_seed,
        "methods": json.loads(report.json.read_text())["methods"],
    }
    (RESULTS / "forgetting.json").write_text(json.dumps(summary, indent=2))
    print(report.markdown.read_text())
    print(f"wrote {RESULTS / 'forgetting.json'} and {out} in {summary['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
