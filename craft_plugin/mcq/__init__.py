"""MCQ likelihood evaluation (``craft eval-mcq``): does the backbone still know what it knew?

* :mod:`~craft_plugin.mcq.data`     — JSONL loading and whole-file validation
* :mod:`~craft_plugin.mcq.models`   — adapters per family (pi0 / pi05 / pi0_fast, smolvla, craft, HF) and their prompt formats
* :mod:`~craft_plugin.mcq.scoring`  — per-choice log-likelihoods, shared-prefix (KV cache) and naive paths
* :mod:`~craft_plugin.mcq.stats`    — accuracy, acc_norm, margins, bootstrap CIs, exact McNemar (pure)
* :mod:`~craft_plugin.mcq.evaluate` — the command as a function, console summary, JSON report
* :mod:`~craft_plugin.mcq.scenes`   — a generated MCQ set (rendered scenes: colours, counts, positions)
* :mod:`~craft_plugin.mcq.teach`    — fine-tune a backbone on an MCQ set (tests, demo)
"""

from craft_plugin.mcq.data import MCQData, MCQDataError, MCQQuestion, load_mcq
from craft_plugin.mcq.scenes import make_scene_mcq

__all__ = ["MCQData", "MCQDataError", "MCQQuestion", "load_mcq", "make_scene_mcq"]
