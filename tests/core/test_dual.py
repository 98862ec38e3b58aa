"""Dual update of λ and the ε schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from craft_plugin.core.dual import EpsilonSchedule, LagrangeMultiplier, dual_update, epsilon_at


def test_dual_update_by_hand():
    # 1 + 0.1·(0.5 − 0.3) = 1.02
    assert dual_update(1.0, 0.5, 0.3, 0.1, 10.0) == pytest.approx(1.02, abs=1e-15)
    # below zero is clipped to 0
    assert dual_update(0.01, 0.0, 1.0, 0.1, 10.0) == 0.0
    # above lambda_max is clipped to lambda_max
    assert dual_update(9.99, 100.0, 0.0, 1.0, 10.0) == 10.0
    # satisfied constraint shrinks λ: 2 + 0.5·(0.1 − 0.5) = 1.8
    assert dual_update(2.0, 0.1, 0.5, 0.5, 10.0) == pytest.approx(1.8, abs=1e-15)


def test_dual_update_rejects_negative_lr():
    with pytest.raises(ValueError, match="lambda_lr must be >= 0"):
        dual_update(1.0, 0.0, 0.0, -0.1, 10.0)


def test_multiplier_steps_and_round_trips():
    m = LagrangeMultiplier(1.0, 0.1, 10.0)
    assert m.step(0.5, 0.3) == pytest.approx(1.02, abs=1e-15)
    state = m.state_dict()
    m2 = LagrangeMultiplier(1.0, 0.1, 10.0)
    m2.load_state_dict(state)
    assert float(m2) == float(m)
    with pytest.raises(ValueError, match="initial lambda"):
        LagrangeMultiplier(11.0, 0.1, 10.0)
    with pytest.raises(ValueError, match="outside"):
        m2.load_state_dict({"value": torch.tensor(-1.0)})


@pytest.mark.parametrize(
    ("kind", "step", "expected"),
    [
        ("linear", 5, 0.55),  # 1 + (0.1 − 1)·0.5
        ("linear", 2, 0.82),  # 1 − 0.9·0.2
        ("cosine", 5, 0.55),  # 0.1 + 0.9·(1 + cos(π/2))/2
        ("cosine", 2, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2))),
        ("exponential", 5, 0.1**0.5),  # 1·(0.1/1)^0.5
        ("constant", 5, 0.1),
    ],
)
def test_epsilon_by_hand(kind, step, expected):
    assert epsilon_at(step, 10, 1.0, 0.1, kind) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind", ["linear", "cosine", "exponential"])
def test_each_schedule_hits_start_and_end(kind):
    assert epsilon_at(0, 100, 1.0, 0.1, kind) == pytest.approx(1.0, abs=1e-12)
    assert epsilon_at(100, 100, 1.0, 0.1, kind) == pytest.approx(0.1, abs=1e-12)
    assert epsilon_at(500, 100, 1.0, 0.1, kind) == pytest.approx(0.1, abs=1e-12), "held after the anneal"


def test_constant_schedule_holds_the_final_budget_from_step_0():
    assert epsilon_at(0, 100, 1.0, 0.1, "constant") == 0.1
    assert epsilon_at(100, 100, 1.0, 0.1, "constant") == 0.1


@pytest.mark.parametrize("kind", ["linear", "cosine", "exponential"])
def test_schedules_are_monotone_between_start_and_end(kind):
    values = [epsilon_at(s, 50, 1.0, 0.1, kind) for s in range(51)]
    assert all(b <= a + 1e-15 for a, b in zip(values, values[1:]))


def test_schedule_errors():
    with pytest.raises(ValueError, match="exponential schedule needs"):
        epsilon_at(0, 10, 1.0, 0.0, "exponential")
    with pytest.raises(ValueError, match="unknown epsilon schedule"):
        epsilon_at(0, 10, 1.0, 0.1, "step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        EpsilonSchedule(1.0, 0.1, 0)


def test_schedule_state_round_trip():
    s = EpsilonSchedule(0.8, 0.05, 123, "cosine")
    assert EpsilonSchedule.from_state_dict(s.state_dict()) == s
    assert s(0) == pytest.approx(0.8)


@settings(max_examples=300, deadline=None)
@given(
    lam=st.floats(0, 5),
    l_ret=st.floats(0, 100),
    eps=st.floats(0, 2),
    lr=st.floats(0, 10),
    lam_max=st.floats(0.01, 5),
)
def test_property_lambda_stays_in_bounds(lam, l_ret, eps, lr, lam_max):
    lam = min(lam, lam_max)
    out = dual_update(lam, l_ret, eps, lr, lam_max)
    assert 0.0 <= out <= lam_max
