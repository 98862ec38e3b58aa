"""``craft report RUN_DIR...``: the comparison table (``report.md``, ``report.json``) and plots.

What a run directory holds (the demo writes it; every file is optional but ``eval.json`` or a
log must be there):

* ``craft_metrics.jsonl`` (in ``RUN_DIR`` or one folder below it, e.g. the ``--output_dir``
  ``RUN_DIR/train``) — ``craft`` runs: one JSON object per logged step (``step``, ``L_task``,
  ``lambda``, ``epsilon``, ``retention_step`` and, on retention steps, ``L_ret``, ``dot``,
  ``cos``, ``conflict``, ``proj_frac``, ``energy_removed``, ``nonfinite``). It is the source of
  everything it holds, the task-loss curve included (exact steps and values).
* ``train.log`` — ``lerobot-train``'s console output, tee'd by the demo: the documented
  fallback for what no structured file holds. A plain LeRobot run (``--policy.path``, wandb
  off) writes its per-step losses nowhere else, so its task-loss curve comes from lines such as
  ``step:4 smpl:16 ep:1 epch:0.50 loss:0.123 grdn:1.2 lr:1.0e-05 updt_s:0.2 data_s:0.0``.
  LeRobot prints ``step`` with a K/M suffix from 1000 on (``step:2K``) and rounds values to 3
  decimals; such steps are rebuilt from the logging interval seen before
  (:func:`parse_train_log`). A run with a ``craft_metrics.jsonl`` never reads its log.
* ``eval.json`` — this module's schema (version 1), written with :func:`update_eval_json`::

    {
      "schema": 1,
      "method": "naive",              # label in the table and plots (default: the folder name)
      "role": "finetune",             # or "base": the reference for forgetting
      "seed": 0,                      # runs are matched to the base of the same seed
      "train_seconds": 123.4,         # wall time of the training run
      "steps": 200,
      "action_error": {"A": {"task": "push-v3", "l1": 0.05, ...}, "B": {...}},   # ActionErrorResult.to_dict()
      "success": {"A": {"successes": 5, "episodes": 20, "rate": 0.25, "ci95": [0.11, 0.47], ...}, "B": {...}},
      "mcq": {"accuracy": 0.8, "ci95": [0.7, 0.9], "paired_diff_vs_naive": 0.1,
              "paired_ci95_vs_naive": [0.02, 0.18], "mcnemar_p": 0.03, "source": "mcq.json"},
      "storage_bytes": {"checkpoint": 48000000, "cache": 1200000}
    }

  ``mcq`` can be filled from a ``craft eval-mcq --output`` file with :func:`mcq_summary`
  (read defensively: ``checkpoints.<label>.metrics.accuracy`` / ``accuracy_ci`` and
  ``comparison.accuracy_diff`` / ``accuracy_diff_ci`` / ``mcnemar_p`` when there, else a
  top-level ``accuracy``). When ``storage_bytes.checkpoint`` is missing, the size of
  ``checkpoints/last/pretrained_model`` (in ``RUN_DIR`` or one folder below) is used if present.

Definitions in the table: *final task loss* is the last logged training loss (LeRobot's value
is the mean over its logging window). *Forgetting* is the task-A held-out action L1 of the run
minus the base's (same seed when several bases are given): positive means it forgot; the ratio
to the base's error is shown too. Success-rate forgetting is the base's task-A success minus
the run's. Runs with the same method are aggregated: mean, and ± sample standard deviation
when there are several.

Relative to a reference (``naive``, and ``craft_off`` when present: see :data:`REFERENCES`),
per seed against the reference run of the same seed, then mean ± sd over seeds:
``forgetting_less_than_<ref>`` = 1 − forgetting / the reference's forgetting (0.5: "50% less";
none when the reference did not forget) and ``error_B_vs_<ref>`` = task-B L1 / the
reference's (1.1: "+10%"). So the goals "≥ 50 % less forgetting than naive, task-B error
within 10 % of naive's" read off two columns. ``report.json`` also gives ``of_means``, the
same ratio of the mean values. ``report.md`` shows the naive columns in the main table and,
when ``craft_off`` ran, a second table against it. A run without ``mcq`` (e.g. ACT, which has no
language model) shows "—" there.

Plots (PNG, matplotlib Agg): ``task_loss.png`` (all runs), ``retention.png`` (``L_ret`` and ε
over steps, craft runs), ``lambda.png`` (λ), ``conflict.png`` (share of retention steps whose
gradients conflicted, rolling), ``forgetting_vs_b.png`` (forgetting against task-B error, per
method; with a naive run, the two goals as lines). A plot whose data no run has (e.g. no
craft run) is not drawn; ``report.md`` says so.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "EVAL_FILE",
    "LOG_FILE",
    "METRICS_FILE",
    "RunData",
    "build_report",
    "dir_bytes",
    "load_run",
    "mcq_summary",
    "versus",
    "parse_train_log",
    "read_metrics_jsonl",
    "update_eval_json",
]

EVAL_FILE = "eval.json"
LOG_FILE = "train.log"
METRICS_FILE = "craft_metrics.jsonl"
#: Why a report has no plots: matplotlib is an optional dependency (the ``demo`` extra).
NO_MATPLOTLIB = "matplotlib is not installed (pip install 'craft-plugin[demo]' for the plots)"
SCHEMA = 1


def can_plot() -> bool:
    """Whether matplotlib is installed (an optional dependency): without it a report has no plots."""
    return importlib.util.find_spec("matplotlib") is not None


# ---------------------------------------------------------------------- eval.json
def update_eval_json(run_dir: str | os.PathLike[str], updates: Mapping[str, Any]) -> Path:
    """Merge ``updates`` into ``RUN_DIR/eval.json`` (dict sections merged one level deep, e.g.
    ``{"action_error": {"A": ...}}`` keeps an existing ``"B"``); written to a temp name, renamed."""
    path = Path(run_dir) / EVAL_FILE
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"schema": SCHEMA}
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    data["schema"] = SCHEMA
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _pair(value: Any) -> list[float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) is not None for v in value):
        return [float(value[0]), float(value[1])]
    return None


def mcq_summary(path: str | os.PathLike[str], label: str | None = None) -> dict[str, Any]:
    """Accuracy (and the paired difference when there is one) of one checkpoint from a
    ``craft eval-mcq --output`` JSON, as this schema's ``mcq`` section.

    With ``--policy.path NAIVE --compare RUN`` the run is checkpoint ``B`` and the comparison
    (B − A) is its paired difference against naive; with a single checkpoint only its accuracy
    is taken. ``label`` picks a checkpoint explicitly. Unknown layouts fall back to a top-level
    ``accuracy``; a file without any accuracy raises ``ValueError``.
    """
    src = Path(path)
    data = json.loads(src.read_text())
    out: dict[str, Any] = {"source": str(src)}
    checkpoints = data.get("checkpoints") if isinstance(data, dict) else None
    comparison = data.get("comparison") if isinstance(data, dict) else None
    if isinstance(checkpoints, dict) and checkpoints:
        labels = list(checkpoints)
        chosen = label or (labels[1] if len(labels) > 1 and comparison else labels[0])
        if chosen not in checkpoints:
            raise ValueError(f"{src}: no checkpoint {chosen!r} (has {labels})")
        block = checkpoints[chosen]
        metrics = block.get("metrics", block) if isinstance(block, dict) else {}
        out["accuracy"] = _number(metrics.get("accuracy"))
        out["ci95"] = _pair(metrics.get("accuracy_ci"))
        out["checkpoint"] = block.get("path") if isinstance(block, dict) else None
        if isinstance(comparison, dict) and len(labels) > 1 and chosen == labels[1]:
            out["paired_diff_vs_naive"] = _number(comparison.get("accuracy_diff"))
            out["paired_ci95_vs_naive"] = _pair(comparison.get("accuracy_diff_ci"))
            out["mcnemar_p"] = _number(comparison.get("mcnemar_p"))
            ref = checkpoints[labels[0]]
            out["naive_checkpoint"] = ref.get("path") if isinstance(ref, dict) else None
            naive_metrics = ref.get("metrics", ref) if isinstance(ref, dict) else {}
            out["naive_accuracy"] = _number(naive_metrics.get("accuracy"))
    elif isinstance(data, dict):
        out["accuracy"] = _number(data.get("accuracy"))
        out["ci95"] = _pair(data.get("accuracy_ci") or data.get("ci95"))
    if out.get("accuracy") is None:
        raise ValueError(f"{src}: no accuracy found (expected checkpoints.<label>.metrics.accuracy or accuracy)")
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------- logs
_STEP_LINE = re.compile(r"\bstep:(\S+)\s+smpl:")
_FIELD = re.compile(r"(?<![\w.])([A-Za-z_][\w/]*):(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)([KMBTQ]?)(?=\s|$)")
_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12, "Q": 1e15}


def parse_train_log(text: str) -> list[dict[str, float]]:
    """The logged training steps of a ``lerobot-train`` console log, one dict per line:
    ``{"step": 4, "smpl": 16, "loss": 0.123, "grdn": 1.2, "lr": 1e-05, "updt_s": 0.2, ...}``.

    K/M suffixes are expanded. LeRobot rounds ``step`` to whole thousands from 1000 on
    (``step:1K`` for 1000..1499): such steps are rebuilt as ``last exact step + k·interval``
    with the logging interval seen among exact steps, kept when consistent with the rounded
    value (else the rounded value is used and a warning logged).
    """
    rows: list[dict[str, float]] = []
    rounded: list[float] = []  # 0 for an exact step, else the suffix's multiplier (1000 for K)
    for line in text.splitlines():
        m = _STEP_LINE.search(line)
        if not m or "loss:" not in line:
            continue
        row = {}
        for name, num, suffix in _FIELD.findall(line[m.start():]):
            row[name] = float(num) * _SUFFIX[suffix]
        if "step" not in row or "loss" not in row:
            continue
        rows.append(row)
        token = m.group(1)
        rounded.append(0.0 if re.fullmatch(r"\d+", token) else _SUFFIX.get(token[-1:], 1.0))
    exact = [int(r["step"]) for r, rd in zip(rows, rounded, strict=True) if not rd]
    diffs = [b - a for a, b in zip(exact, exact[1:], strict=False) if b > a]
    interval = statistics.mode(diffs) if diffs else None
    last_exact: int | None = None
    k = 0
    for row, multiplier in zip(rows, rounded, strict=True):
        if not multiplier:
            last_exact, k = int(row["step"]), 0
            continue
        k += 1
        if interval is not None and last_exact is not None:
            guess = last_exact + k * interval
            if abs(guess - row["step"]) <= multiplier / 2:  # "2K" stands for 1500..2499
                row["step"] = float(guess)
                continue
        logger.warning("train.log: step %g is rounded by LeRobot and could not be rebuilt", row["step"])
    for row in rows:
        row["step"] = float(int(row["step"]))
    return rows


def read_metrics_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``craft_metrics.jsonl``; a torn last line (run killed mid-write) is skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s line %d is not JSON; skipped", path, n)
    return rows


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Total size of the files under ``path`` (0 when it does not exist)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


# ---------------------------------------------------------------------- runs
@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    path: Path
    method: str
    role: str
    seed: int | None
    eval: dict[str, Any] = field(default_factory=dict)
    log_rows: list[dict[str, float]] = field(default_factory=list)
    metrics_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.method if self.seed is None else f"{self.method} (seed {self.seed})"

    def loss_curve(self) -> tuple[list[float], list[float], str]:
        """``(steps, task loss, source)``: the jsonl's ``L_task`` (structured, exact), else the
        console log's ``loss`` (the fallback for plain runs)."""
        pts = [(r["step"], r["L_task"]) for r in self.metrics_rows if _number(r.get("L_task")) is not None]
        if pts:
            return [float(p[0]) for p in pts], [float(p[1]) for p in pts], METRICS_FILE
        pts = [(r["step"], r["loss"]) for r in self.log_rows if _number(r.get("loss")) is not None]
        return [p[0] for p in pts], [p[1] for p in pts], LOG_FILE

    def final_loss(self) -> float | None:
        _, losses, _ = self.loss_curve()
        return losses[-1] if losses else None

    def retention_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.metrics_rows if _number(r.get("L_ret")) is not None]

    def error(self, role: str) -> float | None:
        return _number((self.eval.get("action_error") or {}).get(role, {}).get("l1"))

    def success(self, role: str) -> dict[str, Any] | None:
        s = (self.eval.get("success") or {}).get(role)
        return s if isinstance(s, dict) and _number(s.get("rate")) is not None else None

    def storage(self, kind: str) -> int | None:
        value = _number((self.eval.get("storage_bytes") or {}).get(kind))
        if value is None and kind == "checkpoint":
            ckpt = _find(self.path, "checkpoints/last/pretrained_model")
            size = dir_bytes(ckpt) if ckpt is not None else 0
            return size or None
        return int(value) if value is not None else None


