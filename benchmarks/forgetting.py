"""The forgetting benchmark (not a test): `craft demo`'s experiment, longer, over several seeds,
with all six methods, on one policy family.

For each seed: Meta-World faucet-open-v3 (task A) and faucet-close-v3 (task B) expert data, the family's base
trained on A (SmolVLA: a small SmolVLA whose VLM was first taught the scene-MCQ set; ACT: a
tiny ACT from scratch), then six fine-tunes on B with the same steps and seed:

    naive                  --policy.path=BASE (as LeRobot users run it)
    craft_off              --policy.type=craft --policy.base_path=BASE --policy.craft.enabled=false
    replay                 --policy.path=BASE on B + 20 % task-A episodes
    craft_token_ce         CRaFT, retention_mode=token_ce
    craft_hidden_features  CRaFT, hidden, --policy.craft.anchor_targets=[features]
    craft_hidden           CRaFT, hidden, default targets (features and actions)

CRaFT runs use CRaFT's defaults (only the cache and the anchor batch size); the cache is
`craft build-cache` with its defaults (paths and --num-anchors only). `--normalization`,
`--epsilon-end`, `--lambda-lr`, `--conflict-threshold` are passed only when given (to
craft_off and every CRaFT run alike). Then held-out action error on A and B, seeded rollouts,
`craft eval-mcq` against naive (SmolVLA only), and one `craft report` over all runs (mean ± sd
per method; forgetting "% less than naive" and task-B L1 "relative to naive" per seed, mean
over seeds).

SmolVLA runs once per `--train-expert-only` value (default: both, false first): false trains
the VLM too (the demo's setting: the VLM can forget), true is LeRobot's default (VLM frozen).
Results of each: `benchmarks/results/forgetting_<tag>/` (report.md, report.json, plots) and
`benchmarks/results/forgetting_<tag>.json`, with tag `act`, `smolvla_vlm` (VLM trainable) or
`smolvla_expert_only`, plus `_look_lerobot_eval` with `--look lerobot_eval` (the fast look's
results stay). Runs go one after another (2 cores: never in parallel).

    python benchmarks/forgetting.py --family smolvla [--train-expert-only false true] [--seeds 0 1 2]
    python benchmarks/forgetting.py --family act --seeds 0 1 2
    python benchmarks/forgetting.py --family act --quick --work-dir /tmp/f   # smoke test, a few steps,
                                                                           # report under --work-dir only
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

from craft_plugin.demo.metaworld_data import LOOKS
from craft_plugin.demo.pipeline import FAMILIES, METHODS, NORMALIZATIONS, plan_for, run_demo
from craft_plugin.demo.report import build_report

RESULTS = Path(__file__).resolve().parent / "results"
#: Steps (base on A, fine-tune on B) per family when not given: ACT learns from scratch, so more.
DEFAULT_STEPS = {"smolvla": (400, 200), "act": (1000, 300)}


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")


def tag_of(family: str, train_expert_only: bool | None, look: str = "fast") -> str:
    """``act``, ``smolvla_vlm`` or ``smolvla_expert_only``; ``_look_<look>`` appended unless the look is fast."""
    tag = family if family != "smolvla" else ("smolvla_expert_only" if train_expert_only else "smolvla_vlm")
    return tag if look == "fast" else f"{tag}_look_{look}"


def run_one(args: argparse.Namespace, train_expert_only: bool | None, work: Path) -> dict:
    tag = tag_of(args.family, train_expert_only, args.look)
    base_steps, finetune_steps = DEFAULT_STEPS[args.family]
    changes = {
        "methods": tuple(args.methods),
        "normalization": args.normalization,
        "epsilon_end": args.epsilon_end,
        "lambda_lr": args.lambda_lr,
        "conflict_threshold": args.conflict_threshold,
        "look": args.look,
    }
    if not args.quick:
        changes |= {"base_steps": args.base_steps or base_steps, "finetune_steps": args.finetune_steps or finetune_steps,
                    "rollout_episodes": args.rollouts}  # fmt: skip
    if train_expert_only is not None:
        changes["train_expert_only"] = train_expert_only
    t0 = time.perf_counter()
    run_dirs, per_seed = [], {}
    for seed in args.seeds:
        plan = plan_for(args.family, quick=args.quick, seed=seed, **changes)
        if args.report_only:  # the runs of an earlier (e.g. interrupted) invocation, as they are
            folder = work / tag / f"seed{seed}"
            saved = json.loads((folder / "plan.json").read_text())
            missing = [m for m in ("base", *plan.ordered_methods) if not _evaluated(folder / "runs" / m)]
            if missing:
                raise SystemExit(f"--report-only: {folder} has no evaluated run of {', '.join(missing)}")
            run_dirs += [folder / "runs" / m for m in ("base", *plan.ordered_methods)]
            per_seed[seed] = {"seconds": None, "stages": None, "plan": saved}
            continue
        res = run_demo(work / tag / f"seed{seed}", plan, overwrite=True,
                       echo=lambda line, s=seed: print(f"{tag} seed {s} {line}", flush=True))  # fmt: skip
        run_dirs += [res.output_dir / "runs" / m for m in ("base", *plan.ordered_methods)]
        per_seed[seed] = {"seconds": res.seconds, "stages": res.stage_seconds,
                          "plan": {**asdict(plan), "learning_rate": plan.learning_rate}}  # fmt: skip
    out = (work / tag / "report") if args.quick else RESULTS / f"forgetting_{tag}"
    if out.exists():
        shutil.rmtree(out)
    report = build_report(run_dirs, out)
    methods = json.loads(report.json.read_text())["methods"]
    summary = {
        "command": "python benchmarks/forgetting.py " + " ".join(sys.argv[1:]),
        "family": args.family,
        "train_expert_only": train_expert_only,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", torch threads={torch.get_num_threads()}",
        "python": sys.version.split()[0],
        "total_seconds": None if args.report_only else time.perf_counter() - t0,
        "seeds": per_seed,
        "goals": _goals(methods),
        "methods": methods,
    }
    js = out.with_suffix(".json") if not args.quick else work / tag / "forgetting.json"
    js.write_text(json.dumps(summary, indent=2))
    print(report.markdown.read_text())
    print(_goals_text(tag, summary["goals"]))
    print(f"wrote {js} and {out} in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return summary


def _evaluated(run: Path) -> bool:
    """Whether ``run``'s eval.json holds the evaluation (action error and rollouts), not only training."""
    try:
        record = json.loads((run / "eval.json").read_text())
    except (OSError, ValueError):
        return False
    return "action_error" in record and "success" in record


