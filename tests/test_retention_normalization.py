"""Anchors reach a student as its own preprocessor makes them, whatever statistics it trains
with; the teacher's action targets are mapped to the student's action normalization."""

from __future__ import annotations

import copy

import torch

from craft_plugin import CraftConfig
from craft_plugin.retention import HiddenRetention
from support.policy_cache import cache_from_policy
from craft_plugin.demo.tiny_world import made_up_stats as _stats
from support.tiny_classic import make_batch, make_tiny


def _student_preprocessor(policy, action_mean: float, action_std: float, state_shift: float = 0.0):
    from lerobot.policies.factory import make_pre_post_processors

    stats = _stats()
    stats["action"]["mean"] = torch.full_like(stats["action"]["mean"], action_mean)
    stats["action"]["std"] = torch.full_like(stats["action"]["std"], action_std)
    stats["observation.state"]["mean"] = stats["observation.state"]["mean"] + state_shift
    return make_pre_post_processors(policy.config, dataset_stats=stats)[0]


def test_student_anchors_are_its_own_preprocessor_on_the_raw_frames(tmp_path):
    policy, pre_teacher, _ = make_tiny("act", seed=0)
    raw = make_batch("act", 5, seed=2)
    cache = cache_from_policy(policy, pre_teacher, raw, tmp_path / "c")
    pre_student = _student_preprocessor(policy, action_mean=0.3, action_std=0.9, state_shift=0.25)
    ret = HiddenRetention(policy, cache, CraftConfig(anchor_batch_size=5), preprocessor=pre_student)
    anchors = cache.rows(list(range(5)))
    got = ret._batch(anchors)
    want = pre_student(dict(raw))
    order = anchors["index"].tolist()  # cache_from_policy writes row i at index i
    for key in ("observation.images.top", "observation.state", "action"):
        torch.testing.assert_close(got[key], want[key][order], atol=1e-5, rtol=0)
    # and they differ from what the teacher's preprocessor made: the statistics did matter
    assert (got["observation.state"] - pre_teacher(dict(raw))["observation.state"][order]).abs().max() > 0.1


def test_action_targets_are_mapped_to_the_students_normalization(tmp_path):
    """A student with other action statistics whose head computes the teacher's raw actions
    (a_S = α·a_T + β folded into the head) has L_ret = 0; the same weights unmapped do not."""
    policy, pre_teacher, _ = make_tiny("act", seed=0)
    cache = cache_from_policy(policy, pre_teacher, make_batch("act", 4, seed=2), tmp_path / "c")
    stats = _stats()["action"]
    s_t, c_t = stats["std"], stats["mean"]
    s_s, c_s = torch.full_like(s_t, 0.8), torch.full_like(c_t, 0.35)
    pre_student = _student_preprocessor(policy, action_mean=0.35, action_std=0.8)
    alpha, beta = s_t / s_s, (c_t - c_s) / s_s

    student = copy.deepcopy(policy)
    with torch.no_grad():
        student.model.action_head.weight.mul_(alpha[:, None])
        student.model.action_head.bias.mul_(alpha).add_(beta)
    cfg = CraftConfig(anchor_batch_size=4, anchor_targets=["actions"])
    mapped = HiddenRetention(student, cache, cfg, preprocessor=pre_student)()
    assert float(mapped) < 1e-5
    unchanged = HiddenRetention(policy, cache, cfg, preprocessor=pre_student)()
    assert float(unchanged) > 1e-2
