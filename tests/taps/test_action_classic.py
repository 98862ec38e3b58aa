"""The action pathway of the classic taps (ACT, Diffusion Policy) on tiny real LeRobot policies.

ACT: ``action_output`` is the decoder's action chunk at inference (latent zeros), compared with
``policy.model(batch)[0]``. Diffusion: ``action_output`` is the U-Net's prediction in
``compute_loss`` at a stored noise and timestep, compared with the policy's own loss under that
same draw (``torch.randn`` / ``torch.randint`` patched to return it).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from craft_plugin.taps import make_tap
from support.tiny_classic import (
    ACTION_DIM,
    CAMERA,
    leftover_hooks,
    make_batch,
    make_tiny_act,
    make_tiny_diffusion,
)

B = 3
ACT_CHUNK = 6
HORIZON = 8
NUM_TRAIN_TIMESTEPS = 20


def _rows(batch: dict, rows: slice) -> dict:
    return {k: v[rows] if torch.is_tensor(v) else v for k, v in batch.items()}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------
# ACT
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def act():
    return make_tiny_act(seed=0, use_vae=True, dropout=0.1)


@pytest.fixture(scope="module")
def act_batch(act):
    _, pre, _ = act
    return pre(make_batch("act", B, seed=1))


def _act_model_chunk(policy, batch: dict) -> torch.Tensor:
    """``policy.model(batch)[0]`` with the camera list ACTPolicy adds (``predict_action_chunk``'s input)."""
    return policy.model({**batch, "observation.images": [batch[CAMERA]]})[0]


def test_act_kind_dim_and_no_randomness(act, act_batch):
    policy, _, _ = act
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    with make_tap(policy) as tap:
        assert tap.action_kind == "action"
        assert tap.action_dim == ACTION_DIM
        assert tap.draw_action_randomness(act_batch, g) == {}
    assert torch.equal(state, g.get_state()), "ACT drew from the generator"


def test_act_output_is_the_policys_own_action_chunk(act, act_batch):
    policy, _, _ = act
    assert not policy.training
    with torch.no_grad():
        ref = _act_model_chunk(policy, act_batch)
        chunk = policy.predict_action_chunk(act_batch)
        with make_tap(policy) as tap:
            out = tap.action_output(act_batch, {})
    assert out.shape == (B, ACT_CHUNK, ACTION_DIM) and out.dtype == torch.float32
    assert _max_diff(out, ref) <= 1e-6
    assert _max_diff(out, chunk) <= 1e-6
    assert out.abs().max() > 1e-3  # a real output, not zeros
    assert "observation.images" not in act_batch, "the tap modified the caller's batch"


def test_act_output_ignores_the_action_chunk(act, act_batch):
    """Latent zeros: the ground-truth actions (which a VAE sample would read) change nothing."""
    policy, _, _ = act
    other = dict(act_batch)
    other["action"] = act_batch["action"] + 5.0
    no_action = {k: v for k, v in act_batch.items() if k not in ("action", "action_is_pad")}
    with make_tap(policy) as tap, torch.no_grad():
        out = tap.action_output(act_batch, {})
        assert torch.equal(out, tap.action_output(other, {}))
        assert torch.equal(out, tap.action_output(no_action, {}))


def test_act_output_is_deterministic_and_row_independent(act, act_batch):
    policy, _, _ = act
    with make_tap(policy) as tap, torch.no_grad():
        a = tap.action_output(act_batch, {})
        b = tap.action_output(act_batch, {})
        alone = tap.action_output(_rows(act_batch, slice(0, 1)), {})
        last_two = tap.action_output(_rows(act_batch, slice(1, None)), {})
    assert torch.equal(a, b)
    assert _max_diff(alone[0], a[0]) <= 1e-5
    assert _max_diff(last_two, a[1:]) <= 1e-5


def test_act_train_mode_with_vae_keeps_the_zero_latent():
    """Dropout 0, use_vae=True: in train mode the tap's output is the eval output (latent zeros,
    no RNG drawn), while the policy's own train forward samples the VAE and differs."""
    policy, pre, _ = make_tiny_act(seed=0, use_vae=True, dropout=0.0)
    batch = pre(make_batch("act", B, seed=1))
    with make_tap(policy) as tap, torch.no_grad():
        out_eval = tap.action_output(batch, {})
        policy.train()
        try:
            rng = torch.get_rng_state()
            out_train = tap.action_output(batch, {})
            assert torch.equal(rng, torch.get_rng_state()), "the tap drew random numbers"
            assert policy.training, "the tap switched the policy's mode"
            torch.manual_seed(0)
            vae_chunk = _act_model_chunk(policy, batch)
        finally:
            policy.eval()
    assert _max_diff(out_train, out_eval) <= 1e-6
    assert _max_diff(vae_chunk, out_eval) > 1e-4  # the policy's training forward uses a VAE sample


def test_act_dropout_follows_the_callers_mode(act, act_batch):
    policy, _, _ = act
    with make_tap(policy) as tap, torch.no_grad():
        out_eval = tap.action_output(act_batch, {})
        policy.train()
        try:
            torch.manual_seed(0)
            out_train = tap.action_output(act_batch, {})
        finally:
            policy.eval()
    assert _max_diff(out_train, out_eval) > 1e-4  # dropout 0.1 active in train mode


def test_act_output_carries_grad_through_decoder_and_encoder(act, act_batch):
    policy, _, _ = act
    policy.zero_grad(set_to_none=True)
    with make_tap(policy) as tap:
        out = tap.action_output(act_batch, {})
    assert out.requires_grad
    out.square().mean().backward()
    model = policy.model
    assert model.action_head.weight.grad is not None
    assert model.decoder.layers[0].linear1.weight.grad is not None
    assert model.decoder_pos_embed.weight.grad is not None
    assert model.encoder.layers[0].linear1.weight.grad is not None
    assert model.backbone.conv1.weight.grad is not None
    assert model.vae_encoder_latent_output_proj.weight.grad is None  # the VAE encoder never runs
    policy.zero_grad(set_to_none=True)
    assert leftover_hooks(policy) == []


# ---------------------------------------------------------------------------------------------
# Diffusion
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusion():
    return make_tiny_diffusion(seed=0)


@pytest.fixture(scope="module")
def diffusion_sample(diffusion):
    """The same tiny policy built with ``prediction_type="sample"`` (the U-Net predicts actions)."""
    from lerobot.policies.factory import get_policy_class

    policy, _, _ = diffusion
    config = dataclasses.replace(policy.config, prediction_type="sample")
    torch.manual_seed(0)
    sample_policy = get_policy_class("diffusion")(config)
    sample_policy.eval()
    return sample_policy


@pytest.fixture(scope="module")
def diff_batch(diffusion):
    _, pre, _ = diffusion
    return pre(make_batch("diffusion", B, seed=1))


def _draw(tap, batch, seed: int) -> dict:
    return tap.draw_action_randomness(batch, torch.Generator().manual_seed(seed))


def test_diffusion_action_kind_follows_the_prediction_type(diffusion, diffusion_sample):
    policy, _, _ = diffusion
    assert policy.config.prediction_type == "epsilon"
    assert make_tap(policy).action_kind == "epsilon"
    assert diffusion_sample.config.prediction_type == "sample"
    assert make_tap(diffusion_sample).action_kind == "action"
    assert make_tap(policy).action_dim == ACTION_DIM


def test_diffusion_draw_shapes_and_generator_only(diffusion, diff_batch):
    policy, _, _ = diffusion
    tap = make_tap(policy)
    rng = torch.get_rng_state()
    d1 = _draw(tap, diff_batch, 11)
    d2 = _draw(tap, diff_batch, 11)
    d3 = _draw(tap, diff_batch, 12)
    assert torch.equal(rng, torch.get_rng_state()), "the draw used the global RNG"
    assert set(d1) == {"noise", "timestep"}
    assert d1["noise"].shape == (B, HORIZON, ACTION_DIM) and d1["noise"].dtype == torch.float32
    assert d1["timestep"].shape == (B,) and d1["timestep"].dtype == torch.int64
    assert d1["noise"].device.type == "cpu" and d1["timestep"].device.type == "cpu"
    assert torch.equal(d1["noise"], d2["noise"]) and torch.equal(d1["timestep"], d2["timestep"])
    assert not torch.equal(d1["noise"], d3["noise"])
    # The same draw as torch.randn / torch.randint on a generator in that state.
    g = torch.Generator().manual_seed(11)
    assert torch.equal(d1["noise"], torch.randn((B, HORIZON, ACTION_DIM), generator=g))
    assert torch.equal(d1["timestep"], torch.randint(0, NUM_TRAIN_TIMESTEPS, (B,), generator=g))


def test_diffusion_draw_distributions(diffusion):
    """N(0, 1) noise; timesteps uniform over [0, num_train_timesteps), every value reached."""
    policy, _, _ = diffusion
    tap = make_tap(policy)
    n = 4000
    draw = _draw(tap, {"action": torch.zeros(n, HORIZON, ACTION_DIM)}, 0)
    noise, t = draw["noise"], draw["timestep"]
    assert noise.shape == (n, HORIZON, ACTION_DIM)
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1.0) < 0.02
    assert int(t.min()) == 0 and int(t.max()) == NUM_TRAIN_TIMESTEPS - 1
    counts = torch.bincount(t, minlength=NUM_TRAIN_TIMESTEPS)
    assert counts.shape == (NUM_TRAIN_TIMESTEPS,)
    assert counts.min() > 0.7 * n / NUM_TRAIN_TIMESTEPS and counts.max() < 1.3 * n / NUM_TRAIN_TIMESTEPS


