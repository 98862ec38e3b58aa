"""The Meta-World task-A/task-B demo: datasets, evaluation and the report.

Submodules (imported on demand; none is imported by ``craft_plugin`` itself):

* :mod:`craft_plugin.demo.metaworld_data` — faucet-open-v3 (A) / faucet-close-v3 (B) expert datasets;
* :mod:`craft_plugin.demo.evaluate` — held-out action error and simulated success;
* :mod:`craft_plugin.demo.eval_stage` — the demo's evaluation as jobs in parallel processes;
* :mod:`craft_plugin.demo.report` — ``craft report``: the comparison table and plots;
* :mod:`craft_plugin.demo.pipeline` — ``craft demo``: every stage;
* :mod:`craft_plugin.demo.workers` — the stages' spawn process pools; LeRobot's log records in one line (every command).

Importing ``metaworld_data`` or ``evaluate`` sets ``MUJOCO_GL=egl`` when it is unset.
"""
