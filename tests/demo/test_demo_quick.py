"""`craft demo --quick` end to end: every stage through the public commands (stock
`lerobot-train`, `craft build-cache`, `craft eval-mcq`'s function, `craft report`), a few steps each."""

from __future__ import annotations

import json
import math

from craft_plugin.demo.pipeline import QUICK
from support.cli import craft_cli


def test_quick_demo_runs_every_stage_and_writes_a_finite_report(tmp_path):
    out = tmp_path / "demo"
    # `craft demo` in this process (its stages still run lerobot-train, craft build-cache and
    # craft report as subprocesses); datasets come from the shared demo-data cache.
    res = craft_cli("demo", "--quick", f"--output-dir={out}")
    assert res.exit_code == 0, (res.output + repr(res.exception))[-4000:]
    for stage in ("data", "mcq", "base", "cache", *QUICK.methods, "eval", "report"):
        assert f"[{stage}] done in" in res.output, stage
    report = json.loads((out / "report" / "report.json").read_text())
    rows = {m["method"]: m for m in report["methods"]}
    assert set(rows) == {"base", *QUICK.methods} and "craft_hidden" in rows
    for name, row in rows.items():
        for key in ("train_seconds", "final_task_loss", "error_A", "error_B", "mcq_accuracy", "storage_checkpoint"):
            value = row[key]["mean"]
            assert value is not None and math.isfinite(value), (name, key, value)
        if name != "base":
            assert math.isfinite(row["forgetting_A"]["mean"])
        if name not in ("base", "naive"):
            assert row["mcq_paired_diff"]["ci95"] is not None, name
        if name.startswith("craft") and name != "craft_off":
            assert row["storage_cache"]["mean"] > 0
        if name not in ("base", "naive"):  # task-B L1 relative to naive, mean over seeds
            assert math.isfinite(row["error_B_vs_naive"]["mean"]), name
    # CRaFT runs with CRaFT's defaults: the plan tunes nothing (QUICK sets only the anchor batch size)
    args = json.loads((out / "runs" / "craft_hidden" / "eval.json").read_text())["policy_args"]
    assert not any(flag in a for a in args for flag in ("epsilon", "lambda_lr", "conflict_threshold")), args
    for png in ("task_loss.png", "retention.png", "lambda.png", "conflict.png", "forgetting_vs_b.png"):
        data = (out / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    md = (out / "report" / "report.md").read_text()
    assert "| craft_hidden |" in md and "![Task loss of every run](task_loss.png)" in md
    assert "% less than naive" in md and "relative to naive" in md
    metrics = [json.loads(line) for line in (out / "runs" / "craft_hidden" / "train" / "craft_metrics.jsonl").read_text().splitlines()]
    assert metrics and all(math.isfinite(r["lambda"]) for r in metrics)
