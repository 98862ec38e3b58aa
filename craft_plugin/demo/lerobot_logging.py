"""LeRobot's log records, made readable: shared by the ``craft`` commands and the demo's worker
processes (a spawned process starts with no filters, so it installs its own)."""

from __future__ import annotations

import logging

__all__ = ["OneLineTorchcodecWarning", "configure_worker_logging", "quiet_torchcodec_warning"]


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
