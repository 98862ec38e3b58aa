"""The demo's evaluation stage as small independent jobs, run in parallel processes.

Each checkpoint is scored by three jobs (:func:`jobs_for`): task A (held-out action error and
seeded rollouts), task B (the same) and, for a VLA, the MCQ comparison (the function behind
``craft eval-mcq``, :func:`craft_plugin.mcq.evaluate.run_eval_mcq`, with the same options the
command line would pass). A job loads its checkpoint itself, so jobs share nothing and run in
any order: :func:`run_jobs` runs them in ``processes`` worker processes (``spawn``: a fresh
interpreter, its own MuJoCo GL context) or, with ``processes <= 1``, one after another in this
process. Each result depends on its job only (rollouts and action error seed torch's
generator themselves), so the two ways agree (tested); only float rounding can differ with the
thread count.

Why processes: on a CPU the stage is mostly single-threaded work (MuJoCo's renderer, the env,
small per-step policy calls), so two processes on two cores take about half the time of one.
Each worker runs torch on ``cores // processes`` threads (at least 1), unless the environment
sets ``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from craft_plugin.demo.workers import per_core, spawn_pool

__all__ = ["EvalJob", "jobs_for", "run_job", "run_jobs"]


@dataclass(frozen=True)
class EvalJob:
    """One unit of evaluation work (picklable: it crosses to a worker process).

    ``kind`` is ``"task"`` (action error on ``held`` and ``episodes`` rollouts of ``task``
    observed like ``like``) or ``"mcq"`` (``run_eval_mcq`` of ``checkpoint``, against
    ``compare_to`` when set, on ``mcq_data``, its report written to ``mcq_output``).
    """

    name: str  #: the run's name (base, naive, craft_hidden, ...)
    checkpoint: Path
    kind: str
    key: str = ""  #: "A" or "B" (task jobs)
    task: str = ""
    held: Any = None  #: a DemoDataset of held-out episodes
    like: Any = None  #: the training DemoDataset the rollouts are rendered like
    episodes: int = 0
    max_steps: int = 150
    seed: int = 0
    compare_to: Path | None = None  #: mcq: checkpoint A of a paired comparison (this one is B)
    mcq_data: Path | None = None
    mcq_output: Path | None = None


def jobs_for(
    name: str,
    checkpoint: Path,
    *,
    tasks: Sequence[tuple[str, str, Any, Any]],
    episodes: int,
    max_steps: int,
    seed: int,
    mcq: tuple[Path | None, Path, Path] | None = None,
) -> list[EvalJob]:
    """The jobs of one checkpoint: one per ``(key, task, held, like)`` of ``tasks``, and one MCQ
    job when ``mcq = (compare_to, data, output)`` is given."""
    jobs = [
        EvalJob(name, checkpoint, "task", key=key, task=task, held=held, like=like, episodes=episodes,
                max_steps=max_steps, seed=seed)  # fmt: skip
        for key, task, held, like in tasks
    ]
    if mcq is not None:
        compare_to, data, output = mcq
        jobs.append(EvalJob(name, checkpoint, "mcq", seed=seed, compare_to=compare_to, mcq_data=data, mcq_output=output))
    return jobs


def run_job(job: EvalJob, threads: int | None = None) -> dict[str, Any]:
    """Run one job; ``threads`` sets torch's thread count first. Returns ``{"job": job,
    "seconds": s, ...}`` with ``action_error`` and ``success`` (task jobs) or ``mcq_output``."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if job.kind == "task":
        from craft_plugin.demo.evaluate import action_error, load_policy, rollout_success

        loaded = load_policy(job.checkpoint)
        error = action_error(loaded, job.held, progress=False).to_dict()
        success = None
        if job.episodes > 0:
            success = rollout_success(loaded, job.task, episodes=job.episodes, max_steps=job.max_steps, seed=job.seed,
                                      like=job.like, progress=False).to_dict()  # fmt: skip
        return {"job": job, "action_error": error, "success": success, "seconds": time.perf_counter() - t0}
    if job.kind == "mcq":
        from craft_plugin.mcq.evaluate import EvalOptions, run_eval_mcq

        # As `craft eval-mcq --policy.path=A [--compare=B] --data=... --output=... --seed=...`.
        first, second = (job.compare_to, job.checkpoint) if job.compare_to is not None else (job.checkpoint, None)
        run_eval_mcq(EvalOptions(policy_path=str(first), data=str(job.mcq_data), output=str(job.mcq_output),
                                 compare_path=str(second) if second is not None else None, seed=job.seed,
                                 progress=False))  # fmt: skip
        return {"job": job, "mcq_output": job.mcq_output, "seconds": time.perf_counter() - t0}
    raise ValueError(f"unknown job kind {job.kind!r}: expected 'task' or 'mcq'")


def _worker_threads(processes: int) -> int | None:
    if "OMP_NUM_THREADS" in os.environ:
        return None  # the user's setting, inherited
    return max(1, (os.cpu_count() or 1) // processes)


def run_jobs(jobs: Sequence[EvalJob], processes: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield each job's result as it finishes (see the module docstring). ``processes``: None =
    one per core, at most one per job. A failed job raises here, after the waiting ones are cancelled."""
    n = per_core(len(jobs)) if processes is None else processes
    if n <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield run_job(job)
        return
    threads = _worker_threads(n)
    with spawn_pool(n) as pool:
        pending: set[Future[dict[str, Any]]] = {pool.submit(run_job, job, threads) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()
