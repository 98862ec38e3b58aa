"""`craft demo --overwrite` replaces the previous output only once the new run is complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from craft_plugin.demo import metaworld_data as md
from craft_plugin.demo import pipeline
from craft_plugin.demo.pipeline import QUICK, DemoResult, run_demo


def _previous(tmp_path: Path) -> Path:
    out = tmp_path / "demo-out"
    (out / "report").mkdir(parents=True)
    (out / "report" / "report.md").write_text("the user's earlier table")
    return out


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if ".previous-" in p.name)


def test_without_overwrite_an_existing_output_is_refused_untouched(tmp_path) -> None:
    out = _previous(tmp_path)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        run_demo(out, QUICK)
    assert (out / "report" / "report.md").read_text() == "the user's earlier table"


def test_a_failed_run_puts_the_previous_output_back(tmp_path, monkeypatch) -> None:
    out = _previous(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure in the data stage")

    monkeypatch.setattr(md, "tasks_datasets", broken)
    with pytest.raises(RuntimeError, match="simulated failure") as info:
        run_demo(out, QUICK, overwrite=True, data_cache=tmp_path / "cache", echo=lambda _: None)
    assert f"the previous output is back in {out}" in str(info.value)
    assert (out / "report" / "report.md").read_text() == "the user's earlier table"
    failed = tmp_path / "demo-out.failed"
    assert (failed / "plan.json").is_file() and not (failed / "report").exists()  # this attempt's files
    assert _leftovers(tmp_path) == []


def test_a_complete_run_replaces_the_previous_output(tmp_path, monkeypatch) -> None:
    out = _previous(tmp_path)
    seen = {}

    def stages(folder, plan, data_cache, echo):
        seen["empty_at_start"] = not any(folder.iterdir())
        seen["previous_waits"] = _leftovers(tmp_path)
        (folder / "report").mkdir()
        (folder / "report" / "report.md").write_text("the new table")
        return DemoResult(folder, folder / "report" / "report.md", [], 0.0)

    monkeypatch.setattr(pipeline, "_run_stages", stages)
    run_demo(out, QUICK, overwrite=True)
    assert seen["empty_at_start"] and len(seen["previous_waits"]) == 1
    assert (out / "report" / "report.md").read_text() == "the new table"
    assert _leftovers(tmp_path) == [] and not (tmp_path / "demo-out.failed").exists()


def test_an_output_dir_under_a_file_is_one_line_not_a_traceback(tmp_path) -> None:
    from support.cli import craft_cli

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = craft_cli("demo", "--quick", f"--output-dir={blocker / 'out'}")
    assert res.exit_code == 2, (res.output, res.exception)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("craft demo: ") and str(blocker / "out") in lines[0], res.output
    assert blocker.read_text() == "not a folder"
