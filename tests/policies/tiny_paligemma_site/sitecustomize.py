"""Makes a stock `lerobot-train` subprocess build *tiny* PaliGemma models (tests only).

LeRobot 0.6.1 builds pi0 / pi05 / pi0_fast from two hard-coded Gemma variants and a SigLIP-So400m
tower; a saved tiny checkpoint can only be re-built while `tiny_paligemma_architecture()` is
active. Python imports `sitecustomize` at start-up from any folder on `PYTHONPATH`, so a test
that puts this folder (and `tests/`) on `PYTHONPATH` and sets `CRAFT_TINY_PALIGEMMA=1` runs the
real `lerobot-train` executable with the patch active for the whole process. `CRAFT_TINY_HF_HOME`
must name the test process's tiny Hugging Face home (the local tokenizers live there).
"""

import os

if os.environ.get("CRAFT_TINY_PALIGEMMA") == "1":
    from support.tiny_vla import tiny_paligemma_architecture

    # Keep a reference: a collected generator context would run its `finally` and undo the patch.
    _TINY_ARCHITECTURE = tiny_paligemma_architecture()
    _TINY_ARCHITECTURE.__enter__()
