"""Options of the base policy from the craft command line (``--policy.base_options``) and the
normalization statistics modes (``--policy.normalization=base|dataset|merged``)."""

from __future__ import annotations

import json
import logging
import math
import sys

import numpy as np
import pytest
import torch

from policies.test_lerobot_train import _train
from support.train_log import parse_steps

# The tiny ACT checkpoint's statistics (support.tiny_classic._stats): state mean 0.1, std 0.5.
BASE_STATE_MEAN, BASE_STATE_STD = 0.1, 0.5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny dataset and a tiny ACT checkpoint (no anchor cache: CRaFT stays off here)."""
    from support.tiny_classic import make_tiny_act
    from support.tiny_dataset import make_dataset, save_policy

    root = tmp_path_factory.mktemp("base-options-world")
    make_dataset(root / "data", episodes=2, frames=8)
    save_policy(*make_tiny_act(seed=0, n_encoder_layers=1), root / "act")
    return root


def _config(world, **kwargs):
    import craft_plugin.policies  # noqa: F401
    from craft_plugin.policies.craft.configuration_craft import CRaFTConfig

    return CRaFTConfig(base_path=str(world / "act"), device="cpu", push_to_hub=False, **kwargs)


# ---------------------------------------------------------------------- base options
def test_base_option_from_the_command_line_is_in_the_saved_base_config(world, tmp_path):
    out = tmp_path / "run"
    res = _train(
        world, out, "--discover_packages_path=craft_plugin", "--policy.type=craft", f"--policy.base_path={world / 'act'}",
        "--policy.craft.enabled=false", '--policy.base_options={dropout: 0.25, n_action_steps: "3"}',
        "--steps=2", "--save_freq=2",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert [int(s["step"]) for s in parse_steps(res.stdout + res.stderr)] == [1, 2]
    ckpt = out / "checkpoints" / "000002" / "pretrained_model"
    base = json.loads((ckpt / "base" / "config.json").read_text())
    assert base["type"] == "act" and base["dropout"] == 0.25 and base["n_action_steps"] == 3
    assert json.loads((world / "act" / "config.json").read_text())["dropout"] == 0.1, "the base checkpoint is untouched"
    assert json.loads((ckpt / "config.json").read_text())["base_options"] == {"dropout": 0.25, "n_action_steps": "3"}

    # Loading the checkpoint reads base/config.json and sets the options again: same values.
    from craft_plugin.policies.craft.configuration_craft import CRaFTConfig

    cfg = CRaFTConfig.from_pretrained(str(ckpt))
    cfg.pretrained_path = ckpt
    cfg.base_path = str(tmp_path / "gone")  # not read: the checkpoint's own base/config.json is
    assert (cfg.base_config.dropout, cfg.base_config.n_action_steps, cfg.base_config.chunk_size) == (0.25, 3, 6)
    cfg.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "base" / "config.json").read_text()) == base


def test_base_dot_option_is_not_parsed_by_lerobot(world, tmp_path, monkeypatch):
    """Why the option is a mapping: draccus knows only the craft config's own flags."""
    with pytest.raises(SystemExit):
        _parse_and_validate(world, monkeypatch, "--policy.base.dropout=0.25")


def test_unknown_base_option_names_it_and_its_close_matches(world):
    with pytest.raises(ValueError, match=r"the act base config has no option 'dropuot'; close matches: dropout"):
        _config(world, base_options={"dropuot": 0.25}).base_config
    with pytest.raises(ValueError, match=r"no option 'zzz'; the act config's options are: .*chunk_size"):
        _config(world, base_options={"zzz": 1}).base_config


def test_base_option_without_a_space_after_the_colon_says_how_to_write_it(world, monkeypatch):
    """YAML reads `{dropout:0.25}` as one key 'dropout:0.25'; the message says to add the space."""
    from craft_plugin.policies.craft.configuration_craft import CraftStartupError

    with pytest.raises(CraftStartupError) as info:
        _parse_and_validate(world, monkeypatch, "--policy.base_options={dropout:0.25}")
    assert info.value.code == (
        "craft: --policy.base_options: the act base config has no option 'dropout:0.25'; "
        "it reads as one key: write '{dropout: 0.25}' (a space after the colon) or JSON '{\"dropout\": 0.25}'"
    )


