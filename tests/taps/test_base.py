"""The tap interface itself: layer resolution, pooling of a TapOutput, hook clean-up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from craft_plugin.core.pooling import TokenMasks
from craft_plugin.taps.base import FeatureTap, TapOutput, resolve_layers, tap_for_type


def test_resolve_layers():
    assert resolve_layers([-2, -1], 18) == [16, 17]
    assert resolve_layers([0, -1], 6) == [0, 5]
    with pytest.raises(ValueError, match=r"layer -7 does not exist: .* 6 layers \(valid: 0..5 or -6..-1\)"):
        resolve_layers([-7], 6)
    with pytest.raises(ValueError, match="name the same layer twice"):
        resolve_layers([5, -1], 6)


def test_tap_output_pooled_shape_and_values():
    h = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    masks = TokenMasks(
        valid=torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool),
        vision=torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool),
        text=torch.tensor([[0, 1, 1], [0, 0, 1]], dtype=torch.bool),
    )
    out = TapOutput(layers=[0, 1], hidden=[h, 2 * h], masks=masks).pooled(["mean_image_tokens", "last_token"])
    assert out.shape == (2, 2, 2, 4)  # [B, n_layers, n_vectors, D]
    assert out[0, 0, 0].tolist() == h[0, 0].tolist()
    assert out[1, 1, 1].tolist() == (2 * h[1, 2]).tolist()


class _Toy(FeatureTap):
    policy_types = ("toy",)

    @property
    def num_layers(self) -> int:
        return 2

    @property
    def hidden_dim(self) -> int:
        return 3

    def _install(self) -> None:
        self.add_hook(self.policy, lambda m, i, o: None)
        raise RuntimeError("boom")

    def extract(self, batch, layers):  # pragma: no cover - not called
        raise NotImplementedError


def test_hooks_are_removed_even_when_installing_fails():
    model = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="boom"):
        with _Toy(model):
            pass
    assert len(model._forward_hooks) == 0


def test_unknown_policy_type_lists_the_supported_ones():
    with pytest.raises(ValueError, match="no feature tap for policy type 'tdmpc'; supported:"):
        tap_for_type("tdmpc")
