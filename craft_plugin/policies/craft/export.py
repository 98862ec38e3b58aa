"""``craft export``: a craft checkpoint → a plain base-policy checkpoint stock LeRobot loads.

The output folder holds the base's ``config.json`` (from the checkpoint's ``base/``), its
weights (``model.safetensors`` with the wrapper's ``base.`` prefix removed) and the processor
files. Nothing in it refers to craft-plugin: ``lerobot-eval``, an async ``policy_server`` or
``--policy.path`` load it with no plugin installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from craft_plugin.policies.craft.configuration_craft import BASE_CONFIG_DIR

__all__ = ["export_base_checkpoint"]

_PREFIX = "base."


def export_base_checkpoint(checkpoint: str | Path, output: str | Path, *, overwrite: bool = False) -> Path:
    """Write the plain base checkpoint of ``checkpoint`` (a craft ``pretrained_model`` folder)."""
    src, out = Path(checkpoint), Path(output)
    if (src / "pretrained_model").is_dir():
        src = src / "pretrained_model"
    config_path = src / "config.json"
    if not config_path.is_file() or json.loads(config_path.read_text()).get("type") != "craft":
        raise ValueError(f"{src} is not a craft checkpoint (its config.json must have \"type\": \"craft\")")
    base_config = src / BASE_CONFIG_DIR / "config.json"
    if not base_config.is_file():
        raise ValueError(f"{src} has no {BASE_CONFIG_DIR}/config.json: it was saved by an older craft-plugin")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite or choose another folder")
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(base_config, tmp / "config.json")
    weights = load_file(str(src / "model.safetensors"))
    base_weights = {k[len(_PREFIX) :]: v for k, v in weights.items() if k.startswith(_PREFIX)}
    if not base_weights:
        raise ValueError(f"{src / 'model.safetensors'} holds no '{_PREFIX}*' weights")
    save_file(base_weights, str(tmp / "model.safetensors"))
    for f in src.iterdir():
        if f.name.startswith(("policy_preprocessor", "policy_postprocessor")):
            shutil.copy2(f, tmp / f.name)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