def test_diffusion_output_shape_determinism_and_the_draw_matters(diffusion, diff_batch):
    policy, _, _ = diffusion
    with make_tap(policy) as tap, torch.no_grad():
        draw = _draw(tap, diff_batch, 3)
        rng = torch.get_rng_state()
        out = tap.action_output(diff_batch, draw)
        again = tap.action_output(diff_batch, {k: v.clone() for k, v in draw.items()})
        assert torch.equal(rng, torch.get_rng_state()), "action_output used the global RNG (eval mode)"
        other_noise = tap.action_output(diff_batch, {**draw, "noise": _draw(tap, diff_batch, 4)["noise"]})
        other_t = tap.action_output(diff_batch, {**draw, "timestep": (draw["timestep"] + 7) % NUM_TRAIN_TIMESTEPS})
    assert out.shape == (B, HORIZON, ACTION_DIM) and out.dtype == torch.float32
    assert torch.equal(out, again)
    # Changing the stored noise changes the teacher target, in every row; so does the timestep.
    assert ((other_noise - out).abs().amax(dim=(1, 2)) > 1e-3).all()
    assert ((other_t - out).abs().amax(dim=(1, 2)) > 1e-4).all()
    assert "observation.images" not in diff_batch, "the tap modified the caller's batch"


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_diffusion_output_is_the_prediction_compute_loss_compares(
    prediction_type, diffusion, diffusion_sample, diff_batch, monkeypatch
):
    """Under the same noise and timesteps, the policy's own loss is MSE(action_output, target)
    and the U-Net output inside ``compute_loss`` is ``action_output``."""
    policy = diffusion[0] if prediction_type == "epsilon" else diffusion_sample
    with make_tap(policy) as tap, torch.no_grad():
        draw = _draw(tap, diff_batch, 21)
        out = tap.action_output(diff_batch, draw)

    def fake_randn(*size, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)
        assert shape == tuple(draw["noise"].shape)
        return draw["noise"].clone().to(kwargs.get("device") or "cpu")

    def fake_randint(*args, **kwargs):
        assert kwargs.get("high", args[1] if len(args) > 1 else None) == NUM_TRAIN_TIMESTEPS
        assert tuple(kwargs.get("size", ())) == (B,)
        return draw["timestep"].clone().to(kwargs.get("device") or "cpu")

    captured = {}
    handle = policy.diffusion.unet.register_forward_hook(lambda m, i, o: captured.setdefault("pred", o))
    try:
        monkeypatch.setattr(torch, "randn", fake_randn)
        monkeypatch.setattr(torch, "randint", fake_randint)
        with torch.no_grad():
            loss, _ = policy.forward(diff_batch)
    finally:
        monkeypatch.undo()
        handle.remove()
    target = draw["noise"] if prediction_type == "epsilon" else diff_batch["action"]
    assert not policy.config.do_mask_loss_for_padding
    expected = F.mse_loss(out, target)
    assert _max_diff(captured["pred"], out) <= 1e-6
    assert abs(float(loss) - float(expected)) <= 1e-6 * max(1.0, float(expected))
    assert float(expected) > 1e-3
    assert leftover_hooks(policy) == []


