"""MCQ statistics — pure functions over per-question scores (numpy only, no torch, no I/O).

* ``predictions(scores)`` — argmax per question (the first of tied maxima, as ``numpy.argmax``).
* ``margins(scores, answers)`` — correct choice's score minus the best wrong choice's score.
* ``bootstrap_ci(values, ...)`` — percentile bootstrap CI of a mean, resampling questions with
  a seeded ``numpy.random.Generator`` (same seed → same interval).
* ``paired_bootstrap_ci(a, b, ...)`` — CI of ``mean(b) - mean(a)``, resampling the *same*
  question indices for both (the questions are paired).
* ``mcnemar_exact(a_only, b_only)`` — two-sided exact McNemar test on the discordant pairs:
  ``p = min(1, 2 * P[X <= min(a_only, b_only)])`` with ``X ~ Binomial(a_only + b_only, 1/2)``;
  ``p = 1`` when there are no discordant pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "ComparisonMetrics",
    "MCQMetrics",
    "bootstrap_ci",
    "compare",
    "margins",
    "mcnemar_exact",
    "paired_bootstrap_ci",
    "predictions",
    "summarize",
]

DEFAULT_RESAMPLES = 2000


def predictions(scores: Sequence[Sequence[float]]) -> np.ndarray:
    """Index of the highest score of each question (first one on ties)."""
    return np.array([int(np.argmax(np.asarray(s, dtype=np.float64))) for s in scores], dtype=np.int64)


def margins(scores: Sequence[Sequence[float]], answers: Sequence[int]) -> np.ndarray:
    """Per question: score of the correct choice minus the best score among the wrong ones."""
    out = np.empty(len(answers), dtype=np.float64)
    for i, (s, a) in enumerate(zip(scores, answers, strict=True)):
        s = np.asarray(s, dtype=np.float64)
        if s.size < 2:
            raise ValueError(f"question {i} has {s.size} choice score(s); margins need at least 2")
        wrong = np.delete(s, a)
        out[i] = s[a] - wrong.max()
    return out


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(values)``: resample with replacement ``n_resamples`` times.

    Indices are drawn as ``Generator(PCG64(seed)).integers(0, n, size=(n_resamples, n))``; the
    interval is the ``(1-level)/2`` and ``(1+level)/2`` quantiles (linear interpolation) of the
    resampled means.
    """
    _check_level(level)
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    level: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(b) - mean(a)`` over paired questions (same resampled rows)."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape:
        raise ValueError(f"paired values differ in length: {xa.size} vs {xb.size}")
    return bootstrap_ci(xb - xa, level=level, n_resamples=n_resamples, seed=seed)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (see the module docstring)."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_only}, {b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class MCQMetrics:
    """Metrics of one checkpoint on one question set (see :func:`summarize`)."""

    n: int
    correct: int  #: under the chosen normalization
    accuracy: float  #: under the chosen normalization
    accuracy_ci: tuple[float, float]
    acc: float  #: argmax of the summed log-probability ("none")
    acc_norm: float  #: argmax of the per-token mean log-probability ("length")
    avg_margin: float  #: mean margin under the chosen normalization
    normalize: str

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["accuracy_ci"] = list(self.accuracy_ci)
        return d


def summarize(
    sum_scores: Sequence[Sequence[float]],
    mean_scores: Sequence[Sequence[float]],
    answers: Sequence[int],
    *,
    normalize: str = "none",
    level: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> MCQMetrics:
    """Accuracy (both normalizations), average margin and a bootstrap CI of the accuracy."""
    if normalize not in ("none", "length"):
        raise ValueError(f"normalize must be 'none' or 'length', got {normalize!r}")
    answers_arr = np.asarray(answers, dtype=np.int64)
    hit_sum = predictions(sum_scores) == answers_arr
    hit_mean = predictions(mean_scores) == answers_arr
    primary = sum_scores if normalize == "none" else mean_scores
    hits = hit_sum if normalize == "none" else hit_mean
    return MCQMetrics(
        n=int(answers_arr.size),
        correct=int(hits.sum()),
        accuracy=float(hits.mean()),
        accuracy_ci=bootstrap_ci(hits.astype(np.float64), level=level, n_resamples=n_resamples, seed=seed),
        acc=float(hit_sum.mean()),
        acc_norm=float(hit_mean.mean()),
        avg_margin=float(margins(primary, answers_arr).mean()),
        normalize=normalize,
    )


@dataclass(frozen=True)
class ComparisonMetrics:
    """B minus A on the same questions."""

    accuracy_diff: float
    accuracy_diff_ci: tuple[float, float]
    avg_margin_diff: float
    a_only: int  #: questions A gets right and B wrong
    b_only: int  #: questions B gets right and A wrong
    mcnemar_p: float

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["accuracy_diff_ci"] = list(self.accuracy_diff_ci)
        return d


def compare(
    hits_a: Sequence[bool],
    hits_b: Sequence[bool],
    margins_a: Sequence[float],
    margins_b: Sequence[float],
    *,
    level: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> ComparisonMetrics:
    """Paired comparison of two checkpoints' per-question correctness and margins (B − A)."""
    a = np.asarray(hits_a, dtype=bool)
    b = np.asarray(hits_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"A and B scored different numbers of questions: {a.size} vs {b.size}")
    a_only = int((a & ~b).sum())
    b_only = int((~a & b).sum())
    return ComparisonMetrics(
        accuracy_diff=float(b.mean() - a.mean()),
        accuracy_diff_ci=paired_bootstrap_ci(
            a.astype(np.float64), b.astype(np.float64), level=level, n_resamples=n_resamples, seed=seed
        ),
        avg_margin_diff=float(np.mean(margins_b) - np.mean(margins_a)),
        a_only=a_only,
        b_only=b_only,
        mcnemar_p=mcnemar_exact(a_only, b_only),
    )
