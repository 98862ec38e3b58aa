"""The action pathway of the VLA taps, on tiny real LeRobot policies (random weights, offline).

Flow matching (smolvla, pi0, pi05): ``action_output`` is the expert's velocity ``v_t`` at a stored
noise and time, checked against the policy's own per-element loss ``(noise - actions - v_t)**2``.
pi0_fast: the LM's last hidden states at the FAST action-token positions (teacher forcing),
mean-pooled, checked against its own training pass and cross-entropy loss.
"""

from __future__ import annotations

import copy
import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="craft-test-hf-"))

from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

pytest.importorskip("lerobot.policies.smolvla.modeling_smolvla")

from support.tiny_smolvla import make_smolvla_batch, make_tiny_smolvla  # noqa: E402
from support.tiny_vla import TinySizes, make_tiny_vla, make_vla_batch  # noqa: E402

from craft_plugin.taps import make_tap  # noqa: E402
from craft_plugin.taps.paligemma import sample_beta  # noqa: E402
from craft_plugin.taps.smolvla import TIME_BETA_ALPHA, TIME_BETA_BETA, TIME_OFFSET, TIME_SCALE  # noqa: E402

FAMILIES = ("smolvla", "pi0", "pi05", "pi0_fast")
FLOW = ("smolvla", "pi0", "pi05")
B = 3
ACTION_DIM = 4  # both tiny builders
CHUNK = 4
MAX_ACTION_DIM = 8
LANG_TOKENS = "observation.language.tokens"
ACTION_TOKENS = "action.tokens"
ACTION_TOKEN_MASK = "action.token_mask"


