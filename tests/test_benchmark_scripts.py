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
    v = _script("defaults_sweep")._versus({"A": 0.25, "B": 0.3}, {"A": 0.4, "B": 0.25}, {"A": 0.2, "B": 0.5})
    assert v["forgetting_less"] == pytest.approx(0.75)
    assert v["error_B_ratio"] == pytest.approx(1.2)


def test_defaults_sweep_reads_a_craft_off_run_without_metrics(tmp_path: Path) -> None:
    """A `--policy.craft.enabled=false` setting writes no craft_metrics.jsonl: no figures, no crash."""
    last = _script("defaults_sweep")._last_metrics
    assert last(tmp_path) == {}
    (tmp_path / "craft_metrics.jsonl").write_text('{"step": 10, "lambda": 1.5}\n{"step": 20, "lambda": 1.25}\n\n')
    assert last(tmp_path) == {"step": 20, "lambda": 1.25}
