"""DiffusionTap on a tiny real LeRobot Diffusion Policy (random weights, ResNet-18 from scratch).

Tiny policy: one 64x64 camera center/random-cropped to 56x56, 2 observation steps, GroupNorm
backbone. ResNet-18 has 8 residual blocks of widths 64,64,128,128,256,256,512,512; the last
stage's map is 2x2, so layers -2/-1 give T = 1 camera * 2 steps * 4 positions = 8 tokens of D 512.
"""

from __future__ import annotations

import pytest
import torch

from craft_plugin.taps import make_tap, tap_for_type
from craft_plugin.taps.diffusion import DiffusionTap
from support.tiny_classic import leftover_hooks, make_batch, make_observation, make_tiny_diffusion
from support.tap_checks import check_deterministic_and_batch_independent

B = 2
WIDTHS = [64, 64, 128, 128, 256, 256, 512, 512]
T_LAST = 1 * 2 * 2 * 2  # cameras * n_obs * h * w of layer4 (56 -> 2x2)


@pytest.fixture(scope="module")
def diffusion():
    return make_tiny_diffusion(seed=0)


@pytest.fixture(scope="module")
def batch(diffusion):
    _, pre, _ = diffusion
    return pre(make_batch("diffusion", B, seed=1))


def test_registry_and_sizes(diffusion):
    policy, _, _ = diffusion
    assert tap_for_type("diffusion") is DiffusionTap
    tap = make_tap(policy)
    assert isinstance(tap, DiffusionTap)
    assert tap.num_layers == 8
    assert tap.layer_widths == WIDTHS
    assert tap.hidden_dim == 512
    assert DiffusionTap.default_pooling == ("mean_image_tokens",)


def test_shapes_and_masks(diffusion, batch):
    policy, _, _ = diffusion
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.extract(batch, [6, 7])
        feats = tap.features(batch, [6, 7], ["mean_image_tokens", "cls_token"])
        early = tap.extract(batch, [2, 3])  # layer2: 128 wide, 56 -> 7x7 map
    assert out.layers == [6, 7]
    assert [tuple(h.shape) for h in out.hidden] == [(B, T_LAST, 512)] * 2
    assert out.masks.valid.shape == (B, T_LAST) and out.masks.valid.dtype == torch.bool
    assert out.masks.valid.all() and out.masks.vision.all()
    assert out.masks.text is None
    assert feats.shape == (B, 2, 2, 512) and feats.dtype == torch.float32
    assert [tuple(h.shape) for h in early.hidden] == [(B, 2 * 7 * 7, 128)] * 2


def test_mixed_widths_are_refused_by_name(diffusion, batch):
    policy, _, _ = diffusion
    with make_tap(policy) as tap:
        with pytest.raises(ValueError, match=r"different channel widths \(layer 5: 256, layer 7: 512\)"):
            tap.extract(batch, [5, -1])


def test_last_hidden_is_the_policys_own_backbone_output(diffusion, batch):
    """Layer -1 equals the encoder's backbone output on the center-cropped images, token order
    (b, s) batch-major then row-major positions."""
    policy, _, _ = diffusion
    enc = policy.diffusion.rgb_encoder[0]
    images = batch["observation.images.top"]  # [B, n_obs, 3, 64, 64]
    with torch.no_grad():
        ref = enc.backbone(enc.center_crop(images.flatten(0, 1)))  # [B*s, 512, 2, 2]
        with make_tap(policy) as tap:
            last = tap.extract(batch, [-1]).hidden[0]
    expected = ref.reshape(B, 2, 512, 4).permute(0, 1, 3, 2).reshape(B, 8, 512)
    assert torch.equal(last, expected)


def test_negative_layers_resolve_to_absolute(diffusion, batch):
    policy, _, _ = diffusion
    with make_tap(policy) as tap, torch.no_grad():
        assert tap.resolve_layers([-2, -1]) == [6, 7]
        neg = tap.extract(batch, [-2, -1])
        pos = tap.extract(batch, [6, 7])
        assert neg.layers == [6, 7]
        for a, b in zip(neg.hidden, pos.hidden, strict=True):
            assert torch.equal(a, b)
        with pytest.raises(ValueError, match="layer 8 does not exist"):
            tap.extract(batch, [8])


def test_pooling_over_all_image_positions(diffusion, batch):
    """No padding and no non-image token here: mean_image_tokens is the plain mean over every
    position of every camera and step, cls_token is position 0, last_token is refused."""
    policy, _, _ = diffusion
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.extract(batch, [-1])
    h = out.hidden[0]
    pooled = out.pooled(["mean_image_tokens", "cls_token"])
    assert torch.allclose(pooled[:, 0, 0], h.mean(dim=1), atol=1e-6)
    assert torch.equal(pooled[:, 0, 1], h[:, 0])
    with pytest.raises(ValueError, match="last_token needs a text-token mask"):
        out.pooled(["last_token"])


