"""``craft export``: a craft checkpoint → a plain base-policy checkpoint stock LeRobot loads.

The output folder holds the base's ``config.json`` (from the checkpoint's ``base/``), its
weights (``model.safetensors`` with the wrapper's ``base.`` prefix removed) and the processor
files. A checkpoint trained with ``--peft.method_type=LORA`` holds only adapter weights: its LoRA
updates are merged into the base weights read from the run's ``base_path``
(``W + (alpha / r) * B @ A``, ``alpha / sqrt(r)`` with rsLoRA), so the output is a full plain
checkpoint too. Other PEFT methods (DoRA, ``modules_to_save``...) are refused with a message.
Nothing in it refers to craft-plugin: ``lerobot-eval``, an async ``policy_server`` or
``--policy.path`` load it with no plugin installed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from craft_plugin.cache.shards import umask_mode
from craft_plugin.policies.craft.configuration_craft import BASE_CONFIG_DIR, base_weights_file

__all__ = ["export_base_checkpoint"]

_PREFIX = "base."


def export_base_checkpoint(checkpoint: str | Path, output: str | Path, *, overwrite: bool = False) -> Path:
    """Write the plain base checkpoint of ``checkpoint`` (a craft ``pretrained_model`` folder).

    The export is written to a temporary folder next to ``output`` and renamed into place only
    once complete; with ``overwrite`` an old export is replaced only then (and removed after the
    swap). ``output`` may never be the checkpoint itself or a folder holding it: that is refused
    before anything is written, with or without ``overwrite``.
    """
    given, out = Path(checkpoint), Path(output)
    src = given / "pretrained_model" if (given / "pretrained_model").is_dir() else given
    config_path = src / "config.json"
    if not config_path.is_file() or json.loads(config_path.read_text()).get("type") != "craft":
        raise ValueError(f"{src} is not a craft checkpoint (its config.json must have \"type\": \"craft\")")
    for held in {src.resolve(), given.resolve()}:
        if out.resolve() == held or out.resolve() in held.parents:
            raise ValueError(
                f"the output {out} is the checkpoint {given} or a folder holding it: exporting there would "
                f"replace the checkpoint itself; choose an output outside it, e.g. {src.resolve().parent.parent / 'exported'}"
            )
    base_config = src / BASE_CONFIG_DIR / "config.json"
    if not base_config.is_file():
        raise ValueError(f"{src} has no {BASE_CONFIG_DIR}/config.json: it was saved by an older craft-plugin")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is a file, not a folder; choose another output folder")
    replace_old = out.is_dir() and any(out.iterdir())
    if replace_old and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700: the export gets a plain folder's mode
        _write_export(src, base_config, tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            out.rename(old)  # the complete new export is ready: only now move the old one aside
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_export(src: Path, base_config: Path, tmp: Path) -> None:
    """The export's files (config, weights, processors) into the empty folder ``tmp``."""
    shutil.copy2(base_config, tmp / "config.json")
    if (src / "adapter_config.json").is_file() and not (src / "model.safetensors").is_file():
        base_weights = _merged_lora_weights(src)
    else:
        weights = load_file(str(src / "model.safetensors"))
        base_weights = {k[len(_PREFIX) :]: v for k, v in weights.items() if k.startswith(_PREFIX)}
    if not base_weights:
        raise ValueError(f"{src / 'model.safetensors'} holds no '{_PREFIX}*' weights")
    save_file(base_weights, str(tmp / "model.safetensors"))
    os.chmod(tmp / "model.safetensors", umask_mode(0o666))
    for f in src.iterdir():
        if f.name.startswith(("policy_preprocessor", "policy_postprocessor")):
            shutil.copy2(f, tmp / f.name)


_ADAPTER_PREFIX = "base_model.model." + _PREFIX


def _base_weights_of(base_path: str) -> dict[str, torch.Tensor]:
    """The base checkpoint's weights: a local ``pretrained_model`` folder or a hub id."""
    return load_file(str(base_weights_file(base_path)))


def _merged_lora_weights(src: Path) -> dict[str, torch.Tensor]:
    """Base weights with the checkpoint's LoRA updates merged in (see the module docstring)."""
    adapter = json.loads((src / "adapter_config.json").read_text())
    where = src / "adapter_config.json"
    if adapter.get("peft_type") != "LORA":
        raise ValueError(f"{where}: peft_type {adapter.get('peft_type')!r}; `craft export` merges LoRA adapters only")
    for key in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "trainable_token_indices"):
        if adapter.get(key):
            raise ValueError(f"{where}: {key}={adapter[key]!r} is not supported by `craft export`; merge it with peft")
    base_path = json.loads((src / "config.json").read_text()).get("base_path")
    if not base_path:
        raise ValueError(f"{src / 'config.json'} names no base_path: the base weights to merge into are unknown")
    weights = _base_weights_of(base_path)
    adapters = load_file(str(src / "adapter_model.safetensors"))
    r, alpha = int(adapter["r"]), float(adapter.get("lora_alpha") or 8)
    scale = alpha / math.sqrt(r) if adapter.get("use_rslora") else alpha / r
    merged = dict(weights)
    for key, a in adapters.items():
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise ValueError(f"{src / 'adapter_model.safetensors'}: unexpected tensor {key!r}")
            continue
        module = key[len(_ADAPTER_PREFIX) : -len(".lora_A.weight")]
        b = adapters[key.replace(".lora_A.", ".lora_B.")]
        target = f"{module}.weight"
        if not key.startswith(_ADAPTER_PREFIX) or target not in weights:
            raise ValueError(f"adapter {key!r} has no matching base weight {target!r} in {base_path}")
        w = weights[target]
        if w.dim() != 2:
            raise ValueError(f"adapter on {module!r}: only Linear layers can be merged by `craft export`")
        merged[target] = (w.to(torch.float32) + scale * (b.to(torch.float32) @ a.to(torch.float32))).to(w.dtype)
    return merged
