"""The demo's evaluation jobs: two worker processes give what one process gives."""

from __future__ import annotations

import pytest

from craft_plugin.demo.eval_stage import EvalJob, jobs_for, run_jobs


def _jobs(checkpoint, push_sets, reach_sets) -> list[EvalJob]:
    tasks = (("A", "push-v3", push_sets[1], push_sets[0]), ("B", "reach-v3", reach_sets[1], reach_sets[0]))
    return jobs_for("act", checkpoint, tasks=tasks, episodes=1, max_steps=8, seed=3)


def test_jobs_in_two_processes_agree_with_one_process(act_checkpoint, push_sets, reach_sets) -> None:
    jobs = _jobs(act_checkpoint, push_sets, reach_sets)
    assert [(j.kind, j.key, j.task) for j in jobs] == [("task", "A", "push-v3"), ("task", "B", "reach-v3")]
    inline = {r["job"].key: r for r in run_jobs(jobs, processes=1)}
    pooled = {r["job"].key: r for r in run_jobs(jobs, processes=2)}
    assert set(inline) == set(pooled) == {"A", "B"}
    for key in ("A", "B"):
        assert pooled[key]["action_error"]["l1"] == pytest.approx(inline[key]["action_error"]["l1"], rel=1e-5)
        assert pooled[key]["action_error"]["frames"] == inline[key]["action_error"]["frames"] > 0
        for field in ("success_steps", "seeds", "env_steps", "episodes"):
            assert pooled[key]["success"][field] == inline[key]["success"][field], (key, field)
        assert pooled[key]["success"]["env_steps"] > 0


def test_a_failing_job_raises_in_the_caller(act_checkpoint) -> None:
    bad = [EvalJob("x", act_checkpoint, "nonsense"), EvalJob("y", act_checkpoint, "nonsense")]
    with pytest.raises(ValueError, match="unknown job kind 'nonsense'"):
        list(run_jobs(bad, processes=2))
