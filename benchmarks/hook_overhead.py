"""How much does a CraftHook step cost over the bare minimum? (not a test)

Times, on an MLP of ~10.5M parameters, one CRaFT step against the least work any retention
method needs: task forward+backward plus retention forward+backward done by hand
(``task.backward(); (λ·L_ret).backward()``). Neither side runs the optimizer (it is the same
for both). Both run in this one process, interleaved step by step, and the script prints the
median ratio.

Peak extra memory: each variant runs a few steps in a fresh subprocess; the peak resident
set over those steps (Linux ``VmHWM``, reset after a warm-up step) of the CRaFT subprocess minus the baseline's, divided by the bytes of one
copy of the parameters. (On CUDA, ``--device cuda`` uses ``torch.cuda.max_memory_allocated``.)

    python benchmarks/hook_overhead.py                   # default: batch 256, 2 threads
    python benchmarks/hook_overhead.py --batch 64 --granularity per_layer
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from craft_plugin import CraftConfig, CraftHook


def make_mlp(width: int, depth: int, d_in: int, d_out: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(d_in, width), nn.GELU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.GELU()]
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


def setup(args: argparse.Namespace):
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = make_mlp(args.width, args.depth, args.d_in, args.d_out).to(dev)
    teacher_feats = None
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.batch, args.d_in, generator=g).to(dev)
    y = torch.randn(args.batch, args.d_out, generator=g).to(dev)
    xa = torch.randn(args.anchor_batch, args.d_in, generator=g).to(dev)
    with torch.no_grad():
        teacher_feats = model(xa) + 0.1 * torch.randn(args.anchor_batch, args.d_out, generator=g).to(dev)
    return model, x, y, xa, teacher_feats


def step_baseline(model, x, y, xa, ya, lam: float) -> None:
    model.zero_grad(set_to_none=True)
    nn.functional.mse_loss(model(x), y).backward()
    (lam * nn.functional.mse_loss(model(xa), ya)).backward()


def step_craft(model, hook: CraftHook, x, y, xa, ya) -> None:
    model.zero_grad(set_to_none=True)
    task = nn.functional.mse_loss(model(x), y)
    hook.step(task, lambda: nn.functional.mse_loss(model(xa), ya))


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def time_ratio(args: argparse.Namespace) -> dict:
    model, x, y, xa, ya = setup(args)
    # conflict_threshold=1.0 makes every step project: the most work the hook can do.
    cfg = CraftConfig(projection_granularity=args.granularity, conflict_threshold=args.threshold)
    hook = CraftHook(model, cfg, total_steps=10**9)
    for _ in range(args.warmup):
        step_baseline(model, x, y, xa, ya, hook.lam)
        step_craft(model, hook, x, y, xa, ya)
    base, craft = [], []
    for _ in range(args.steps):
        _sync(args.device)
        t0 = time.perf_counter()
        step_baseline(model, x, y, xa, ya, hook.lam)
        _sync(args.device)
        t1 = time.perf_counter()
        step_craft(model, hook, x, y, xa, ya)
        _sync(args.device)
        t2 = time.perf_counter()
        base.append(t1 - t0)
        craft.append(t2 - t1)
    ratios = [c / b for b, c in zip(base, craft)]
    return {
        "baseline_ms": 1e3 * statistics.median(base),
        "craft_ms": 1e3 * statistics.median(craft),
        "ratio_median": statistics.median(ratios),
        "ratio_of_medians": statistics.median(craft) / statistics.median(base),
    }


def peak_memory_child(args: argparse.Namespace) -> None:
    """Run a few steps of one variant and print its peak memory (bytes) as JSON."""
    model, x, y, xa, ya = setup(args)
    hook = CraftHook(model, CraftConfig(projection_granularity=args.granularity, conflict_threshold=args.threshold), total_steps=10**9)
    # one warm-up step so both variants start from the same allocator state
    step_baseline(model, x, y, xa, ya, 1.0) if args.child == "baseline" else step_craft(model, hook, x, y, xa, ya)
    model.zero_grad(set_to_none=True)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak_rss()
    for _ in range(3):
        if args.child == "baseline":
            step_baseline(model, x, y, xa, ya, 1.0)
        else:
            step_craft(model, hook, x, y, xa, ya)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _peak_rss()
    print(json.dumps({"peak_bytes": peak}))


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) so that it covers the steps only (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(args: argparse.Namespace, n_param_bytes: int) -> dict:
    runs: dict[str, list[int]] = {"baseline": [], "craft": []}
    for _ in range(args.mem_repeats):  # alternate the variants; report medians
        for variant in ("baseline", "craft"):
            cmd = [sys.executable, __file__, "--child", variant, *sys.argv[1:]]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"])
    out = {k: statistics.median(v) for k, v in runs.items()}
    extra = out["craft"] - out["baseline"]
    return {
        "baseline_peak_mib": out["baseline"] / 2**20,
        "craft_peak_mib": out["craft"] / 2**20,
        "extra_mib": extra / 2**20,
        "extra_in_param_copies": extra / n_param_bytes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--depth", type=int, default=3, help="hidden layers (width x width blocks + 1)")
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-out", type=int, default=512)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--anchor-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--granularity", choices=["global", "per_layer"], default="global")
    p.add_argument("--threshold", type=float, default=1.0, help="conflict threshold (1.0: project every step)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mem-repeats", type=int, default=3, help="subprocess pairs for the memory medians")
    p.add_argument("--child", choices=["baseline", "craft"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        peak_memory_child(args)
        return
    model = make_mlp(args.width, args.depth, args.d_in, args.d_out)
    n_params = sum(p.numel() for p in model.parameters())
    n_param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    t = time_ratio(args)
    m = peak_memory(args, n_param_bytes)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    print(f"machine: {where} | device={args.device} | torch {torch.__version__} | threads={torch.get_num_threads()}")
    print(
        f"model: MLP {n_params / 1e6:.1f}M params ({n_param_bytes / 2**20:.0f} MiB) | batch {args.batch} "
        f"+ anchor batch {args.anchor_batch} | granularity={args.granularity} | threshold={args.threshold}"
    )
    print(f"bare minimum step: {t['baseline_ms']:.1f} ms | CraftHook step: {t['craft_ms']:.1f} ms (medians of {args.steps})")
    print(f"time ratio CraftHook / bare minimum: {t['ratio_median']:.3f} (goal <= 1.10)")
    print(
        f"peak memory (median of {args.mem_repeats}): bare {m['baseline_peak_mib']:.0f} MiB, CraftHook {m['craft_peak_mib']:.0f} MiB, "
        f"extra {m['extra_mib']:.0f} MiB = {m['extra_in_param_copies']:.2f}x one copy of the parameters (goal <= 1.2)"
    )


if __name__ == "__main__":
    main()
