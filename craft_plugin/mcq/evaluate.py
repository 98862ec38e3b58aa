"""``craft eval-mcq`` as a library call: load data and checkpoints, score, summarize, write JSON.

:func:`run_eval_mcq` is what the command calls; :func:`evaluate` does the same for adapters
already in memory (tests, the demo). :func:`format_summary` renders the console summary in the
original CRaFT evaluator's shape (per checkpoint ``Accuracy``, ``Avg Margin``, ``Correct: k/n``,
then the differences), :func:`write_json` the report (temp file, then rename).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from craft_plugin.mcq import stats
from craft_plugin.mcq.data import MCQData, load_mcq
from craft_plugin.mcq.models import MCQAdapter, load_adapter
from craft_plugin.mcq.scoring import QuestionScores, score_questions

__all__ = ["EvalOptions", "evaluate", "format_summary", "run_eval_mcq", "write_json"]

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95


@dataclass
class EvalOptions:
    """Everything ``craft eval-mcq`` takes (see ``craft eval-mcq --help``)."""

    policy_path: str
    data: str
    compare_path: str | None = None
    image_root: str | None = None
    max_samples: int | None = None
    batch_size: int = 8
    device: str = "cpu"
    dtype: str | None = None
    output: str | None = None
    normalize: str = "none"
    naive: bool = False
    skip_invalid: bool = False
    seed: int = 0
    bootstrap_resamples: int = stats.DEFAULT_RESAMPLES
    progress: bool = True


def _checkpoint_block(adapter: MCQAdapter, scores: list[QuestionScores], data: MCQData, normalize: str, seconds: float, seed: int, resamples: int) -> dict[str, Any]:
    answers = [q.answer_index for q in data.questions]
    metrics = stats.summarize(
        [s.sums for s in scores], [s.means for s in scores], answers,
        normalize=normalize, level=CONFIDENCE, n_resamples=resamples, seed=seed,
    )
    return {**adapter.describe(), "seconds": round(seconds, 3), "metrics": metrics.to_dict()}


def evaluate(
    adapters: Mapping[str, MCQAdapter],
    data: MCQData,
    *,
    normalize: str = "none",
    naive: bool = False,
    batch_size: int = 8,
    seed: int = 0,
    bootstrap_resamples: int = stats.DEFAULT_RESAMPLES,
    progress: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``data`` with each adapter (labels ``"A"``, ``"B"``) and build the report dict."""
    if normalize not in ("none", "length"):
        raise ValueError(f"normalize must be 'none' or 'length', got {normalize!r}")
    if not 1 <= len(adapters) <= 2:
        raise ValueError(f"evaluate takes one or two checkpoints, got {len(adapters)}")
    answers = [q.answer_index for q in data.questions]
    all_scores: dict[str, list[QuestionScores]] = {}
    blocks: dict[str, dict[str, Any]] = {}
    for label, adapter in adapters.items():
        start = time.perf_counter()
        scores = score_questions(adapter, data.questions, naive=naive, batch_size=batch_size, progress=progress, desc=f"[{label}] scoring")
        all_scores[label] = scores
        blocks[label] = _checkpoint_block(adapter, scores, data, normalize, time.perf_counter() - start, seed, bootstrap_resamples)

    def primary(scores: list[QuestionScores]) -> list[list[float]]:
        return [s.sums if normalize == "none" else s.means for s in scores]

    per_label = {}
    for label, scores in all_scores.items():
        pred = stats.predictions([s.sums for s in scores])
        pred_norm = stats.predictions([s.means for s in scores])
        chosen = pred if normalize == "none" else pred_norm
        per_label[label] = (pred, pred_norm, chosen == np.asarray(answers), stats.margins(primary(scores), answers))

    comparison = None
    if len(adapters) == 2:
        a, b = list(adapters)
        comparison = stats.compare(
            per_label[a][2], per_label[b][2], per_label[a][3], per_label[b][3],
            level=CONFIDENCE, n_resamples=bootstrap_resamples, seed=seed,
        ).to_dict()

    questions = []
    for i, q in enumerate(data.questions):
        rec: dict[str, Any] = {"id": q.id, "line": q.line, "answer": q.answer_index, "choices": list(q.choices)}
        for label, scores in all_scores.items():
            pred, pred_norm, hits, margins = per_label[label]
            s = scores[i]
            rec[label] = {
                "prediction": int(pred[i] if normalize == "none" else pred_norm[i]),
                "prediction_sum": int(pred[i]),
                "prediction_mean": int(pred_norm[i]),
                "correct": bool(hits[i]),
                "margin": float(margins[i]),
                "scores": s.sums,
                "scores_mean": s.means,
                "n_tokens": s.n_tokens,
            }
        questions.append(rec)

    from craft_plugin import __version__

    return {
        "craft_plugin_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": dict(settings or {}) | {
            "normalize": normalize, "naive": naive, "batch_size": batch_size, "seed": seed,
            "bootstrap_resamples": bootstrap_resamples, "confidence": CONFIDENCE,
            "scoring": "naive" if naive else "shared-prefix",
        },
        "data": {
            "file": str(data.path),
            "lines": data.total_lines,
            "scored": len(data.questions),
            "skipped": len(data.skipped_lines),
            "skipped_lines": data.skipped_lines,
            "problems": [str(p) for p in data.skipped],
        },
        "checkpoints": blocks,
        "comparison": comparison,
        "questions": questions,
    }


