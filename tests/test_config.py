"""CraftConfig: defaults, loading from dict/JSON/YAML, validation messages, schema."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from craft_plugin import CraftConfig, CraftConfigError


def test_defaults():
    c = CraftConfig()
    assert c.enabled is True
    assert c.retention_mode == "hidden"
    assert c.anchor_cache_dir is None
    # None: DEFAULT_ANCHOR_BATCH_SIZE (32; the original's 8 gave a noisier g_ret), or a smaller cache's size
    assert (c.anchor_batch_size, c.retention_freq) == (None, 1)
    # the original's λ lr 0.01 and ε 1.0 → 0.1 barely retained actions in benchmarks/forgetting.py
    # (see README, "Defaults"): the budget is tighter and λ reacts faster
    assert (c.initial_lambda, c.lambda_lr) == (1.0, 0.5)
    assert (c.epsilon_start, c.epsilon_end, c.epsilon_schedule) == (0.1, 0.05, "linear")
    assert c.use_grad_projection is True and c.conflict_threshold == -0.1
    assert c.projection_granularity == "global"
    assert c.hidden_loss == "mse"
    # what is anchored, the layers and the pooling come from the cache unless set
    assert c.layers is None and c.pooling is None and c.anchor_targets is None


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("retention_freq", 0, "greater than or equal to 1"),
        ("conflict_threshold", 3, "less than or equal to 1"),
        ("lambda_lr", -0.5, "greater than or equal to 0"),
        ("retention_mode", "logits", "'hidden' or 'token_ce'"),
        ("hidden_loss", "huber", "'mse', 'cosine' or 'l1'"),
        ("epsilon_schedule", "step", "'linear', 'cosine', 'exponential' or 'constant'"),
        ("projection_granularity", "per_param", "'global' or 'per_layer'"),
        ("anchor_batch_size", 0, "greater than or equal to 1"),
        ("layers", [], "at least 1 item"),
        ("layers", [-1, -1], "unique, repeated: -1"),
        ("initial_lambda", float("nan"), "finite"),
    ],
)
def test_bad_values_name_field_value_and_what_is_allowed(field, value, allowed):
    with pytest.raises(CraftConfigError) as info:
        CraftConfig.from_dict({field: value})
    msg = str(info.value)
    assert f"{field}={value!r}" in msg
    assert allowed in msg


def test_unknown_pooling_name_is_listed_with_the_allowed_ones():
    with pytest.raises(CraftConfigError) as info:
        CraftConfig.from_dict({"pooling": ["mean_image_tokens", "max"]})
    msg = str(info.value)
    assert "pooling.1='max'" in msg
    assert "'mean_image_tokens', 'mean_masked', 'last_token' or 'cls_token'" in msg


def test_unknown_field_suggests_the_right_one():
    with pytest.raises(CraftConfigError, match="unknown field 'retnetion_freq'. Did you mean 'retention_freq'"):
        CraftConfig.from_dict({"retnetion_freq": 2})


def test_cross_field_rules():
    with pytest.raises(CraftConfigError, match="initial_lambda=20.0 exceeds lambda_max=10.0"):
        CraftConfig.from_dict({"initial_lambda": 20.0})
    with pytest.raises(CraftConfigError, match="exponential' needs epsilon_start > 0 and epsilon_end > 0"):
        CraftConfig.from_dict({"epsilon_schedule": "exponential", "epsilon_end": 0.0})


def test_constructor_and_assignment_validate_too():
    with pytest.raises(ValidationError, match="retention_freq"):
        CraftConfig(retention_freq=0)
    c = CraftConfig()
    with pytest.raises(ValidationError, match="conflict_threshold"):
        c.conflict_threshold = 3.0


def test_load_json_and_yaml(tmp_path):
    j = tmp_path / "craft.json"
    j.write_text(json.dumps({"epsilon_end": 0.05, "layers": [-3, -1], "anchor_cache_dir": "/data/cache"}))
    c = CraftConfig.from_file(j)
    assert c.epsilon_end == 0.05 and c.layers == [-3, -1] and str(c.anchor_cache_dir) == "/data/cache"

    y = tmp_path / "craft.yaml"
    y.write_text("craft:\n  retention_mode: token_ce\n  pooling: [mean_masked]\n  retention_freq: 4\n")
    c = CraftConfig.from_file(y)
    assert (c.retention_mode, c.pooling, c.retention_freq) == ("token_ce", ["mean_masked"], 4)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("retention_freq: 0\n")
    with pytest.raises(CraftConfigError, match=r"bad\.yaml.*\n  - retention_freq=0"):
        CraftConfig.from_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(CraftConfigError, match="broken.json: not valid JSON"):
        CraftConfig.from_file(broken)
    with pytest.raises(CraftConfigError, match="does not exist"):
        CraftConfig.from_file(tmp_path / "missing.yaml")
    toml = tmp_path / "craft.toml"
    toml.write_text("")
    with pytest.raises(CraftConfigError, match="unsupported config format '.toml'"):
        CraftConfig.from_file(toml)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(CraftConfigError, match="expected a mapping of settings, got list"):
        CraftConfig.from_file(lst)


def test_round_trip_through_dict():
    c = CraftConfig(epsilon_schedule="cosine", layers=[-4, -2], projection_granularity="per_layer")
    assert CraftConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_json_schema_covers_every_field_with_defaults_and_bounds():
    schema = CraftConfig.json_schema()
    props = schema["properties"]
    assert set(props) == set(CraftConfig.field_names())
    assert schema["additionalProperties"] is False
    assert props["retention_freq"]["minimum"] == 1
    assert props["conflict_threshold"]["maximum"] == 1.0
    pooling = next(p for p in props["pooling"]["anyOf"] if p.get("type") == "array")
    assert pooling["items"]["enum"] == ["mean_image_tokens", "mean_masked", "last_token", "cls_token"]
    targets = next(p for p in props["anchor_targets"]["anyOf"] if p.get("type") == "array")
    assert targets["items"]["enum"] == ["features", "actions"]
    for name, prop in props.items():
        assert prop.get("description"), f"{name} has no description"
