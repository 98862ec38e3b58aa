"""ActTap on a tiny real LeRobot ACT (random weights, ResNet-18 from scratch, no Hub).

Tiny ACT: dim 32, 3 encoder layers, one 64x64 camera (2x2 feature map), state of dim 4, so the
encoder sequence is [latent, state, 4 image positions] = 6 tokens.
"""

from __future__ import annotations

import pytest
import torch

from craft_plugin.taps import make_tap, tap_for_type
from craft_plugin.taps.act import ActTap
from support.tiny_classic import leftover_hooks, make_batch, make_observation, make_tiny_act
from support.tap_checks import check_deterministic_and_batch_independent

B = 2
N_LAYERS = 3
D = 32
T = 1 + 1 + 4  # latent, robot state, 2x2 image positions


@pytest.fixture(scope="module")
def act():
    policy, pre, post = make_tiny_act(seed=0, n_encoder_layers=N_LAYERS)
    return policy, pre, post


@pytest.fixture(scope="module")
def batch(act):
    _, pre, _ = act
    return pre(make_batch("act", B, seed=1))


def test_registry_and_sizes(act):
    policy, _, _ = act
    assert tap_for_type("act") is ActTap
    tap = make_tap(policy)
    assert isinstance(tap, ActTap)
    assert tap.num_layers == N_LAYERS
    assert tap.hidden_dim == D
    assert ActTap.default_pooling == ("mean_image_tokens", "cls_token")


def test_shapes_and_masks(act, batch):
    policy, _, _ = act
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.extract(batch, [0, 2])
        feats = tap.features(batch, [0, 2], ["mean_image_tokens", "cls_token", "mean_masked"])
    assert out.layers == [0, 2]
    assert [tuple(h.shape) for h in out.hidden] == [(B, T, D), (B, T, D)]
    assert out.masks.valid.shape == (B, T) and out.masks.valid.dtype == torch.bool
    assert out.masks.valid.all()
    assert out.masks.vision.tolist() == [[False, False, True, True, True, True]] * B
    assert out.masks.text is None
    assert feats.shape == (B, 2, 3, D) and feats.dtype == torch.float32


def test_last_hidden_is_the_encoder_output_of_the_policys_own_forward(act, batch):
    """The rebuilt encoder input matches ACT.forward: layer -1 equals what its encoder returns."""
    policy, _, _ = act
    captured = {}
    handle = policy.model.encoder.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        with torch.no_grad():
            policy.predict_action_chunk(batch)
    finally:
        handle.remove()
    with make_tap(policy) as tap, torch.no_grad():
        last = tap.extract(batch, [-1]).hidden[0]
    # pre_norm=False: ACTEncoder.norm is Identity, so the encoder output is the last layer's.
    assert torch.equal(captured["out"].transpose(0, 1), last)


def test_negative_layers_resolve_to_absolute(act, batch):
    policy, _, _ = act
    with make_tap(policy) as tap, torch.no_grad():
        assert tap.resolve_layers([-2, -1]) == [1, 2]
        neg = tap.extract(batch, [-2, -1])
        pos = tap.extract(batch, [1, 2])
        assert neg.layers == [1, 2]
        for a, b in zip(neg.hidden, pos.hidden, strict=True):
            assert torch.equal(a, b)
        with pytest.raises(ValueError, match="layer -4 does not exist"):
            tap.extract(batch, [-4])


def test_pooling_reads_only_the_masked_positions(act, batch):
    """ACT has no padding, so instead: mean_image_tokens ignores the non-vision (latent/state)
    positions, and cls_token reads only position 0 (the latent token)."""
    policy, _, _ = act
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.extract(batch, [-1])
    h = out.hidden[0]
    perturbed_non_vision = h.clone()
    perturbed_non_vision[:, :2] += 100.0
    perturbed_after_first = h.clone()
    perturbed_after_first[:, 1:] -= 100.0
    ref = out.pooled(["mean_image_tokens", "cls_token"])
    a = type(out)(layers=out.layers, hidden=[perturbed_non_vision], masks=out.masks).pooled(["mean_image_tokens"])
    c = type(out)(layers=out.layers, hidden=[perturbed_after_first], masks=out.masks).pooled(["cls_token"])
    assert torch.equal(a[:, :, 0], ref[:, :, 0])
    assert torch.equal(c[:, :, 0], ref[:, :, 1])
    assert torch.allclose(ref[:, 0, 0], h[:, 2:].mean(dim=1))
    with pytest.raises(ValueError, match="last_token needs a text-token mask"):
        out.pooled(["last_token"])


