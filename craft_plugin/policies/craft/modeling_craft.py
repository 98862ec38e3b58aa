"""``CRaFTPolicy``: a base LeRobot policy whose training step is CRaFT's.

Where the projection happens: inside ``forward``. LeRobot's loop calls
``loss, out = policy.forward(batch)``, then ``accelerator.backward(loss)``, clips and steps.
``forward`` computes the task loss with the base, takes ``g_task`` and (every
``retention_freq`` steps) ``g_ret`` with ``torch.autograd.grad``, projects and combines them
(:meth:`CraftHook.surrogate`), and returns a loss whose *value* is the task loss (so the
logged ``loss`` is the task loss) and whose *gradient* is the combined CRaFT gradient. So
``accelerator.backward`` (and DDP's all-reduce of it), LeRobot's gradient clipping and the
optimizer all act on the combined gradient, unchanged. The projection is decided per process,
before DDP averages the gradients; ``L_ret`` is averaged over processes before the dual step,
so λ stays identical on every rank.

The retention forward runs with every module in ``eval()`` (dropout off), like the teacher's.
Only parameters with ``requires_grad`` take part (PEFT adapters, ``train_expert_only``...).

Start-up checks: a fresh run opens its anchor cache while the policy is built, before step 1,
and checks that the cache fits (layers, pooling, policy type, hidden size, anchor batch size)
and that its teacher is this run's base: the sha256 of the base's ``model.safetensors`` must
equal the manifest's ``teacher.weights_sha256`` (``--policy.craft.allow_other_teacher=true``
trains anyway, with a warning). What fails there is a user error, and ends the run with its
message alone: :class:`CraftStartupError`, a ``SystemExit`` whose ``error`` (and
``__cause__``) is the original :class:`CacheError` — so ``lerobot-train`` prints one message
and exits 1, not a traceback, and Python code can catch it by name.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from lerobot.policies.factory import get_policy_class
from lerobot.policies.pretrained import PreTrainedPolicy
from torch import Tensor

from craft_plugin.cache.anchor_cache import AnchorCache
from craft_plugin.cache.manifest import CacheError
from craft_plugin.cache.shards import atomic_write_bytes, file_sha256
from craft_plugin.hook import CraftHook
from craft_plugin.policies.craft.configuration_craft import (
    CRAFT_STATE_FILE,
    METRICS_FILE,
    CRaFTConfig,
    CraftStartupError,
    append_records,
    base_weights_file,
)
from craft_plugin.policies.craft.run_config import CraftRunConfig, is_lerobot_train, run_from_command_line
from craft_plugin.retention import make_retention

logger = logging.getLogger(__name__)

__all__ = ["CRAFT_STATE_FILE", "METRICS_FILE", "CRaFTPolicy", "CraftStartupError"]


class CRaFTPolicy(PreTrainedPolicy):
    """Wraps ``self.base`` (any LeRobot policy); see the module docstring."""

    config_class = CRaFTConfig
    name = "craft"

    def __init__(self, config: CRaFTConfig, dataset_stats: Any = None, **kwargs: Any) -> None:
        super().__init__(config)
        self.config: CRaFTConfig = config
        config.sync_features_to_base()
        base_cfg = config.base_config
        base_cls = get_policy_class(base_cfg.type)
        if config.base_path and config.pretrained_path is None:
            logger.info("CRaFT: loading the base %s policy from %s", base_cfg.type, config.base_path)
            self.base = base_cls.from_pretrained(config.base_path, config=base_cfg)
        else:
            base_kwargs = {k: v for k, v in kwargs.items() if k in ("dataset_meta",)}
            try:
                self.base = base_cls(base_cfg, dataset_stats=dataset_stats, **base_kwargs)
            except TypeError:
                self.base = base_cls(base_cfg)
        self._dataset_stats = dataset_stats
        self._student_preprocessor: Any = None
        self._hook: CraftHook | None = None
        self._retention: Any = None
        self._pending_state: dict[str, Any] | None = None
        self.run: CraftRunConfig = resolve_run(config.run, sys.argv)
        self._log_freq = max(int(self.run.log_freq or 1), 1)
        if self.run.output_dir is not None:
            config.metrics_file = Path(self.run.output_dir) / METRICS_FILE
        # A fresh run checks its anchor cache now, before step 1; a policy loaded from a
        # checkpoint (eval, export, resume) opens it at its first training step instead.
        if config.craft.enabled and config.pretrained_path is None:
            self._check_cache(check_teacher=True)

    # ------------------------------------------------------------------ set-up
    def _check_cache(self, *, check_teacher: bool = False) -> None:
        """Fail before step 1 on a missing or unfitting cache, or one from another teacher
        (``check_teacher``: a fresh run, whose base must still be the teacher), with
        :class:`CraftStartupError` (the message names the fix)."""
        c = self.config.craft
        try:
            if c.anchor_cache_dir is None:
                raise CacheError(
                    "CRaFT is enabled but no anchor cache is set: pass --policy.craft.anchor_cache_dir=<dir> "
                    "(build one with `craft build-cache`), or --policy.craft.enabled=false for plain fine-tuning"
                )
            cache = AnchorCache(c.anchor_cache_dir)
            if check_teacher:
                self._check_teacher(cache)
            # Each process draws its own anchors (seed + rank); L_ret is averaged before the dual step.
            self._retention = make_retention(
                self.base, cache, c, preprocessor=self.retention_preprocessor(), seed=_rank(),
                device=str(self.config.device or "cpu"),
            )  # fmt: skip
        except CacheError as err:
            raise CraftStartupError(err) from err

    def _check_teacher(self, cache: AnchorCache) -> None:
        """The cache's teacher must be this run's base: same ``model.safetensors`` sha256."""
        m = cache.manifest
        expected = m.teacher.weights_sha256
        if self.config.base_path:
            file = base_weights_file(self.config.base_path)
            logger.info("CRaFT: checking the base's weights against the cache's teacher (sha256 of %s)", file)
            actual = file_sha256(file)
            what = f"the base {self.config.base_path} (model.safetensors sha256 {actual[:16]}…)"
        else:
            actual, what = None, f"the base built from --policy.base_type={self.config.base_type} (freshly initialized weights)"
        if actual == expected:
            return
        message = (
            f"anchor cache {cache.directory} was built from another teacher: its teacher {m.teacher.path} has "
            f"weights sha256 {expected[:16]}…, while this run fine-tunes {what}. Its anchors would pull the "
            "policy towards that other model. Build a cache from this run's base:\n  "
            + build_command_for(cache, self.config.base_path)
            + "\nor, to anchor to that other model on purpose, pass --policy.craft.allow_other_teacher=true"
        )
        if not self.config.craft.allow_other_teacher:
            raise CacheError(message)
        logger.warning("CRaFT: allow_other_teacher=true: training against a cache from another teacher. %s", message.split(" Its anchors")[0])

    def retention_preprocessor(self) -> Any:
        """The preprocessor the anchors go through: the one this run trains with.

        A fresh run builds it exactly as ``lerobot-train`` builds the training preprocessor
        (:func:`make_craft_pre_post_processors` with the dataset's statistics, so the same
        ``--policy.normalization``); a policy loaded from a checkpoint (resume) reads the
        checkpoint's saved preprocessor, which LeRobot also trains with on resume.
        """
        if self._student_preprocessor is None:
            from lerobot.policies.factory import make_pre_post_processors

            from craft_plugin.policies.craft.processor_craft import make_craft_pre_post_processors

            if self.config.pretrained_path is not None:
                pre, _ = make_pre_post_processors(self.config, pretrained_path=str(self.config.pretrained_path))
            else:
                pre, _ = make_craft_pre_post_processors(self.config, dataset_stats=self._dataset_stats)
            self._student_preprocessor = pre
        return self._student_preprocessor

    def _ensure_hook(self) -> CraftHook:
        if self._hook is None:
            total = self.config.craft.epsilon_decay_steps or self.run.steps
            if total is None and self.config.craft.epsilon_schedule != "constant":
                raise ValueError(
                    "CRaFT needs the run's length to anneal ε and none is known (not a lerobot-train or "
                    "`craft train` run): set --policy.run.steps=N (config.run.steps), or "
                    "--policy.craft.epsilon_decay_steps=N"
                )
            self._hook = CraftHook(
                [(n, p) for n, p in self.base.named_parameters() if p.requires_grad],
                self.config.craft,
                total_steps=total,
                reduce_fn=functools.partial(_mean_over_processes, device=_training_device(self.base)),
            )
            if self._pending_state is not None:
                self._load_craft_state(self._pending_state)
                self._pending_state = None
                self._drop_metrics_after(self._hook.step_count)
        return self._hook

    def _drop_metrics_after(self, step: int) -> None:
        """A resumed run: drop ``craft_metrics.jsonl`` records past the restored ``step`` (written by
        the run that was stopped after its checkpoint), so the file holds one record per step."""
        path = self.config.metrics_file
        if path is None or not path.is_file() or not _is_main_process():
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if (_record_step(line) or 0) <= step]  # unreadable lines are kept
        if len(kept) != len(lines):
            logger.info("CRaFT: resumed at step %d: dropped %d record(s) past it from %s", step, len(lines) - len(kept), path)
            atomic_write_bytes(path, "".join(kept).encode("utf-8"))

    # ------------------------------------------------------------------ the training step
    def forward(self, batch: dict[str, Tensor], **kwargs: Any) -> tuple[Tensor, dict | None]:
        out = self.base.forward(batch, **kwargs)
        task_loss, output = (out if isinstance(out, tuple) else (out, None))
        output = dict(output or {})
        if not (self.training and self.config.craft.enabled and torch.is_grad_enabled()):
            return task_loss, output
        if self._retention is None:
            self._check_cache()  # a policy loaded from a checkpoint: its weights have moved on from the teacher's
        hook = self._ensure_hook()
        loss, metrics = hook.surrogate(task_loss, self._retention)
        self.config.run_state = self.craft_state_dict()  # what the next checkpoint saves (CRaFTConfig.run_state)
        if "L_ret" in metrics and len(getattr(self._retention, "last_parts", {})) > 1:
            metrics.update({f"L_ret_{k}": v for k, v in self._retention.last_parts.items()})
        for key, value in metrics.items():
            output[key] = value
        self._append_metrics(hook.step_count, metrics)
        return loss, output

    def _append_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """One JSON object per logged step (LeRobot's ``--log_freq``) in ``craft_metrics.jsonl``
        of the run's output directory (main process only); kept for the first checkpoint while
        that folder is unknown (:attr:`CRaFTConfig.metrics_file`)."""
        if step % self._log_freq != 0 or not _is_main_process():
            return
        record = {"step": step, **metrics}
        if self.config.metrics_file is None:
            self.config.unwritten_metrics.append(record)
        else:
            append_records(self.config.metrics_file, [record])

    # ------------------------------------------------------------------ delegation
    def get_optim_params(self) -> Any:
        return self.base.get_optim_params()

    def reset(self) -> None:
        self.base.reset()

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], **kwargs: Any) -> Tensor:
        return self.base.select_action(batch, **kwargs)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], **kwargs: Any) -> Tensor:
        return self.base.predict_action_chunk(batch, **kwargs)

    # ------------------------------------------------------------------ PEFT (--peft.*)
    def wrap_with_peft(self, peft_config: Any = None, peft_cli_overrides: dict | None = None) -> Any:
        """LeRobot's PEFT wrapping, with ``--peft.target_modules`` written as for the base policy.

        The wrapper holds the base as ``self.base``, so every module name carries a ``base.``
        prefix. A regular expression (PEFT matches it against the full module name) is rooted
        there: ``model\\.vlm_with_expert...`` becomes ``base\\.(?:model\\.vlm_with_expert...)``.
        Lists of name suffixes and ``all-linear`` need no change. With no ``target_modules``,
        the base policy's own defaults are used (rooted the same way).
        """
        overrides = dict(peft_cli_overrides or {})
        overrides["target_modules"] = _root_at_base(overrides.get("target_modules"))
        return super().wrap_with_peft(peft_config, overrides)

    def _get_default_peft_targets(self) -> dict[str, Any] | None:
        targets = self.base._get_default_peft_targets()
        if not targets:
            return None
        return {**targets, "target_modules": _root_at_base(targets.get("target_modules"))}

    def _validate_peft_config(self, peft_config: Any) -> None:
        if not (self.config.base_path or self.config.pretrained_path):
            raise ValueError(
                "PEFT adapters need pretrained weights to adapt: pass --policy.base_path=<checkpoint dir or hub id>"
            )

    # ------------------------------------------------------------------ CRaFT state
    def craft_state_dict(self) -> dict[str, Any]:
        hook = self._ensure_hook()
        state = hook.state_dict()
        out: dict[str, Any] = {
            "step": state["step"],
            "lambda": float(state["multiplier"]["value"]),
            "schedule": state["schedule"],
        }
        if self._retention is not None:
            # every rank draws once per retention step: the count restores each rank's own sampler
            out["sampler_draws"] = int(self._retention.state_dict()["sampler"]["draws"])
        return out

    def _load_craft_state(self, state: dict[str, Any]) -> None:
        assert self._hook is not None
        self._hook.load_state_dict(
            {
                "step": state["step"],
                "multiplier": {"value": torch.tensor(state["lambda"], dtype=torch.float64)},
                "schedule": state["schedule"],
            }
        )
        if self._retention is not None and "sampler_draws" in state:
            self._retention.load_state_dict({"sampler": {"draws": int(state["sampler_draws"])}})
        elif self._retention is not None and "sampler_generator" in state:
            logger.warning(
                "CRaFT: %s was saved by an older craft-plugin (one generator state, rank 0's): the anchor "
                "sampler restarts from its seed", CRAFT_STATE_FILE,
            )  # fmt: skip

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, *, config: Any = None, **kwargs: Any) -> Any:
        policy = super().from_pretrained(pretrained_name_or_path, config=config, **kwargs)
        state_file = Path(str(pretrained_name_or_path)) / CRAFT_STATE_FILE
        if state_file.is_file():
            policy._pending_state = json.loads(state_file.read_text())
            policy.config.run_state = dict(policy._pending_state)  # a re-save before training keeps it
        return policy


def _record_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def build_command_for(cache: AnchorCache, policy_path: str | None) -> str:
    """``cache``'s own build command with the teacher replaced by ``policy_path`` (if given)."""
    command = cache.build_command()
    if policy_path:
        command = command.replace(shlex.quote(f"--policy.path={cache.manifest.teacher.path}"), shlex.quote(f"--policy.path={policy_path}"))
    return command


def _root_at_base(target_modules: Any) -> Any:
    """A PEFT ``target_modules`` regex written for the base policy, rooted at ``self.base``."""
    if isinstance(target_modules, str) and target_modules != "all-linear" and not target_modules.startswith("base\\."):
        return rf"base\.(?:{target_modules})"
    return target_modules


def resolve_run(run: CraftRunConfig, argv: list[str]) -> CraftRunConfig:
    """The run's values (see :mod:`.run_config`): ``run``'s own (``--policy.run.*``, or filled in
    by ``craft train``), else those of the ``lerobot-train`` command line ``argv`` (a ``sys.argv``)."""
    if is_lerobot_train(argv):
        return run.merged_over(run_from_command_line(argv[1:]))
    return run.merged_over(None)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _is_main_process() -> bool:
    return _rank() == 0


def _training_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _served_device_types(backend: str) -> set[str]:
    """Device types a process group's backend takes tensors of: ``"nccl"`` → {cuda}, ``"gloo"``
    → {cpu, cuda}, a mapping such as ``"cpu:gloo,cuda:nccl"`` → its device types."""
    if ":" in backend:
        return {part.split(":", 1)[0].strip() for part in backend.split(",") if part.strip()}
    return set(torch.distributed.Backend.backend_capability.get(backend.lower(), ["cpu"]))


def reduction_device(backend: str, training_device: torch.device) -> torch.device:
    """Where a collective of the default group must put its tensor: the training device when the
    backend serves its type (NCCL takes CUDA tensors only), else the CPU when it serves that."""
    served = _served_device_types(backend)
    if training_device.type in served:
        return training_device
    if "cpu" in served:
        return torch.device("cpu")
    raise RuntimeError(
        f"the process group's backend {backend!r} serves {sorted(served)} tensors, neither the training "
        f"device {training_device} nor the CPU: CRaFT cannot average L_ret over processes"
    )


def _mean_over_processes(value: float, device: torch.device | str = "cpu") -> float:
    """``value`` averaged over the processes of the default group (the value itself outside one),
    on a device the group's backend serves (:func:`reduction_device`)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        where = reduction_device(str(torch.distributed.get_backend()), torch.device(device))
        t = torch.tensor([value], dtype=torch.float64, device=where)
        torch.distributed.all_reduce(t)
        return float(t.item()) / torch.distributed.get_world_size()
    return value