@pytest.fixture(scope="module", params=FAMILIES)
def vla(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """``(family, policy in eval mode, a preprocessed training batch of B rows)``."""
    family = request.param
    if family == "smolvla":
        policy, pre, _ = make_tiny_smolvla(seed=0)
        batch = pre(make_smolvla_batch(batch_size=B, seed=1))
    else:
        policy, pre, _ = make_tiny_vla(family, seed=0)
        batch = pre(make_vla_batch(family, batch_size=B, seed=1))
    policy.eval()
    yield family, policy, batch


def _hook_count(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in module.modules()
    )


def _rows(batch: dict[str, Any], rows: slice) -> dict[str, Any]:
    return {k: (v[rows] if torch.is_tensor(v) else v[rows] if isinstance(v, list) else v) for k, v in batch.items()}


def _draw(tap: Any, batch: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    return tap.draw_action_randomness(batch, torch.Generator().manual_seed(seed))


def _lerobot_module(family: str) -> Any:
    import importlib

    return importlib.import_module(
        {
            "smolvla": "lerobot.policies.smolvla.modeling_smolvla",
            "pi0": "lerobot.policies.pi0.modeling_pi0",
            "pi05": "lerobot.policies.pi05.modeling_pi05",
        }[family]
    )


# -- shapes, kinds ------------------------------------------------------------------------------
def test_kind_draw_and_output_shapes(vla: tuple[str, Any, dict[str, Any]]) -> None:
    family, policy, batch = vla
    with make_tap(policy) as tap, torch.no_grad():
        draw = _draw(tap, batch)
        out = tap.action_output(batch, draw)
        assert tap.action_dim == ACTION_DIM
        if family == "pi0_fast":
            assert tap.action_kind == "hidden"
            assert draw == {}
            assert out.shape == (B, TinySizes().width) == (B, tap.hidden_dim)
        else:
            assert tap.action_kind == "velocity"
            assert set(draw) == {"noise", "time"}
            assert draw["noise"].shape == (B, CHUNK, MAX_ACTION_DIM) and draw["noise"].dtype == torch.float32
            assert draw["time"].shape == (B,) and draw["time"].dtype == torch.float32
            assert all(v.device.type == "cpu" for v in draw.values())
            assert ((draw["time"] >= 0.001) & (draw["time"] <= 1.0)).all()
            assert out.shape == (B, CHUNK, ACTION_DIM)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_noise_shape_and_time_distribution_are_lerobots(
    vla: tuple[str, Any, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The draw has the shape ``forward`` samples noise in, and time the family's own parameters."""
    family, policy, batch = vla
    if family not in FLOW:
        pytest.skip("pi0_fast draws nothing")
    module = _lerobot_module(family)
    seen: dict[str, Any] = {}
    real_noise, real_time = module.sample_noise, module.sample_time_beta

    def noise(shape: Any, device: Any) -> torch.Tensor:
        seen["shape"] = tuple(shape)
        return real_noise(shape, device)

    def time(bsize: int, device: Any, **kw: float) -> torch.Tensor:
        seen["time"] = kw
        return real_time(bsize, device, **kw)

    monkeypatch.setattr(module, "sample_noise", noise)
    monkeypatch.setattr(module, "sample_time_beta", time)
    with torch.no_grad():
        policy.forward(dict(batch))
    with make_tap(policy) as tap:
        draw = _draw(tap, batch)
    assert draw["noise"].shape == seen["shape"]
    if family == "smolvla":
        ours = dict(alpha=TIME_BETA_ALPHA, beta=TIME_BETA_BETA, scale=TIME_SCALE, offset=TIME_OFFSET)
    else:
        c = policy.config
        ours = dict(
            alpha=c.time_sampling_beta_alpha,
            beta=c.time_sampling_beta_beta,
            scale=c.time_sampling_scale,
            offset=c.time_sampling_offset,
        )
    assert seen["time"] == ours


@pytest.mark.parametrize("alpha,beta", [(1.5, 1.0), (1.0, 2.0), (2.0, 3.0), (0.5, 0.7)])
def test_sample_beta_is_exact(alpha: float, beta: float) -> None:
    """Generator-only Beta draws follow Beta(alpha, beta) (KS test) and are reproducible."""
    stats = pytest.importorskip("scipy.stats")
    x = sample_beta(alpha, beta, 20000, torch.Generator().manual_seed(3))
    assert torch.equal(x, sample_beta(alpha, beta, 20000, torch.Generator().manual_seed(3)))
    assert ((x >= 0) & (x <= 1)).all()
    assert stats.kstest(x.numpy(), stats.beta(alpha, beta).cdf).pvalue > 1e-3


# -- the draw matters ------------------------------------------------------------------------------
def test_same_draw_same_output_and_the_draw_matters(vla: tuple[str, Any, dict[str, Any]]) -> None:
    family, policy, batch = vla
    with make_tap(policy) as tap, torch.no_grad():
        draw = _draw(tap, batch)
        out = tap.action_output(batch, draw)
        assert torch.equal(out, tap.action_output(batch, {k: v.clone() for k, v in draw.items()}))
        if family == "pi0_fast":
            # no randomness: the output is a function of the batch's action tokens
            valid = batch[ACTION_TOKEN_MASK].bool()
            tokens = batch[ACTION_TOKENS].clone()
            last = int(valid[0].sum()) - 1
            tokens[0, last] = 5 if tokens[0, last] != 5 else 6
            changed = tap.action_output({**batch, ACTION_TOKENS: tokens}, {})
            assert not torch.allclose(changed[0], out[0], atol=1e-4)
            torch.testing.assert_close(changed[1:], out[1:], atol=1e-6, rtol=0)
            padded = batch[ACTION_TOKENS].clone()
            padded[~valid] = 7  # padding content is never pooled
            torch.testing.assert_close(tap.action_output({**batch, ACTION_TOKENS: padded}, {}), out, atol=1e-6, rtol=0)
            return
        # changing the stored noise changes the teacher target (all rows) ...
        other_noise = {**draw, "noise": _draw(tap, batch, seed=1)["noise"]}
        moved = tap.action_output(batch, other_noise)
        assert all(not torch.allclose(moved[i], out[i], atol=1e-4) for i in range(B))
        # ... even in the padded action dims only (they enter x_t and the expert)
        pad_only = draw["noise"].clone()
        pad_only[..., ACTION_DIM:] += 1.0
        assert not torch.allclose(tap.action_output(batch, {**draw, "noise": pad_only}), out, atol=1e-4)
        # ... and so does changing the time
        later = {**draw, "time": (draw["time"] * 0.5).clamp_min(0.001)}
        assert all(not torch.allclose(tap.action_output(batch, later)[i], out[i], atol=1e-4) for i in range(B))
        with pytest.raises(ValueError, match="does not fit"):
            tap.action_output(batch, {**draw, "noise": draw["noise"][..., :ACTION_DIM]})
        with pytest.raises(KeyError, match="draw"):
            tap.action_output(batch, {})


# -- consistency with the policy's own loss ---------------------------------------------------------------
def test_velocity_reproduces_the_policys_own_loss(
    vla: tuple[str, Any, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    family, policy, batch = vla
    if family not in FLOW:
        pytest.skip("pi0_fast: see test_fast_hidden_is_what_feeds_lm_head")
    batch = dict(batch)
    if family == "smolvla":  # smolvla masks padded steps: make some
        is_pad = torch.zeros(B, CHUNK, dtype=torch.bool)
        is_pad[1, -1] = is_pad[2, -2:] = True
        batch["action_is_pad"] = is_pad
    with make_tap(policy) as tap, torch.no_grad():
        draw = _draw(tap, batch, seed=4)
        v = tap.action_output(batch, draw)
        actions = policy.prepare_action(batch)
        noise, time = draw["noise"], draw["time"]
        u = (noise - actions)[..., :ACTION_DIM]
        mine = (u - v) ** 2  # per element, real dims
        # element-wise: the inner model's training pass with the same noise and time
        images, img_masks = (policy.prepare_images if family == "smolvla" else policy._preprocess_images)(batch)
        args = [images, img_masks, batch[LANG_TOKENS], batch["observation.language.attention_mask"]]
        if family != "pi05":
            args.append(policy.prepare_state(batch))
        losses = policy.model.forward(*args, actions, noise, time)
        torch.testing.assert_close(mine, losses[..., :ACTION_DIM], atol=1e-5, rtol=1e-5)
        # per sample, through the policy's own forward(reduction="none")
        if family == "smolvla":
            per_sample, _ = policy.forward(dict(batch), noise=noise, time=time, reduction="none")
            valid = (~batch["action_is_pad"]).unsqueeze(-1)
            expected = (mine * valid).sum(dim=(1, 2)) / (valid.sum(dim=(1, 2)) * ACTION_DIM)
        else:  # pi0 / pi05 sample internally: hand them our draw
            module = _lerobot_module(family)
            monkeypatch.setattr(module, "sample_noise", lambda shape, device: noise.to(device))
            monkeypatch.setattr(module, "sample_time_beta", lambda bsize, device, **kw: time.to(device))
            per_sample, _ = policy.forward(dict(batch), reduction="none")
            expected = mine.mean(dim=(1, 2))
    torch.testing.assert_close(per_sample, expected, atol=1e-5, rtol=1e-5)
    assert (per_sample > 0).all()


def test_fast_hidden_is_what_feeds_lm_head(vla: tuple[str, Any, dict[str, Any]]) -> None:
    """pi0_fast: pooled action-token states of the training pass; lm_head on them gives its CE loss."""
    from lerobot.policies.common.vla_utils import prepare_attention_masks_4d

    family, policy, batch = vla
    if family != "pi0_fast":
        pytest.skip("pi0_fast only")
    core = policy.model
    with make_tap(policy) as tap, torch.no_grad():
        pooled = tap.action_output(batch, {})
        hidden, valid = tap.action_token_states(batch)
        # the policy's own training pass (default attention kernel), prefix + action tokens
        images, img_masks = policy._preprocess_images(batch)
        embs, pad, att2d, _, _ = core.embed_prefix_fast(
            images, img_masks, batch[LANG_TOKENS], batch["observation.language.attention_mask"],
            batch[ACTION_TOKENS], batch[ACTION_TOKEN_MASK],
        )  # fmt: skip
        (prefix_out, _), _ = core.paligemma_with_expert.forward(
            attention_mask=prepare_attention_masks_4d(att2d, dtype=embs.dtype),
            position_ids=torch.cumsum(pad, dim=1) - 1,
            inputs_embeds=[embs, None],
            use_cache=False,
        )
        n = batch[ACTION_TOKENS].shape[1]
        logits = core.paligemma_with_expert.paligemma.lm_head(hidden)
        loss, _ = policy.forward(batch)
    assert hidden.shape == (B, n, tap.hidden_dim) and torch.equal(valid, batch[ACTION_TOKEN_MASK].bool())
    torch.testing.assert_close(hidden[valid], prefix_out[:, -n:][valid], atol=1e-5, rtol=1e-5)
    m = valid.unsqueeze(-1).float()
    torch.testing.assert_close(pooled, (hidden * m).sum(1) / m.sum(1), atol=1e-6, rtol=1e-6)
    # next-token cross-entropy over the valid action tokens, as PI0FastPytorch.forward computes it
    targets, tmask = batch[ACTION_TOKENS][:, 1:], valid[:, 1:].float()
    ce = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="none")
    ce = (ce.view_as(tmask) * tmask).sum() / tmask.sum()
    torch.testing.assert_close(ce, loss, atol=1e-5, rtol=1e-5)


# -- randomness, batch independence, teacher vs student, hooks ------------------------------------------
def test_draws_come_only_from_the_generator(vla: tuple[str, Any, dict[str, Any]]) -> None:
    family, policy, batch = vla
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    with make_tap(policy) as tap, torch.no_grad():
        a, b, c = _draw(tap, batch, seed=5), _draw(tap, batch, seed=5), _draw(tap, batch, seed=6)
        assert torch.equal(torch.get_rng_state(), state), "drawing used the global RNG"
        tap.action_output(batch, a)
        assert torch.equal(torch.get_rng_state(), state), "action_output used the global RNG"
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) and not torch.equal(a[k], c[k])


def test_a_rows_output_does_not_depend_on_its_batch(vla: tuple[str, Any, dict[str, Any]]) -> None:
    family, policy, batch = vla
    with make_tap(policy) as tap, torch.no_grad():
        draw = _draw(tap, batch, seed=2)
        full = tap.action_output(batch, draw)
        for i in range(B):
            rows = slice(i, i + 1)
            one = _rows(batch, rows)
            if family == "smolvla":
                # smolvla pads language to the batch's longest task: alone, a row has less padding
                assert one[LANG_TOKENS].shape[1] <= batch[LANG_TOKENS].shape[1]
            alone = tap.action_output(one, {k: v[rows] for k, v in draw.items()})
            torch.testing.assert_close(alone, full[rows], atol=1e-5, rtol=0)


def test_deepcopy_student_matches_the_teacher(vla: tuple[str, Any, dict[str, Any]]) -> None:
    """The cache invariant: teacher (eval, no_grad) == student copy (eval, with grad), and grads flow."""
    family, policy, batch = vla
    student = copy.deepcopy(policy)
    if family != "smolvla":  # no 257152-row embedding gradient: not what this test is about (and slow)
        student.model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.requires_grad_(False)
    with make_tap(policy) as tap, torch.no_grad():
        draw = _draw(tap, batch, seed=8)
        teacher = tap.action_output(batch, draw)
    with make_tap(student) as tap:
        out = tap.action_output(batch, draw)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), teacher, atol=1e-5, rtol=0)
    out.pow(2).mean().backward()
    if family == "pi0_fast":
        lm = student.model.paligemma_with_expert.paligemma.model.language_model
        grad = lm.layers[-1].mlp.down_proj.weight.grad
    else:
        grad = student.model.action_out_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_no_hooks_left_on_the_policy(vla: tuple[str, Any, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    family, policy, batch = vla
    before = _hook_count(policy)
    with make_tap(policy) as tap, torch.no_grad():
        installed = _hook_count(policy)  # the extract hooks (smolvla), if any
        draw = _draw(tap, batch)
        tap.action_output(batch, draw)
        assert _hook_count(policy) == installed  # the velocity hook lives only during the call
    assert _hook_count(policy) == before == 0
    with pytest.raises(RuntimeError, match="boom"):
        with make_tap(policy) as tap:
            tap.action_output(batch, draw)
            raise RuntimeError("boom")
    assert _hook_count(policy) == 0
    # an error inside the policy's pass, while the velocity hook is on: it is removed too
    core = type(policy.model)
    name = "embed_prefix_fast" if family == "pi0_fast" else "embed_prefix"

    def broken(*args: Any, **kwargs: Any) -> None:
        assert _hook_count(policy) >= (1 if family in FLOW else 0)
        raise RuntimeError("inside")

    monkeypatch.setattr(core, name, broken)
    with pytest.raises(RuntimeError, match="inside"), torch.no_grad():
        make_tap(policy).action_output(batch, draw)  # outside a `with` block works too
    assert _hook_count(policy) == 0
