"""CRaFT in a plain PyTorch loop: learn task B without forgetting task A.

A small MLP (shared trunk, one output per task) first learns task A, then is fine-tuned on
task B. Both tasks regress a different random function of the *same* inputs, so task B pulls
the shared trunk away from the features task A needs. From the same task-A weights we
fine-tune twice:

* naive: plain ``loss.backward()`` on task B; task A is forgotten;
* CRaFT: ``CraftHook`` with retention loss = task A's MSE on a fixed anchor set of A data and
  the constraint ``L_ret <= ε`` (ε annealed to ``epsilon_end``). Because the retention loss
  *is* task A's loss, the budget reads directly in task-A MSE. (Anchoring the trunk's hidden
  features to the task-A model's would work the same way with CraftHook.)

Task-A loss is reported on a held-out A set, not on the anchors.

    python examples/custom_loop.py [--steps 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from craft_plugin import CraftConfig, CraftHook

IN_DIM, HIDDEN, BATCH = 8, 64, 128


class Task:
    """x ~ N(0, I_8); target = a fixed random smooth function of x (a tiny tanh net), unit variance."""

    def __init__(self, gen: torch.Generator, output: int) -> None:
        self.gen, self.output = gen, output  # which model output predicts this task
        self.teacher = nn.Sequential(nn.Linear(IN_DIM, 16), nn.Tanh(), nn.Linear(16, 1)).requires_grad_(False)
        for p in self.teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        y = self.teacher(torch.randn(8192, IN_DIM, generator=gen))
        self.mean, self.std = y.mean(), y.std()

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, IN_DIM, generator=self.gen)
        return x, (self.teacher(x) - self.mean) / self.std

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(model(x)[:, self.output : self.output + 1], y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
        return float(self.loss(model, *data))


def finetune(model: nn.Module, task: Task, steps: int, hook: CraftHook | None = None, retention_fn=None):
    """SGD+momentum on ``task``; plain backward, or the CRaFT gradient when ``hook`` is given.
    Returns the last step's CRaFT metrics, the peak λ and the number of projected steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    metrics, peak_lambda, projected = {}, 0.0, 0
    for _ in range(steps):
        x, y = task.sample(BATCH)
        opt.zero_grad()
        loss = task.loss(model, x, y)
        if hook is None:
            loss.backward()  # naive fine-tuning
        else:
            metrics = hook.step(loss, retention_fn)  # fills .grad with g_task (projected) + λ·g_ret
            peak_lambda = max(peak_lambda, metrics["lambda"])
            projected += int(metrics.get("proj_frac", 0.0) > 0)
        opt.step()
    return metrics, peak_lambda, projected


def main() -> int:
    parser = argparse.ArgumentParser(description="CRaFT demo: fine-tune on task B, keep task A within budget.")
    parser.add_argument("--steps", type=int, default=400, help="fine-tuning steps on task B (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, targets and weights (default 0)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()

    task_a, task_b = Task(gen, output=0), Task(gen, output=1)
    test_a, test_b = task_a.sample(4096), task_b.sample(4096)  # held-out sets
    anchors = task_a.sample(2048)  # the fixed anchor set CRaFT retains task A on

    # 1. Train on task A (plain loop, Adam) and keep the weights.
    model_a = nn.Sequential(
        nn.Linear(IN_DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 2)
    )  # shared trunk; output 0 answers task A, output 1 task B
    opt = torch.optim.Adam(model_a.parameters(), lr=3e-3)
    for _ in range(1000):
        x, y = task_a.sample(BATCH)
        opt.zero_grad()
        task_a.loss(model_a, x, y).backward()
        opt.step()
    rows = {"after task A": (task_a.evaluate(model_a, test_a), task_b.evaluate(model_a, test_b))}

    # 2. Naive fine-tuning on task B.
    naive = copy.deepcopy(model_a)
    finetune(naive, task_b, args.steps)
    rows["naive fine-tune on B"] = (task_a.evaluate(naive, test_a), task_b.evaluate(naive, test_b))

    # 3. CRaFT fine-tuning on task B, from the same task-A weights.
    craft = copy.deepcopy(model_a)
    config = CraftConfig(
        epsilon_start=0.2,  # task-A MSE allowed early on (task A's own loss is ~0.004)...
        epsilon_end=0.05,  # ...annealed to this final budget over the first half of the run
        epsilon_decay_steps=max(1, args.steps // 2),
        initial_lambda=0.0,  # λ grows only once task A's loss reaches the budget
        lambda_lr=20.0,  # L_ret − ε is ~0.01 here, so dual ascent needs a large step to react
        lambda_max=10.0,  # keeps lr·λ small enough for SGD to stay stable
        # The global cosine is diluted (each task's output row only gets its own gradient), so
        # real conflicts show cos just below 0; project on any conflict, not only cos < -0.1.
        conflict_threshold=0.0,
    )
    hook = CraftHook(craft, config, total_steps=args.steps)
    metrics, peak_lambda, projected = finetune(craft, task_b, args.steps, hook, lambda: task_a.loss(craft, *anchors))
    rows["CRaFT fine-tune on B"] = (task_a.evaluate(craft, test_a), task_b.evaluate(craft, test_b))

    # 4. Report.
    eps = hook.epsilon  # the budget at the end of the run (= epsilon_end)
    print(f"\n{'':<22}{'task-A MSE':>12}{'task-B MSE':>12}   (held-out, seed {args.seed}, {args.steps} steps)")
    for name, (loss_a, loss_b) in rows.items():
        print(f"{name:<22}{loss_a:>12.4f}{loss_b:>12.4f}")
    print(
        f"\nfinal ε budget {eps:.4f} | final λ {metrics['lambda']:.3f} (peak {peak_lambda:.3f}) | "
        f"anchor L_ret {metrics['L_ret']:.4f} | task gradient projected on {projected}/{args.steps} steps"
    )
    for name in ("naive fine-tune on B", "CRaFT fine-tune on B"):
        loss_a = rows[name][0]
        print(f"{name}: task-A MSE {loss_a:.4f} {'within' if loss_a <= eps else 'OVER'} the ε budget")
    b_start, (a_craft, b_craft) = rows["after task A"][1], rows["CRaFT fine-tune on B"]
    kept = a_craft <= eps and b_craft < 0.5 * b_start  # within budget AND task B clearly learned
    print(f"({time.perf_counter() - t0:.1f} s)")
    print(f"CRaFT kept task A within budget: {'yes' if kept else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
