"""Hidden-state losses and pooling strategies against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from craft_plugin.core.losses import hidden_cosine, hidden_l1, hidden_loss, hidden_mse, slot_scale, standardize
from craft_plugin.core.pooling import (
    TokenMasks,
    cls_token,
    last_token,
    mean_image_tokens,
    mean_masked,
    pool,
)

S = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
TT = torch.tensor([[1.0, 0.0], [0.0, 4.0]])


def test_mse_by_hand():
    assert float(hidden_mse(S, TT)) == pytest.approx((0 + 4 + 9 + 0) / 4)


def test_l1_by_hand():
    assert float(hidden_l1(S, TT)) == pytest.approx((0 + 2 + 3 + 0) / 4)


def test_cosine_by_hand():
    # row 0: cos([1,2],[1,0]) = 1/√5; row 1: cos([3,4],[0,4]) = 16/20
    expected = ((1 - 1 / math.sqrt(5)) + (1 - 0.8)) / 2
    assert float(hidden_cosine(S, TT)) == pytest.approx(expected, abs=1e-6)


def test_cosine_range_is_0_to_2():
    x = torch.randn(5, 3, 8)
    assert float(hidden_cosine(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(hidden_cosine(x, -x)) == pytest.approx(2.0, abs=1e-6)


def test_hidden_loss_dispatch_and_errors():
    assert float(hidden_loss(S, TT, "mse")) == float(hidden_mse(S, TT))
    assert float(hidden_loss(S, TT, "l1")) == float(hidden_l1(S, TT))
    assert float(hidden_loss(S, TT, "cosine")) == float(hidden_cosine(S, TT))
    with pytest.raises(ValueError, match="unknown hidden loss 'huber'"):
        hidden_loss(S, TT, "huber")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differ in shape"):
        hidden_mse(S, TT[:1])


def test_teacher_side_gets_no_gradient():
    s = S.clone().requires_grad_(True)
    t = TT.clone().requires_grad_(True)
    hidden_mse(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_slot_scale_by_hand():
    # two slots of 2 dims: sqrt((0.5² + 3²)/2) = sqrt(4.625); sqrt((0² + 2²)/2) = sqrt(2)
    std = torch.tensor([[0.5, 3.0], [0.0, 2.0]])
    out = slot_scale(std)
    assert out.shape == std.shape
    torch.testing.assert_close(out, torch.tensor([[4.625**0.5] * 2, [2.0**0.5] * 2]))


def test_standardize_by_hand():
    x = torch.tensor([[2.0, 10.0]])
    out = standardize(x, mean=torch.tensor([1.0, 4.0]), std=torch.tensor([0.5, 3.0]))
    assert out.tolist() == [[2.0, 2.0]]


# ------------------------------------------------------------------ pooling
def _batch():
    # row 0: right-padded (position 3 is padding with a huge value)
    # row 1: left-padded (position 0 is padding, flagged "vision" to prove padding wins)
    hidden = torch.tensor(
        [
            [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [10.0, 10.0]],
            [[100.0, 100.0], [4.0, 4.0], [5.0, 5.0], [6.0, 6.0]],
        ]
    )
    masks = TokenMasks(
        valid=torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool),
        vision=torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool),
        text=torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool),
    )
    return hidden, masks


def test_mean_image_tokens_by_hand():
    h, m = _batch()
    assert mean_image_tokens(h, m).tolist() == [[1.5, 1.5], [4.0, 4.0]]


def test_mean_masked_by_hand():
    h, m = _batch()
    assert mean_masked(h, m).tolist() == [[2.0, 2.0], [5.0, 5.0]]


def test_last_token_by_hand():
    h, m = _batch()
    assert last_token(h, m).tolist() == [[3.0, 3.0], [6.0, 6.0]]


def test_cls_token_is_first_valid_token():
    h, m = _batch()
    assert cls_token(h, m).tolist() == [[1.0, 1.0], [4.0, 4.0]]


def test_pool_stacks_in_order():
    h, m = _batch()
    out = pool(h, m, ["mean_image_tokens", "last_token"])
    assert out.shape == (2, 2, 2)
    assert out[:, 0].tolist() == [[1.5, 1.5], [4.0, 4.0]]
    assert out[:, 1].tolist() == [[3.0, 3.0], [6.0, 6.0]]


@pytest.mark.parametrize("strategy", ["mean_image_tokens", "mean_masked", "last_token", "cls_token"])
def test_padded_positions_never_matter(strategy):
    h, m = _batch()
    before = pool(h, m, [strategy])
    h2 = h.clone()
    h2[~m.valid] = torch.randn(int((~m.valid).sum()), 2) * 1e6
    assert torch.equal(pool(h2, m, [strategy]), before)


def test_pooling_errors_name_the_problem():
    h, m = _batch()
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool(h, m, ["max"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="needs a vision-token mask"):
        mean_image_tokens(h, TokenMasks(valid=m.valid))
    no_vision = TokenMasks(valid=m.valid, vision=torch.zeros_like(m.valid), text=m.text)
    with pytest.raises(ValueError, match=r"rows \[0, 1\] have no token"):
        mean_image_tokens(h, no_vision)
    with pytest.raises(ValueError, match="must be \\[B, T, D\\]"):
        mean_masked(h[0], m)
