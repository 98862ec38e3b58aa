"""The PaliGemma tap on tiny, real LeRobot pi0 / pi05 / pi0_fast policies (random weights, offline)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from support.tiny_vla import IMAGE_SIZE, PI_TYPES, TOKENIZER_MAX_LENGTH, TinySizes, make_tiny_vla, make_vla_batch

from craft_plugin.taps.base import make_tap, tap_for_type
from craft_plugin.taps.paligemma import PaliGemmaTap

TOKENS = "observation.language.tokens"
LANG_MASK = "observation.language.attention_mask"
ALL_POOLINGS = ("mean_image_tokens", "mean_masked", "last_token", "cls_token")
SIZES = TinySizes()
N_IMAGE_TOKENS = (IMAGE_SIZE // SIZES.patch_size) ** 2


@pytest.fixture(scope="module", params=PI_TYPES)
def vla(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any, Any, Any]]:
    policy_type = request.param
    policy, pre, post = make_tiny_vla(policy_type, seed=0)
    yield policy_type, policy, pre, post


def _batch(pre: Any, policy_type: str, seed: int = 1, batch_size: int = 3, **kw: Any) -> dict[str, Any]:
    return pre(make_vla_batch(policy_type, batch_size=batch_size, seed=seed, **kw))


def _lm(policy: Any) -> nn.Module:
    return policy.model.paligemma_with_expert.paligemma.model.language_model


def _hook_count(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in module.modules()
    )


def test_registered_for_all_three_types(vla: tuple[str, Any, Any, Any]) -> None:
    policy_type, policy, _, _ = vla
    assert tap_for_type(policy_type) is PaliGemmaTap
    assert isinstance(make_tap(policy), PaliGemmaTap)
    assert PaliGemmaTap.default_pooling == ("mean_image_tokens", "last_token")


def test_shapes_and_masks(vla: tuple[str, Any, Any, Any]) -> None:
    policy_type, policy, pre, _ = vla
    batch = _batch(pre, policy_type)
    B, T, D = 3, N_IMAGE_TOKENS + TOKENIZER_MAX_LENGTH, SIZES.width
    with make_tap(policy) as tap, torch.no_grad():
        assert tap.num_layers == SIZES.depth == len(_lm(policy).layers)
        assert tap.hidden_dim == D
        out = tap.extract(batch, [0, -1])
        feats = tap.features(batch, [-2, -1], tap.default_pooling)
    assert out.layers == [0, SIZES.depth - 1]
    assert len(out.hidden) == 2 and all(h.shape == (B, T, D) for h in out.hidden)
    m = out.masks
    for mask in (m.valid, m.vision, m.text):
        assert mask.shape == (B, T) and mask.dtype == torch.bool
    # vision = the image tokens in front; text = the language tokens; valid = the prefix pad mask
    assert m.vision[:, :N_IMAGE_TOKENS].all() and not m.vision[:, N_IMAGE_TOKENS:].any()
    assert torch.equal(m.text, ~m.vision)
    expected_valid = torch.cat([torch.ones(B, N_IMAGE_TOKENS, dtype=torch.bool), batch[LANG_MASK].bool()], dim=1)
    assert torch.equal(m.valid, expected_valid)
    assert (~m.valid).any(), "the test batch must contain padding"
    assert feats.shape == (B, 2, 2, D) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()


def test_layer_indexing(vla: tuple[str, Any, Any, Any]) -> None:
    policy_type, policy, pre, _ = vla
    batch = _batch(pre, policy_type)
    n = SIZES.depth
    with make_tap(policy) as tap, torch.no_grad():
        assert tap.resolve_layers([-2, -1]) == [n - 2, n - 1]
        neg = tap.extract(batch, [-1, -n])
        pos = tap.extract(batch, [n - 1, 0])
        with pytest.raises(ValueError, match="does not exist"):
            tap.extract(batch, [n])
        # layer i = output of decoder layer i (embeddings excluded); last = after the final norm
        states = _reference_states(policy, batch)
    assert neg.layers == pos.layers == [n - 1, 0]
    for a, b in zip(neg.hidden, pos.hidden, strict=True):
        assert torch.equal(a, b)
    assert len(states) == n + 1
    assert torch.equal(pos.hidden[1], states[1]) and torch.equal(pos.hidden[0], states[n])


def _reference_states(policy: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """The LM's hidden states over the prefix, via the policy's own prefix-only forward."""
    from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

    core = policy.model
    images, img_masks = policy._preprocess_images(batch)
    tokens, masks = batch[TOKENS], batch[LANG_MASK]
    if hasattr(core, "embed_prefix_fast"):
        embs, pad, att2d, _, _ = core.embed_prefix_fast(images, img_masks, tokens, masks)
        att4d = prepare_attention_masks_4d(att2d, dtype=embs.dtype)
    else:
        embs, pad, att = core.embed_prefix(images, img_masks, tokens, masks)
        att4d = prepare_attention_masks_4d(make_att_2d_masks(pad, att))
    lm = _lm(policy)
    previous = lm.config._attn_implementation
    lm.config._attn_implementation = "eager"
    try:
        out = lm(
            inputs_embeds=embs,
            attention_mask=att4d,
            position_ids=torch.cumsum(pad, dim=1) - 1,
            use_cache=False,
            output_hidden_states=True,
        )
    finally:
        lm.config._attn_implementation = previous
    return out.hidden_states


def test_last_layer_matches_the_training_pass(vla: tuple[str, Any, Any, Any]) -> None:
    """The tapped prefix equals the prefix part of LeRobot's own training forward."""
    from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

    policy_type, policy, pre, _ = vla
    batch = _batch(pre, policy_type)
    core = policy.model
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.extract(batch, [-1])
        images, img_masks = policy._preprocess_images(batch)
        tokens, masks = batch[TOKENS], batch[LANG_MASK]
        if policy_type == "pi0_fast":
            embs, pad, att2d, _, _ = core.embed_prefix_fast(
                images, img_masks, tokens, masks, batch["action.tokens"], batch["action.token_mask"]
            )
            (prefix_out, _), _ = core.paligemma_with_expert.forward(
                attention_mask=prepare_attention_masks_4d(att2d, dtype=embs.dtype),
                position_ids=torch.cumsum(pad, dim=1) - 1,
                inputs_embeds=[embs, None],
                use_cache=False,
            )
            atol = 1e-5  # its training pass uses the LM's default (sdpa) attention kernel
        else:
            p_embs, p_pad, p_att = core.embed_prefix(images, img_masks, tokens, masks)
            actions, time = policy.prepare_action(batch), torch.full((3,), 0.5)
            if policy_type == "pi0":
                s_embs, s_pad, s_att, cond = core.embed_suffix(policy.prepare_state(batch), actions, time)
            else:
                s_embs, s_pad, s_att, cond = core.embed_suffix(actions, time)
            pad, att = torch.cat([p_pad, s_pad], dim=1), torch.cat([p_att, s_att], dim=1)
            (prefix_out, _), _ = core.paligemma_with_expert.forward(
                attention_mask=prepare_attention_masks_4d(make_att_2d_masks(pad, att)),
                position_ids=torch.cumsum(pad, dim=1) - 1,
                inputs_embeds=[p_embs, s_embs],
                use_cache=False,
                adarms_cond=[None, cond],
            )
            atol = 1e-6
    T = out.hidden[0].shape[1]
    valid = out.masks.valid
    torch.testing.assert_close(out.hidden[0][valid], prefix_out[:, :T][valid], atol=atol, rtol=1e-5)


