"""Test-wide set-up: offline Hugging Face, `tests/` on sys.path for the shared `support` helpers,
and LeRobot's torchcodec warning in one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread per test process and its subprocesses (set before torch is imported, so the
# `lerobot-train` / `craft` subprocesses inherit it): `make test` runs one pytest-xdist worker per
# core. Measured: the diffusion defaults test took 80 s with it and 87 s without (one run each, a
# benchmark beside them); the whole suite with it, 588 s on 2026-12-03; an earlier suite
# (2026-12-02) took 607 s with it against 414 s without. Not separated further (docs/setup.md).
# A value already set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import pytest  # noqa: E402

from craft_plugin.cli import quiet_torchcodec_warning  # noqa: E402

quiet_torchcodec_warning()  # LeRobot's 30-line torchcodec warning, in one line, in the test log too

#: The slowest test files first, so that `make test`'s two pytest-xdist workers (one file at a
#: time, --dist loadfile --no-loadscope-reorder) do not end with one of them alone on a long file.
#: Seconds per file measured on this 2-core machine (2026-12-03, quiet cores, whole suite 588 s):
#: test_wheel ~208, test_lerobot_train ~207, test_demo_quick ~152, test_evaluate ~94,
#: test_lerobot_train_vla ~69; the rest take < 45 s each and keep their order.
SLOWEST_FIRST: tuple[str, ...] = (
    "policies/test_lerobot_train.py",
    "demo/test_demo_quick.py",
    "test_wheel.py",
    "test_example.py",
    "demo/test_evaluate.py",
    "cache/test_build_cache.py",
    "policies/test_user_errors.py",
    "policies/test_lerobot_train_vla.py",
    "policies/test_base_options.py",
    "policies/test_defaults_end_to_end.py",
)


def pytest_collection_modifyitems(session, config, items) -> None:  # noqa: ARG001 (pytest's hook signature)
    """Run the files of :data:`SLOWEST_FIRST` first, in that order (a stable sort: tests within a
    file, and the other files, keep pytest's order)."""
    tests = Path(__file__).resolve().parent
    gone = [name for name in SLOWEST_FIRST if not (tests / name).is_file()]
    if gone:  # a renamed file would silently lose its place
        raise pytest.UsageError(f"tests/conftest.py SLOWEST_FIRST names missing files: {', '.join(gone)}")
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}

    def key(item) -> int:
        try:
            name = item.path.resolve().relative_to(tests).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(name, len(rank))

    items.sort(key=key)
