"""Runs LeRobot's own train entry point (`lerobot-train`'s `main`) in this process and, at exit,
writes what it saw to $CRAFT_PROBE_DIR/rank<R>.json (R = $RANK, else 0):

* ``lambda``: λ after every CRaFT step;
* ``weights_sha256``: a hash of every trainable weight at the end (compared across DDP ranks);
* ``lora_merged.safetensors``: for every LoRA layer, ``base_layer.weight + delta`` as PEFT computes it;
* ``changed``: names of the base policy's parameters that differ from their values at the first
  training step, and ``trainable``: the names of those that take gradients (the LoRA test);
* ``sampler``: the anchor sampler's state (its seed is the rank's own).

Used by the DDP test (through `accelerate launch`) and the LoRA test (plain subprocess).
"""

import atexit
import hashlib
import json
import os
import sys

import torch

import craft_plugin.policies  # noqa: F401
from craft_plugin.hook import CraftHook
from craft_plugin.policies.craft.modeling_craft import CRaFTPolicy

history: list[float] = []
hooks: list[CraftHook] = []
policies: list[tuple[CRaFTPolicy, dict[str, torch.Tensor]]] = []
_surrogate = CraftHook.surrogate
_ensure_hook = CRaFTPolicy._ensure_hook


def _recording(self, *args, **kwargs):
    loss, metrics = _surrogate(self, *args, **kwargs)
    history.append(metrics["lambda"])
    if not hooks:
        hooks.append(self)
    return loss, metrics


def _snapshot(self):
    if not policies:  # first training step, before any optimizer update
        policies.append((self, {n: p.detach().clone() for n, p in self.base.named_parameters()}))
    return _ensure_hook(self)


CraftHook.surrogate = _recording
CRaFTPolicy._ensure_hook = _snapshot


def _dump() -> None:
    h = hashlib.sha256()
    for name, p in zip(hooks[0].param_names, hooks[0].params, strict=True):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    policy, before = policies[0]
    now = dict(policy.base.named_parameters())
    out = {
        "lambda": history,
        "weights_sha256": h.hexdigest(),
        "changed": sorted(n for n, p in now.items() if n in before and not torch.equal(p.detach(), before[n])),
        "trainable": sorted(n for n, p in now.items() if p.requires_grad),
        "total": len(now),
        "sampler": policy._retention.state_dict()["sampler"] if policy._retention is not None else None,
    }
    merged = {}
    for name, module in policy.base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            merged[f"{name}.weight"] = (module.base_layer.weight + module.get_delta_weight("default")).detach().contiguous()
    if merged:
        from safetensors.torch import save_file

        save_file(merged, os.path.join(os.environ["CRAFT_PROBE_DIR"], "lora_merged.safetensors"))
    with open(os.path.join(os.environ["CRAFT_PROBE_DIR"], f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
        json.dump(out, f)


atexit.register(_dump)
sys.argv = ["lerobot-train", *sys.argv[1:]]
from lerobot.scripts.lerobot_train import main  # noqa: E402

torch.manual_seed(0)
main()
