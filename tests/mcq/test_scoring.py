"""Shared-prefix scoring equals the naive reference; checkpoints load as the right family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from craft_plugin.mcq.data import load_image, load_mcq
from craft_plugin.mcq.models import adapter_for_policy, load_adapter
from craft_plugin.mcq.scoring import score_questions

TOL = 1e-4


@pytest.fixture()
def make(request: pytest.FixtureRequest, vlm_folder: Path, hf_dir: Path):
    def build(kind: str):
        if kind == "qwen2vl":  # a plain Hugging Face folder, family "hf"
            return load_adapter(str(request.getfixturevalue("qwen2vl_hf_dir")))
        if kind == "pi0_fast":
            return adapter_for_policy(request.getfixturevalue("pi0_fast_policy"))
        return _adapter(kind, vlm_folder, hf_dir)

    return build


def _adapter(kind: str, vlm_folder: Path, hf_dir: Path):
    if kind == "smolvla":
        from support.tiny_smolvla import make_tiny_smolvla

        policy, _, _ = make_tiny_smolvla(seed=0, vlm_folder=vlm_folder)
        return adapter_for_policy(policy)
    return load_adapter(str(hf_dir))


def _max_diff(a, b, attr: str) -> float:
    return max(abs(x - y) for qa, qb in zip(a, b) for x, y in zip(getattr(qa, attr), getattr(qb, attr)))


@pytest.mark.parametrize("kind", ["pi0_fast", "smolvla", "hf", "qwen2vl"])
def test_shared_prefix_equals_naive(kind: str, scene_set: Path, make):
    adapter = make(kind)
    assert adapter.family == {"qwen2vl": "hf"}.get(kind, kind)
    questions = load_mcq(scene_set).questions
    shared = score_questions(adapter, questions, batch_size=8)
    naive = score_questions(adapter, questions, naive=True, batch_size=8)
    chunked = score_questions(adapter, questions, batch_size=3)  # choices split over two continuation passes
    assert _max_diff(shared, naive, "sums") < TOL
    assert _max_diff(shared, naive, "means") < TOL
    assert _max_diff(shared, chunked, "sums") < TOL
    # The comparison is not vacuous: multi-token choices, finite, non-trivial, distinct scores.
    assert max(n for q in shared for n in q.n_tokens) >= 2
    flat = [s for q in shared for s in q.sums]
    assert all(torch.isfinite(torch.tensor(flat))) and max(flat) < -0.1
    assert len({round(s, 4) for s in flat}) > len(questions)
    for q in shared:
        assert q.means == pytest.approx([s / n for s, n in zip(q.sums, q.n_tokens)])


@pytest.mark.parametrize("kind", ["pi0_fast", "hf", "qwen2vl"])
def test_batch_logits_match_full_logits(kind: str, scene_set: Path, make):
    """The training path (several questions in one padded forward) computes the scoring path's logits."""
    adapter = make(kind)
    qs = load_mcq(scene_set).questions[:4]
    items = []
    for q in qs:  # different prompt lengths and choice lengths across rows
        prefix = adapter.encode(load_image(q.image), q.question)
        items.append((prefix, adapter.choice_ids(q.choices[-1])))
    with torch.no_grad():
        batched = adapter.batch_logits(items)
        for (prefix, ids), got in zip(items, batched):
            ref = adapter.full_logits(prefix, [ids])[0]
            assert got.shape == ref.shape
            assert torch.allclose(torch.log_softmax(got, -1), torch.log_softmax(ref, -1), atol=TOL)


def test_saved_pi0_fast_checkpoint_loads_as_paligemma(tmp_path: Path, scene_set: Path, pi0_fast_policy):
    from support.tiny_vla import tiny_paligemma_architecture

    policy = pi0_fast_policy
    policy.save_pretrained(tmp_path / "pretrained_model")
    questions = load_mcq(scene_set).questions[:3]
    expected = score_questions(adapter_for_policy(policy), questions)
    with tiny_paligemma_architecture():
        loaded = load_adapter(str(tmp_path))  # finds pretrained_model/ itself
    assert loaded.family == "pi0_fast"
    assert _max_diff(expected, score_questions(loaded, questions), "sums") < TOL


def test_craft_checkpoint_scores_as_its_base(tmp_path: Path, smolvla_ckpt: Path, scene_set: Path):
    from craft_plugin import CraftConfig
    from craft_plugin.policies.craft.configuration_craft import CRaFTConfig
    from craft_plugin.policies.craft.modeling_craft import CRaFTPolicy

    cfg = CRaFTConfig(base_path=str(smolvla_ckpt), craft=CraftConfig(enabled=False), device="cpu")
    CRaFTPolicy(cfg).save_pretrained(tmp_path / "craft")
    questions = load_mcq(scene_set).questions[:3]
    base = load_adapter(str(smolvla_ckpt))
    craft = load_adapter(str(tmp_path / "craft"))
    assert craft.family == "smolvla"
    assert _max_diff(score_questions(base, questions), score_questions(craft, questions), "sums") < TOL


def test_policy_without_lm_head_is_refused(tmp_path: Path):
    (tmp_path / "config.json").write_text('{"type": "act"}')
    with pytest.raises(ValueError, match="policy type 'act' has no language-model head"):
        load_adapter(str(tmp_path))
    (tmp_path / "config.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="neither a LeRobot 'type' nor a Hugging Face 'model_type'"):
        load_adapter(str(tmp_path))


def test_tiny_smolvlm_builder_makes_a_loadable_hf_folder(tmp_path: Path, scene_set: Path):
    from craft_plugin.mcq.tiny import build_tiny_smolvlm

    adapter = load_adapter(str(build_tiny_smolvlm(tmp_path / "vlm", image_size=32, width=32, layers=2)))
    assert adapter.family == "hf"
    assert [len(adapter.choice_ids(c)) for c in ("red", "top left", "bottom right")] == [1, 2, 2]
    qs = load_mcq(scene_set).questions[:3]
    assert _max_diff(score_questions(adapter, qs), score_questions(adapter, qs, naive=True), "sums") < TOL
