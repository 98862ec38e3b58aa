"""Launched by torchrun in the DDP test: runs LeRobot's own train entry point, and at exit
writes this rank's λ history and a hash of its final weights to <output>/rank<R>.json."""

import atexit
import hashlib
import json
import os
import sys

import torch

import craft_plugin.policies  # noqa: F401
from craft_plugin.hook import CraftHook

history: list[float] = []
hooks: list[CraftHook] = []
_surrogate = CraftHook.surrogate


def _recording(self, *args, **kwargs):
    loss, metrics = _surrogate(self, *args, **kwargs)
    history.append(metrics["lambda"])
    if not hooks:
        hooks.append(self)
    return loss, metrics


CraftHook.surrogate = _recording


def _dump() -> None:
    h = hashlib.sha256()
    for name, p in zip(hooks[0].param_names, hooks[0].params, strict=True):  # every trainable weight
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    out = os.environ["CRAFT_DDP_PROBE_DIR"]
    with open(os.path.join(out, f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
        json.dump({"lambda": history, "weights_sha256": h.hexdigest()}, f)


atexit.register(_dump)
sys.argv = ["lerobot-train", *sys.argv[1:]]
from lerobot.scripts.lerobot_train import main  # noqa: E402

torch.manual_seed(0)
main()