def test_features_ignore_actions_and_their_padding(diffusion, batch):
    policy, _, _ = diffusion
    other = dict(batch)
    other["action"] = batch["action"] + 5.0
    other["action_is_pad"] = ~batch["action_is_pad"]
    with make_tap(policy) as tap, torch.no_grad():
        assert torch.equal(tap.features(batch, [-1], ["mean_image_tokens"]),
                           tap.features(other, [-1], ["mean_image_tokens"]))


def test_train_mode_uses_the_center_crop_and_draws_no_random_numbers(batch):
    """GroupNorm backbone: in train mode the features equal eval mode's (no random crop)."""
    policy, _, _ = make_tiny_diffusion(seed=0)
    with make_tap(policy) as tap, torch.no_grad():
        f_eval = tap.features(batch, [-2, -1], ["mean_image_tokens"])
        policy.train()
        rng = torch.get_rng_state()
        f_train = tap.features(batch, [-2, -1], ["mean_image_tokens"])
        assert torch.equal(rng, torch.get_rng_state()), "the tap drew random numbers"
        assert policy.training, "the tap switched the policy's mode"
    policy.eval()
    assert torch.equal(f_eval, f_train)


def test_policy_outputs_identical_with_and_without_the_tap(diffusion, batch):
    policy, pre, _ = diffusion
    obs = pre(make_observation("diffusion", 1, seed=3))

    def act_twice() -> torch.Tensor:
        policy.reset()
        torch.manual_seed(123)  # the DDPM prior noise and every scheduler step's noise
        return torch.stack([policy.select_action(dict(obs)), policy.select_action(dict(obs))])

    def train_loss() -> torch.Tensor:
        policy.train()
        torch.manual_seed(7)  # random crop, noise, timesteps
        try:
            with torch.no_grad():
                loss, _ = policy.forward(batch)
        finally:
            policy.eval()
        return loss

    state_before = {k: v.clone() for k, v in policy.state_dict().items()}
    a_plain, loss_plain = act_twice(), train_loss()
    with make_tap(policy) as tap:
        tap.features(batch, [-2, -1], DiffusionTap.default_pooling)  # with grad, like the student
        a_inside, loss_inside = act_twice(), train_loss()
    a_after, loss_after = act_twice(), train_loss()
    assert torch.equal(a_plain, a_inside) and torch.equal(a_plain, a_after)
    assert torch.equal(loss_plain, loss_inside) and torch.equal(loss_plain, loss_after)
    state_after = policy.state_dict()
    assert all(torch.equal(v, state_after[k]) for k, v in state_before.items())
    policy.reset()


def test_no_hooks_remain_even_after_an_error(diffusion, batch):
    policy, _, _ = diffusion
    with make_tap(policy) as tap, torch.no_grad():
        tap.extract(batch, [-1])
    assert leftover_hooks(policy) == []
    with pytest.raises(ValueError, match="different channel widths"):
        with make_tap(policy) as tap:
            tap.extract(batch, [0, -1])
    assert leftover_hooks(policy) == []


def test_eval_extract_is_deterministic_and_cache_invariant(diffusion, batch):
    policy, _, _ = diffusion
    with make_tap(policy) as tap:
        check_deterministic_and_batch_independent(tap, batch, [6, 7], DiffusionTap.default_pooling)


def test_features_carry_grad_for_the_student(diffusion, batch):
    policy, _, _ = diffusion
    policy.zero_grad(set_to_none=True)
    with make_tap(policy) as tap:
        feats = tap.features(batch, [-1], DiffusionTap.default_pooling)
    assert feats.requires_grad and feats.grad_fn is not None
    feats.square().mean().backward()
    enc = policy.diffusion.rgb_encoder[0]
    assert enc.backbone[0].weight.grad is not None  # conv1
    # Neither the spatial-softmax head nor the U-Net is run by the tap.
    assert enc.out.weight.grad is None
    assert all(p.grad is None for p in policy.diffusion.unet.parameters())
    policy.zero_grad(set_to_none=True)


def test_single_observation_step_images(diffusion, batch):
    """A [B, 3, H, W] image (one observation step) is accepted: tokens of that one step."""
    policy, _, _ = diffusion
    one_step = dict(batch)
    one_step["observation.images.top"] = batch["observation.images.top"][:, -1]
    with make_tap(policy) as tap, torch.no_grad():
        h_one = tap.extract(one_step, [-1]).hidden[0]
        h_all = tap.extract(batch, [-1]).hidden[0]
    assert h_one.shape == (B, 4, 512)
    assert torch.allclose(h_one, h_all[:, 4:], atol=1e-6)
