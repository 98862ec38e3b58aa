"""The smolvla feature tap, on a tiny real LeRobot SmolVLA policy (random weights, offline)."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="craft-test-hf-"))

from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

pytest.importorskip("lerobot.policies.smolvla.modeling_smolvla")

from lerobot.policies.common.vla_utils import make_att_2d_masks  # noqa: E402

from support.tiny_smolvla import (  # noqa: E402
    IMAGE_TOKENS,
    NUM_VLM_LAYERS,
    TEXT_HIDDEN,
    make_smolvla_batch,
    make_tiny_smolvla,
)

from craft_plugin.taps import make_tap  # noqa: E402
from craft_plugin.taps.smolvla import SmolVLATap  # noqa: E402

LANG_TOKENS = "observation.language.tokens"
LANG_MASK = "observation.language.attention_mask"
POOLING = ("mean_image_tokens", "last_token")


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any, Any]:
    return make_tiny_smolvla(seed=0)


@pytest.fixture
def policy(tiny):
    policy = tiny[0]
    policy.eval()
    policy.reset()
    policy.zero_grad(set_to_none=True)
    return policy


@pytest.fixture
def pre(tiny):
    return tiny[1]


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _clone(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def test_builder_makes_a_working_tiny_policy(tiny):
    policy, pre, post = tiny
    batch = pre(make_smolvla_batch(batch_size=3, seed=1))
    policy.train()
    loss, _ = policy.forward(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert policy.model.vlm_with_expert.get_vlm_model().text_model.layers[0].mlp.up_proj.weight.grad is not None
    policy.eval()
    policy.reset()
    action = post(policy.select_action(pre(make_smolvla_batch(batch_size=3, seed=1, with_action=False))))
    assert action.shape == (3, 4)
    policy.zero_grad(set_to_none=True)


def test_make_tap_picks_the_smolvla_tap_and_sizes(policy):
    tap = make_tap(policy)
    assert isinstance(tap, SmolVLATap)
    assert tap.num_layers == NUM_VLM_LAYERS  # the layers SmolVLA runs, not the VLM config's 6
    assert tap.hidden_dim == TEXT_HIDDEN
    assert tap.default_pooling == POOLING


def test_shapes_and_masks(policy, pre):
    batch = pre(make_smolvla_batch(batch_size=3, seed=0))
    lang_len = batch[LANG_TOKENS].shape[1]
    T = IMAGE_TOKENS + lang_len + 1
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.extract(batch, [0, -1])
        feats = tap.features(batch, [-2, -1], POOLING)
    assert out.layers == [0, NUM_VLM_LAYERS - 1]
    assert len(out.hidden) == 2
    for h in out.hidden:
        assert h.shape == (3, T, TEXT_HIDDEN)
    m = out.masks
    for mask in (m.valid, m.vision, m.text):
        assert mask.shape == (3, T) and mask.dtype == torch.bool
    # layout: images, language, state
    assert m.vision[:, :IMAGE_TOKENS].all() and not m.vision[:, IMAGE_TOKENS:].any()
    assert m.text[:, IMAGE_TOKENS : IMAGE_TOKENS + lang_len].all()
    assert not m.text[:, :IMAGE_TOKENS].any() and not m.text[:, -1].any()
    assert torch.equal(m.valid[:, IMAGE_TOKENS : IMAGE_TOKENS + lang_len], batch[LANG_MASK].bool())
    assert m.valid[:, :IMAGE_TOKENS].all() and m.valid[:, -1].all()  # images and the state token
    assert not m.valid.all()  # the default tasks differ in length: some language padding
    assert feats.shape == (3, 2, 2, TEXT_HIDDEN) and feats.dtype == torch.float32


def test_negative_layers_resolve_to_absolute_ones(policy, pre):
    batch = pre(make_smolvla_batch(batch_size=2, seed=0))
    with make_tap(policy) as tap, torch.no_grad():
        assert tap.resolve_layers([-2, -1]) == [NUM_VLM_LAYERS - 2, NUM_VLM_LAYERS - 1]
        neg = tap.extract(batch, [-1, -NUM_VLM_LAYERS])
        pos = tap.extract(batch, [NUM_VLM_LAYERS - 1, 0])
        assert neg.layers == [NUM_VLM_LAYERS - 1, 0]
        for a, b in zip(neg.hidden, pos.hidden, strict=True):
            assert torch.equal(a, b)
        with pytest.raises(ValueError, match="does not exist"):
            tap.extract(batch, [NUM_VLM_LAYERS])
        with pytest.raises(ValueError, match="does not exist"):
            tap.extract(batch, [-NUM_VLM_LAYERS - 1])


def test_layers_differ_and_last_layer_is_the_normed_prefix_output(policy, pre):
    batch = pre(make_smolvla_batch(batch_size=2, seed=0))
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.extract(batch, list(range(NUM_VLM_LAYERS)))
    for a, b in zip(out.hidden, out.hidden[1:]):
        assert not torch.allclose(a, b)
    # HF convention: the last layer's entry is after the final norm, i.e. what SmolVLA's prefix pass returns
    with torch.no_grad():
        images, img_masks = policy.prepare_images(batch)
        state = policy.prepare_state(batch)
        embs, pad, att = policy.model.embed_prefix(images, img_masks, batch[LANG_TOKENS], batch[LANG_MASK], state=state)
        (prefix_out, _), _ = policy.model.vlm_with_expert.forward(
            attention_mask=make_att_2d_masks(pad, att),
            position_ids=torch.cumsum(pad, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=True,
        )
    assert torch.equal(out.hidden[-1], prefix_out)


def test_prefix_pass_matches_the_training_pass_prefix_stream(policy, pre):
    """The tap's prefix-only pass gives the prefix hidden states of policy.forward (prefix + suffix)."""
    batch = pre(make_smolvla_batch(batch_size=2, seed=3))
    layers = list(range(NUM_VLM_LAYERS))
    noise = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))
    time = torch.tensor([0.3, 0.7])
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.extract(batch, layers)
        with tap.capture(layers) as training_stream:
            policy.forward(_clone(batch), noise=noise, time=time)
    assert sorted(training_stream) == layers
    valid = out.masks.valid
    for layer, h in zip(layers, out.hidden, strict=True):
        torch.testing.assert_close(h[valid], training_stream[layer][valid], rtol=1e-5, atol=1e-5)


