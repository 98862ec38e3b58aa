"""CRaFT in a plain PyTorch loop: learn task B without forgetting task A.

A small MLP with a shared trunk and two linear heads first learns task A (head A), then is
fine-tuned on task B (head B, trunk shared). Both tasks regress a different random target
function of the *same* inputs, so task B pulls the shared trunk away from the features task A
needs. We fine-tune from the same task-A weights twice:

* naive: ``loss.backward()`` on task B only; task A is forgotten;
* CRaFT: ``CraftHook`` with the retention loss = task A's MSE on a fixed anchor batch of A data,
  under the constraint ``L_ret <= ε`` (ε annealed to ``epsilon_end``). Because the retention
  loss *is* task A's loss, the budget reads directly in task-A MSE. (The other option,
  anchoring the trunk features to the task-A model's, works the same way with CraftHook.)

Task-A loss is reported on a held-out A set, not only on the anchors.

    python examples/custom_loop.py [--steps 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from craft_plugin import CraftConfig, CraftHook

IN_DIM, HIDDEN = 8, 64


def make_teacher(gen: torch.Generator) -> nn.Module:
    """A random smooth target function R^8 -> R (a small tanh network), standardised below."""
    net = nn.Sequential(nn.Linear(IN_DIM, 16), nn.Tanh(), nn.Linear(16, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net.requires_grad_(False)


class Task:
    """Inputs x ~ N(0, I); target = a fixed random function of x with unit variance."""

    def __init__(self, gen: torch.Generator, head: int) -> None:
        self.teacher, self.gen, self.head = make_teacher(gen), gen, head
        y = self.teacher(torch.randn(8192, IN_DIM, generator=gen))
        self.mean, self.std = y.mean(), y.std()

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, IN_DIM, generator=self.gen)
        return x, (self.teacher(x) - self.mean) / self.std

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(model(x)[:, self.head : self.head + 1], y)


def make_model() -> nn.Module:
    # Shared trunk + one linear output per task (output 0: task A, output 1: task B).
    return nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 2))


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(task.loss(model, *data))


def finetune(model: nn.Module, task_b: Task, steps: int, lr: float, hook: CraftHook | None = None, retention_fn=None):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    metrics: dict[str, float] = {}
    for _ in range(steps):
        x, y = task_b.sample(128)
        opt.zero_grad()
        loss = task_b.loss(model, x, y)
        if hook is None:
            loss.backward()  # naive fine-tuning
        else:
            metrics = hook.step(loss, retention_fn)  # fills .grad with the CRaFT gradient
        opt.step()
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="fine-tuning steps on task B")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()

    task_a, task_b = Task(gen, head=0), Task(gen, head=1)
    test_a, test_b = task_a.sample(4096), task_b.sample(4096)  # held-out sets
    anchors = task_a.sample(256)  # the fixed anchor batch CRaFT retains on

    # 1. Train on task A (plain loop) and keep a copy of the weights.
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(1000):
        x, y = task_a.sample(128)
        opt.zero_grad()
        task_a.loss(model, x, y).backward()
        opt.step()
    model_a = copy.deepcopy(model)
    rows = [("after task A", evaluate(model_a, task_a, test_a), evaluate(model_a, task_b, test_b))]

    # 2. Naive fine-tuning on task B.
    naive = copy.deepcopy(model_a)
    finetune(naive, task_b, args.steps, lr=3e-3)
    rows.append(("naive fine-tune on B", evaluate(naive, task_a, test_a), evaluate(naive, task_b, test_b)))

    # 3. CRaFT fine-tuning on task B: retention loss = task A's loss on the anchor batch.
    craft = copy.deepcopy(model_a)
    cfg = CraftConfig(
        epsilon_start=0.2, epsilon_end=0.05, epsilon_decay_steps=args.steps // 2,
        initial_lambda=1.0, lambda_lr=5.0, lambda_max=100.0,
    )  # fmt: skip
    hook = CraftHook(craft, cfg, total_steps=args.steps)
    metrics = finetune(craft, task_b, args.steps, lr=3e-3, hook=hook, retention_fn=lambda: task_a.loss(craft, *anchors))
    rows.append(("CRaFT fine-tune on B", evaluate(craft, task_a, test_a), evaluate(craft, task_b, test_b)))

    # 4. Report.
    eps = hook.epsilon
    print(f"\n{'model':<22} {'task-A MSE (held-out)':>22} {'task-B MSE (held-out)':>22}")
    for name, la, lb in rows:
        print(f"{name:<22} {la:>22.4f} {lb:>22.4f}")
    print(f"\nfinal ε budget = {eps:.4f}   final λ = {metrics['lambda']:.3f}   (anchor L_ret = {metrics['L_ret']:.4f})")
    for name, la, _ in rows[1:]:
        verdict = "within" if la <= eps else "OVER"
        print(f"{name:<22} task-A MSE {la:.4f} {verdict} the ε budget {eps:.4f}")
    ok = rows[2][1] <= eps and rows[2][2] < rows[0][2]
    print(f"({time.perf_counter() - t0:.1f} s)")
    print(f"CRaFT kept task A within budget: {'yes' if ok else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