def test_diffusion_output_is_row_independent(diffusion, diff_batch):
    policy, _, _ = diffusion
    with make_tap(policy) as tap, torch.no_grad():
        draw = _draw(tap, diff_batch, 8)
        full = tap.action_output(diff_batch, draw)
        alone = tap.action_output(_rows(diff_batch, slice(0, 1)), {k: v[:1] for k, v in draw.items()})
        tail = tap.action_output(_rows(diff_batch, slice(1, None)), {k: v[1:] for k, v in draw.items()})
    assert _max_diff(alone[0], full[0]) <= 1e-5
    assert _max_diff(tail, full[1:]) <= 1e-5


def test_diffusion_refuses_a_bad_draw_or_batch(diffusion, diff_batch):
    policy, _, _ = diffusion
    tap = make_tap(policy)
    draw = _draw(tap, diff_batch, 0)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"draw lacks \['timestep'\]"):
            tap.action_output(diff_batch, {"noise": draw["noise"]})
        with pytest.raises(ValueError, match="draw does not fit the batch"):
            tap.action_output(diff_batch, {k: v[:1] for k, v in draw.items()})
        with pytest.raises(ValueError, match=r"lacks \['action'\]"):
            tap.action_output({k: v for k, v in diff_batch.items() if k != "action"}, draw)


