"""Conflict statistics and PCGrad projection against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from craft_plugin.core.conflict import (
    combine,
    conflict_stats,
    grad_dot,
    grad_sq_norm,
    per_tensor_stats,
    project_conflicting,
    project_grouped,
)

T = torch.tensor


def _pair():
    # g_t = ([1, 0], [2]); g_r = ([-1, 1], [0])
    # dot = -1, |g_t|² = 5, |g_r|² = 2, cos = -1/√10
    g_t = [T([1.0, 0.0], dtype=torch.float64), T([2.0], dtype=torch.float64)]
    g_r = [T([-1.0, 1.0], dtype=torch.float64), T([0.0], dtype=torch.float64)]
    return g_t, g_r


def test_dot_and_norm_by_hand():
    g_t, g_r = _pair()
    assert float(grad_dot(g_t, g_r)) == -1.0
    assert float(grad_sq_norm(g_t)) == 5.0
    assert float(grad_sq_norm(g_r)) == 2.0


def test_per_tensor_stats_by_hand():
    g_t, g_r = _pair()
    # tensor 0: [1,0]·[-1,1] = -1, |.|² = 1, 2; tensor 1: [2]·[0] = 0, |.|² = 4, 0
    assert per_tensor_stats(g_t, g_r).tolist() == [[-1.0, 1.0, 2.0], [0.0, 4.0, 0.0]]


def test_conflict_stats_by_hand():
    g_t, g_r = _pair()
    s = conflict_stats(g_t, g_r)
    assert float(s.dot) == -1.0
    assert float(s.cos) == pytest.approx(-1.0 / math.sqrt(10.0), abs=1e-12)
    assert s.is_conflict(-0.1)  # -0.316 < -0.1
    assert not s.is_conflict(-0.5)  # -0.316 >= -0.5


def test_conflict_stats_zero_gradient_has_cos_zero_and_no_conflict():
    g_t = [T([1.0, 2.0])]
    g_r = [T([0.0, 0.0])]
    s = conflict_stats(g_t, g_r)
    assert float(s.cos) == 0.0
    assert not s.is_conflict(0.5)


def test_projection_by_hand():
    g_t, g_r = _pair()
    # g_t − (dot/|g_r|²) g_r = g_t + 0.5 g_r = ([0.5, 0.5], [2])
    out = project_conflicting(g_t, g_r, dot=-1.0, ret_sq_norm=2.0)
    assert out[0].tolist() == [0.5, 0.5]
    assert out[1].tolist() == [2.0]
    assert g_t[0].tolist() == [1.0, 0.0], "the pure variant must not modify its input"
    assert float(grad_dot(out, g_r)) == 0.0


def test_projection_inplace_writes_into_task_gradient():
    g_t, g_r = _pair()
    out = project_conflicting(g_t, g_r, dot=-1.0, ret_sq_norm=2.0, inplace=True)
    assert out[0] is g_t[0]
    assert g_t[0].tolist() == [0.5, 0.5]


def test_projection_with_zero_retention_gradient_is_identity():
    g_t = [T([1.0, 2.0])]
    out = project_conflicting(g_t, [T([0.0, 0.0])], dot=0.0, ret_sq_norm=0.0)
    assert out[0].tolist() == [1.0, 2.0]


def test_combine_by_hand():
    g_t, g_r = _pair()
    out = combine(g_t, g_r, 2.0)  # g_t + 2 g_r = ([-1, 2], [2])
    assert out[0].tolist() == [-1.0, 2.0]
    assert out[1].tolist() == [2.0]


def test_project_grouped_global_by_hand():
    g_t, g_r = _pair()
    r = project_grouped(g_t, g_r, None, threshold=-0.1)
    assert r.conflict and r.n_groups == 1 and r.projected_frac == 1.0
    assert r.grads[0].tolist() == [0.5, 0.5] and r.grads[1].tolist() == [2.0]
    # energy removed: (dot²/|g_r|²) / |g_t|² = (1/2)/5
    assert r.energy_removed == pytest.approx(0.1, abs=1e-12)


def test_project_grouped_projection_off_reports_conflict_but_keeps_gradient():
    g_t, g_r = _pair()
    r = project_grouped(g_t, g_r, None, threshold=-0.1, enabled=False)
    assert r.conflict and r.projected_frac == 0.0 and r.energy_removed == 0.0
    assert r.grads[0].tolist() == [1.0, 0.0]


def test_per_layer_projects_only_the_conflicting_group():
    # Globally no conflict (dot = -1 + 3 = 2 > 0), but group 0 is exactly opposed (cos = -1).
    g_t = [T([1.0, 0.0], dtype=torch.float64), T([3.0], dtype=torch.float64)]
    g_r = [T([-1.0, 0.0], dtype=torch.float64), T([1.0], dtype=torch.float64)]
    glob = project_grouped(g_t, g_r, None, threshold=-0.1)
    assert not glob.conflict and glob.projected_frac == 0.0
    assert glob.grads[0].tolist() == [1.0, 0.0]
    per = project_grouped(g_t, g_r, [[0], [1]], threshold=-0.1)
    assert per.conflict and per.n_groups == 2 and per.projected_frac == 0.5
    assert per.grads[0].tolist() == [0.0, 0.0]  # [1,0] − (−1/1)·[−1,0]
    assert per.grads[1].tolist() == [3.0]
    # removed energy: 1²/1 over |g_t|² = 10
    assert per.energy_removed == pytest.approx(0.1, abs=1e-12)
    # reported dot/cos stay the global, unprojected ones
    assert float(per.stats.dot) == 2.0


def test_per_layer_with_one_group_equals_global():
    torch.manual_seed(0)
    g_t = [torch.randn(4, 3), torch.randn(3)]
    g_r = [-g + 0.1 * torch.randn_like(g) for g in g_t]
    a = project_grouped(g_t, g_r, None, threshold=-0.1)
    b = project_grouped(g_t, g_r, [[0, 1]], threshold=-0.1)
    assert a.conflict and b.conflict
    for x, y in zip(a.grads, b.grads, strict=True):
        assert torch.equal(x, y)
    assert a.energy_removed == pytest.approx(b.energy_removed, rel=1e-6)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="gradient tensor 0"):
        grad_dot([torch.zeros(2)], [torch.zeros(3)])
    with pytest.raises(ValueError, match="differ in length"):
        grad_dot([torch.zeros(2)], [])


def test_half_precision_gradients_accumulate_in_float32():
    g = [torch.full((4096,), 0.01, dtype=torch.bfloat16)]
    # 4096 · 0.01² (bf16 0.01 ≈ 0.010009765625) accumulated in float32, not bf16
    expected = 4096 * float(torch.tensor(0.01, dtype=torch.bfloat16)) ** 2
    assert float(grad_sq_norm(g)) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ properties
_vec = st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=2, max_size=12)


@settings(max_examples=200, deadline=None)
@given(_vec, _vec, st.floats(-1.0, 1.0))
def test_property_after_projection_no_conflict(a, b, threshold):
    n = min(len(a), len(b))
    g_t = [T(a[:n], dtype=torch.float64)]
    g_r = [T(b[:n], dtype=torch.float64)]
    r = project_grouped(g_t, g_r, None, threshold=threshold)
    s = conflict_stats(g_t, g_r)
    if r.projected_frac > 0:
        assert float(grad_dot(r.grads, g_r)) >= -1e-6
        # projecting a conflicting pair removes exactly cos² of the task gradient's energy
        assert r.energy_removed == pytest.approx(float(s.cos) ** 2, rel=1e-6, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(_vec, _vec, st.floats(-1.0, 1.0))
def test_property_no_projection_when_cos_at_or_above_threshold(a, b, threshold):
    n = min(len(a), len(b))
    g_t = [T(a[:n], dtype=torch.float64)]
    g_r = [T(b[:n], dtype=torch.float64)]
    s = conflict_stats(g_t, g_r)
    r = project_grouped(g_t, g_r, None, threshold=threshold)
    if float(s.cos) >= threshold:
        assert r.projected_frac == 0.0 and not r.conflict
        assert torch.equal(r.grads[0], g_t[0])


def test_fused_projection_and_combination_by_hand():
    g_t, g_r = _pair()
    # project: ([0.5, 0.5], [2]); combine with λ = 2: + 2·([-1, 1], [0]) = ([-1.5, 2.5], [2])
    r = project_grouped(g_t, g_r, None, threshold=-0.1, combine_lambda=2.0)
    assert r.grads[0].tolist() == [-1.5, 2.5] and r.grads[1].tolist() == [2.0]
    separate = combine(project_conflicting(g_t, g_r, -1.0, 2.0), g_r, 2.0)
    for a, b in zip(r.grads, separate, strict=True):
        assert torch.equal(a, b)
    # no conflict: just g_t + λ·g_r
    r = project_grouped(g_t, g_r, None, threshold=-0.5, combine_lambda=2.0)
    assert r.grads[0].tolist() == [-1.0, 2.0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_vec, _vec), min_size=1, max_size=5), st.floats(-1.0, 1.0))
def test_property_per_layer_leaves_no_projected_group_in_conflict(pairs, threshold):
    g_t, g_r = [], []
    for a, b in pairs:
        n = min(len(a), len(b))
        g_t.append(T(a[:n], dtype=torch.float64))
        g_r.append(T(b[:n], dtype=torch.float64))
    groups = [[i] for i in range(len(g_t))]
    r = project_grouped(g_t, g_r, groups, threshold=threshold)
    for i in range(len(g_t)):
        s = conflict_stats([g_t[i]], [g_r[i]])
        if s.is_conflict(threshold):
            assert float(grad_dot([r.grads[i]], [g_r[i]])) >= -1e-6
        else:
            assert torch.equal(r.grads[i], g_t[i])


def test_bf16_gradients_statistics_in_fp32_and_the_combination_to_bf16_rounding():
    """Parameters (so gradients) in bf16: dot, cos and norms are accumulated in float32 and
    equal an fp32 reference on the same gradients; the projected, combined gradient equals the
    fp32 reference rounded to bf16 (one rounding: at most half a bf16 ulp per element, plus
    the float32 accumulation noise)."""
    from craft_plugin.core.conflict import conflict_stats, project_grouped

    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 32), (32,), (16, 64), (8, 8, 3), (5,)]
    g_task = [torch.randn(s, generator=gen).bfloat16() for s in shapes]
    g_ret = [(-0.8 * t.float() + 0.3 * torch.randn(t.shape, generator=gen)).bfloat16() for t in g_task]
    ref_t, ref_r = [t.double() for t in g_task], [r.double() for r in g_ret]

    stats = conflict_stats(g_task, g_ret)
    assert stats.dot.dtype == torch.float32 and stats.cos.dtype == torch.float32
    dot = sum(float((a * b).sum()) for a, b in zip(ref_t, ref_r))
    sq_t, sq_r = sum(float((a * a).sum()) for a in ref_t), sum(float((b * b).sum()) for b in ref_r)
    assert float(stats.dot) == pytest.approx(dot, rel=1e-5)
    assert float(stats.cos) == pytest.approx(dot / (sq_t * sq_r) ** 0.5, rel=1e-5)
    assert float(stats.cos) < -0.5, "a real conflict, so the projection acts"

    lam = 0.7  # the hook's path: projection and combination fused, per tensor
    res = project_grouped(g_task, g_ret, None, threshold=-0.1, combine_lambda=lam)
    assert res.conflict and res.projected_frac == 1.0
    for got, t, r in zip(res.grads, ref_t, ref_r, strict=True):
        assert got.dtype == torch.bfloat16
        reference = t - (dot / sq_r) * r + lam * r  # fp64 on the same gradients
        half_ulp = torch.finfo(torch.bfloat16).eps / 2 * reference.abs()  # round-to-nearest: <= half an ulp
        assert ((got.double() - reference).abs() <= half_ulp * 1.001 + 1e-6).all()
