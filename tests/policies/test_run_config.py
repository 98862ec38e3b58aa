"""The run's length, output folder and log period reach the policy through explicit paths only
(``--policy.run.*``, ``craft train``, lerobot-train's command line): issue 14.1."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from craft_plugin.policies.craft.run_config import (
    CraftRunConfig,
    is_lerobot_train,
    run_dir_of_checkpoint,
    run_flags,
    run_from_command_line,
)


def test_lerobot_train_command_line_flags_then_config_path_then_lerobot_defaults(tmp_path):
    assert run_from_command_line(["--steps=7", "--output_dir", "out/x", "--log_freq=3"]) == CraftRunConfig(7, "out/x", 3)
    # no flags: TrainPipelineConfig's own defaults; LeRobot will choose the output folder itself
    assert run_from_command_line(["--policy.type=craft"]) == CraftRunConfig(100_000, None, 200)
    saved = tmp_path / "train_config.json"  # LeRobot's resume: --config_path=<checkpoint>/train_config.json
    saved.write_text(json.dumps({"steps": 40, "output_dir": "runs/a", "log_freq": 5}))
    assert run_from_command_line([f"--config_path={saved}", "--resume=true"]) == CraftRunConfig(40, "runs/a", 5)
    assert run_from_command_line([f"--config_path={saved}", "--steps=60"]).steps == 60, "a flag wins over the file"
    with pytest.raises(ValueError, match=r"--steps='ten' is not a whole number"):
        run_from_command_line(["--steps=ten"])


def test_only_a_lerobot_train_command_line_is_read():
    assert is_lerobot_train(["/venv/bin/lerobot-train", "--steps=3"])
    assert is_lerobot_train(["/site-packages/lerobot/scripts/lerobot_train.py"])
    assert not is_lerobot_train(["/venv/bin/lerobot-eval", "--policy.path=x"])
    assert not is_lerobot_train(["/venv/bin/pytest"]) and not is_lerobot_train([])


def test_craft_train_adds_the_run_fields_and_an_output_dir_chosen_as_lerobot_does():
    now = dt.datetime(2026, 12, 2, 9, 8, 7)
    args = run_flags(["--policy.type=craft", "--steps=5"], now=now)
    assert args == [
        "--policy.type=craft", "--steps=5", "--output_dir=outputs/train/2026-12-02/09-08-07_craft",
        "--policy.run.steps=5", "--policy.run.output_dir=outputs/train/2026-12-02/09-08-07_craft",
        "--policy.run.log_freq=200",
    ]  # fmt: skip
    with_env = run_flags(["--env.type=metaworld", "--job_name=j"], now=now)
    assert "--output_dir=outputs/train/2026-12-02/09-08-07_j" in with_env
    mine = run_flags(["--output_dir=o", "--policy.run.steps=9", "--steps=5"])
    assert "--policy.run.steps=5" not in mine and mine.count("--output_dir=o") == 1, "what the user set stays"
    resumed = run_flags(["--config_path=missing.json", "--resume=true"])
    assert not any(a.startswith("--output_dir") for a in resumed), "a resumed run keeps its folder"


def test_the_run_folder_of_a_lerobot_checkpoint(tmp_path):
    assert run_dir_of_checkpoint(tmp_path / "run" / "checkpoints" / "000004" / "pretrained_model") == tmp_path / "run"
    assert run_dir_of_checkpoint(tmp_path / "export") is None
    assert run_dir_of_checkpoint(tmp_path / "x" / "pretrained_model") is None