def test_padding_content_does_not_change_pooled_features(vla: tuple[str, Any, Any, Any]) -> None:
    policy_type, policy, pre, _ = vla
    batch = _batch(pre, policy_type)
    pad = ~batch[LANG_MASK].bool()
    assert pad.any()
    garbage = dict(batch)
    tokens = batch[TOKENS].clone()
    g = torch.Generator().manual_seed(7)
    tokens[pad] = torch.randint(4, 257152, (int(pad.sum()),), generator=g)
    garbage[TOKENS] = tokens
    # Longer padding: 7 more pad columns full of garbage ids.
    longer = dict(batch)
    extra = torch.randint(4, 257152, (3, 7), generator=g)
    longer[TOKENS] = torch.cat([batch[TOKENS], extra], dim=1)
    longer[LANG_MASK] = torch.cat([batch[LANG_MASK], torch.zeros(3, 7, dtype=torch.bool)], dim=1)
    # Control: one *valid* token changed must change the features.
    control = dict(batch)
    tokens = batch[TOKENS].clone()
    tokens[0, 2] = 5 if tokens[0, 2] != 5 else 6
    control[TOKENS] = tokens

    layers = [0, -1]
    with make_tap(policy) as tap, torch.no_grad():
        base_out = tap.extract(batch, layers)
        garbage_out = tap.extract(garbage, layers)
        ref = base_out.pooled(ALL_POOLINGS)
        same = garbage_out.pooled(ALL_POOLINGS)
        longer_feats = tap.features(longer, layers, ALL_POOLINGS)
        control_feats = tap.features(control, layers, ALL_POOLINGS)
    # The garbage reached the padded positions (so the check below has teeth) ...
    pad_full = ~base_out.masks.valid
    assert not torch.allclose(base_out.hidden[1][pad_full], garbage_out.hidden[1][pad_full])
    # ... but no valid position, hence no pooled feature, saw it.
    assert torch.equal(base_out.hidden[1][~pad_full], garbage_out.hidden[1][~pad_full])
    assert torch.equal(ref, same)
    torch.testing.assert_close(longer_feats, ref.float(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(control_feats[0], ref[0].float(), atol=1e-4)
    torch.testing.assert_close(control_feats[1:], ref[1:].float(), atol=1e-6, rtol=1e-6)


def test_policy_outputs_identical_with_and_without_the_tap(vla: tuple[str, Any, Any, Any]) -> None:
    policy_type, policy, pre, _ = vla
    obs = _batch(pre, policy_type, seed=3, batch_size=2, with_action=False)
    train_batch = _batch(pre, policy_type, seed=4, batch_size=2)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        policy.eval()
        policy.reset()
        torch.manual_seed(123)
        action = policy.select_action(obs)
        torch.manual_seed(321)
        loss, _ = policy.forward(train_batch)
        return action, loss.detach()

    action_before, loss_before = run()
    attn_before = _lm(policy).config._attn_implementation
    hooks_before = _hook_count(policy)
    policy.train()
    with make_tap(policy) as tap:
        feats = tap.features(train_batch, [-2, -1], tap.default_pooling)  # student-style, with grad
        feats.sum().backward()
        with torch.no_grad():
            tap.features(obs, [-1], ("mean_masked",))  # teacher-style
    assert policy.training, "the tap must not switch train/eval mode"
    policy.zero_grad(set_to_none=True)
    assert _lm(policy).config._attn_implementation == attn_before
    assert _hook_count(policy) == hooks_before == 0
    action_after, loss_after = run()
    assert torch.equal(action_before, action_after)
    assert torch.equal(loss_before, loss_after)


def test_no_hooks_remain(vla: tuple[str, Any, Any, Any]) -> None:
    policy_type, policy, pre, _ = vla
    batch = _batch(pre, policy_type)
    before = _hook_count(policy)
    with make_tap(policy) as tap, torch.no_grad():
        tap.features(batch, [-1], ("cls_token",))
    assert _hook_count(policy) == before == 0
    with pytest.raises(RuntimeError, match="boom"):
        with make_tap(policy) as tap:
            raise RuntimeError("boom")
    assert _hook_count(policy) == 0


def test_eval_extract_is_deterministic(vla: tuple[str, Any, Any, Any]) -> None:
    policy_type, policy, pre, _ = vla
    batch = _batch(pre, policy_type)
    policy.eval()
    with make_tap(policy) as tap, torch.no_grad():
        a = tap.extract(batch, [0, 1])
        b = tap.extract(batch, [0, 1])
    for x, y in zip(a.hidden, b.hidden, strict=True):
        assert torch.equal(x, y)


def test_features_carry_grad_without_no_grad(vla: tuple[str, Any, Any, Any]) -> None:
    policy_type, policy, pre, _ = vla
    batch = _batch(pre, policy_type)
    policy.eval()  # the student's retention pass: dropout off, graph kept
    policy.zero_grad(set_to_none=True)
    with make_tap(policy) as tap:
        feats = tap.features(batch, [-2, -1], tap.default_pooling)
    assert feats.requires_grad and feats.grad_fn is not None
    feats.pow(2).mean().backward()
    lm = _lm(policy)
    grads = [lm.layers[0].self_attn.q_proj.weight.grad, lm.layers[-1].mlp.up_proj.weight.grad]
    vision = policy.model.paligemma_with_expert.paligemma.model.multi_modal_projector.linear.weight.grad
    assert all(g is not None and g.abs().sum() > 0 for g in [*grads, vision])
    policy.zero_grad(set_to_none=True)


def test_cache_invariant_teacher_vs_student(vla: tuple[str, Any, Any, Any]) -> None:
    """Features cached by the teacher (eval, no_grad) equal the student's recomputation (eval, grad)."""
    policy_type, policy, pre, _ = vla
    batch = _batch(pre, policy_type, seed=5)
    policy.eval()
    with make_tap(policy) as tap, torch.no_grad():
        teacher = tap.features(batch, [-2, -1], ALL_POOLINGS)
    with make_tap(policy) as tap:
        student = tap.features(batch, [-2, -1], ALL_POOLINGS)
    torch.testing.assert_close(student.detach(), teacher, atol=1e-6, rtol=0)
    policy.zero_grad(set_to_none=True)


def test_tap_needs_a_preprocessed_batch(vla: tuple[str, Any, Any, Any]) -> None:
    policy_type, policy, _, _ = vla
    raw = make_vla_batch(policy_type, batch_size=1, seed=0)
    with make_tap(policy) as tap, pytest.raises(KeyError, match="preprocessor"):
        tap.extract(raw, [-1])


def test_builder_is_deterministic_and_offline() -> None:
    import os

    from support.tiny_vla import hf_home, paligemma_tokenizer_dir

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert str(paligemma_tokenizer_dir()).startswith(str(hf_home()))
    a, _, _ = make_tiny_vla("pi05", seed=11)
    b, _, _ = make_tiny_vla("pi05", seed=11)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    batch = make_vla_batch("pi0_fast", batch_size=2, seed=0)
    assert batch["observation.images.cam"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["action"].shape[0] == 2 and len(batch["task"]) == 2


def test_missing_camera_tokens_are_invalid() -> None:
    """A configured camera absent from the batch: its (blank) image tokens are vision but not valid."""
    from lerobot.configs import FeatureType, PolicyFeature

    from support.tiny_vla import CAMERA_KEY, make_tiny_vla_config

    features = dict(make_tiny_vla_config("pi0").input_features)
    features["observation.images.wrist"] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, IMAGE_SIZE, IMAGE_SIZE))
    policy, pre, _ = make_tiny_vla("pi0", seed=0, input_features=features)
    batch = pre(make_vla_batch("pi0", batch_size=2, seed=0))
    assert "observation.images.wrist" not in batch and CAMERA_KEY in batch
    n = N_IMAGE_TOKENS
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.extract(batch, [-1])
    m = out.masks
    assert m.vision[:, : 2 * n].all() and not m.vision[:, 2 * n :].any()
    assert m.valid[:, :n].all() and not m.valid[:, n : 2 * n].any()
    pooled = out.pooled(["mean_image_tokens"])[:, 0, 0]
    torch.testing.assert_close(pooled, out.hidden[0][:, :n].mean(dim=1))


def test_bfloat16_policy() -> None:
    """A bfloat16 policy (LeRobot keeps vision and norms in float32): float32 features, same actions."""
    policy, pre, _ = make_tiny_vla("pi05", seed=0, dtype="bfloat16")
    batch = pre(make_vla_batch("pi05", batch_size=2, seed=0))
    obs = pre(make_vla_batch("pi05", batch_size=2, seed=0, with_action=False))

    def act() -> torch.Tensor:
        policy.reset()
        torch.manual_seed(0)
        return policy.select_action(obs)

    before = act()
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.extract(batch, [-1])
        feats = tap.features(batch, [-2, -1], tap.default_pooling)
    assert out.hidden[0].dtype == torch.bfloat16
    assert feats.dtype == torch.float32 and feats.shape == (2, 2, 2, SIZES.width) and torch.isfinite(feats).all()
    assert torch.equal(before, act())
