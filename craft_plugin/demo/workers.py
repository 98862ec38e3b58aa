"""Worker processes of the demo, and LeRobot's log records made readable.

:func:`spawn_pool` is the one process pool of the demo's data and eval stages (``spawn``: a fresh
interpreter with its own MuJoCo GL context, never a fork of a process that has rendered); each
worker logs as the ``craft`` commands do (:func:`configure_worker_logging`), which also install
:class:`OneLineTorchcodecWarning` in their own process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

__all__ = ["OneLineTorchcodecWarning", "configure_worker_logging", "per_core", "quiet_torchcodec_warning", "spawn_pool"]


class OneLineTorchcodecWarning(logging.Filter):
    """LeRobot logs torchcodec's whole load failure (~30 lines with a traceback, on every start of
    a machine without FFmpeg's libraries) before it falls back to pyav. Keep the warning, in one
    line that says what happens and where the details are; any other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "torchcodec" in message and "Falling back to 'pyav'" in message and "\n" in message:
            record.msg = (
                "torchcodec cannot load its FFmpeg libraries here, so LeRobot decodes video with pyav "
                "(the details: python -c 'import torchcodec')"
            )
            record.args = ()
        return True


def quiet_torchcodec_warning() -> None:
    """Install :class:`OneLineTorchcodecWarning` on LeRobot's import-utils logger (idempotent)."""
    target = logging.getLogger("lerobot.utils.import_utils")
    if not any(isinstance(f, OneLineTorchcodecWarning) for f in target.filters):
        target.addFilter(OneLineTorchcodecWarning())


def configure_worker_logging() -> None:
    """A spawned worker process logs as the ``craft`` commands do: warnings and up, LeRobot's
    torchcodec warning in one line (pass as ``initializer=`` of a process pool)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_torchcodec_warning()


def per_core(items: int) -> int:
    """Worker processes for ``items`` independent pieces of work: one per core, at most one per piece."""
    return max(1, min(items, os.cpu_count() or 1))


def spawn_pool(processes: int) -> ProcessPoolExecutor:
    """A ``spawn`` process pool of ``processes`` workers that log like the ``craft`` commands."""
    return ProcessPoolExecutor(
        max_workers=processes, mp_context=multiprocessing.get_context("spawn"), initializer=configure_worker_logging
    )
