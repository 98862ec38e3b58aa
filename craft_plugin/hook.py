"""``CraftHook``: one optimizer step's worth of CRaFT, for any PyTorch training loop.

The contract is narrow (Avalanche-plugin style). Per optimizer step::

    optimizer.zero_grad()
    task_loss = criterion(model(x), y)                       # graph attached
    metrics = hook.step(task_loss, lambda: retention_loss())  # fills .grad
    optimizer.step()

``hook.step`` does SPEC.md §3 in order:

1. ``g_task = ∇L_task`` (``torch.autograd.grad`` over the trainable parameters);
2. on retention steps (every ``retention_freq`` steps, counting from step 0), calls
   ``retention_fn()`` for ``L_ret`` and takes ``g_ret = ∇L_ret``;
3. conflict test and PCGrad-style projection of ``g_task`` (``global`` or ``per_layer``);
4. writes ``g = g_task + λ·g_ret`` into each parameter's ``.grad`` (adding to a ``.grad``
   that is already there, as ``backward`` would);
5. dual ascent on λ with the current ``ε_t``; then the step counter advances.

On off steps only the task gradient is taken (``retention_fn`` is not called). A non-finite
``L_ret`` or ``g_ret`` never reaches the weights or λ: that step falls back to the task
gradient and reports ``nonfinite=1``. Gradient clipping and the optimizer stay the caller's.

``retention_fn`` must run its own forward pass (e.g. on an anchor batch): the task graph is
freed when ``g_task`` is taken, so reusing activations of the task forward fails with
"backward through the graph a second time".

Memory: gradients are kept per parameter tensor and projected/combined in place, so a
retention step holds two gradient copies (task, retention) where plain training holds one.

Stability: the combined gradient carries ``λ·g_ret`` with λ up to ``lambda_max``; keep
``lambda_max × learning rate`` in the range your optimizer tolerates (the NaN guard covers a
non-finite ``L_ret``/``g_ret``, not weights driven unstable by a large λ).

``state_dict()`` / ``load_state_dict()`` hold λ, the step counter and the ε schedule, so a
resumed run continues exactly.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from craft_plugin.config import CraftConfig
from craft_plugin.core.conflict import per_tensor_stats, project_grouped
from craft_plugin.core.dual import EpsilonSchedule, LagrangeMultiplier

__all__ = ["CraftHook", "group_parameters_by_module"]

logger = logging.getLogger(__name__)

NamedParams = Iterable[tuple[str, nn.Parameter]]


def group_parameters_by_module(names: list[str]) -> list[list[int]]:
    """Group parameter indices by owning module: ``enc.0.weight`` and ``enc.0.bias`` → ``enc.0``."""
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, name in enumerate(names):
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        groups.setdefault(owner, []).append(i)
    return list(groups.values())


class CraftHook:
    """Constrained retention for one training loop.

    Args:
        model: an ``nn.Module`` (its parameters with ``requires_grad=True`` take part) or an
            iterable of ``(name, parameter)`` pairs.
        config: the :class:`CraftConfig`.
        total_steps: the run's number of optimizer steps, the default length of the ε anneal
            (``config.epsilon_decay_steps`` wins when set). Not needed for ``constant``.
    """

    def __init__(
        self,
        model: nn.Module | NamedParams,
        config: CraftConfig,
        *,
        total_steps: int | None = None,
        reduce_fn: Callable[[float], float] | None = None,
    ) -> None:
        if not isinstance(config, CraftConfig):
            raise TypeError(f"config must be a CraftConfig, got {type(config).__name__}")
        named = list(model.named_parameters()) if isinstance(model, nn.Module) else list(model)
        named = [(n, p) for n, p in named if p.requires_grad]
        if not named:
            raise ValueError("CraftHook: the model has no trainable parameters (requires_grad=True)")
        self.config = config
        self.param_names: list[str] = [n for n, _ in named]
        self.params: list[nn.Parameter] = [p for _, p in named]
        self.groups: list[list[int]] | None = (
            group_parameters_by_module(self.param_names) if config.projection_granularity == "per_layer" else None
        )
        self.schedule = self._make_schedule(config, total_steps)
        self.multiplier = LagrangeMultiplier(config.initial_lambda, config.lambda_lr, config.lambda_max)
        self.step_count = 0
        self._banner_logged = False
        #: Averages L_ret over processes before the dual step (identity in one process), so
        #: every rank takes the same dual step and λ stays identical across ranks.
        self.reduce_fn: Callable[[float], float] = reduce_fn or (lambda x: x)

    # ------------------------------------------------------------------ properties
    @property
    def lam(self) -> float:
        """The current Lagrange multiplier λ."""
        return float(self.multiplier)

    @property
    def epsilon(self) -> float:
        """The retention budget ε at the current step."""
        return self.schedule(self.step_count)

    def is_retention_step(self, step: int | None = None) -> bool:
        """Whether ``step`` (default: the next one) computes the retention loss."""
        step = self.step_count if step is None else step
        return self.config.enabled and step % self.config.retention_freq == 0

    # ------------------------------------------------------------------ the step
    def step(self, task_loss: Tensor, retention_fn: Callable[[], Tensor] | None = None) -> dict[str, float]:
        """Fill ``.grad`` with this step's CRaFT gradient and advance λ, ε and the step.

        ``retention_fn`` is called (with no arguments) only on retention steps and must return
        the scalar ``L_ret`` with its graph. Returns the step's metrics: always ``L_task``,
        ``lambda``, ``epsilon``, ``retention_step``; on retention steps also ``L_ret``, ``dot``,
        ``cos``, ``conflict`` (1/0), ``proj_frac`` (share of groups projected),
        ``energy_removed`` (share of task-gradient energy removed) and ``nonfinite`` (1 when a
        non-finite ``L_ret``/``g_ret`` made the step fall back to the task gradient).
        ``lambda`` is λ after this step's dual update; ``epsilon`` is the ε the step used.
        """
        return self._run(task_loss, retention_fn, surrogate=False)[1]

    def surrogate(
        self, task_loss: Tensor, retention_fn: Callable[[], Tensor] | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Like :meth:`step`, but return a loss to back-propagate instead of filling ``.grad``.

        The returned scalar has the value of ``L_task`` and, as its gradient, this step's CRaFT
        gradient: ``s − s.detach() + L_task.detach()`` with ``s = Σ_i ⟨g_i, θ_i⟩`` (``g``
        detached). So a training loop that calls ``loss.backward()`` itself — LeRobot's
        ``accelerator.backward``, with DDP's gradient all-reduce, clipping and optimizer — acts
        on the combined gradient, and logs the task loss. On off steps it is ``task_loss``.
        λ, ε and the step counter advance here, as in :meth:`step`.
        """
        loss, metrics = self._run(task_loss, retention_fn, surrogate=True)
        assert loss is not None
        return loss, metrics

    def _run(
        self, task_loss: Tensor, retention_fn: Callable[[], Tensor] | None, *, surrogate: bool
    ) -> tuple[Tensor | None, dict[str, float]]:
        if not self._banner_logged:
            logger.info(self.banner())
            self._banner_logged = True
        if task_loss.dim() != 0:
            raise ValueError(f"task_loss must be a scalar, got shape {tuple(task_loss.shape)}")
        cfg = self.config
        eps_t = self.schedule(self.step_count)
        metrics: dict[str, float] = {"L_task": float(task_loss.detach()), "epsilon": eps_t}
        retention = self.is_retention_step()
        if retention and retention_fn is None:
            raise ValueError("CraftHook.step: this is a retention step but no retention_fn was given")

        if not retention:
            # Off step (or CRaFT disabled): the task gradient only, no retention work at all.
            if not surrogate:
                task_loss.backward(inputs=self.params)
            metrics.update(retention_step=0.0, **{"lambda": self.lam})
            self.step_count += 1
            return (task_loss if surrogate else None), metrics

        g_task = torch.autograd.grad(task_loss, self.params, allow_unused=True)
        l_ret = retention_fn()
        if not isinstance(l_ret, Tensor) or l_ret.dim() != 0:
            raise ValueError("retention_fn must return a scalar tensor (the retention loss)")
        l_ret_value = float(l_ret.detach())
        metrics.update(retention_step=1.0, L_ret=l_ret_value)

        finite = False
        if math.isfinite(l_ret_value):
            g_ret = torch.autograd.grad(l_ret, self.params, allow_unused=True)
            # Parameters with no gradient from either loss keep .grad untouched (as backward would).
            idx = [i for i in range(len(self.params)) if g_task[i] is not None or g_ret[i] is not None]
            gt = [g_task[i] if g_task[i] is not None else torch.zeros_like(self.params[i]) for i in idx]
            gr = [g_ret[i] if g_ret[i] is not None else torch.zeros_like(self.params[i]) for i in idx]
            del g_ret
            table = per_tensor_stats(gt, gr)  # every dot product of the step, one read of each gradient
            # A NaN/inf anywhere in g_ret makes |g_ret|² non-finite: one check, no extra pass.
            finite = math.isfinite(float(table[:, 2].sum()))
        # Every process joins the L_ret reduction on every retention step (a collective must
        # not be skipped by one rank); a NaN from any rank makes the mean NaN, so all ranks
        # then leave λ alone together.
        l_ret_mean = self.reduce_fn(l_ret_value if finite else float("nan"))
        if not finite:
            # NaN/inf guard: weights get the task gradient only; λ is left untouched.
            logger.warning(
                "CRaFT step %d: non-finite retention loss or gradient (L_ret=%s); "
                "using the task gradient only, λ unchanged",
                self.step_count,
                l_ret_value,
            )
            out = self._emit(list(g_task), None, task_loss, surrogate)
            metrics.update(nonfinite=1.0, conflict=0.0, proj_frac=0.0, energy_removed=0.0, **{"lambda": self.lam})
            metrics.update(dot=float("nan"), cos=float("nan"))
            self.step_count += 1
            return out, metrics

        del g_task
        groups = self.groups
        if groups is not None and len(idx) != len(self.params):
            remap = {old: new for new, old in enumerate(idx)}
            groups = [[remap[i] for i in g if i in remap] for g in groups]

        # Projection and g = g_task + λ·g_ret, fused into one in-place pass per tensor.
        proj = project_grouped(
            gt,
            gr,
            groups,
            threshold=cfg.conflict_threshold,
            enabled=cfg.use_grad_projection,
            inplace=True,
            combine_lambda=self.lam,
            table=table,
        )
        del gr
        stats_dot, stats_cos = float(proj.stats.dot), float(proj.stats.cos)
        conflict = 1.0 if proj.conflict else 0.0
        proj_frac, energy_removed = proj.projected_frac, proj.energy_removed
        out = self._emit(proj.grads, idx, task_loss, surrogate)
        del proj
        new_lam = self.multiplier.step(l_ret_mean, eps_t) if math.isfinite(l_ret_mean) else self.lam
        metrics.update(
            {
                "lambda": new_lam,
                "dot": stats_dot,
                "cos": stats_cos,
                "conflict": conflict,
                "proj_frac": proj_frac,
                "energy_removed": energy_removed,
                "nonfinite": 0.0,
            }
        )
        self.step_count += 1
        return out, metrics

    def _emit(
        self, grads: list[Tensor | None], idx: list[int] | None, task_loss: Tensor, surrogate: bool
    ) -> Tensor | None:
        """Write ``grads`` into ``.grad``, or return the surrogate loss that carries them."""
        if not surrogate:
            self._write_grads(grads, idx)
            return None
        idx = list(range(len(self.params))) if idx is None else idx
        terms = [
            torch.sum(g.detach().to(self.params[i].dtype) * self.params[i])
            for i, g in zip(idx, grads, strict=True)
            if g is not None
        ]
        s = torch.stack(terms).sum() if terms else task_loss.new_zeros(())
        return s - s.detach() + task_loss.detach()

    def _write_grads(self, grads: list[Tensor | None], idx: list[int] | None = None) -> None:
        idx = list(range(len(self.params))) if idx is None else idx
        for i, g in zip(idx, grads, strict=True):
            if g is None:
                continue
            p = self.params[i]
            if p.grad is None:
                p.grad = g if g.dtype == p.dtype else g.to(p.dtype)
            else:
                p.grad.add_(g)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """λ, the step counter and the ε schedule (everything a resumed run needs)."""
        return {
            "step": self.step_count,
            "multiplier": self.multiplier.state_dict(),
            "schedule": self.schedule.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. The saved schedule wins over the config's, so the anneal
        continues where it left off; a difference is logged."""
        missing = {"step", "multiplier", "schedule"} - set(state)
        if missing:
            raise KeyError(f"CraftHook state is missing {sorted(missing)}; was it saved by CraftHook.state_dict()?")
        schedule = EpsilonSchedule.from_state_dict(state["schedule"])
        if schedule != self.schedule:
            logger.warning("CraftHook: resuming with the saved ε schedule %s (config gives %s)", schedule, self.schedule)
        self.schedule = schedule
        self.multiplier.load_state_dict(state["multiplier"])
        self.step_count = int(state["step"])

    # ------------------------------------------------------------------ helpers
    def banner(self) -> str:
        c = self.config
        return (
            f"CRaFT: enabled={c.enabled} | mode={c.retention_mode} | initial λ={c.initial_lambda} | "
            f"λ lr={c.lambda_lr} | λ max={c.lambda_max} | ε {c.epsilon_start}→{c.epsilon_end} "
            f"({c.epsilon_schedule}, {self.schedule.total_steps} steps) | projection={c.use_grad_projection} "
            f"({c.projection_granularity}) | conflict threshold={c.conflict_threshold} | "
            f"retention every {c.retention_freq} step(s) | {len(self.params)} trainable tensors"
        )

    @staticmethod
    def _make_schedule(config: CraftConfig, total_steps: int | None) -> EpsilonSchedule:
        steps = config.epsilon_decay_steps or total_steps
        if steps is None:
            if config.epsilon_schedule != "constant":
                raise ValueError(
                    "CraftHook needs the run's length to anneal ε: pass total_steps=... "
                    "or set epsilon_decay_steps in the config (or use epsilon_schedule='constant')"
                )
            steps = 1
        if steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {steps}")
        return EpsilonSchedule(config.epsilon_start, config.epsilon_end, int(steps), config.epsilon_schedule)

