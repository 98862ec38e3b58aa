"""Parse the per-step lines of a `lerobot-train` console log (tests and benchmarks)."""

from __future__ import annotations

import re

_STEP = re.compile(r"step:(\d+) .*")
_FIELD = re.compile(r"(\w+):(-?[0-9.]+(?:e[-+]?\d+)?)")


def parse_steps(log: str) -> list[dict[str, float]]:
    """One dict per logged training step, e.g. ``{"step": 1.0, "loss": 0.12, "L_ret": 0.0, ...}``."""
    rows = []
    for line in log.splitlines():
        m = _STEP.search(line)
        if m and "loss:" in line:
            rows.append({k: float(v) for k, v in _FIELD.findall(m.group(0))})
    return rows


def has_traceback(text: str) -> bool:
    """Whether ``text`` holds a Python traceback other than LeRobot's torchcodec warning (a
    machine without FFmpeg prints that one at every start)."""
    start, end = "Could not load libtorchcodec", "[end of libtorchcodec loading traceback]"
    while start in text and end in text[text.index(start) :]:
        i = text.index(start)
        text = text[:i] + text[text.index(end, i) + len(end) :]
    return "Traceback" in text
