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
import shutil
from pathlib import Path

import torch
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
    if (src / "adapter_config.json").is_file() and not (src / "model.safetensors").is_file():
        base_weights = _merged_lora_weights(src)
    else:
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


_ADAPTER_PREFIX = "base_model.model." + _PREFIX


def _base_weights_of(base_path: str) -> dict[str, torch.Tensor]:
    """The base checkpoint's weights: a local ``pretrained_model`` folder or a hub id."""
    local = Path(base_path)
    if local.is_dir():
        file = local / "pretrained_model" / "model.safetensors"
        file = file if file.is_file() else local / "model.safetensors"
    else:
        from huggingface_hub import hf_hub_download

        file = Path(hf_hub_download(base_path, "model.safetensors"))
    if not file.is_file():
        raise FileNotFoundError(f"base weights not found: {file} (the craft config's base_path is {base_path!r})")
    return load_file(str(file))


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
