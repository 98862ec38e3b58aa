"""``craft report``: run folders (train.log, craft_metrics.jsonl, eval.json) -> report.md, report.json, PNGs."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from craft_plugin.cli import app
from craft_plugin.demo import report as rp

PLOTS = ("task_loss.png", "retention.png", "lambda.png", "conflict.png", "forgetting_vs_b.png")


def _log_line(step: str, loss: float, smpl: str = "16") -> str:
    # The shape LeRobot 0.6.1 prints (logging prefix, then MetricsTracker.__str__)
    return (
        f"INFO 2026-11-23 16:24:13 ot_train.py:641 step:{step} smpl:{smpl} ep:1 epch:0.50 "
        f"loss:{loss:.3f} grdn:1.234 lr:1.0e-05 updt_s:0.200 data_s:0.001"
    )


def _train_log(losses: list[float], every: int = 2) -> str:
    lines = ["INFO 2026-11-23 16:24:00 ot_train.py:400 Start offline training on a fixed dataset"]
    for i, loss in enumerate(losses, 1):
        lines.append(_log_line(str(i * every), loss))
    lines.append("INFO 2026-11-23 16:25:00 ot_train.py:700 End of training")
    return "\n".join(lines) + "\n"


def _eval(method: str, role: str, err_a: float, err_b: float, k_a: int, k_b: int, **extra) -> dict:
    return {
        "schema": 1,
        "method": method,
        "role": role,
        "seed": 0,
        "train_seconds": 30.0,
        "action_error": {"A": {"task": "push-v3", "l1": err_a}, "B": {"task": "reach-v3", "l1": err_b}},
        "success": {
            "A": {"successes": k_a, "episodes": 10, "rate": k_a / 10, "ci95": [0.1, 0.6]},
            "B": {"successes": k_b, "episodes": 10, "rate": k_b / 10, "ci95": [0.2, 0.7]},
        },
        "storage_bytes": {"checkpoint": 3 * 2**20},
        **extra,
    }


def _mcq_json(path: Path, acc_a: float, acc_b: float | None) -> Path:
    """The layout `craft eval-mcq --output` writes (checkpoints A/B, comparison B - A)."""
    checkpoints = {"A": {"path": "naive/ckpt", "metrics": {"accuracy": acc_a, "accuracy_ci": [acc_a - 0.1, acc_a + 0.1]}}}
    data: dict = {"checkpoints": checkpoints, "comparison": None}
    if acc_b is not None:
        checkpoints["B"] = {"path": "craft/ckpt", "metrics": {"accuracy": acc_b, "accuracy_ci": [acc_b - 0.1, acc_b + 0.1]}}
        data["comparison"] = {"accuracy_diff": acc_b - acc_a, "accuracy_diff_ci": [0.05, 0.35], "mcnemar_p": 0.02}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    base, naive, replay, craft = (tmp_path / n for n in ("base", "naive", "replay", "craft_hidden"))
    for d in (base, naive, replay, craft):
        d.mkdir()
    (base / "train.log").write_text(_train_log([2.0, 1.0, 0.5, 0.3]))
    rp.update_eval_json(base, _eval("base", "base", 0.04, 0.30, 6, 1))
    (naive / "train.log").write_text(_train_log([1.5, 0.8, 0.4, 0.2]))
    rp.update_eval_json(naive, _eval("naive", "finetune", 0.40, 0.05, 0, 5))
    rp.update_eval_json(naive, {"mcq": rp.mcq_summary(_mcq_json(tmp_path / "mcq_naive.json", 0.40, None))})
    (replay / "train.log").write_text(_train_log([1.6, 0.9, 0.5, 0.3]))
    rp.update_eval_json(replay, _eval("replay", "finetune", 0.10, 0.06, 3, 5))
    (craft / "train.log").write_text(_train_log([1.7, 1.0, 0.6, 0.35]))
    rows = []
    for step in range(1, 9):
        row = {"step": step, "L_task": 2.0 / step, "epsilon": 1.0 - 0.1 * step, "lambda": 1.0 + 0.05 * step}
        if step % 2:  # retention_freq 2: off-steps carry no L_ret
            row.update(retention_step=1.0, L_ret=0.5 + 0.02 * step, dot=-0.1, cos=-0.2 + 0.05 * step,
                       conflict=float(step < 5), proj_frac=float(step < 5), energy_removed=0.1, nonfinite=0.0)
        else:
            row["retention_step"] = 0.0
        rows.append(json.dumps(row))
    # lerobot-train's --output_dir one level down (LeRobot refuses an existing output dir)
    (craft / "train").mkdir()
    (craft / "train" / "craft_metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 9, "L_ta')  # torn last line
    rp.update_eval_json(craft, _eval("craft_hidden", "finetune", 0.10, 0.055, 4, 5, storage_bytes={"cache": 2048}))
    rp.update_eval_json(craft, {"mcq": rp.mcq_summary(_mcq_json(tmp_path / "mcq_craft.json", 0.40, 0.60))})
    return [base, naive, replay, craft]


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_craft_report_command_writes_table_and_plots(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", *map(str, runs), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "report.md" in result.output
    md = (out / "report.md").read_text()
    for name in PLOTS:
        assert _png_size(out / name)[0] > 300
        assert f"]({name})" in md
    assert "| **base** |" in md and "craft_hidden" in md
    data = json.loads((out / "report.json").read_text())
    rows = {r["method"]: r for r in data["methods"]}
    assert set(rows) == {"base", "naive", "replay", "craft_hidden"}
    # forgetting = run's task-A L1 - base's, by hand
    assert rows["naive"]["forgetting_A"]["mean"] == pytest.approx(0.36)
    assert rows["craft_hidden"]["forgetting_A"]["mean"] == pytest.approx(0.06)
    assert rows["craft_hidden"]["forgetting_ratio_A"]["mean"] == pytest.approx(2.5)
    assert rows["naive"]["success_forgetting_A"]["mean"] == pytest.approx(0.6)
    assert rows["naive"]["final_task_loss"]["mean"] == pytest.approx(0.2)
    assert rows["craft_hidden"]["mcq_paired_diff"]["mean"] == pytest.approx(0.2)
    assert rows["craft_hidden"]["mcq_paired_diff"]["ci95"] == [0.05, 0.35]
    assert "+0.3600 (×10.00)" in md and "60% [10–60] (6/10)" in md
    assert "Δ vs naive +0.200 [+0.050, +0.350]" in md
    for row in rows.values():
        for key in ("final_task_loss", "error_A", "error_B", "success_A", "success_B", "train_seconds"):
            assert math.isfinite(row[key]["mean"]), (row["method"], key)


def test_report_without_craft_runs_or_base_says_what_is_missing(runs: list[Path], tmp_path: Path) -> None:
    res = rp.build_report([runs[1], runs[2]], tmp_path / "r2")
    assert res.plots.get("retention") is None and (tmp_path / "r2" / "task_loss.png").is_file()
    md = res.markdown.read_text()
    assert "not drawn (no run has this data)" in md
    assert not (tmp_path / "r2" / "forgetting_vs_b.png").exists()  # no base: no forgetting
    # --base picks the reference explicitly
    res = rp.build_report([runs[1], runs[2]], tmp_path / "r3", base="replay")
    row = {r["method"]: r for r in res.rows}["naive"]
    assert row["forgetting_A"]["mean"] == pytest.approx(0.30)


def test_several_seeds_are_aggregated(runs: list[Path], tmp_path: Path) -> None:
    second = tmp_path / "naive_s1"
    second.mkdir()
    (second / "train.log").write_text(_train_log([1.0, 0.5]))
    rp.update_eval_json(second, _eval("naive", "finetune", 0.20, 0.07, 1, 4) | {"seed": 1})
    res = rp.build_report([*runs, second], tmp_path / "agg")
    row = {r["method"]: r for r in res.rows}["naive"]
    assert row["runs"] == 2
    assert row["error_A"]["mean"] == pytest.approx(0.30) and row["error_A"]["sd"] == pytest.approx(0.1414, abs=1e-4)
    # seed 1 has no base of its own: the seed-0 base is used
    assert row["forgetting_A"]["mean"] == pytest.approx(((0.40 - 0.04) + (0.20 - 0.04)) / 2)
    assert "0.3000 ± 0.1414" in res.markdown.read_text()


def test_parse_train_log_rebuilds_rounded_steps() -> None:
    lines = [_log_line(str(s), 1.0 / s) for s in (200, 400, 600, 800)]
    lines += [_log_line(t, 0.5, smpl="4K") for t in ("1K", "1K", "1K", "2K", "2K")]
    rows = rp.parse_train_log("\n".join(lines) + "\nstep:garbage\n")
    assert [r["step"] for r in rows] == [200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800]
    assert rows[0]["loss"] == pytest.approx(0.005) and rows[0]["lr"] == pytest.approx(1e-5)
    assert rows[5]["smpl"] == 4000 and rows[0]["updt_s"] == pytest.approx(0.2)


def test_mcq_summary_reads_single_and_paired_files(tmp_path: Path) -> None:
    single = rp.mcq_summary(_mcq_json(tmp_path / "a.json", 0.5, None))
    assert single["accuracy"] == 0.5 and "paired_diff_vs_naive" not in single
    paired = rp.mcq_summary(_mcq_json(tmp_path / "b.json", 0.5, 0.7))
    assert paired["accuracy"] == 0.7 and paired["naive_accuracy"] == 0.5
    assert paired["paired_diff_vs_naive"] == pytest.approx(0.2) and paired["mcnemar_p"] == 0.02
    (tmp_path / "flat.json").write_text('{"accuracy": 0.8}')
    assert rp.mcq_summary(tmp_path / "flat.json")["accuracy"] == 0.8
    (tmp_path / "bad.json").write_text('{"scores": []}')
    with pytest.raises(ValueError, match="no accuracy"):
        rp.mcq_summary(tmp_path / "bad.json")


def test_report_errors_are_actionable(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["report", str(empty), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "train.log" in result.output and "eval.json" in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_relative_columns_pair_seeds_against_naive_and_craft_off(tmp_path: Path) -> None:
    """Forgetting "% less than naive" and task-B L1 "relative to naive" are per seed, then
    the mean over seeds; a second table compares against craft_off; no MCQ shows "—"."""
    # (task-A L1, task-B L1) per seed; base task-A L1 0.10 in seed 0, 0.20 in seed 1
    errors = {
        "base": [(0.10, 0.30), (0.20, 0.30)],
        "naive": [(0.50, 0.050), (0.40, 0.040)],  # forgetting 0.40, 0.20
        "craft_off": [(0.30, 0.100), (0.40, 0.080)],  # forgetting 0.20, 0.20
        "craft_hidden": [(0.20, 0.055), (0.30, 0.048)],  # forgetting 0.10, 0.10
    }
    dirs = []
    for method, per_seed in errors.items():
        for seed, (ea, eb) in enumerate(per_seed):
            d = tmp_path / f"seed{seed}" / method
            d.mkdir(parents=True)
            (d / "train.log").write_text(_train_log([1.0, 0.5]))
            role = "base" if method == "base" else "finetune"
            rp.update_eval_json(d, _eval(method, role, ea, eb, 1, 1) | {"seed": seed})
            dirs.append(d)
    res = rp.build_report(dirs, tmp_path / "rel")
    rows = {r["method"]: r for r in res.rows}
    hidden = rows["craft_hidden"]
    # seed 0: 1 - 0.1/0.4 = 0.75, seed 1: 1 - 0.1/0.2 = 0.5 -> mean 0.625
    assert hidden["forgetting_less_than_naive"]["mean"] == pytest.approx(0.625)
    assert hidden["forgetting_less_than_naive"]["n"] == 2
    assert hidden["forgetting_less_than_naive"]["of_means"] == pytest.approx(1 - 0.10 / 0.30)
    # task-B: 0.055/0.05 = 1.1, 0.048/0.04 = 1.2 -> 1.15
    assert hidden["error_B_vs_naive"]["mean"] == pytest.approx(1.15)
    assert hidden["forgetting_less_than_craft_off"]["mean"] == pytest.approx(0.5)
    assert hidden["error_B_vs_craft_off"]["mean"] == pytest.approx((0.55 + 0.6) / 2)
    assert rows["craft_off"]["forgetting_less_than_naive"]["mean"] == pytest.approx((0.5 + 0.0) / 2)
    assert rows["naive"]["forgetting_less_than_naive"]["mean"] == pytest.approx(0.0)
    assert rows["base"]["forgetting_less_than_naive"]["mean"] is None
    md = res.markdown.read_text()
    assert "forgetting: % less than naive" in md and "task-B L1 relative to naive" in md
    hidden_line = next(line for line in md.splitlines() if line.startswith("| craft_hidden | 2 |"))
    assert "62% less ± 18" in hidden_line and "+15% ± 7 (×1.15)" in hidden_line
    assert hidden_line.split(" | ")[11] == "—"  # no MCQ (e.g. ACT): a dash
    naive_line = next(line for line in md.splitlines() if line.startswith("| naive |"))
    assert naive_line.count("— (reference)") == 2
    assert "## Against the wrapper with CRaFT off" in md
    assert "| craft_hidden | 50% less ± 0 | -43% ± 4 (×0.57) |" in md and "| naive | 50% more ± 71 |" in md
    assert (tmp_path / "rel" / "forgetting_vs_b.png").is_file()
    # craft_hidden of a seed without a naive run of that seed gets no relative value
    lone = tmp_path / "seed7" / "craft_hidden"
    lone.mkdir(parents=True)
    rp.update_eval_json(lone, _eval("craft_hidden", "finetune", 0.2, 0.05, 1, 1) | {"seed": 7})
    res = rp.build_report([*dirs, lone], tmp_path / "rel2")
    assert {r["method"]: r for r in res.rows}["craft_hidden"]["forgetting_less_than_naive"]["n"] == 2


def test_structured_metrics_come_first_and_the_console_log_is_the_fallback(runs: list[Path], tmp_path: Path) -> None:
    """craft_hidden has both a train.log (rounded console values) and craft_metrics.jsonl: the
    jsonl is read (L_task 2/8 at step 8) and the log not at all; naive has only its log."""
    craft = runs[3]
    (craft / "train.log").write_text("step:2K smpl:16 loss:9.999\nnot a log at all\n")
    run = rp.load_run(craft)
    steps, losses, source = run.loss_curve()
    assert source == "craft_metrics.jsonl" and run.log_rows == []
    assert steps == [float(s) for s in range(1, 9)] and losses[-1] == pytest.approx(0.25)
    res = rp.build_report(runs, tmp_path / "r")
    rows = {r["method"]: r for r in json.loads(res.json.read_text())["methods"]}
    assert rows["craft_hidden"]["loss_source"] == ["craft_metrics.jsonl"]
    assert rows["craft_hidden"]["final_task_loss"]["mean"] == pytest.approx(0.25)
    assert rows["naive"]["loss_source"] == ["train.log"]