def _find(run_dir: Path, relative: str) -> Path | None:
    """``RUN_DIR/relative``, else ``RUN_DIR/<one folder>/relative`` (LeRobot refuses an existing
    ``--output_dir``, so a demo may train into ``RUN_DIR/train`` and tee the log beside it)."""
    direct = run_dir / relative
    if direct.exists():
        return direct
    found = sorted(p for p in run_dir.glob(f"*/{relative}") if p.exists())
    return found[0] if found else None


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Read one run directory (see the module docstring for what it holds)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist")
    ev: dict[str, Any] = {}
    if (path / EVAL_FILE).is_file():
        try:
            ev = json.loads((path / EVAL_FILE).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path / EVAL_FILE} is not valid JSON: {err}") from err
        if not isinstance(ev, dict):
            raise ValueError(f"{path / EVAL_FILE} must hold a JSON object")
    metrics_file = _find(path, METRICS_FILE)
    metrics = read_metrics_jsonl(metrics_file) if metrics_file is not None else []
    # the console log only where nothing structured holds the losses (see the module docstring)
    use_log = not any(_number(r.get("L_task")) is not None for r in metrics) and (path / LOG_FILE).is_file()
    log_rows = parse_train_log((path / LOG_FILE).read_text(errors="replace")) if use_log else []
    if not ev and not log_rows and not metrics:
        raise FileNotFoundError(
            f"{path} holds none of {EVAL_FILE}, {LOG_FILE} (tee lerobot-train's output there) or {METRICS_FILE}"
        )
    method = str(ev.get("method") or path.name)
    role = str(ev.get("role") or ("base" if method == "base" else "finetune"))
    seed = ev.get("seed")
    return RunData(path, method, role, int(seed) if isinstance(seed, int) else None, ev, log_rows, metrics)


