"""Score every choice of every question: sum and per-token mean of the choice's log-probabilities.

For a choice with tokens ``t_1 .. t_k`` after the prompt ``x`` (image + question),

    sum  = Σ_j log p(t_j | x, t_<j)        mean = sum / k

(``--normalize none`` predicts the argmax of ``sum``, ``--normalize length`` of ``mean``; both
are always computed, like ``acc`` and ``acc_norm`` in LM evaluation harnesses.)

Two paths give the same numbers:

* **shared prefix** (default) — per question, one forward over the prefix with the KV cache
  kept, then all choices (right-padded, in chunks of ``batch_size`` rows) on top of a copy of
  that cache: the image and the question are encoded once;
* **naive** (``naive=True``, the reference) — every choice's whole sequence (image, question,
  choice) runs from scratch, ``batch_size`` sequences per forward.

Questions run one at a time; ``batch_size`` bounds the rows of one forward.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from craft_plugin.mcq.data import MCQQuestion, load_image
from craft_plugin.mcq.models import MCQAdapter, Prefix, _pad_right, log_softmax_gather

__all__ = ["QuestionScores", "score_choices", "score_questions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuestionScores:
    """Per choice: summed log-probability, per-token mean, number of tokens."""

    sums: list[float]
    means: list[float]
    n_tokens: list[int]


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def score_choices(
    adapter: MCQAdapter, prefix: Prefix, conts: Sequence[Sequence[int]], *, naive: bool = False, batch_size: int = 8
) -> QuestionScores:
    """Log-probability sums and means of each continuation after ``prefix`` (no gradients)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    logps: list[torch.Tensor] = []
    with torch.no_grad():
        if naive:
            for chunk in _chunks(len(conts), batch_size):
                rows = [conts[i] for i in chunk]
                ids, valid = _pad_right(rows, 0, adapter.device)
                lp = log_softmax_gather(adapter.full_logits(prefix, rows), ids)
                logps += [lp[r, valid[r]] for r in range(len(rows))]
        else:
            first_logits, state = adapter.prefix_forward(prefix)
            first = torch.log_softmax(first_logits.float(), dim=-1)
            for chunk in _chunks(len(conts), batch_size):
                rows = [conts[i] for i in chunk]
                ids, valid = _pad_right(rows, 0, adapter.device)
                if ids.shape[1] > 1:
                    rest = log_softmax_gather(adapter.continuation_logits(prefix, state, rows)[:, :-1], ids[:, 1:])
                for r, row in enumerate(rows):
                    head = first[row[0]].reshape(1)
                    tail = rest[r, : len(row) - 1] if len(row) > 1 else head.new_zeros(0)
                    logps.append(torch.cat([head, tail]))
    sums = [float(lp.sum()) for lp in logps]
    n_tokens = [len(c) for c in conts]
    return QuestionScores(sums=sums, means=[s / n for s, n in zip(sums, n_tokens)], n_tokens=n_tokens)


def score_questions(
    adapter: MCQAdapter,
    questions: Sequence[MCQQuestion],
    *,
    naive: bool = False,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "scoring",
) -> list[QuestionScores]:
    """Score all ``questions`` with ``adapter`` (eval mode, no gradients; the mode is restored)."""
    from tqdm.auto import tqdm

    module = adapter.module
    was_training = module.training
    module.eval()
    out: list[QuestionScores] = []
    try:
        for q in tqdm(questions, desc=desc, unit="q", disable=not progress, leave=False):
            prefix = adapter.encode(load_image(q.image), q.question)
            conts = [adapter.choice_ids(c) for c in q.choices]
            out.append(score_choices(adapter, prefix, conts, naive=naive, batch_size=batch_size))
    finally:
        module.train(was_training)
    return out
