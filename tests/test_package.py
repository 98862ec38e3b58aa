"""The package surface: public imports, the core's isolation from LeRobot, the `craft` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import craft_plugin
from craft_plugin.cli import app

BIN = Path(sys.executable).parent


def test_public_surface():
    from craft_plugin import CraftConfig, CraftHook  # noqa: F401

    assert set(craft_plugin.__all__) == {"CraftConfig", "CraftConfigError", "CraftHook", "__version__"}
    assert craft_plugin.__version__ == "0.1.0"


def test_core_and_hook_import_neither_lerobot_nor_transformers():
    code = (
        "import sys, craft_plugin, craft_plugin.core, craft_plugin.hook\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lerobot', 'transformers'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_console_script_help_and_version():
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    out = subprocess.run([str(BIN / "craft"), "--help"], capture_output=True, text=True, env=env, check=True)
    assert "config" in out.stdout and "--version" in out.stdout
    assert "build-cache" in out.stdout and "cache-info" in out.stdout
    out = subprocess.run([str(BIN / "craft"), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"craft-plugin {craft_plugin.__version__}"


def test_craft_config_command(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["config"])
    assert res.exit_code == 0 and json.loads(res.stdout)["epsilon_end"] == 0.05
    bad = tmp_path / "bad.yaml"
    bad.write_text("conflict_threshold: 3\n")
    res = runner.invoke(app, ["config", str(bad)])
    assert res.exit_code == 2
    assert "conflict_threshold=3: Input should be less than or equal to 1" in res.output
    res = runner.invoke(app, ["config", "--schema"])
    assert res.exit_code == 0 and "retention_freq" in json.loads(res.stdout)["properties"]


def test_build_cache_help_lists_every_option():
    runner = CliRunner()
    res = runner.invoke(app, ["build-cache", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.exit_code == 0
    for opt in (
        "--dataset.repo_id", "--dataset.root", "--policy.path", "--output-dir", "--num-anchors", "--layers",
        "--pooling", "--batch-size", "--num-workers", "--seed", "--device", "--dtype", "--overwrite", "--no-inputs",
    ):  # fmt: skip
        assert opt in res.output, opt
    res = runner.invoke(app, ["cache-info", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.exit_code == 0 and "verify every shard" in res.output


def test_build_cache_rejects_a_bad_layer_list(tmp_path):
    res = CliRunner().invoke(app, ["build-cache", "--policy.path=x", f"--output-dir={tmp_path}", "--layers=a,b"])
    assert res.exit_code == 2 and "comma-separated list of integers" in res.output