def _goals(methods: list[dict]) -> dict[str, dict]:
    """Per CRaFT method: forgetting % less than naive / craft_off, task-B L1 relative to them."""
    goals = {}
    for row in methods:
        if row["role"] == "base" or row["method"] == "naive":
            continue
        entry = {}
        for ref in ("naive", "craft_off"):
            if ref == row["method"]:
                continue
            less, rel = row.get(f"forgetting_less_than_{ref}") or {}, row.get(f"error_B_vs_{ref}") or {}
            if less.get("mean") is None and rel.get("mean") is None:
                continue
            entry[ref] = {
                "forgetting_less": less.get("mean"),
                "error_B_ratio": rel.get("mean"),
                "forgetting_goal_met": less.get("mean") is not None and less["mean"] >= 0.5,
                "task_B_goal_met": rel.get("mean") is not None and rel["mean"] <= 1.1,
            }
        goals[row["method"]] = entry
    return goals


def _goals_text(tag: str, goals: dict[str, dict]) -> str:
    lines = [f"goals ({tag}): forgetting >= 50 % less, task-B L1 <= 1.10 x the reference (mean over seeds)"]
    for method, refs in goals.items():
        for ref, g in refs.items():
            pct = None if g["forgetting_less"] is None else g["forgetting_less"] * 100
            less = "—" if pct is None else (f"{pct:.0f}% less" if pct >= 0 else f"{-pct:.0f}% more")
            rel = "—" if g["error_B_ratio"] is None else f"x{g['error_B_ratio']:.2f}"
            ok = "met" if g["forgetting_goal_met"] and g["task_B_goal_met"] else "not met"
            lines.append(f"  {method:<22} vs {ref:<9} forgetting {less:>10}, task-B L1 {rel:>6}: {ok}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=FAMILIES, default="smolvla")
    p.add_argument("--train-expert-only", type=_bool, nargs="+", default=None, metavar="true|false",
                   help="smolvla: the base's train_expert_only, one benchmark per value (default: false true)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--base-steps", type=int, default=None, help="default: smolvla 400, act 1000")
    p.add_argument("--finetune-steps", type=int, default=None, help="default: smolvla 200, act 300")
    p.add_argument("--rollouts", type=int, default=5, help="rollout episodes per task, checkpoint and seed")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="default: all six")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default=None,
                   help="--policy.normalization of craft_off and the CRaFT runs (default: not passed)")  # fmt: skip
    p.add_argument("--epsilon-end", type=float, default=None, help="CRaFT epsilon_end (default: not passed)")
    p.add_argument("--lambda-lr", type=float, default=None, help="CRaFT lambda_lr (default: not passed)")
    p.add_argument("--conflict-threshold", type=float, default=None, help="CRaFT conflict_threshold (default: not passed)")
    p.add_argument("--look", choices=LOOKS, default="fast",
                   help="how datasets and rollouts are rendered: fast (lean renderer) or lerobot_eval "
                        "(shadows, 4x supersampling: what stock lerobot-eval shows; 3-8x slower)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="the QUICK plan (a few steps): a smoke test; results stay in --work-dir")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild the report and JSON from --work-dir's evaluated runs of --seeds "
                        "(e.g. the seeds an interrupted invocation finished)")  # fmt: skip
    args = p.parse_args()
    if args.family != "smolvla" and args.train_expert_only is not None:
        p.error("--train-expert-only applies to --family smolvla only")
    values: list[bool | None] = [None]
    if args.family == "smolvla":
        values = list(dict.fromkeys(args.train_expert_only if args.train_expert_only is not None else [False, True]))
    if args.report_only and args.work_dir is None:
        p.error("--report-only needs the --work-dir of the runs")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="craft-forgetting-"))
    for value in values:
        run_one(args, value, work)


if __name__ == "__main__":
    main()
