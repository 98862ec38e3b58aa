"""Average `benchmarks/defaults_sweep.py --results` files of several seeds into one table (not a test).

    python benchmarks/sweep_report.py benchmarks/results/defaults_sweep_smolvla_vlm_seed{0,1,2}_ab32.json

Each file is one seed folder's sweep; its ``"reference"`` holds that folder's own runs (naive,
``craft_off``, replay and ``craft_hidden``, the benchmark's CRaFT run at the defaults). Per
setting (a name found in several files is averaged over them), the table gives the goal figures
of the benchmark report: forgetting (task-A L1 above the base's) as "share less than naive's",
and task-B L1 as a ratio to naive's, mean ± sample standard deviation over seeds, the same two
against replay, and successes summed over the seeds' rollouts. Prints markdown to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from craft_plugin.demo.report import versus

#: The seed folder's runs, in the order the table lists them, and their row labels.
REFERENCE = {
    "naive": "naive (`--policy.path`)",
    "craft_off": "`craft_off` (the wrapper, CRaFT off)",
    "replay": "replay (20 % task A)",
    "craft_hidden": "CRaFT `hidden` (defaults)",
}


def rows(files: list[dict]) -> list[dict]:
    """One row per reference run and per setting, each averaged over the files that have it."""
    names = [m for m in REFERENCE if all(m in f["reference"] for f in files)]
    seen: list[str] = []
    for f in files:
        seen += [n for n in f["settings"] if n not in seen]
    out = []
    groups = [(REFERENCE[m], [(f["reference"][m], f["reference"]) for f in files]) for m in names]
    groups += [(n, [(f["settings"][n], f["reference"]) for f in files if n in f["settings"]]) for n in seen]
    for label, entries in groups:
        vs_naive = [versus(r["l1"], ref["naive"]["l1"], ref["base"]["l1"]) for r, ref in entries]
        vs_replay = [versus(r["l1"], ref["replay"]["l1"], ref["base"]["l1"]) for r, ref in entries if "replay" in ref]
        wins = [r.get("successes") for r, _ in entries]
        out.append({
            "label": label, "seeds": len(entries),
            "forgetting_less": [v["forgetting_less"] for v in vs_naive], "error_B_ratio": [v["error_B_ratio"] for v in vs_naive],
            "replay_forgetting_less": [v["forgetting_less"] for v in vs_replay],
            "replay_error_B_ratio": [v["error_B_ratio"] for v in vs_replay],
            "successes": None if None in wins else {k: sum(w[k] for w in wins) for k in ("A", "B")},
            "rollouts": sum(r.get("rollouts") or 0 for r, _ in entries),
            "flags": " ".join(entries[0][0].get("flags", [])),
        })  # fmt: skip
    return out


def _mean_sd(values: list[float], pct: bool) -> str:
    if not values:
        return "—"
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else None
    if pct:
        return f"{m:.0%}" + (f" ± {sd * 100:.0f}" if sd is not None else "")
    return f"{m:.2f}x" + (f" ± {sd:.2f}" if sd is not None else "")


def table(files: list[dict]) -> str:
    lines = [
        "| setting | seeds | forgetting less than naive | task-B L1 vs naive | forgetting less than replay "
        "| task-B L1 vs replay | success A / B |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows(files):
        label = r["label"] + (f" (`{r['flags']}`)" if r["flags"] else "")
        wins = f"{r['successes']['A']} / {r['successes']['B']} (of {r['rollouts']})" if r["successes"] else "—"
        lines.append(
            f"| {label} | {r['seeds']} | {_mean_sd(r['forgetting_less'], True)} | {_mean_sd(r['error_B_ratio'], False)} "
            f"| {_mean_sd(r['replay_forgetting_less'], True)} | {_mean_sd(r['replay_error_B_ratio'], False)} | {wins} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, nargs="+", help="defaults_sweep.py --results files, one per seed")
    args = p.parse_args()
    files = []
    for path in args.results:
        try:
            files.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"sweep_report: cannot read {path} ({err}); give the files benchmarks/defaults_sweep.py "
                             "--results wrote, e.g. benchmarks/results/defaults_sweep_smolvla_vlm_seed0_ab32.json") from None
    missing = [str(path) for path, f in zip(args.results, files, strict=True) if "reference" not in f]
    if missing:
        raise SystemExit(
            f"sweep_report: {', '.join(missing)} has no \"reference\" (the seed folder's runs); rerun "
            "benchmarks/defaults_sweep.py with --results on it (settings already trained are not retrained)"
        )
    print(table(files))


if __name__ == "__main__":
    main()
