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
    assert craft_plugin.__version__ == "0.2.0"


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


#: The rooms, lowest first (ARCHITECTURE.md: cli → demo → mcq, policies → retention → cache,
#: taps, hook → core, config): a module imports only from its own room or a lower rank; two rooms
#: of one rank do not import each other. Within a level the order is what the code needs: the
#: cache builder runs the taps, and `craft eval-mcq` loads craft checkpoints (mcq → policies).
#: ``craft_plugin`` itself (the public surface: CraftHook, CraftConfig, __version__) may be
#: imported from anywhere.
ROOM_RANK = {
    "config": 0, "core": 1, "hook": 2, "taps": 2, "cache": 3, "retention": 4, "policies": 5, "mcq": 6,
    "demo": 7, "cli": 8,
}  # fmt: skip


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every craft_plugin module ``path`` imports (top level or inside functions), with its line."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(Path(craft_plugin.__file__).parents[1]).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names if base == "craft_plugin"]
    return [(line, name) for line, name in found if name == "craft_plugin" or name.startswith("craft_plugin.")]


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOM_RANK else None


def test_imports_run_one_way_for_the_whole_package():
    root = Path(craft_plugin.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) > 30
    bad = []
    for path in files:
        mine = _room("craft_plugin." + ".".join(path.relative_to(root).with_suffix("").parts))
        if mine is None:  # craft_plugin/__init__.py: the public surface imports hook and config
            continue
        for line, target in _imports(path):
            room = _room(target)
            if room is None or room == mine:
                continue
            if ROOM_RANK[room] >= ROOM_RANK[mine]:
                bad.append(f"{path.relative_to(root)}:{line} ({mine}) imports {target} ({room})")
    assert not bad, "imports that run upwards or sideways:\n" + "\n".join(bad)


def test_examples_and_benchmarks_do_not_reach_into_tests():
    repo = Path(craft_plugin.__file__).parents[1]
    offenders = [
        str(p.relative_to(repo)) for folder in ("examples", "benchmarks") for p in (repo / folder).glob("*.py")
        if "tests" in p.read_text(encoding="utf-8") and ("sys.path" in p.read_text(encoding="utf-8") or "from support" in p.read_text(encoding="utf-8"))
    ]  # fmt: skip
    assert offenders == []


def test_lerobots_torchcodec_warning_is_one_line_and_other_records_pass(caplog):
    import logging

    from craft_plugin.cli import quiet_torchcodec_warning

    quiet_torchcodec_warning()
    quiet_torchcodec_warning()  # idempotent
    log = logging.getLogger("lerobot.utils.import_utils")
    assert sum(type(f).__name__ == "OneLineTorchcodecWarning" for f in log.filters) == 1
    noise = ("Could not load libtorchcodec. Likely causes:\n  1. FFmpeg is not properly installed\n"
             "[start of libtorchcodec loading traceback]\nTraceback (most recent call last):\n  ...\n"
             "[end of libtorchcodec loading traceback].\n'torchcodec' is installed but cannot be loaded "
             "(see the error above). Falling back to 'pyav' as a default decoder.")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="lerobot.utils.import_utils"):
        log.warning(noise)
        log.warning("another warning\nwith two lines")
    first, second = (r.getMessage() for r in caplog.records)
    assert first.startswith("torchcodec cannot load its FFmpeg libraries here, so LeRobot decodes video with pyav")
    assert "\n" not in first and "Traceback" not in first
    assert second == "another warning\nwith two lines"