# ---------------------------------------------------------------------- aggregation
def _mean_sd(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def _base_for(run: RunData, bases: Sequence[RunData]) -> RunData | None:
    if not bases:
        return None
    same = [b for b in bases if b.seed is not None and b.seed == run.seed]
    return same[0] if same else bases[0]


def _method_rows(runs: Sequence[RunData], bases: Sequence[RunData]) -> list[dict[str, Any]]:
    methods: dict[str, list[RunData]] = {}
    for run in runs:
        methods.setdefault(run.method, []).append(run)
    rows = []
    for method, group in methods.items():
        is_base = all(r.role == "base" for r in group)
        forgetting, ratio, succ_forget = [], [], []
        for r in group:
            base = None if is_base else _base_for(r, bases)
            ea, ba = r.error("A"), base.error("A") if base else None
            if ea is not None and ba is not None:
                forgetting.append(ea - ba)
                ratio.append(ea / ba if ba > 0 else None)
            sa, bsa = r.success("A"), base.success("A") if base else None
            if sa is not None and bsa is not None:
                succ_forget.append(float(bsa["rate"]) - float(sa["rate"]))
        row: dict[str, Any] = {"method": method, "role": "base" if is_base else "finetune", "runs": len(group)}
        row["runs_dirs"] = [str(r.path) for r in group]
        curves = [r.loss_curve() for r in group]
        row["loss_source"] = sorted({source for steps, _, source in curves if steps})
        for key, values in {
            "train_seconds": [_number(r.eval.get("train_seconds")) for r in group],
            "final_task_loss": [r.final_loss() for r in group],
            "error_A": [r.error("A") for r in group],
            "error_B": [r.error("B") for r in group],
            "forgetting_A": forgetting,
            "forgetting_ratio_A": ratio,
            "success_forgetting_A": succ_forget,
            "success_A": [_number((r.success("A") or {}).get("rate")) for r in group],
            "success_B": [_number((r.success("B") or {}).get("rate")) for r in group],
            "mcq_accuracy": [_number((r.eval.get("mcq") or {}).get("accuracy")) for r in group],
            "mcq_paired_diff": [_number((r.eval.get("mcq") or {}).get("paired_diff_vs_naive")) for r in group],
            "storage_cache": [r.storage("cache") for r in group],
            "storage_checkpoint": [r.storage("checkpoint") for r in group],
        }.items():
            mean, sd, n = _mean_sd(v for v in values if v is None or isinstance(v, (int, float)))
            row[key] = {"mean": mean, "sd": sd, "n": n}
        if len(group) == 1:  # intervals belong to a single run
            r = group[0]
            for role in ("A", "B"):
                s = r.success(role)
                if s is not None:
                    row[f"success_{role}"]["ci95"] = _pair(s.get("ci95"))
                    row[f"success_{role}"]["k"] = s.get("successes")
                    row[f"success_{role}"]["n_episodes"] = s.get("episodes")
            mcq = r.eval.get("mcq") or {}
            row["mcq_accuracy"]["ci95"] = _pair(mcq.get("ci95"))
            row["mcq_paired_diff"]["ci95"] = _pair(mcq.get("paired_ci95_vs_naive"))
        rows.append(row)
    _add_relative(rows, methods, bases)
    return rows


#: The references the report gives forgetting and task-B error against: ``naive`` (a plain
#: ``--policy.path`` fine-tune, what LeRobot users run) and ``craft_off`` (the craft wrapper with
#: CRaFT off: the baseline that differs from a CRaFT run in the retention only).
REFERENCES: tuple[str, ...] = ("naive", "craft_off")


def _forgetting_of(run: RunData, bases: Sequence[RunData]) -> float | None:
    base = _base_for(run, bases)
    ea, ba = run.error("A"), base.error("A") if base is not None else None
    return ea - ba if ea is not None and ba is not None else None


def _paired(run: RunData, refs: Sequence[RunData]) -> RunData | None:
    """The reference run of ``run``'s seed; without seeds, the only reference run."""
    same = [r for r in refs if r.seed is not None and r.seed == run.seed]
    if same:
        return same[0]
    return refs[0] if len(refs) == 1 and (run.seed is None or refs[0].seed is None) else None


def _add_relative(rows: list[dict[str, Any]], methods: Mapping[str, list[RunData]], bases: Sequence[RunData]) -> None:
    """``forgetting_less_than_<ref>`` (1 − forgetting / the reference's: 0.5 = 50 % less) and
    ``error_B_vs_<ref>`` (task-B L1 / the reference's: 1.1 = 10 % more), per seed against the
    reference run of the same seed, then mean ± sd over seeds; ``of_means`` is the same ratio of
    the mean values. A reference that did not forget (forgetting ≤ 0) gives no ratio."""
    for ref in REFERENCES:
        refs = [r for r in methods.get(ref, []) if r.role != "base"]
        for row in rows:
            less: list[float] = []
            rel_b: list[float] = []
            if refs and row["role"] != "base":
                for r in methods[row["method"]]:
                    other = _paired(r, refs)
                    if other is None:
                        continue
                    f, f_ref = _forgetting_of(r, bases), _forgetting_of(other, bases)
                    if f is not None and f_ref is not None and f_ref > 0:
                        less.append(1.0 - f / f_ref)
                    eb, eb_ref = r.error("B"), other.error("B")
                    if eb is not None and eb_ref is not None and eb_ref > 0:
                        rel_b.append(eb / eb_ref)
            ref_row = next((x for x in rows if x["method"] == ref), None)
            for key, values, of_means in (
                (f"forgetting_less_than_{ref}", less,
                 _ratio(row["forgetting_A"]["mean"], ref_row["forgetting_A"]["mean"] if ref_row else None, less=True)),
                (f"error_B_vs_{ref}", rel_b,
                 _ratio(row["error_B"]["mean"], ref_row["error_B"]["mean"] if ref_row else None)),
            ):  # fmt: skip
                mean, sd, n = _mean_sd(values)
                row[key] = {"mean": mean, "sd": sd, "n": n, "of_means": of_means if n else None}


def versus(l1: Mapping[str, float], other: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    """One run's goal figures against ``other`` (both as held-out L1 per task, ``"A"`` and ``"B"``).

    ``forgetting_less``: 1 − (``l1["A"]`` − ``base["A"]``) / (``other["A"]`` − ``base["A"]``), the share of
    ``other``'s forgetting avoided (0.5 = "50 % less"); ``error_B_ratio``: ``l1["B"]`` / ``other["B"]``.
    The per-seed figures of :func:`build_report`'s ``forgetting_less_than_<ref>`` / ``error_B_vs_<ref>``.
    """
    forgot, forgot_other = l1["A"] - base["A"], other["A"] - base["A"]
    return {"forgetting_less": 1.0 - forgot / forgot_other, "error_B_ratio": l1["B"] / other["B"]}


def _ratio(value: float | None, ref: float | None, *, less: bool = False) -> float | None:
    if value is None or ref is None or ref <= 0:
        return None
    return 1.0 - value / ref if less else value / ref


# ---------------------------------------------------------------------- formatting
def _fmt(stat: Mapping[str, Any], spec: str = ".4f", scale: float = 1.0, suffix: str = "") -> str:
    mean = stat.get("mean")
    if mean is None:
        return "—"
    text = f"{mean * scale:{spec}}{suffix}"
    if stat.get("sd") is not None:
        text += f" ± {stat['sd'] * scale:{spec}}"
    return text


def _fmt_seconds(stat: Mapping[str, Any]) -> str:
    mean = stat.get("mean")
    if mean is None:
        return "—"
    text = f"{mean:.0f} s" if mean >= 10 else f"{mean:.1f} s"
    return text + (f" ± {stat['sd']:.0f}" if stat.get("sd") is not None else "")


def _fmt_bytes(stat: Mapping[str, Any]) -> str:
    mean = stat.get("mean")
    if mean is None:
        return "—"
    return f"{mean / 2**20:.1f} MiB" if mean >= 2**20 else f"{mean / 1024:.1f} KiB"


def _fmt_success(stat: Mapping[str, Any]) -> str:
    text = _fmt(stat, ".0f", 100.0, "%")
    if text != "—" and stat.get("ci95"):
        lo, hi = stat["ci95"]
        text += f" [{lo * 100:.0f}–{hi * 100:.0f}]"
        if stat.get("k") is not None:
            text += f" ({stat['k']}/{stat['n_episodes']})"
    return text


def _fmt_forgetting(row: Mapping[str, Any]) -> str:
    text = _fmt(row["forgetting_A"], "+.4f")
    if text != "—" and row["forgetting_ratio_A"].get("mean") is not None:
        text += f" (×{row['forgetting_ratio_A']['mean']:.2f})"
    return text


def _fmt_less(stat: Mapping[str, Any] | None) -> str:
    """``0.21`` → ``21% less``; ``-0.3`` → ``30% more``; ± the sd over seeds, in points."""
    if not stat or stat.get("mean") is None:
        return "—"
    mean = stat["mean"] * 100
    text = f"{mean:.0f}% less" if mean >= 0 else f"{-mean:.0f}% more"
    return text + (f" ± {stat['sd'] * 100:.0f}" if stat.get("sd") is not None else "")


def _fmt_relative(stat: Mapping[str, Any] | None) -> str:
    """``1.07`` → ``+7% (×1.07)``; ± the sd over seeds, in points."""
    if not stat or stat.get("mean") is None:
        return "—"
    text = f"{(stat['mean'] - 1) * 100:+.0f}%"
    if stat.get("sd") is not None:
        text += f" ± {stat['sd'] * 100:.0f}"
    return text + f" (×{stat['mean']:.2f})"


def _fmt_mcq(row: Mapping[str, Any]) -> str:
    text = _fmt(row["mcq_accuracy"], ".3f")
    if text == "—":
        return text
    diff = row["mcq_paired_diff"]
    if diff.get("mean") is not None:
        text += f"; Δ vs naive {_fmt(diff, '+.3f')}"
        if diff.get("ci95"):
            text += f" [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]"
    return text


def _task_name(runs: Sequence[RunData], key: str) -> str:
    """The task of ``action_error[key]`` / ``success[key]`` in the runs' eval.json (``"?"`` when none records it)."""
    for run in runs:
        for part in ("action_error", "success"):
            task = (run.eval.get(part) or {}).get(key, {}).get("task")
            if task:
                return str(task)
    return "?"


def _markdown(rows: Sequence[Mapping[str, Any]], runs: Sequence[RunData], plots: Mapping[str, str | None]) -> str:
    header = (
        "| method | runs | training time | final task loss | task-A L1 (held-out) | task-B L1 (held-out) "
        "| forgetting: Δ task-A L1 vs base | task-A success [95% CI] | task-B success [95% CI] "
        "| forgetting: % less than naive | task-B L1 relative to naive "
        "| MCQ accuracy (paired Δ vs naive [95% CI]) | cache | checkpoint |"
    )
    lines = [
        "# CRaFT demo report",
        "",
        f"{len(runs)} run(s): " + ", ".join(f"`{r.path.name}` ({r.label})" for r in runs) + ".",
        "",
        header,
        "|" + "---|" * 14,
    ]

    def relative(row: Mapping[str, Any], ref: str) -> list[str]:
        if row["role"] == "base":
            return ["—", "—"]
        if row["method"] == ref:
            return ["— (reference)", "— (reference)"]
        return [_fmt_less(row.get(f"forgetting_less_than_{ref}")), _fmt_relative(row.get(f"error_B_vs_{ref}"))]

    for row in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    f"**{row['method']}**" if row["role"] == "base" else row["method"],
                    str(row["runs"]),
                    _fmt_seconds(row["train_seconds"]),
                    _fmt(row["final_task_loss"]),
                    _fmt(row["error_A"]),
                    _fmt(row["error_B"]),
                    "— (reference)" if row["role"] == "base" else _fmt_forgetting(row),
                    _fmt_success(row["success_A"]),
                    _fmt_success(row["success_B"]),
                    *relative(row, "naive"),
                    _fmt_mcq(row),
                    _fmt_bytes(row["storage_cache"]),
                    _fmt_bytes(row["storage_checkpoint"]),
                ]
            )
            + " |"
        )
    lines += [
        "",
        f"Task A = {_task_name(runs, 'A')} (the base's task), task B = {_task_name(runs, 'B')} (the new task). L1: mean absolute "
        "difference between the policy's predicted action chunks and the scripted expert's actions "
        "on held-out episodes, in raw action units (lower is better). Forgetting: the run's task-A "
        "L1 minus the base's (same seed), with the ratio to the base's; positive means forgotten. "
        "Success: seeded Meta-World rollouts, 95% Wilson interval. Final task loss: last logged "
        "training loss. Several runs of a method: mean ± sample standard deviation. "
        "Relative to naive: per seed against the naive run of the same seed (forgetting: "
        "1 − run's / naive's; task-B L1: run's / naive's), then the mean ± sd over seeds; "
        "MCQ: — where the family has no language model (ACT).",
        "",
    ]
    fair = [row for row in rows if row["role"] != "base" and row["method"] != "craft_off"
            and row.get("forgetting_less_than_craft_off", {}).get("n")]  # fmt: skip
    if any(row["method"] == "craft_off" for row in rows) and fair:
        lines += [
            "## Against the wrapper with CRaFT off",
            "",
            "`craft_off` is the craft wrapper with `--policy.craft.enabled=false` and the same "
            "normalization as the CRaFT runs: it differs from them in the retention only (naive, "
            "`--policy.path`, also differs in its normalization statistics).",
            "",
            "| method | forgetting: % less than craft_off | task-B L1 relative to craft_off |",
            "|---|---|---|",
        ]
        for row in fair:
            lines.append(f"| {row['method']} | " + " | ".join(relative(row, "craft_off")) + " |")
        lines.append("")
    lines += [
        "## Plots",
        "",
    ]
    for name, caption in [
        ("task_loss", "Task loss of every run"),
        ("retention", "Retention loss L_ret against its budget ε (craft runs)"),
        ("lambda", "Lagrange multiplier λ (craft runs)"),
        ("conflict", "Gradient-conflict rate (craft runs)"),
        ("forgetting_vs_b", "Forgetting of task A against task-B error, per method"),
    ]:
        file = plots.get(name)
        why = "no run has this data" if can_plot() else NO_MATPLOTLIB
        lines.append(f"![{caption}]({file})" if file else f"- {caption}: not drawn ({why}).")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------- plots