def test_padded_positions_do_not_change_pooled_features(policy, pre):
    layers = [0, -2, -1]
    pooling = ("mean_image_tokens", "mean_masked", "last_token", "cls_token")
    short = make_smolvla_batch(batch_size=1, seed=5, tasks=["push"])
    padded = make_smolvla_batch(batch_size=2, seed=5, tasks=["push", "open the top drawer slowly"])
    padded["observation.images.cam"][0] = short["observation.images.cam"][0]
    padded["observation.state"][0] = short["observation.state"][0]
    b_short, b_padded = pre(short), pre(padded)
    assert b_short[LANG_TOKENS].shape[1] < b_padded[LANG_TOKENS].shape[1]
    assert not b_padded[LANG_MASK][0].all()  # row 0 is padded in the longer batch
    with make_tap(policy) as tap, torch.no_grad():
        f_short = tap.features(b_short, layers, pooling)
        f_padded = tap.features(b_padded, layers, pooling)
        # garbage at the padding positions: other token ids there
        garbage = _clone(b_padded)
        pad_pos = ~garbage[LANG_MASK].bool()
        garbage[LANG_TOKENS][pad_pos] = torch.randint(0, 250, (int(pad_pos.sum()),), generator=torch.Generator().manual_seed(1))
        assert not torch.equal(garbage[LANG_TOKENS], b_padded[LANG_TOKENS])
        f_garbage = tap.features(garbage, layers, pooling)
    torch.testing.assert_close(f_padded[0], f_short[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f_garbage, f_padded, rtol=1e-6, atol=1e-6)


def test_select_action_and_forward_are_identical_with_and_without_the_tap(policy, pre):
    obs = make_smolvla_batch(batch_size=2, seed=7, with_action=False)
    train_batch = pre(make_smolvla_batch(batch_size=2, seed=8))
    noise = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))
    time = torch.tensor([0.2, 0.9])
    state_before = {k: v.clone() for k, v in policy.state_dict().items()}
    requires_grad_before = [p.requires_grad for p in policy.parameters()]

    def act() -> torch.Tensor:
        policy.reset()
        torch.manual_seed(0)
        return policy.select_action(pre(_clone(obs)))

    def loss() -> torch.Tensor:
        policy.eval()
        return policy.forward(_clone(train_batch), noise=noise, time=time)[0].detach()

    a_ref, l_ref = act(), loss()
    with make_tap(policy) as tap:
        tap.features(pre(_clone(obs)), [-2, -1], POOLING)  # with grad
        with torch.no_grad():
            tap.features(pre(_clone(obs)), [-1], POOLING)
        a_inside, l_inside = act(), loss()  # hooks installed but idle
        policy.zero_grad(set_to_none=True)
    a_after, l_after = act(), loss()
    assert torch.equal(a_ref, a_inside) and torch.equal(a_ref, a_after)
    assert torch.equal(l_ref, l_inside) and torch.equal(l_ref, l_after)
    for k, v in policy.state_dict().items():
        assert torch.equal(v, state_before[k]), k
    assert [p.requires_grad for p in policy.parameters()] == requires_grad_before


