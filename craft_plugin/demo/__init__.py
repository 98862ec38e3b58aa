"""The Meta-World task-A/task-B demo: datasets, evaluation and the report.

Submodules (imported on demand; none is imported by ``craft_plugin`` itself):

* :mod:`craft_plugin.demo.metaworld_data` — push-v3 (A) / reach-v3 (B) expert datasets;
* :mod:`craft_plugin.demo.evaluate` — held-out action error and simulated success;
* :mod:`craft_plugin.demo.report` — ``craft report``: the comparison table and plots.

Importing ``metaworld_data`` or ``evaluate`` sets ``MUJOCO_GL=egl`` when it is unset.
"""
