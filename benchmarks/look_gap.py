"""How far the demo's fast-rendered images are from what stock ``lerobot-eval`` shows, and what
that does to a policy trained on them (not a test).

1. Pixel gap: the first frame of a Meta-World episode at 64 px in each look
   (``craft_plugin.demo.metaworld_data.LOOKS``: ``fast``, ``lerobot_eval``) against Meta-World's
   own 480 x 480 render resized as ``lerobot-eval``'s prepared checkpoint does (``renderer="env"``).
2. Success of one checkpoint in the lean rollout loop, on the same episode seeds, with the
   images drawn in each look and by the env's own renderer: a policy trained on ``fast`` data
   that succeeds only in the ``fast`` look has learnt the renderer, and ``lerobot-eval`` will
   not reproduce its success.
3. With ``--policy-seeds N``: the env renderer's rollouts again, same episodes, with N other
   torch seeds. A flow-matching policy (SmolVLA) draws noise for every action chunk from
   torch's generator, which each evaluator seeds its own way (the lean loop: the benchmark
   seed; ``lerobot-eval``: ``--seed``), so the same checkpoint on the same episode need not
   give the same outcome in both; this shows how much success moves with that draw alone.

    python benchmarks/look_gap.py CHECKPOINT [--task faucet-open-v3] [--episodes 3] [--policy-seeds 4]
"""

from __future__ import annotations

import argparse

import numpy as np

from craft_plugin.demo import evaluate as ev
from craft_plugin.demo import metaworld_data as md


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a pretrained_model folder trained on a 64 px demo dataset")
    p.add_argument("--task", default=md.TASK_A)
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="the benchmark seed whose rollout episode seeds to use")
    p.add_argument("--policy-seeds", type=int, default=0,
                   help="then the env renderer's rollouts with this many other torch seeds (same episodes)")  # fmt: skip
    args = p.parse_args()
    try:
        loaded = ev.load_policy(args.checkpoint)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    looks = {name: md.look_render(name) for name in md.LOOKS} | {"env": md.RenderOptions(renderer="env")}
    first = ev.rollout_seeds(args.seed, 1)[0]
    imgs = {}
    for name, r in looks.items():  # the scenes the rollouts below reuse
        scene = md.shared_scene(args.task, render=r)
        scene.reset(first)
        imgs[name] = scene.image().astype(np.float64)
    for name, img in imgs.items():
        d = np.abs(img - imgs["env"])
        print(f"{name:<13} vs lerobot-eval's view: mean |diff| {d.mean():.2f} / 255, max {d.max():.0f}, "
              f"pixels off by > 20: {(d.max(-1) > 20).mean():.3f}", flush=True)  # fmt: skip
    for name, r in looks.items():
        res = ev.rollout_success(loaded, args.task, episodes=args.episodes, max_steps=150, seed=args.seed, render=r,
                                 state_mode="agent", progress=False)  # fmt: skip
        print(f"{name:<13} lean-loop success {res.successes}/{args.episodes} {res.success_steps} "
              f"({res.steps_per_s:.1f} steps/s)", flush=True)  # fmt: skip
    for k in range(1, args.policy_seeds + 1):  # same episodes (start_seed), another torch seed for the policy
        res = ev.rollout_success(loaded, args.task, episodes=args.episodes, max_steps=150, seed=args.seed + k,
                                 start_seed=first, render=looks["env"], state_mode="agent", progress=False)  # fmt: skip
        print(f"env, torch seed {args.seed + k:<3} lean-loop success {res.successes}/{args.episodes} "
              f"{res.success_steps}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