def test_no_hooks_remain(policy, pre):
    batch = pre(make_smolvla_batch(batch_size=2, seed=0))
    assert _hook_count(policy) == 0
    with make_tap(policy) as tap:
        assert _hook_count(policy) == NUM_VLM_LAYERS + 1  # layers' input norms + final norm + connector
        tap.features(batch, [-1], POOLING)
    assert _hook_count(policy) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with make_tap(policy) as tap:
            tap.extract(batch, [0])
            raise RuntimeError("boom")
    assert _hook_count(policy) == 0
    with pytest.raises(RuntimeError, match="not installed"):
        tap.extract(batch, [0])  # outside the with block
    assert _hook_count(policy) == 0


def test_eval_extract_is_deterministic_and_leaves_mode_and_batch_alone(policy, pre):
    batch = pre(make_smolvla_batch(batch_size=2, seed=2))
    snapshot = _clone(batch)
    with make_tap(policy) as tap, torch.no_grad():
        a = tap.extract(batch, [0, -1])
        b = tap.extract(batch, [0, -1])
    assert not policy.training
    for x, y in zip(a.hidden, b.hidden, strict=True):
        assert torch.equal(x, y)
    for k, v in snapshot.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(batch[k], v), k
    policy.train()
    with make_tap(policy) as tap:
        tap.extract(batch, [0])
    assert policy.training  # extract does not switch modes


def test_features_carry_grad_and_are_reproducible(policy, pre):
    batch = pre(make_smolvla_batch(batch_size=2, seed=4))
    policy.train()
    with make_tap(policy) as tap:
        f1 = tap.features(batch, [-2, -1], POOLING)
        f2 = tap.features(batch, [-2, -1], POOLING)
    assert f1.requires_grad and f1.grad_fn is not None
    torch.testing.assert_close(f1, f2, rtol=0, atol=1e-6)
    f1.pow(2).sum().backward()
    text_model = policy.model.vlm_with_expert.get_vlm_model().text_model
    grad = text_model.layers[0].mlp.down_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    policy.zero_grad(set_to_none=True)


def test_masks_with_image_markers_an_empty_camera_and_a_fixed_prefix_length():
    """add_image_special_tokens, empty_cameras and prefix_length change the prefix layout."""
    policy, pre, _ = make_tiny_smolvla(seed=1, add_image_special_tokens=True, empty_cameras=1, prefix_length=64)
    policy.eval()
    batch = pre(make_smolvla_batch(batch_size=2, seed=0))
    lang_len = batch[LANG_TOKENS].shape[1]
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.extract(batch, [-1])
        feats = tap.features(batch, [-1], POOLING)
    m = out.masks
    assert out.hidden[0].shape == (2, 64, TEXT_HIDDEN)
    per_camera = 2 + IMAGE_TOKENS + 1  # <fake><global-img> image tokens <fake>
    for cam in range(2):
        start = cam * per_camera
        assert not m.vision[:, start : start + 2].any() and not m.vision[:, start + 2 + IMAGE_TOKENS].any()
        assert m.vision[:, start + 2 : start + 2 + IMAGE_TOKENS].all()
    assert int(m.vision[0].sum()) == 2 * IMAGE_TOKENS
    assert int((m.vision & m.valid)[0].sum()) == IMAGE_TOKENS  # the empty camera's tokens are padding
    assert m.text[:, 2 * per_camera : 2 * per_camera + lang_len].all() and int(m.text[0].sum()) == lang_len
    state_pos = 2 * per_camera + lang_len
    assert m.valid[:, state_pos].all() and not m.valid[:, state_pos + 1 :].any()  # padding to prefix_length
    assert not (m.vision | m.text)[:, state_pos:].any()
    assert feats.shape == (2, 1, 2, TEXT_HIDDEN) and torch.isfinite(feats).all()
    assert _hook_count(policy) == 0
