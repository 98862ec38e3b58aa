"""Retention losses from an anchor cache: zero for the teacher itself, gradients, eval-mode
retention forward, seeded sampler state, and clear errors for caches that do not fit."""

from __future__ import annotations

import pytest
import torch

from craft_plugin import CraftConfig, CraftHook
from craft_plugin.cache import CacheError
from craft_plugin.retention import HiddenRetention, TokenCERetention, eval_mode, make_retention
from support.policy_cache import cache_from_policy
from support.tiny_classic import make_batch, make_tiny


@pytest.fixture()
def act_world(tmp_path):
    policy, pre, _ = make_tiny("act", seed=0)
    cache = cache_from_policy(policy, pre, make_batch("act", 6, seed=3), tmp_path / "cache", actions=False)
    return policy, pre, cache


@pytest.mark.parametrize("feature_norm", ["standardize", "none"])
@pytest.mark.parametrize("loss", ["mse", "cosine", "l1"])
def test_teacher_itself_has_zero_retention_loss(act_world, feature_norm, loss):
    policy, pre, cache = act_world
    policy.train()  # training mode: the retention forward must still run with dropout off
    cfg = CraftConfig(anchor_batch_size=4, feature_norm=feature_norm, hidden_loss=loss, pooling=["mean_image_tokens", "cls_token"])
    ret = HiddenRetention(policy, cache, preprocessor=pre, config=cfg)
    value = ret()
    assert abs(float(value.detach())) < 1e-5
    assert policy.training and all(m.training for m in policy.modules()), "train/eval flags restored"


def test_drifted_student_has_positive_loss_with_gradients(act_world):
    policy, pre, cache = act_world
    with torch.no_grad():
        for p in policy.model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = CraftConfig(anchor_batch_size=4, pooling=["mean_image_tokens", "cls_token"])
    value = HiddenRetention(policy, cache, preprocessor=pre, config=cfg)()
    assert float(value.detach()) > 1e-4
    value.backward()
    assert policy.model.encoder.layers[0].linear1.weight.grad.abs().sum() > 0


def test_default_anchor_batch_is_32_or_every_anchor_of_a_smaller_cache(act_world, tmp_path, caplog):
    """Unset: DEFAULT_ANCHOR_BATCH_SIZE anchors per step, or all of a smaller cache (said in the log);
    an explicit value the cache cannot meet still stops."""
    from craft_plugin.config import DEFAULT_ANCHOR_BATCH_SIZE

    assert DEFAULT_ANCHOR_BATCH_SIZE == 32
    policy, pre, cache = act_world  # 6 anchors
    cfg = CraftConfig(pooling=["mean_image_tokens", "cls_token"])
    with caplog.at_level("INFO", logger="craft_plugin.retention"):
        small = HiddenRetention(policy, cache, preprocessor=pre, config=cfg)
    assert small.sampler.batch_size == 6 and small.sampler.next()["index"].shape == (6,)
    assert "holds 6 anchors, fewer than the default 32: every anchor in each retention step" in caplog.text
    big = cache_from_policy(policy, pre, make_batch("act", 40, seed=4), tmp_path / "big", actions=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="craft_plugin.retention"):
        ret = HiddenRetention(policy, big, preprocessor=pre, config=cfg)
    assert ret.sampler.batch_size == 32 and ret.sampler.next()["index"].shape == (32,)
    assert "fewer than the default" not in caplog.text
    with pytest.raises(CacheError, match="anchor_batch_size=7 exceeds the 6 anchors"):
        HiddenRetention(policy, cache, preprocessor=pre, config=CraftConfig(anchor_batch_size=7, pooling=cfg.pooling))


