"""A tiny smolvla taught the colour questions scores far above chance; an untaught one scores chance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from craft_plugin.mcq import stats
from craft_plugin.mcq.data import load_mcq
from craft_plugin.mcq.models import adapter_for_policy
from craft_plugin.mcq.scenes import make_scene_mcq
from craft_plugin.mcq.scoring import score_questions
from craft_plugin.mcq.teach import teach_mcq


def _accuracy(adapter, questions) -> stats.MCQMetrics:
    s = score_questions(adapter, questions)
    return stats.summarize([x.sums for x in s], [x.means for x in s], [q.answer_index for q in questions])


def test_taught_model_beats_chance_random_model_does_not(tmp_path: Path, vlm_folder: Path):
    from support.tiny_smolvla import make_tiny_smolvla

    train = load_mcq(make_scene_mcq(tmp_path / "train", 96, seed=1, kinds=("color",))).questions
    held_out = load_mcq(make_scene_mcq(tmp_path / "test", 48, seed=2, kinds=("color",))).questions
    policy, _, _ = make_tiny_smolvla(seed=0, vlm_folder=vlm_folder)  # LeRobot's default: VLM frozen
    frozen_before = {n for n, p in policy.named_parameters() if not p.requires_grad}
    adapter = adapter_for_policy(policy)

    before = _accuracy(adapter, held_out)
    # Chance is 1/4 and the held-out answers are balanced (each colour, each index 12 times), so a
    # model that does not look at the image scores ~0.25; 0.5 would be 3.9 binomial sds above it.
    assert before.acc <= 0.5 and before.acc_norm <= 0.5

    result = teach_mcq(policy, train, steps=200, batch_size=8, lr=3e-3, seed=0)
    assert result.losses[-1] < 0.2 * result.losses[0]
    after = _accuracy(adapter, held_out)
    # 4-way colour questions on unseen scenes: >= 0.8 (38/48) is 8 sds above chance.
    assert after.acc >= 0.8, after
    assert after.avg_margin > 1.0 > before.avg_margin
    # teach_mcq restores the policy's own requires_grad flags (SmolVLA freezes parts of its VLM).
    assert {n for n, p in policy.named_parameters() if not p.requires_grad} == frozen_before
    assert all(p.grad is None for p in policy.parameters())


def test_teach_rejects_bad_arguments(scene_set: Path, hf_dir: Path):
    from craft_plugin.mcq.models import load_adapter

    adapter = load_adapter(str(hf_dir))
    qs = load_mcq(scene_set).questions
    with pytest.raises(ValueError, match="objective"):
        teach_mcq(adapter, qs, objective="other")
    with pytest.raises(ValueError, match="at least one question"):
        teach_mcq(adapter, [])
    # The discriminative objective runs and lowers its loss on a tiny set (the adapter is this test's own).
    r = teach_mcq(adapter, qs[:4], steps=8, batch_size=4, objective="mcq", lr=1e-2)
    assert torch.isfinite(torch.tensor(r.losses)).all()
    assert r.losses[-1] < r.losses[0]