def test_features_ignore_the_action_chunk_and_its_padding(act, batch):
    """The encoder never sees actions (the latent is zeros): changing actions and their pad flags
    leaves the features unchanged."""
    policy, _, _ = act
    other = dict(batch)
    other["action"] = batch["action"] + 5.0
    other["action_is_pad"] = ~batch["action_is_pad"]
    with make_tap(policy) as tap, torch.no_grad():
        f1 = tap.features(batch, [-2, -1], ActTap.default_pooling)
        f2 = tap.features(other, [-2, -1], ActTap.default_pooling)
    assert torch.equal(f1, f2)


def test_train_mode_with_vae_uses_the_zero_latent_and_needs_no_action(batch):
    """With dropout 0, train mode (use_vae=True) gives the eval-mode features: no VAE sample."""
    policy, pre, _ = make_tiny_act(seed=0, n_encoder_layers=N_LAYERS, dropout=0.0)
    b = pre(make_batch("act", B, seed=1))
    no_action = {k: v for k, v in b.items() if k not in ("action", "action_is_pad")}
    with make_tap(policy) as tap, torch.no_grad():
        policy.eval()
        f_eval = tap.features(b, [-1], ActTap.default_pooling)
        policy.train()
        rng = torch.get_rng_state()
        f_train = tap.features(no_action, [-1], ActTap.default_pooling)
        assert torch.equal(rng, torch.get_rng_state()), "the tap drew random numbers"
        assert policy.training, "the tap switched the policy's mode"
    policy.eval()
    assert torch.allclose(f_eval, f_train, atol=1e-6)


def test_policy_outputs_identical_with_and_without_the_tap(act, batch):
    policy, pre, _ = act
    obs = pre(make_observation("act", 1, seed=3))

    def act_once() -> torch.Tensor:
        policy.reset()
        torch.manual_seed(123)
        return policy.select_action(dict(obs))

    def train_loss() -> torch.Tensor:
        policy.train()
        torch.manual_seed(7)
        try:
            with torch.no_grad():
                loss, _ = policy.forward(batch)
        finally:
            policy.eval()
        return loss

    state_before = {k: v.clone() for k, v in policy.state_dict().items()}
    a_plain, loss_plain = act_once(), train_loss()
    with make_tap(policy) as tap:
        tap.features(batch, [-2, -1], ActTap.default_pooling)  # with grad, like the student
        a_inside, loss_inside = act_once(), train_loss()
    a_after, loss_after = act_once(), train_loss()
    assert torch.equal(a_plain, a_inside) and torch.equal(a_plain, a_after)
    assert torch.equal(loss_plain, loss_inside) and torch.equal(loss_plain, loss_after)
    state_after = policy.state_dict()
    assert all(torch.equal(v, state_after[k]) for k, v in state_before.items())
    assert not policy.training


def test_no_hooks_remain_even_after_an_error(act, batch):
    policy, _, _ = act
    with make_tap(policy) as tap, torch.no_grad():
        tap.extract(batch, [-1])
    assert leftover_hooks(policy) == []
    with pytest.raises(ValueError, match="lacks"):
        with make_tap(policy) as tap:
            tap.extract({"observation.state": batch["observation.state"]}, [-1])
    assert leftover_hooks(policy) == []


def test_eval_extract_is_deterministic_and_cache_invariant(act, batch):
    policy, _, _ = act
    with make_tap(policy) as tap:
        check_deterministic_and_batch_independent(tap, batch, [0, 1, 2], ActTap.default_pooling)


def test_features_carry_grad_for_the_student(act, batch):
    policy, _, _ = act
    policy.zero_grad(set_to_none=True)
    with make_tap(policy) as tap:
        feats = tap.features(batch, [-1], ActTap.default_pooling)
    assert feats.requires_grad and feats.grad_fn is not None
    feats.square().mean().backward()
    assert policy.model.encoder.layers[0].linear1.weight.grad is not None
    assert policy.model.backbone.conv1.weight.grad is not None
    # The decoder is never run by the tap.
    assert policy.model.decoder.layers[0].linear1.weight.grad is None
    policy.zero_grad(set_to_none=True)
