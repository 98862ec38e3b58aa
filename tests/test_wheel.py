"""A wheel install works like the README (issue 14.5): the two wheels built from this tree,
installed into a fresh environment next to LeRobot, then the README's quick start run there as
written (way (c): plain `--policy.type=craft`, no flag), `craft train` (way (b)), and what LeRobot
does with `--discover_packages_path=craft_plugin` (way (a); its full runs are in
tests/policies/test_lerobot_train.py).

The fresh environment takes its packages from requirements.lock as constraints (uv installs them
from its cache, as the set-up did), and nothing of this checkout: not the editable install, not
PYTHONPATH, not the current directory.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from support.train_log import parse_steps
from test_readme import quickstart_commands

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).parent / "uv"


def _run(cmd: list[str] | str, env: dict, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    args = shlex.split(cmd) if isinstance(cmd, str) else cmd
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert res.returncode == 0, f"{args[:3]}...: {(res.stdout + res.stderr)[-3000:]}"
    return res


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """(tmp folder, env) with the fresh environment's bin/ first on PATH."""
    assert UV.is_file(), f"{UV} missing: the set-up (scripts/craft-env.sh) installs uv into the environment"
    tmp = tmp_path_factory.mktemp("wheel")
    # PYTHONDONTWRITEBYTECODE (set on this machine and in CI) would make every command below
    # recompile torch, transformers and lerobot from source: ~2.5x slower imports, ~200 s over the
    # file. A pip install writes the bytecode; here the first import writes what is imported.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")}
    for project in (ROOT, ROOT / "lerobot_policy_craft"):
        _run([str(UV), "build", "--quiet", "--wheel", "--python", sys.executable, "--out-dir", str(tmp / "dist"), str(project)], env, tmp)
    (wheel,) = (tmp / "dist").glob("craft_plugin-*.whl")
    _run([str(UV), "venv", "--quiet", "--python", sys._base_executable, str(tmp / "env")], env, tmp)
    # `pip install craft-plugin` from the built wheel: its dependency brings lerobot_policy_craft
    _run([str(UV), "pip", "install", "--quiet", "--python", str(tmp / "env" / "bin" / "python"), str(wheel),
          "--find-links", str(tmp / "dist"), "-c", str(ROOT / "requirements.lock")], env, tmp)  # fmt: skip
    env |= {"PATH": f"{tmp / 'env' / 'bin'}{os.pathsep}{env['PATH']}", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf")}
    return tmp, env


def test_the_wheels_install_craft_plugin_and_its_companion(fresh):
    tmp, env = fresh
    res = _run(["python", "-c", "import importlib.metadata as m, craft_plugin, lerobot_policy_craft; "
                "print(m.version('craft-plugin'), m.version('lerobot_policy_craft'), craft_plugin.__file__, "
                "m.metadata('lerobot_policy_craft')['Name'])"], env, tmp)  # fmt: skip
    version, companion, where, name = res.stdout.split()
    assert version == companion, (version, companion)
    assert name == "lerobot_policy_craft", "LeRobot imports distributions whose name starts with lerobot_policy_"
    assert where.startswith(str(tmp / "env")), f"craft_plugin imported from {where}, not the fresh environment"
    # way (a), --discover_packages_path=craft_plugin: what LeRobot's parser does with it
    res = _run(["python", "-c", "from lerobot.configs import parser; parser.load_plugin('craft_plugin'); "
                "from lerobot.configs.policies import PreTrainedConfig; "
                "print(PreTrainedConfig.get_choice_class('craft').__module__)"], env, tmp)  # fmt: skip
    assert res.stdout.strip() == "craft_plugin.policies.craft.configuration_craft"


def test_the_readme_quickstart_runs_as_written(fresh):
    tmp, env = fresh
    work = tmp / "quickstart"
    work.mkdir()
    logs = []
    for command in quickstart_commands():
        command = command.replace("/tmp/craft-", f"{work}/craft-").replace("examples/", f"{ROOT}/examples/")
        res = _run(command, env, work)
        logs.append(res.stdout + res.stderr)
    build, train, report, export = logs[1:]
    assert "--num-anchors not given: every frame of the dataset is an anchor (24 anchors)" in build
    steps = parse_steps(train)
    assert [int(s["step"]) for s in steps] == [1, 2, 3, 4] and steps[0]["L_ret"] == 0.0
    metrics = [json.loads(r) for r in (work / "craft-run" / "craft_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2, 3, 4] and abs(metrics[0]["L_ret"]) < 1e-5
    # the wheel without the `demo` extra has no matplotlib: the tables, no plots, one line saying why
    assert "plots: none: matplotlib is not installed (pip install 'craft-plugin[demo]' for the plots)" in report
    md = (work / "craft-report" / "report.md").read_text()
    assert "| craft-run | 1 |" in md and "not drawn (matplotlib is not installed" in md
    assert "Traceback" not in report and not list((work / "craft-report").glob("*.png"))
    assert json.loads((work / "craft-act" / "config.json").read_text())["type"] == "act"
    assert not (work / "craft-act" / "base").exists(), "the export is a plain ACT checkpoint"


def _world_args(tmp: Path) -> list[str]:
    world = tmp / "quickstart" / "craft-world"
    return [
        f"--policy.base_path={world / 'act'}", f"--policy.craft.anchor_cache_dir={world / 'cache'}",
        "--policy.push_to_hub=false", "--policy.device=cpu", "--dataset.repo_id=local/tiny",
        f"--dataset.root={world / 'data'}", "--steps=2", "--batch_size=4", "--log_freq=1", "--save_freq=2",
        "--num_workers=0", "--wandb.enable=false",
    ]  # fmt: skip


def test_craft_train_passes_every_argument_and_fills_in_the_run(fresh):
    """Way (b) from the wheel: `craft train` runs LeRobot's own entry point in-process, with the
    run's values as --policy.run.* and an output folder chosen as LeRobot would."""
    tmp, env = fresh
    work = tmp / "way_b"
    work.mkdir()
    res = _run(["craft", "train", "--policy.type=craft", *_world_args(tmp), "--policy.craft.retention_mode=token_ce",
                "--policy.craft.pooling=[mean_image_tokens,cls_token]"], env, work)  # fmt: skip
    log = res.stdout + res.stderr
    assert "mode=token_ce" in log
    assert [int(s["step"]) for s in parse_steps(log)] == [1, 2] and all(s["L_ret"] > 0 for s in parse_steps(log))
    (run,) = (work / "outputs" / "train").glob("*/*_craft")
    ckpt = run / "checkpoints" / "000002" / "pretrained_model"
    saved = json.loads((ckpt / "train_config.json").read_text())
    assert saved["policy"]["run"] == {"steps": 2, "output_dir": str(run.relative_to(work)), "log_freq": 1}
    assert json.loads((ckpt / "config.json").read_text())["run"]["steps"] is None, "never inherited by a later run"
    assert [json.loads(r)["step"] for r in (run / "craft_metrics.jsonl").read_text().splitlines()] == [1, 2]
