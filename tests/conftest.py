"""Test-wide set-up: offline Hugging Face, `tests/` on sys.path for the shared `support` helpers,
and LeRobot's torchcodec warning in one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from craft_plugin.cli import quiet_torchcodec_warning  # noqa: E402

quiet_torchcodec_warning()  # LeRobot's 30-line torchcodec warning, in one line, in the test log too
