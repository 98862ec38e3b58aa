"""The benchmark scripts' own small rules (they are not tests; these pin what they write where)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_look_of_the_forgetting_benchmark_has_its_own_results() -> None:
    """`--look lerobot_eval` wrote over the fast look's benchmarks/results/forgetting_<tag>*."""
    forgetting = _script("forgetting")
    assert forgetting.tag_of("smolvla", False) == "smolvla_vlm"
    assert forgetting.tag_of("smolvla", True, "fast") == "smolvla_expert_only"
    assert forgetting.tag_of("act", None) == "act"
    tags = {forgetting.tag_of("smolvla", False, look) for look in forgetting.LOOKS}
    assert tags == {"smolvla_vlm", "smolvla_vlm_look_lerobot_eval"}
    assert forgetting.tag_of("act", None, "lerobot_eval") == "act_look_lerobot_eval"


def test_the_sweep_merges_each_invocation_into_one_results_file(tmp_path: Path) -> None:
    """Two invocations (another cache, other steps) add their rows; a rerun of a name replaces its row."""
    sweep = _script("defaults_sweep")
    out = tmp_path / "sweep.json"
    sweep._merge(out, "ab32", {"l1": {"A": 0.3, "B": 0.3}})
    sweep._merge(out, "draws4", {"l1": {"A": 0.2, "B": 0.4}})
    sweep._merge(out, "ab32", {"l1": {"A": 0.25, "B": 0.3}})
    data = json.loads(out.read_text())
    assert list(data["settings"]) == ["ab32", "draws4"]
    assert data["settings"]["ab32"]["l1"]["A"] == 0.25
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.json"]  # no temporary file left


def test_defaults_sweep_versus_gives_the_reports_goal_figures() -> None:
    # base A 0.2; naive forgets 0.4 - 0.2 = 0.2, the setting 0.25 - 0.2 = 0.05: 75 % less; B 0.3 / 0.25 = 1.2x
    from craft_plugin.demo.report import versus

    v = versus({"A": 0.25, "B": 0.3}, {"A": 0.4, "B": 0.25}, {"A": 0.2, "B": 0.5})
    assert v["forgetting_less"] == pytest.approx(0.75)
    assert v["error_B_ratio"] == pytest.approx(1.2)


def test_defaults_sweep_reads_a_craft_off_run_without_metrics(tmp_path: Path) -> None:
    """A `--policy.craft.enabled=false` setting writes no craft_metrics.jsonl: no figures, no crash."""
    last = _script("defaults_sweep")._last_metrics
    assert last(tmp_path) == {}
    (tmp_path / "craft_metrics.jsonl").write_text('{"step": 10, "lambda": 1.5}\n{"step": 20, "lambda": 1.25}\n\n')
    assert last(tmp_path) == {"step": 20, "lambda": 1.25}


def test_sweep_report_averages_seeds_against_each_seeds_own_naive_and_replay(tmp_path: Path) -> None:
    sweep, report = _script("defaults_sweep"), _script("sweep_report")
    files = []
    for seed, (naive_a, setting_a) in enumerate([(0.4, 0.25), (0.6, 0.2)]):
        out = tmp_path / f"seed{seed}.json"
        ref = {
            "base": {"l1": {"A": 0.2, "B": 0.5}, "successes": {"A": 20, "B": 0}, "rollouts": 20},
            "naive": {"l1": {"A": naive_a, "B": 0.25}, "successes": {"A": 0, "B": 12}, "rollouts": 20},
            "replay": {"l1": {"A": 0.3, "B": 0.25}, "successes": {"A": 1, "B": 10}, "rollouts": 20},
        }
        sweep._merge_reference(out, ref)
        sweep._merge(out, "eps02", {"l1": {"A": setting_a, "B": 0.3 + 0.1 * seed}, "successes": {"A": 2, "B": 3}, "rollouts": 20,
                                    "flags": ["--policy.craft.epsilon_end=0.1"]})  # fmt: skip
        files.append(json.loads(out.read_text()))
    rows = {r["label"]: r for r in report.rows(files)}
    assert list(rows) == [report.REFERENCE["naive"], report.REFERENCE["replay"], "eps02"]  # no craft_off / craft_hidden given
    eps = rows["eps02"]
    # seed 0: naive forgets 0.2, eps02 0.05 → 75 % less; seed 1: naive 0.4, eps02 0.0 → 100 % less. B: 1.2x, 1.6x
    assert eps["forgetting_less"] == pytest.approx([0.75, 1.0])
    assert eps["error_B_ratio"] == pytest.approx([1.2, 1.6])
    assert eps["replay_forgetting_less"] == pytest.approx([0.5, 1.0])  # replay forgets 0.1 on both seeds
    assert (eps["successes"], eps["rollouts"]) == ({"A": 4, "B": 6}, 40)
    text = report.table(files)
    assert "| eps02 (`--policy.craft.epsilon_end=0.1`) | 2 | 88% ± 18 | 1.40x ± 0.28 | 75% ± 35 | 1.40x ± 0.28 | 4 / 6 (of 40) |" in text
    assert rows[report.REFERENCE["naive"]]["forgetting_less"] == [0.0, 0.0]


def test_sweep_report_names_a_file_it_cannot_read(tmp_path: Path, monkeypatch) -> None:
    """A wrong path is one message naming it, not a traceback."""
    monkeypatch.setattr("sys.argv", ["sweep_report.py", str(tmp_path / "nope.json")])
    with pytest.raises(SystemExit) as info:
        _script("sweep_report").main()
    assert str(info.value).startswith(f"sweep_report: cannot read {tmp_path / 'nope.json'} (")