#: The demo's methods keep one colour in every report (others take the remaining ones in turn).
KNOWN_METHODS: tuple[str, ...] = (
    "base", "naive", "craft_off", "replay", "craft_token_ce", "craft_hidden_features", "craft_hidden",
)  # fmt: skip


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    colors = {m: cmap(KNOWN_METHODS.index(m)) for m in methods if m in KNOWN_METHODS}
    free = [i for i in range(10) if i >= len(KNOWN_METHODS)] + list(range(len(KNOWN_METHODS)))
    others = [m for m in methods if m not in colors]
    colors.update({m: cmap(free[i % len(free)]) for i, m in enumerate(others)})
    return colors


def _save(fig: Any, path: Path) -> str:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path.name


def _plot_all(runs: Sequence[RunData], rows: Sequence[Mapping[str, Any]], out: Path) -> dict[str, str | None]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in runs))
    color = _colors(methods)
    plots: dict[str, str | None] = {}

    def linestyle(run: RunData) -> str:
        same = [r for r in runs if r.method == run.method]
        return ["-", "--", ":", "-."][same.index(run) % 4]

    # task loss
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = False
    all_losses: list[float] = []
    for r in runs:
        steps, losses, _src = r.loss_curve()
        if steps:
            ax.plot(steps, losses, linestyle(r), color=color[r.method], label=r.label, lw=1.5)
            all_losses += [v for v in losses if v > 0]
            drawn = True
    if drawn:
        _log_scale_if_wide(ax, all_losses)
        ax.set(title="Task loss during training", xlabel="training step", ylabel="task loss (logged)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        plots["task_loss"] = _save(fig, out / "task_loss.png")
    plt.close(fig)

    craft_runs = [r for r in runs if r.retention_rows()]
    # L_ret against epsilon
    if craft_runs:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        values: list[float] = []
        for r in craft_runs:
            rr = r.retention_rows()
            values += [x["L_ret"] for x in rr if x["L_ret"] > 0]
            ax.plot([x["step"] for x in rr], [x["L_ret"] for x in rr], linestyle(r), color=color[r.method],
                    label=f"{r.label}: L_ret", lw=1.5)
            eps = [x for x in r.metrics_rows if _number(x.get("epsilon")) is not None]
            ax.plot([x["step"] for x in eps], [x["epsilon"] for x in eps], ":", color=color[r.method],
                    label=f"{r.label}: budget ε", lw=2)
        _log_scale_if_wide(ax, values)  # a hidden-mode L_ret can start orders of magnitude above ε
        ax.set(title="Retention loss L_ret against its budget ε", xlabel="training step", ylabel="L_ret, ε")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        plots["retention"] = _save(fig, out / "retention.png")
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for r in craft_runs:
            lam = [x for x in r.metrics_rows if _number(x.get("lambda")) is not None]
            ax.plot([x["step"] for x in lam], [x["lambda"] for x in lam], linestyle(r), color=color[r.method],
                    label=r.label, lw=1.5)
        ax.set(title="Lagrange multiplier λ over training", xlabel="training step", ylabel="λ (after the dual step)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        plots["lambda"] = _save(fig, out / "lambda.png")
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for r in craft_runs:
            rr = [x for x in r.retention_rows() if _number(x.get("conflict")) is not None]
            if not rr:
                continue
            window = max(1, min(50, len(rr) // 5))
            vals = [float(x["conflict"]) for x in rr]
            rolling = [statistics.fmean(vals[max(0, i - window + 1): i + 1]) for i in range(len(vals))]
            ax.plot([x["step"] for x in rr], rolling, linestyle(r), color=color[r.method],
                    label=f"{r.label}: conflict, mean of last {window} retention step(s)", lw=1.5)
            proj = [x for x in rr if _number(x.get("proj_frac")) is not None]
            if proj:
                ax.plot([x["step"] for x in proj], [x["proj_frac"] for x in proj], "x", color=color[r.method],
                        alpha=0.6, ms=4, label=f"{r.label}: share of groups projected (per step)")
        ax.set(title="Gradient conflicts: cos(g_task, g_ret) below the threshold", xlabel="training step",
               ylabel="conflict rate / share projected")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        plots["conflict"] = _save(fig, out / "conflict.png")
        plt.close(fig)

    # forgetting vs task-B score
    pts = [row for row in rows if row["role"] != "base" and row["forgetting_A"]["mean"] is not None
           and row["error_B"]["mean"] is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for row in pts:
            x, y = row["error_B"], row["forgetting_A"]
            ax.errorbar(x["mean"], y["mean"], xerr=x["sd"] or 0, yerr=y["sd"] or 0, fmt="o", ms=8, capsize=4,
                        color=color.get(row["method"]), label=f"{row['method']} (n={row['runs']})")
        ax.axhline(0.0, color="grey", lw=1, ls="--", label="no forgetting (base's task-A L1)")
        naive = next((row for row in rows if row["method"] == "naive" and row["role"] != "base"), None)
        if naive is not None and (naive["forgetting_A"]["mean"] or 0) > 0 and naive["error_B"]["mean"]:
            # the goals, read off the plot: below the dotted line and left of the dash-dotted one
            ax.axhline(0.5 * naive["forgetting_A"]["mean"], color="black", lw=1, ls=":",
                       label="goal: 50% less forgetting than naive")
            ax.axvline(1.1 * naive["error_B"]["mean"], color="black", lw=1, ls="-.",
                       label="goal: task-B L1 within 10% of naive")
        ax.set(title="Forgetting of task A against task-B error", xlabel="task-B held-out action L1 (lower is better)",
               ylabel="forgetting: task-A L1 − base's (lower is better)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        plots["forgetting_vs_b"] = _save(fig, out / "forgetting_vs_b.png")
        plt.close(fig)
    return plots


# ---------------------------------------------------------------------- entry point
@dataclass
class ReportResult:
    output_dir: Path
    markdown: Path
    json: Path
    plots: dict[str, str | None]
    rows: list[dict[str, Any]]


def _log_scale_if_wide(ax: Any, values: list[float]) -> None:
    """Log y-axis when the positive ``values`` span more than 30x."""
    if values and max(values) / max(min(values), 1e-12) > 30:
        ax.set_yscale("log")


def build_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    base: str | None = None,
) -> ReportResult:
    """Read the runs, write ``report.md``, ``report.json`` and the PNG plots into ``output_dir``.

    ``base`` names the reference run (a method name or a run folder); by default the runs whose
    ``eval.json`` has ``"role": "base"`` (or method ``base``).
    """
    if not run_dirs:
        raise ValueError("craft report needs at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    if base is not None:
        chosen = [r for r in runs if r.method == base or r.path.name == base or str(r.path) == str(base)]
        if not chosen:
            raise ValueError(f"--base {base!r} matches no run (methods: {sorted({r.method for r in runs})})")
        for r in runs:
            r.role = "base" if r in chosen else ("finetune" if r.role == "base" else r.role)
    bases = [r for r in runs if r.role == "base"]
    if not bases:
        logger.warning("no base run (eval.json role 'base' or --base): forgetting is not computed")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _method_rows(runs, bases)
    if not can_plot():
        logger.warning("plots skipped: %s", NO_MATPLOTLIB)
    plots: dict[str, str | None] = _plot_all(runs, rows, out) if can_plot() else {}
    md = out / "report.md"
    tmp = md.with_name(f".report.md.tmp-{os.getpid()}")
    tmp.write_text(_markdown(rows, runs, plots))
    os.replace(tmp, md)
    js = out / "report.json"
    payload = {"schema": SCHEMA, "runs": [str(r.path) for r in runs], "methods": rows, "plots": plots}
    tmp = js.with_name(f".report.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default))
    os.replace(tmp, js)
    logger.info("report written to %s (%d runs, %d plots)", md, len(runs), sum(1 for p in plots.values() if p))
    return ReportResult(out, md, js, plots, rows)