def test_diffusion_output_carries_grad_to_the_unet_and_encoder(diffusion, diff_batch):
    policy, _, _ = diffusion
    policy.zero_grad(set_to_none=True)
    with make_tap(policy) as tap:
        out = tap.action_output(diff_batch, _draw(tap, diff_batch, 2))
    assert out.requires_grad
    out.square().mean().backward()
    enc = policy.diffusion.rgb_encoder[0]
    assert enc.backbone[0].weight.grad is not None and enc.out.weight.grad is not None
    assert all(p.grad is not None for p in policy.diffusion.unet.parameters())
    policy.zero_grad(set_to_none=True)
    assert leftover_hooks(policy) == []


# ---------------------------------------------------------------------------------------------
# Both families: a student identical to its teacher gives the teacher's target.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["act", "diffusion"])
def test_identical_student_gives_identical_action_output(family, act, act_batch, diffusion, diff_batch):
    teacher, batch = (act[0], act_batch) if family == "act" else (diffusion[0], diff_batch)
    student = copy.deepcopy(teacher)  # eval mode, as the retention pass runs it
    with make_tap(teacher) as t_tap:
        draw = t_tap.draw_action_randomness(batch, torch.Generator().manual_seed(9))
        with torch.no_grad():
            target = t_tap.action_output(batch, draw)
    with make_tap(student) as s_tap:
        pred = s_tap.action_output(batch, draw)
    assert pred.requires_grad
    assert pred.shape == target.shape
    assert _max_diff(pred.detach(), target) <= 1e-5
    assert leftover_hooks(student) == [] and leftover_hooks(teacher) == []