def test_unknown_base_option_reaches_the_user_through_lerobot_trains_parser(world, monkeypatch):
    """LeRobot's own parser and `TrainPipelineConfig.validate` (what `lerobot-train` runs first):
    the message alone (a SystemExit, so no traceback), the ValueError kept as its cause."""
    from craft_plugin.policies.craft.configuration_craft import CraftStartupError

    with pytest.raises(CraftStartupError) as info:
        _parse_and_validate(world, monkeypatch, "--policy.base_options={dropuot: 0.25}")
    assert info.value.code == "craft: --policy.base_options: the act base config has no option 'dropuot'; close matches: dropout"
    assert isinstance(info.value.error, ValueError)
    cfg = _parse_and_validate(world, monkeypatch, '--policy.base_options={"use_vae": "false", "dropout": 0}')
    assert cfg.policy.base_config.use_vae is False and cfg.policy.base_config.dropout == 0.0


def _parse_and_validate(world, monkeypatch, *args):
    from lerobot.configs import parser
    from lerobot.configs.train import TrainPipelineConfig

    def validate(cfg):
        cfg.validate()
        return cfg

    validate.__annotations__["cfg"] = TrainPipelineConfig  # parser.wrap reads the type from it

    argv = [
        "lerobot-train", "--policy.type=craft", f"--policy.base_path={world / 'act'}", "--policy.device=cpu",
        "--policy.push_to_hub=false", "--dataset.repo_id=local/tiny", f"--dataset.root={world / 'data'}",
        "--policy.craft.enabled=false", *args,
    ]  # fmt: skip
    import craft_plugin.policies  # noqa: F401

    monkeypatch.setattr(sys, "argv", argv)
    return parser.wrap()(validate)()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dropout": "abc"}, "dropout='abc' is not a valid value for the act base config's option 'dropout': expected float"),
        ({"use_vae": 3}, "use_vae=3 is not a valid value for the act base config's option 'use_vae': expected bool"),
        ({"chunk_size": True}, "chunk_size=True is not a valid value for the act base config's option 'chunk_size': expected int"),
        ({"chunk_size": 2.5}, "chunk_size=2.5 is not a valid value for the act base config's option 'chunk_size': expected int"),
        ({"chunk_size": None}, "chunk_size=None is not a valid value"),
        ({"n_action_steps": 100}, "the act base config refuses them"),
    ],
)  # fmt: skip
def test_base_option_of_the_wrong_type_names_option_value_and_type(world, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _config(world, base_options=options).base_config


def test_base_option_strings_are_converted_as_the_cli_would(world):
    base = _config(
        world,
        base_options={"use_vae": "false", "n_action_steps": "4", "dropout": "0.5", "pretrained_backbone_weights": None,
                      "normalization_mapping": {"STATE": "MIN_MAX"}},
    ).base_config  # fmt: skip
    from lerobot.configs.types import NormalizationMode

    assert base.use_vae is False and base.n_action_steps == 4 and base.dropout == 0.5
    assert base.pretrained_backbone_weights is None and base.chunk_size == 6
    assert base.normalization_mapping == {"STATE": NormalizationMode.MIN_MAX}


# ---------------------------------------------------------------------- normalization
def test_normalization_is_checked_and_renormalize_is_its_deprecated_alias(world, caplog):
    with pytest.raises(ValueError, match=r"--policy.normalization='mixed' is not one of base, dataset, merged"):
        _config(world, normalization="mixed")
    with caplog.at_level(logging.WARNING):
        cfg = _config(world, renormalize=True)
    assert cfg.normalization == "dataset" and cfg.renormalize is False
    assert "--policy.renormalize=true is deprecated: use --policy.normalization=dataset" in caplog.text
    with pytest.raises(ValueError, match="contradicts --policy.normalization=merged"):
        _config(world, renormalize=True, normalization="merged")
    assert _config(world, normalization="Merged").normalization == "merged"


def test_merged_statistics_by_hand():
    from craft_plugin.policies.craft.processor_craft import merge_normalization_stats

    base = {
        "s": {"mean": np.array([0.0, 2.0]), "std": np.array([1.0, 1.0]), "min": np.array([-1.0, 0.0]),
              "max": np.array([1.0, 4.0]), "count": np.array([10]), "q01": np.array([-0.9, 0.1]),
              "q50": np.array([0.0, 2.0]), "q99": np.array([0.9, 3.9])},
        "only_base": {"mean": np.array([7.0])},
        "img": {"mean": torch.tensor([0.5, 0.5, 0.5]), "std": torch.tensor([0.1, 0.2, 0.3])},
    }  # fmt: skip
    dataset = {
        "s": {"mean": np.array([2.0, 2.0]), "std": np.array([1.0, 3.0]), "min": np.array([0.0, -2.0]),
              "max": np.array([3.0, 3.0]), "count": np.array([30]), "q01": np.array([0.1, -1.9]),
              "q50": np.array([2.0, 1.0]), "q99": np.array([2.9, 2.9])},
        "only_dataset": {"std": np.array([3.0])},
        "img": {"mean": np.full((3, 1, 1), 0.3), "std": np.full((3, 1, 1), 0.1)},
    }  # fmt: skip
    m = merge_normalization_stats(base, dataset)
    s = m["s"]
    np.testing.assert_allclose(s["mean"], [1.0, 2.0])
    # sqrt((1 + 1) / 2 + 1²) = sqrt(2); sqrt((1 + 9) / 2 + 0) = sqrt(5)
    np.testing.assert_allclose(s["std"], [math.sqrt(2), math.sqrt(5)])
    np.testing.assert_allclose(s["min"], [-1.0, -2.0])
    np.testing.assert_allclose(s["max"], [3.0, 4.0])
    assert s["count"].tolist() == [40]
    np.testing.assert_allclose(s["q01"], [-0.9, -1.9])
    np.testing.assert_allclose(s["q99"], [2.9, 3.9])
    np.testing.assert_allclose(s["q50"], [1.0, 1.5])
    assert m["only_base"]["mean"].tolist() == [7.0] and m["only_dataset"]["std"].tolist() == [3.0]
    assert m["img"]["mean"].shape == (3, 1, 1)
    np.testing.assert_allclose(m["img"]["mean"].ravel(), [0.4] * 3)
    np.testing.assert_allclose(m["img"]["std"].ravel(), np.sqrt((np.array([0.01, 0.04, 0.09]) + 0.01) / 2 + 0.01))
    # the mixture of two identical distributions is that distribution
    same = merge_normalization_stats(dataset, dataset)["s"]
    for k in ("mean", "std", "min", "max", "q01", "q99"):
        np.testing.assert_allclose(same[k], dataset["s"][k])


def _dataset_stats() -> dict:
    """New-dataset statistics with state mean 0.5, std 0.3 (images and action as well)."""
    vec = {"mean": np.full(4, 0.5), "std": np.full(4, 0.3), "min": np.full(4, -2.0), "max": np.full(4, 2.0)}
    image = {"mean": np.full((3, 1, 1), 0.5), "std": np.full((3, 1, 1), 0.25), "min": np.zeros((3, 1, 1)),
             "max": np.ones((3, 1, 1))}  # fmt: skip
    return {"observation.images.top": image, "observation.state": dict(vec), "action": dict(vec)}


@pytest.mark.parametrize(
    ("mode", "mean", "std"),
    [
        ("base", BASE_STATE_MEAN, BASE_STATE_STD),
        ("dataset", 0.5, 0.3),
        # mean (0.1 + 0.5) / 2 = 0.3; std sqrt((0.25 + 0.09) / 2 + 0.2²) = sqrt(0.21)
        ("merged", 0.3, math.sqrt(0.21)),
    ],
)
def test_each_mode_normalizes_a_raw_state_with_its_statistics(world, mode, mean, std):
    from craft_plugin.policies.craft.processor_craft import craft_normalization_stats, make_craft_pre_post_processors
    from support.tiny_classic import make_observation

    cfg = _config(world, normalization=mode)
    stats = _dataset_stats()
    obs = make_observation("act", 1, seed=3)
    raw = torch.tensor([[1.0, -1.0, 0.0, 0.25]])
    obs["observation.state"] = raw.clone()
    pre, _ = make_craft_pre_post_processors(cfg, stats)
    got = pre(obs)["observation.state"]
    torch.testing.assert_close(got, ((raw - mean) / std).to(got.dtype), atol=1e-5, rtol=0)
    # the same arguments give the same statistics (the policy builds its own copy this way)
    again, _ = make_craft_pre_post_processors(cfg, stats)
    obs["observation.state"] = raw.clone()
    torch.testing.assert_close(again(obs)["observation.state"], got)
    chosen = craft_normalization_stats(cfg, stats)
    assert (chosen is None) == (mode == "base")


def test_dataset_and_merged_modes_need_dataset_statistics(world):
    from craft_plugin.policies.craft.processor_craft import craft_normalization_stats

    for mode in ("dataset", "merged"):
        with pytest.raises(ValueError, match=f"--policy.normalization={mode} needs the new dataset's statistics"):
            craft_normalization_stats(_config(world, normalization=mode), None)


def test_a_base_from_its_type_uses_the_dataset_statistics():
    import craft_plugin.policies  # noqa: F401
    from craft_plugin.policies.craft.configuration_craft import CRaFTConfig
    from craft_plugin.policies.craft.processor_craft import craft_normalization_stats

    stats = _dataset_stats()
    for mode in ("base", "dataset", "merged"):
        cfg = CRaFTConfig(base_type="act", device="cpu", normalization=mode, base_options={"dim_model": 32})
        assert craft_normalization_stats(cfg, stats) is stats
        assert cfg.base_config.dim_model == 32
