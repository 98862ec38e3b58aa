"""examples/custom_loop.py (the CraftHook example, plain PyTorch): CRaFT keeps task A within budget."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_loop.py"


def test_custom_loop_keeps_task_a_within_budget_where_naive_does_not():
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.strip().splitlines()[-1] == "CRaFT kept task A within budget: yes"
    assert re.search(r"naive fine-tune on B: task-A MSE [0-9.]+ OVER the ε budget", out)
    assert re.search(r"CRaFT fine-tune on B: task-A MSE [0-9.]+ within the ε budget", out)
    rows = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in re.finditer(r"^(\S.*?)\s+([0-9.]+)\s+([0-9.]+)$", out, re.M)}
    before, naive, craft = rows["after task A"], rows["naive fine-tune on B"], rows["CRaFT fine-tune on B"]
    assert craft[0] < naive[0] / 3, "CRaFT must forget task A far less than naive fine-tuning"
    assert craft[1] < before[1] / 2, "CRaFT must still learn task B"