def test_each_rank_gets_its_own_sampler_back_from_rank_0s_checkpoint(act_world):
    """Rank r's sampler is seeded r; only rank 0 writes the checkpoint, and every rank draws
    once per retention step: restoring that state gives every rank its own next anchors."""
    policy, pre, cache = act_world
    cfg = CraftConfig(anchor_batch_size=3, pooling=["mean_image_tokens", "cls_token"])
    ranks = [HiddenRetention(policy, cache, preprocessor=pre, config=cfg, seed=r) for r in (0, 1)]
    for _ in range(3):
        for r in ranks:
            r.sampler.next()
    checkpoint = ranks[0].state_dict()
    assert checkpoint == {"sampler": {"seed": 0, "draws": 3}}
    expected = [r.sampler.next()["index"] for r in ranks]
    assert not torch.equal(expected[0], expected[1]), "the ranks draw different anchors"
    for rank in (0, 1):
        resumed = HiddenRetention(policy, cache, preprocessor=pre, config=cfg, seed=rank)
        resumed.load_state_dict(checkpoint)
        assert torch.equal(resumed.sampler.next()["index"], expected[rank]), f"rank {rank}"


def test_caches_that_do_not_fit_stop_with_the_right_command(act_world):
    policy, pre, cache = act_world
    with pytest.raises(CacheError, match=r"layers: config \[-3, -1\] \(absolute \[0, 2\]\), cache \[1, 2\]"):
        HiddenRetention(policy, cache, preprocessor=pre, config=CraftConfig(layers=[-3, -1], pooling=["mean_image_tokens", "cls_token"]))
    with pytest.raises(CacheError, match=r"pooling: config \['mean_masked'\]") as info:
        HiddenRetention(policy, cache, preprocessor=pre, config=CraftConfig(pooling=["mean_masked"]))
    assert "craft build-cache" in str(info.value) and "--pooling=mean_masked" in str(info.value)
    with pytest.raises(CacheError, match="exceeds the 6 anchors"):
        HiddenRetention(policy, cache, preprocessor=pre, config=CraftConfig(anchor_batch_size=7, pooling=["mean_image_tokens", "cls_token"]))
    other, _, _ = make_tiny("act", seed=0, n_encoder_layers=2)
    with pytest.raises(CacheError, match="number of layers: policy 2, cache teacher 3"):
        HiddenRetention(other, cache, preprocessor=pre, config=CraftConfig(pooling=["mean_image_tokens", "cls_token"]))


def test_token_ce_is_the_policy_loss_on_cached_anchors(act_world):
    policy, pre, cache = act_world
    cfg = CraftConfig(retention_mode="token_ce", anchor_batch_size=6, pooling=["mean_image_tokens", "cls_token"])
    ret = make_retention(policy, cache, cfg, preprocessor=pre)
    assert isinstance(ret, TokenCERetention)
    value = ret()
    from craft_plugin.cache.inputs import raw_batch

    rows = cache.rows(list(range(6)))
    raw = raw_batch(rows.inputs, cache.manifest.input_keys, rows.task_index, cache.manifest.tasks)
    with eval_mode(policy), torch.no_grad():
        expected = policy.forward(pre(raw))[0]
    # the whole cache in one batch: the mean loss does not depend on the row order
    torch.testing.assert_close(value.detach(), expected, atol=1e-5, rtol=1e-5)


def test_hook_with_hidden_retention_starts_at_zero_and_lambda_falls_under_budget(act_world):
    policy, pre, cache = act_world
    cfg = CraftConfig(anchor_batch_size=4, pooling=["mean_image_tokens", "cls_token"], lambda_lr=1.0, initial_lambda=0.5)
    hook = CraftHook(policy, cfg, total_steps=10)
    ret = HiddenRetention(policy, cache, preprocessor=pre, config=cfg)
    policy.train()
    loss, _ = policy.forward(pre(make_batch("act", 4, seed=11)))
    m = hook.step(loss, ret)
    assert m["L_ret"] < 1e-5 and m["lambda"] == pytest.approx(max(0.0, 0.5 + (m["L_ret"] - cfg.epsilon_start)), abs=1e-6)
