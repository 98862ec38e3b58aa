"""``CraftRunConfig``: what a ``craft`` policy needs to know about the training run it is in.

Three values, and nothing else: ``steps`` (the run's length: ε anneals over it unless
``--policy.craft.epsilon_decay_steps`` is set), ``output_dir`` (where ``craft_metrics.jsonl``
goes) and ``log_freq`` (one metrics record per that many steps). They are the
``--policy.run.*`` fields of :class:`CRaFTConfig`, filled in through one of these explicit
paths, first match wins:

1. **the fields themselves**: ``--policy.run.steps=N --policy.run.output_dir=D
   --policy.run.log_freq=F``, or set in Python (custom training code);
2. **``craft train``** adds those three flags to the command line it hands to LeRobot, from
   the same values LeRobot will use (:func:`run_flags`); when ``--output_dir`` is not given it
   chooses one the way LeRobot does and passes it to LeRobot too, so both agree;
3. **a stock ``lerobot-train``**: the policy reads lerobot-train's own command line
   (:func:`run_from_command_line`) — ``--steps``, ``--output_dir``, ``--log_freq``, from
   ``--config_path``'s JSON when given there (LeRobot's resume), else the defaults of LeRobot's
   ``TrainPipelineConfig`` — with LeRobot's own ``parser.parse_arg``, as LeRobot itself reads
   ``--output_dir`` on resume. When lerobot-train chooses the output folder itself (no
   ``--output_dir``), the metrics recorded so far are written to the run folder of the first
   checkpoint LeRobot saves (``<run>/checkpoints/<step>/pretrained_model``), then appended as
   they come.

When none gives ``steps`` (a custom loop) and ε anneals, the first training step stops with a
message naming ``--policy.run.steps`` and ``--policy.craft.epsilon_decay_steps``.

The fields describe the current run only: a checkpoint's ``config.json`` saves them empty, so
a new fine-tune from a craft checkpoint (``--policy.path``) never inherits the old run's length.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CraftRunConfig", "is_lerobot_train", "run_flags", "run_from_command_line", "run_dir_of_checkpoint"]

#: Program names of LeRobot's training script (console script, module file, ``craft train``).
LEROBOT_TRAIN_PROGRAMS = ("lerobot-train", "lerobot_train.py", "lerobot_train")


@dataclass
class CraftRunConfig:
    """The running training job: its length, output folder and logging period (see module doc)."""

    steps: int | None = None
    output_dir: str | None = None
    log_freq: int | None = None

    def merged_over(self, other: CraftRunConfig | None) -> CraftRunConfig:
        """These values, with ``other``'s wherever one of these is unset."""
        if other is None:
            return dataclasses.replace(self)
        return CraftRunConfig(
            steps=self.steps if self.steps is not None else other.steps,
            output_dir=self.output_dir if self.output_dir is not None else other.output_dir,
            log_freq=self.log_freq if self.log_freq is not None else other.log_freq,
        )


def is_lerobot_train(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (a ``sys.argv``) is a ``lerobot-train`` command line."""
    return bool(argv) and Path(str(argv[0])).name in LEROBOT_TRAIN_PROGRAMS


def run_from_command_line(args: Sequence[str]) -> CraftRunConfig:
    """The run lerobot-train's arguments ``args`` (``sys.argv[1:]``) describe.

    Flags win over ``--config_path``'s JSON (as in LeRobot's parser), which wins over the
    defaults of ``TrainPipelineConfig``; ``output_dir`` stays None when LeRobot will choose it.
    Raises ``ValueError`` naming the flag for a value that is not a number.
    """
    from lerobot.configs import parser
    from lerobot.configs.train import TrainPipelineConfig

    saved: dict = {}
    config_path = parser.parse_arg("config_path", args)
    if config_path and Path(config_path).is_file():
        try:
            saved = json.loads(Path(config_path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            saved = {}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainPipelineConfig)}

    def value(name: str) -> str | None:
        given = parser.parse_arg(name, args)
        if given is not None:
            return given
        if saved.get(name) is not None:
            return str(saved[name])
        default = defaults.get(name)
        return None if default in (None, dataclasses.MISSING) else str(default)

    def number(name: str) -> int | None:
        text = value(name)
        if text is None:
            return None
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--{name}={text!r} is not a whole number") from None

    return CraftRunConfig(steps=number("steps"), output_dir=value("output_dir"), log_freq=number("log_freq"))


def run_flags(args: Sequence[str], now: dt.datetime | None = None) -> list[str]:
    """``args`` for ``craft train`` to hand to LeRobot: the user's, plus ``--policy.run.*`` (those
    the user did not set) and, for a fresh run without ``--output_dir``, one chosen as LeRobot's
    ``TrainPipelineConfig.validate`` would (``outputs/train/<date>/<time>_<job name>``)."""
    from lerobot.configs import parser

    args = list(args)
    run = run_from_command_line(args)
    resuming = str(parser.parse_arg("resume", args) or "false").lower() in ("true", "1", "yes")
    if run.output_dir is None and not resuming:
        now = now or dt.datetime.now()
        env = parser.parse_arg("env.type", args)
        job = parser.parse_arg("job_name", args) or (f"{env}_craft" if env else "craft")
        run.output_dir = str(Path("outputs/train") / f"{now:%Y-%m-%d}" / f"{now:%H-%M-%S}_{job}")
        args.append(f"--output_dir={run.output_dir}")
    for name in ("steps", "output_dir", "log_freq"):
        given = getattr(run, name)
        if given is not None and parser.parse_arg(f"policy.run.{name}", args) is None:
            args.append(f"--policy.run.{name}={given}")
    return args


def run_dir_of_checkpoint(save_directory: str | Path) -> Path | None:
    """The run folder of a LeRobot checkpoint's ``pretrained_model`` folder
    (``<run>/checkpoints/<step>/pretrained_model``), or None for any other folder."""
    path = Path(save_directory)
    if path.name == "pretrained_model" and path.parent.parent.name == "checkpoints":
        return path.parent.parent.parent
    return None
