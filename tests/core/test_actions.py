"""Action targets across normalizations (core/actions.py), against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from craft_plugin.core.actions import affine_between, map_action_target


def test_affine_between_hand_values():
    # teacher: raw = a*2 + 1 ; student: raw = a*4 - 3  =>  a_S = (2 a_T + 1 + 3) / 4 = 0.5 a_T + 1
    alpha, beta = affine_between(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([4.0]), torch.tensor([-3.0]))
    assert alpha.tolist() == [0.5] and beta.tolist() == [1.0]
    # a constant dimension (scale 0 on either side) has no map: identity there, not a division by 0
    alpha, beta = affine_between(torch.tensor([1.0, 2.0]), torch.zeros(2), torch.tensor([0.0, 4.0]), torch.tensor([5.0, 0.0]))
    assert alpha.tolist() == [1.0, 0.5] and beta.tolist() == [0.0, 0.0]


def test_maps_hand_values():
    alpha, beta = torch.tensor([0.5, 2.0]), torch.tensor([1.0, -1.0])
    target = torch.tensor([[4.0, 3.0]])
    noise = torch.tensor([[2.0, 1.0, 9.0]])  # padded to 3 dims: the extra one is dropped
    assert map_action_target("action", target, alpha, beta).tolist() == [[3.0, 5.0]]
    # velocity: noise + α(v − noise) − β = [2 + 0.5*2 − 1, 1 + 2*2 + 1]
    assert map_action_target("velocity", target, alpha, beta, noise).tolist() == [[2.0, 6.0]]
    # epsilon: noise + α(ε − noise) = [2 + 0.5*2, 1 + 2*2]
    assert map_action_target("epsilon", target, alpha, beta, noise).tolist() == [[3.0, 5.0]]
    assert map_action_target("hidden", target, alpha, beta) is target
    with pytest.raises(ValueError, match="needs the stored noise"):
        map_action_target("velocity", target, alpha, beta)


def test_identity_statistics_leave_every_target_unchanged():
    t, noise = torch.randn(3, 5, 2), torch.randn(3, 5, 4)
    alpha, beta = affine_between(torch.full((2,), 1.5), torch.full((2,), 0.2), torch.full((2,), 1.5), torch.full((2,), 0.2))
    for kind in ("action", "velocity", "epsilon"):
        torch.testing.assert_close(map_action_target(kind, t, alpha, beta, noise), t)


def test_velocity_map_is_what_a_raw_equivalent_student_predicts():
    """Flow matching: a student whose clean-action estimate equals the teacher's in raw units."""
    g = torch.Generator().manual_seed(0)
    s_t, c_t, s_s, c_s = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    alpha, beta = affine_between(s_t, c_t, s_s, c_s)
    raw = torch.randn(4, 3, generator=g)
    a_t, a_s = (raw - c_t) / s_t, (raw - c_s) / s_s
    noise, t = torch.randn(4, 3, generator=g), torch.rand(4, 1, generator=g) * 0.9 + 0.05
    est_t = torch.randn(4, 3, generator=g)  # the teacher's clean-action estimate (normalized)
    x_t = t * noise + (1 - t) * a_t
    v_t = (x_t - est_t) / t
    est_s = (est_t * s_t + c_t - c_s) / s_s  # the same estimate in raw units, in student space
    v_s = (t * noise + (1 - t) * a_s - est_s) / t
    torch.testing.assert_close(map_action_target("velocity", v_t, alpha, beta, noise), v_s, atol=1e-5, rtol=1e-5)