def run_eval_mcq(opts: EvalOptions) -> dict[str, Any]:
    """Validate the data, load the checkpoint(s), score, write ``opts.output`` (if set); return the report."""
    data = load_mcq(opts.data, image_root=opts.image_root, skip_invalid=opts.skip_invalid, max_samples=opts.max_samples)
    paths = {"A": opts.policy_path} | ({"B": opts.compare_path} if opts.compare_path else {})
    adapters: dict[str, MCQAdapter] = {}
    for label, path in paths.items():
        logger.info("loading [%s] %s", label, path)
        adapters[label] = load_adapter(path, device=opts.device, dtype=opts.dtype)
    warnings = family_warnings(adapters)
    for text in warnings:
        logger.warning(text)
    settings = {k: v for k, v in asdict(opts).items() if k not in ("progress",)}
    report = evaluate(
        adapters, data, normalize=opts.normalize, naive=opts.naive, batch_size=opts.batch_size,
        seed=opts.seed, bootstrap_resamples=opts.bootstrap_resamples, progress=opts.progress, settings=settings,
    )
    for label, path in paths.items():
        report["checkpoints"][label]["path"] = path
    report["warnings"] = warnings
    if opts.output:
        write_json(report, opts.output)
    return report


def family_warnings(adapters: Mapping[str, MCQAdapter]) -> list[str]:
    """A warning when A and B are different model families: each family has its own prompt format
    and tokenizer, so the paired test then compares tokenizations as well as weights."""
    families = {label: a.family for label, a in adapters.items()}
    if len(set(families.values())) < 2:
        return []
    return [
        f"--compare: A is a {families['A']} model and B a {families['B']} model. Their choices are tokenized "
        "differently (each family's prompt format and tokenizer), so the paired test compares different "
        "tokenizations, not only different weights; compare checkpoints of one family for a fair test"
    ]


def write_json(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``report`` as JSON to ``path`` atomically (temp name in the same folder, then rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def format_summary(report: Mapping[str, Any]) -> str:
    """The console summary (see the module docstring)."""
    d = report["data"]
    s = report["settings"]
    lines = [f"MCQ eval: {d['scored']} question(s) from {d['file']} ({s['scoring']} scoring, normalize={s['normalize']})"]
    if d["skipped"]:
        lines.append(f"  skipped {d['skipped']} invalid line(s): {', '.join(map(str, d['skipped_lines']))}")
    pct = int(round(report["settings"]["confidence"] * 100))
    for label, block in report["checkpoints"].items():
        m = block["metrics"]
        lo, hi = m["accuracy_ci"]
        lines += [
            f"[{label}] {block.get('path', block['source'])} ({block['family']}, {block['seconds']:.1f} s)",
            f"  Accuracy: {m['accuracy']:.4f}  ({pct}% CI {lo:.4f}-{hi:.4f}; acc {m['acc']:.4f}, acc_norm {m['acc_norm']:.4f})",
            f"  Avg Margin: {m['avg_margin']:.4f}",
            f"  Correct: {m['correct']}/{m['n']}",
        ]
    c = report.get("comparison")
    lines += [f"Warning: {w}" for w in report.get("warnings", [])]
    if c:
        lo, hi = c["accuracy_diff_ci"]
        lines += [
            "Difference (B - A):",
            f"  Accuracy: {c['accuracy_diff']:+.4f}  ({pct}% paired bootstrap CI {lo:+.4f} to {hi:+.4f})",
            f"  Avg Margin: {c['avg_margin_diff']:+.4f}",
            f"  McNemar exact p = {c['mcnemar_p']:.3g}  (only A right: {c['a_only']}, only B right: {c['b_only']})",
        ]
    return "\n".join(lines)
