"""Teach a backbone an MCQ set: fine-tune it on the correct answers, through the same adapter that scores.

``teach_mcq(target, questions)`` trains the language-model backbone that ``craft eval-mcq`` reads
(see :mod:`craft_plugin.mcq.models`) to give the correct choice a high likelihood after the
image and the question — the same prompt format, attention and read-out as scoring, so what it
learns is what the evaluator measures. ``target`` is an :class:`MCQAdapter`, or a LeRobot policy
(``pi0``/``pi05``/``pi0_fast``/``smolvla``/``craft``), whose backbone is then trained in place.

Objectives:

* ``"lm"`` (default) — the mean negative log-likelihood of the correct choice's tokens;
* ``"mcq"`` — cross-entropy over the choices' summed log-likelihoods (all choices run).

Every parameter of the backbone (``adapter.module``: SmolVLM for smolvla, PaliGemma for the pi
family, the whole HF model) is trained, including ones the policy keeps frozen (SmolVLA freezes
its VLM by default); ``requires_grad`` flags and the train/eval mode are restored afterwards.
Each step draws ``batch_size`` questions with a seeded generator and runs them in one forward
(:meth:`MCQAdapter.batch_logits`); the optimizer is AdamW.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from craft_plugin.mcq.data import MCQQuestion, load_image
from craft_plugin.mcq.models import MCQAdapter, adapter_for_policy

__all__ = ["TeachResult", "teach_mcq"]

logger = logging.getLogger(__name__)


@dataclass
class TeachResult:
    """What a :func:`teach_mcq` run did."""

    steps: int
    losses: list[float] = field(default_factory=list)  #: one per step
    seconds: float = 0.0
    trained_parameters: int = 0

    @property
    def final_loss(self) -> float:
        """Mean loss of the last 10 steps."""
        tail = self.losses[-10:]
        return sum(tail) / max(len(tail), 1)


def teach_mcq(
    target: MCQAdapter | Any,
    questions: Sequence[MCQQuestion],
    *,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    objective: str = "lm",
    seed: int = 0,
    log_every: int = 50,
) -> TeachResult:
    """Fine-tune ``target``'s backbone on ``questions`` (see the module docstring); returns the losses."""
    if objective not in ("lm", "mcq"):
        raise ValueError(f"objective must be 'lm' or 'mcq', got {objective!r}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1 (got {steps}, {batch_size})")
    if not questions:
        raise ValueError("teach_mcq needs at least one question")
    adapter = target if isinstance(target, MCQAdapter) else adapter_for_policy(target)
    module = adapter.module
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    was_training = module.training

    # Inputs are prepared once: images decoded, prompts and choices tokenized.
    prepared = []
    for q in questions:
        prefix = adapter.encode(load_image(q.image), q.question)
        prepared.append((prefix, [adapter.choice_ids(c) for c in q.choices], q.answer_index))

    result = TeachResult(steps=steps, trained_parameters=sum(p.numel() for p in params))
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    try:
        for p in params:
            p.requires_grad_(True)
        module.train()
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        for step in range(steps):
            idx = torch.randint(len(prepared), (batch_size,), generator=gen).tolist()
            opt.zero_grad(set_to_none=True)
            if objective == "lm":
                items = [(prepared[i][0], prepared[i][1][prepared[i][2]]) for i in idx]
                logits = adapter.batch_logits(items)
                nll = [-torch.log_softmax(lg.float(), -1).gather(-1, torch.tensor(ids, device=lg.device)[:, None]).mean() for lg, (_, ids) in zip(logits, items)]
                loss = torch.stack(nll).mean()
            else:
                items = [(prepared[i][0], c) for i in idx for c in prepared[i][1]]
                logits = adapter.batch_logits(items)
                sums = torch.stack([
                    torch.log_softmax(lg.float(), -1).gather(-1, torch.tensor(c, device=lg.device)[:, None]).sum()
                    for lg, (_, c) in zip(logits, items)
                ])
                losses, k = [], 0
                for i in idx:
                    n = len(prepared[i][1])
                    target = torch.tensor([prepared[i][2]], device=sums.device)
                    losses.append(torch.nn.functional.cross_entropy(sums[k : k + n][None], target))
                    k += n
                loss = torch.stack(losses).mean()
            loss.backward()
            total = float(loss.detach()) * batch_size
            opt.step()
            result.losses.append(total / batch_size)
            if log_every and (step + 1) % log_every == 0:
                logger.info("teach_mcq step %d/%d loss %.4f", step + 1, steps, result.losses[-1])
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
            p.grad = None
        module.train(was_training)
    result.seconds = time.perf_counter() - start
    return result
