"""CraftHook: the combined gradient against a hand-built reference, the NaN guard, resume."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from craft_plugin import CraftConfig, CraftHook


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def _data(step: int, n: int = 32):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, 6, generator=g)
    y_task = torch.randn(n, 3, generator=g)
    x_anchor = torch.randn(n, 6, generator=g)
    return x, y_task, x_anchor


def _losses(model: nn.Module, teacher: nn.Module, step: int):
    x, y, xa = _data(step)
    task = nn.functional.mse_loss(model(x), y)

    def retention() -> torch.Tensor:
        with torch.no_grad():
            target = teacher(xa)
        return nn.functional.mse_loss(model(xa), target)

    return task, retention


def _reference_grads(model, teacher, step, cfg: CraftConfig, lam: float, groups):
    """Two separate autograd.grad calls, then SPEC.md §3 on flat vectors per group."""
    params = [p for p in model.parameters() if p.requires_grad]
    task, retention = _losses(model, teacher, step)
    gt = torch.autograd.grad(task, params)
    gr = torch.autograd.grad(retention(), params)
    out = [t.detach().double().clone() for t in gt]
    for idx in groups:
        t = torch.cat([out[i].reshape(-1) for i in idx])
        r = torch.cat([gr[i].double().reshape(-1) for i in idx])
        dot = torch.dot(t, r)
        cos = dot / (t.norm() * r.norm())
        if cfg.use_grad_projection and cos < cfg.conflict_threshold:
            t = t - dot / torch.dot(r, r) * r
        g = t + lam * r
        offset = 0
        for i in idx:
            n = out[i].numel()
            out[i] = g[offset : offset + n].reshape(out[i].shape)
            offset += n
    return out


@pytest.mark.parametrize("granularity", ["global", "per_layer"])
@pytest.mark.parametrize("threshold", [-0.1, 0.9])
def test_combined_gradient_matches_two_autograd_calls(granularity, threshold):
    teacher = _mlp(seed=1)
    model = _mlp(seed=0)
    cfg = CraftConfig(projection_granularity=granularity, conflict_threshold=threshold, initial_lambda=0.7)
    hook = CraftHook(model, cfg, total_steps=10)
    n_params = len(list(model.parameters()))
    groups = [list(range(n_params))] if granularity == "global" else [[0, 1], [2, 3], [4, 5]]
    expected = _reference_grads(copy.deepcopy(model), teacher, 0, cfg, 0.7, groups)

    task, retention = _losses(model, teacher, 0)
    metrics = hook.step(task, retention)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad.double(), e, atol=1e-6, rtol=0)
    if threshold == 0.9:  # random directions: cos well below 0.9, so projection happened
        assert metrics["conflict"] == 1.0 and metrics["proj_frac"] > 0
        assert metrics["energy_removed"] > 0
    assert set(metrics) >= {"L_ret", "lambda", "epsilon", "dot", "cos", "conflict", "proj_frac", "energy_removed"}


def test_per_layer_on_a_one_group_model_equals_global():
    teacher = nn.Linear(6, 3)
    grads = {}
    for gran in ("global", "per_layer"):
        torch.manual_seed(0)
        model = nn.Linear(6, 3)  # weight and bias: one module, one group
        hook = CraftHook(model, CraftConfig(projection_granularity=gran, conflict_threshold=0.9), total_steps=5)
        task, retention = _one_layer_losses(model, teacher)
        m = hook.step(task, retention)
        grads[gran] = ([p.grad.clone() for p in model.parameters()], m)
    assert hook.groups == [[0, 1]]
    for a, b in zip(grads["global"][0], grads["per_layer"][0], strict=True):
        assert torch.equal(a, b)
    assert grads["global"][1]["proj_frac"] == grads["per_layer"][1]["proj_frac"] == 1.0


def _one_layer_losses(model, teacher):
    x, _, xa = _data(0)
    task = nn.functional.mse_loss(model(x), torch.ones(x.shape[0], 3))
    return task, lambda: nn.functional.mse_loss(model(xa), teacher(xa).detach())


def test_nan_retention_loss_leaves_weights_finite_and_lambda_unchanged():
    teacher = _mlp(seed=1)
    model = _mlp(seed=0)
    ref = copy.deepcopy(model)
    hook = CraftHook(model, CraftConfig(initial_lambda=0.5, lambda_lr=1.0), total_steps=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    task, retention = _losses(model, teacher, 0)
    metrics = hook.step(task, lambda: retention() * float("nan"))
    # the step fell back to the task gradient, exactly
    ref_task, _ = _losses(ref, teacher, 0)
    ref_task.backward()
    for p, r in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, r.grad)
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert hook.lam == 0.5
    assert metrics["nonfinite"] == 1.0 and math.isnan(metrics["L_ret"]) and metrics["lambda"] == 0.5
    assert hook.step_count == 1


def test_nan_retention_gradient_with_finite_loss_is_caught_too():
    model = _mlp(seed=0)
    hook = CraftHook(model, CraftConfig(initial_lambda=0.5, lambda_lr=1.0), total_steps=10)
    x, y, _ = _data(0)
    task = nn.functional.mse_loss(model(x), y)
    # sqrt at 0: the value is 0 but the gradient is inf·0 = nan
    metrics = hook.step(task, lambda: torch.sqrt(sum(p.sum() for p in model.parameters()) * 0))
    assert metrics["L_ret"] == 0.0 and metrics["nonfinite"] == 1.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert hook.lam == 0.5


def _run(model, teacher, hook, opt, steps: range):
    log = []
    for step in steps:
        opt.zero_grad()
        task, retention = _losses(model, teacher, step)
        log.append(hook.step(task, retention))
        opt.step()
    return log


@pytest.mark.parametrize("granularity", ["global", "per_layer"])
def test_resume_continues_exactly(granularity):
    n, k = 12, 5
    cfg = CraftConfig(
        projection_granularity=granularity, lambda_lr=0.5, epsilon_start=0.3, epsilon_end=0.01, retention_freq=2
    )
    teacher = _mlp(seed=1)

    straight = _mlp(seed=0)
    hook = CraftHook(straight, cfg, total_steps=n)
    opt = torch.optim.Adam(straight.parameters(), lr=1e-2)
    log_straight = _run(straight, teacher, hook, opt, range(n))

    first = _mlp(seed=0)
    hook1 = CraftHook(first, cfg, total_steps=n)
    opt1 = torch.optim.Adam(first.parameters(), lr=1e-2)
    _run(first, teacher, hook1, opt1, range(k))
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict(), "craft": hook1.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    resumed = _mlp(seed=3)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    hook2 = CraftHook(resumed, cfg, total_steps=999)  # wrong length: the saved schedule wins
    hook2.load_state_dict(saved["craft"])
    opt2 = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    opt2.load_state_dict(saved["opt"])
    log_resumed = _run(resumed, teacher, hook2, opt2, range(k, n))

    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert hook.lam == hook2.lam and hook.step_count == hook2.step_count == n
    assert log_straight[k:] == log_resumed
    assert hook.lam != cfg.initial_lambda, "λ must have moved for this test to mean anything"


def test_retention_freq_skips_retention_work_on_off_steps():
    teacher = _mlp(seed=1)
    model = _mlp(seed=0)
    hook = CraftHook(model, CraftConfig(retention_freq=3, lambda_lr=0.5), total_steps=10)
    calls = []
    lams = []
    for step in range(7):
        model.zero_grad()
        task, retention = _losses(model, teacher, step)

        def counted(retention=retention, step=step):
            calls.append(step)
            return retention()

        m = hook.step(task, counted)
        lams.append(m["lambda"])
        assert m["retention_step"] == (1.0 if step % 3 == 0 else 0.0)
        assert ("L_ret" in m) == (step % 3 == 0)
    assert calls == [0, 3, 6]
    assert lams[1] == lams[0] and lams[2] == lams[0], "λ only moves on retention steps"


def test_off_step_gradient_is_the_plain_task_gradient():
    model = _mlp(seed=0)
    ref = copy.deepcopy(model)
    hook = CraftHook(model, CraftConfig(enabled=False), total_steps=10)
    x, y, _ = _data(0)
    hook.step(nn.functional.mse_loss(model(x), y), None)
    nn.functional.mse_loss(ref(x), y).backward()
    for p, r in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, r.grad)


def test_gradients_accumulate_into_existing_grad_like_backward():
    teacher = _mlp(seed=1)
    model = _mlp(seed=0)
    hook = CraftHook(model, CraftConfig(), total_steps=10)
    task, retention = _losses(model, teacher, 0)
    hook.step(task, retention)
    once = [p.grad.clone() for p in model.parameters()]
    hook2 = CraftHook(model, CraftConfig(), total_steps=10)
    task, retention = _losses(model, teacher, 0)
    hook2.step(task, retention)
    for p, g in zip(model.parameters(), once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)


def test_frozen_and_unused_parameters_are_left_alone():
    teacher = _mlp(seed=1)
    model = _mlp(seed=0)
    model[0].weight.requires_grad_(False)
    unused = nn.Parameter(torch.zeros(3))
    model.register_parameter("unused", unused)
    hook = CraftHook(model, CraftConfig(), total_steps=10)
    assert "0.weight" not in hook.param_names and "unused" in hook.param_names
    task, retention = _losses(model, teacher, 0)
    hook.step(task, retention)
    assert model[0].weight.grad is None
    assert unused.grad is None, "a parameter no loss touches keeps .grad None, as backward would"


def test_errors_are_clear():
    model = _mlp()
    with pytest.raises(ValueError, match="needs the run's length"):
        CraftHook(model, CraftConfig())
    CraftHook(model, CraftConfig(epsilon_schedule="constant"))  # no length needed
    CraftHook(model, CraftConfig(epsilon_decay_steps=100))
    with pytest.raises(ValueError, match="no trainable parameters"):
        CraftHook(nn.Linear(2, 2).requires_grad_(False), CraftConfig(), total_steps=1)
    hook = CraftHook(model, CraftConfig(), total_steps=10)
    x, y, _ = _data(0)
    with pytest.raises(ValueError, match="no retention_fn was given"):
        hook.step(nn.functional.mse_loss(model(x), y))
    with pytest.raises(ValueError, match="task_loss must be a scalar"):
        hook.step((model(x) - y).pow(2), lambda: torch.zeros(()))
    with pytest.raises(KeyError, match="missing"):
        hook.load_state_dict({"step": 3})


def test_epsilon_follows_the_schedule_and_lambda_rises_when_over_budget():
    teacher = _mlp(seed=1)
    model = _mlp(seed=0)
    cfg = CraftConfig(epsilon_start=0.0, epsilon_end=0.0, lambda_lr=1.0, initial_lambda=0.0)
    hook = CraftHook(model, cfg, total_steps=4)
    task, retention = _losses(model, teacher, 0)
    m = hook.step(task, retention)
    # λ = clip(0 + 1·(L_ret − 0), 0, 10) = L_ret
    assert m["lambda"] == pytest.approx(min(m["L_ret"], 10.0), abs=1e-12)
    hook2 = CraftHook(model, CraftConfig(epsilon_start=1.0, epsilon_end=0.2), total_steps=4)
    eps = []
    for step in range(5):
        model.zero_grad()
        task, retention = _losses(model, teacher, step)
        eps.append(hook2.step(task, retention)["epsilon"])
    assert eps == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


@pytest.mark.parametrize("granularity", ["global", "per_layer"])
def test_surrogate_loss_carries_the_combined_gradient_and_the_task_value(granularity):
    teacher = _mlp(seed=1)
    cfg = CraftConfig(projection_granularity=granularity, conflict_threshold=0.9, retention_freq=2, lambda_lr=0.5)
    a, b = _mlp(seed=0), _mlp(seed=0)
    hook_a, hook_b = CraftHook(a, cfg, total_steps=10), CraftHook(b, cfg, total_steps=10)
    for step in range(3):  # retention, off, retention
        a.zero_grad()
        b.zero_grad()
        task, retention = _losses(a, teacher, step)
        m_a = hook_a.step(task, retention)
        task_b, retention_b = _losses(b, teacher, step)
        loss, m_b = hook_b.surrogate(task_b, retention_b)
        assert float(loss.detach()) == pytest.approx(float(task_b.detach()), abs=1e-6)
        loss.backward()
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pb.grad, pa.grad, atol=1e-6, rtol=0)
        assert m_a == m_b


def test_reduce_fn_averages_l_ret_before_the_dual_step():
    teacher = _mlp(seed=1)
    model = _mlp(seed=0)
    seen = []

    def mean_over_ranks(x: float) -> float:  # pretend another rank saw L_ret = 0
        seen.append(x)
        return x / 2

    cfg = CraftConfig(epsilon_start=0.0, epsilon_end=0.0, lambda_lr=1.0, initial_lambda=0.0)
    hook = CraftHook(model, cfg, total_steps=4, reduce_fn=mean_over_ranks)
    task, retention = _losses(model, teacher, 0)
    m = hook.step(task, retention)
    assert seen == [m["L_ret"]] and m["lambda"] == pytest.approx(m["L_ret"] / 2, abs=1e-12)


def test_every_retention_step_joins_the_reduction_and_a_nan_anywhere_freezes_lambda():
    teacher = _mlp(seed=1)
    model = _mlp(seed=0)
    seen = []

    def other_rank_was_nan(x: float) -> float:  # the collective every rank must join
        seen.append(x)
        return float("nan")

    cfg = CraftConfig(lambda_lr=1.0, initial_lambda=0.5)
    hook = CraftHook(model, cfg, total_steps=4, reduce_fn=other_rank_was_nan)
    task, retention = _losses(model, teacher, 0)
    m = hook.step(task, retention)  # locally finite, but the mean is NaN
    assert math.isfinite(seen[0]) and m["lambda"] == 0.5 and hook.lam == 0.5
    task, _ = _losses(model, teacher, 1)
    m = hook.step(task, lambda: task * float("nan"))  # locally non-finite: still joins, with NaN
    assert len(seen) == 2 and math.isnan(seen[1]) and m["nonfinite"] == 1.0 and hook.lam == 0.5
