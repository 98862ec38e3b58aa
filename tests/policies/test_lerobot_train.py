"""A stock `lerobot-train` run picks up CRaFT (way in (a): --discover_packages_path=craft_plugin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.cli import craft_cli
from support.train_log import has_traceback
from support.train_log import parse_steps as _steps

BIN = Path(sys.executable).parent
FIELDS = ("L_ret", "lambda", "epsilon", "dot", "cos", "conflict", "proj_frac")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from support.tiny_classic import make_tiny_act
    from support.tiny_dataset import make_dataset, save_policy

    root = tmp_path_factory.mktemp("train-world")
    make_dataset(root / "data")
    save_policy(*make_tiny_act(seed=0), root / "act")
    # `craft build-cache` with only paths (defaults: every frame, features and actions); the runs
    # below train with the cache's defaults too: a new user's path, both sides at their defaults.
    build = subprocess.run(
        [str(BIN / "craft"), "build-cache", f"--policy.path={root / 'act'}", f"--dataset.root={root / 'data'}",
         "--dataset.repo_id=local/tiny", f"--output-dir={root / 'cache'}"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    assert "--num-anchors not given: every frame of the dataset is an anchor" in build.stdout
    return root


def _train(world: Path, out: Path | None, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """A stock lerobot-train run; ``out=None``: no --output_dir (LeRobot chooses one under ``cwd``)."""
    cmd = [
        str(BIN / "lerobot-train"), "--policy.push_to_hub=false", "--policy.device=cpu", "--dataset.repo_id=local/tiny",
        f"--dataset.root={world / 'data'}", *([f"--output_dir={out}"] if out else []), "--steps=4", "--batch_size=4",
        "--log_freq=1", "--save_freq=4", "--num_workers=0", "--wandb.enable=false", "--seed=1", *args,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(world / "hf")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def _craft_args(world: Path, *extra: str) -> list[str]:
    return [
        "--discover_packages_path=craft_plugin", "--policy.type=craft", f"--policy.base_path={world / 'act'}",
        f"--policy.craft.anchor_cache_dir={world / 'cache'}", "--policy.craft.anchor_batch_size=4", *extra,
    ]  # fmt: skip  (layers, pooling and anchor targets: the cache's defaults)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """One 4-step craft run (way in (a)) shared by the tests that read its log and checkpoints
    (steps 2 and 4: the resume test restarts from step 2's). No --output_dir: LeRobot chooses the
    run folder after the policy is built, and the policy's metrics reach it at the first
    checkpoint (craft_plugin/policies/craft/run_config.py)."""
    cwd = tmp_path_factory.mktemp("trained")
    res = _train(world, None, *_craft_args(world), "--save_freq=2", cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = (cwd / "outputs" / "train").glob("*/*_craft")
    return run, res.stdout + res.stderr


def test_discover_packages_path_runs_craft_with_every_log_field(trained):
    run, log = trained
    assert "CRaFT: enabled=True | mode=hidden | initial λ=1.0 | λ lr=0.5" in log
    steps = _steps(log)
    assert [int(s["step"]) for s in steps] == [1, 2, 3, 4]
    for s in steps:
        assert all(f in s for f in FIELDS), s
        assert s["loss"] == s["L_task"], "the logged loss is the task loss"
    assert steps[0]["L_ret"] == 0.0, "step 1 from the teacher's own weights: L_ret = 0"
    assert steps[0]["epsilon"] == 0.1 and steps[-1]["epsilon"] == pytest.approx(0.0625, abs=1e-3)
    jsonl = [json.loads(line) for line in (run / "craft_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in jsonl] == [1, 2, 3, 4]
    assert abs(jsonl[0]["L_ret"]) < 1e-5, "L_ret at step 1 is 0 to 1e-5"
    for r, s in zip(jsonl, steps, strict=True):
        assert all(f in r for f in FIELDS)
        assert r["lambda"] == pytest.approx(s["lambda"], abs=1e-3) and r["L_task"] == pytest.approx(s["L_task"], abs=1e-3)
    ckpt = run / "checkpoints" / "000004" / "pretrained_model"
    state = json.loads((ckpt / "craft_state.json").read_text())
    assert state["step"] == 4 and state["lambda"] == pytest.approx(steps[-1]["lambda"], abs=1e-3)
    assert (ckpt / "base" / "config.json").is_file()
    assert json.loads((ckpt / "config.json").read_text())["type"] == "craft"


def test_missing_cache_stops_before_step_1_with_the_fix(world, tmp_path):
    args = [a for a in _craft_args(world) if "anchor_cache_dir" not in a]
    res = _train(world, tmp_path / "run", *args, f"--policy.craft.anchor_cache_dir={tmp_path / 'nope'}")
    assert res.returncode != 0
    log = res.stdout + res.stderr
    assert "does not exist; build one with `craft build-cache`" in log
    assert "step:1 " not in log and not has_traceback(log), "the message alone, no traceback"


def test_craft_switched_off_logs_the_same_losses_as_a_plain_run_of_its_base(world, tmp_path):
    """The wrapper itself changes nothing. (`--policy.normalization=dataset`: a plain
    `--policy.path` fine-tune takes the new dataset's normalization statistics.)"""
    plain = _train(world, tmp_path / "plain", f"--policy.path={world / 'act'}")
    off = _train(
        world, tmp_path / "off", "--discover_packages_path=craft_plugin", "--policy.type=craft",
        f"--policy.base_path={world / 'act'}", "--policy.craft.enabled=false", "--policy.normalization=dataset",
    )  # fmt: skip
    assert plain.returncode == 0 and off.returncode == 0, off.stderr[-3000:]
    a, b = _steps(plain.stdout + plain.stderr), _steps(off.stdout + off.stderr)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        assert (x["loss"], x["grdn"]) == (y["loss"], y["grdn"])


# Ways in (b) `craft train` and (c) no flag (the companion distribution), and runs without
# --output_dir: tests/test_wheel.py, from the built wheels in a fresh environment.


def test_resume_restores_lambda_step_schedule_and_sampler(world, trained, tmp_path):
    """LeRobot's --resume does not replay batches, so compare CRaFT's state, not trajectories.
    The uninterrupted run is the `trained` fixture's (λ lr 0.5, checkpoints at steps 2 and 4)."""
    import shutil

    straight = trained[0]
    assert "λ lr=0.5" in trained[1]
    full = [json.loads(line) for line in (straight / "craft_metrics.jsonl").read_text().splitlines()]

    # A run killed after step 4, whose last checkpoint is step 2's: a copy of the run with only
    # that checkpoint and its whole craft_metrics.jsonl (records of steps 1-4).
    stopped = tmp_path / "stopped"
    (stopped / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "000002", stopped / "checkpoints" / "000002")
    shutil.copy(straight / "craft_metrics.jsonl", stopped / "craft_metrics.jsonl")
    (stopped / "checkpoints" / "last").symlink_to("000002")
    ckpt = stopped / "checkpoints" / "last" / "pretrained_model"
    train_cfg = json.loads((ckpt / "train_config.json").read_text())
    train_cfg["output_dir"] = str(stopped)
    (ckpt / "train_config.json").write_text(json.dumps(train_cfg))
    saved = json.loads((ckpt / "craft_state.json").read_text())
    assert saved["step"] == 2 and saved["lambda"] == pytest.approx(full[1]["lambda"], abs=1e-12)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(world / "hf")}
    cmd = [str(BIN / "lerobot-train"), "--discover_packages_path=craft_plugin", f"--config_path={ckpt / 'train_config.json'}", "--resume=true"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (stopped / "craft_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4], "one record per step: the killed run's 3 and 4 are dropped"
    assert records[:2] == full[:2]
    resumed = records[2:]
    assert "dropped 2 record(s) past it" in res.stdout + res.stderr
    first = resumed[0]
    # λ continues from the saved value with the saved schedule's ε at step 3
    assert first["epsilon"] == pytest.approx(full[2]["epsilon"], abs=1e-12)
    assert first["lambda"] == pytest.approx(min(max(saved["lambda"] + 0.5 * (first["L_ret"] - first["epsilon"]), 0), 10), abs=1e-9)
    assert [r["epsilon"] for r in resumed] == pytest.approx([r["epsilon"] for r in full[2:]], abs=1e-12)
    # the anchor sampler continued from its saved state: same anchors as the straight run's step 3
    final = json.loads((stopped / "checkpoints" / "000004" / "pretrained_model" / "craft_state.json").read_text())
    straight_final = json.loads((straight / "checkpoints" / "000004" / "pretrained_model" / "craft_state.json").read_text())
    assert final["sampler_draws"] == straight_final["sampler_draws"] == 4
    assert final["step"] == 4 and final["schedule"] == saved["schedule"]


_LOAD_WITHOUT_PLUGIN = r"""
import sys, json, torch
sys.modules["craft_plugin"] = None  # any import of craft_plugin now fails
sys.modules["lerobot_policy_craft"] = None
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
path = sys.argv[1]
cfg = PreTrainedConfig.from_pretrained(path)
policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg).eval()
pre, post = make_pre_post_processors(cfg, pretrained_path=path)
batch = torch.load(sys.argv[2], weights_only=True)
torch.manual_seed(0)
policy.reset()
action = post(policy.select_action(pre(batch)))
torch.save(action, sys.argv[3])
print("plugin importable:", "craft_plugin" in sys.modules and sys.modules["craft_plugin"] is not None)
"""


def test_export_loads_in_stock_lerobot_and_predicts_the_same_actions(trained, tmp_path):
    ckpt = trained[0] / "checkpoints" / "000004" / "pretrained_model"
    out = tmp_path / "exported"
    # `craft export` in-process (`craft_cli`); loading the export without the plugin below needs
    # a process of its own.
    exp = craft_cli("export", str(ckpt), str(out))
    assert exp.exit_code == 0 and "exported the act base policy" in exp.output, exp.output[-3000:]
    assert json.loads((out / "config.json").read_text())["type"] == "act"

    from lerobot.policies.factory import make_pre_post_processors

    import craft_plugin.policies  # noqa: F401
    from craft_plugin.policies.craft.configuration_craft import CRaFTConfig
    from craft_plugin.policies.craft.modeling_craft import CRaFTPolicy
    from support.tiny_classic import make_observation

    obs = make_observation("act", 1, seed=5)
    torch.save(obs, tmp_path / "obs.pt")
    cfg = CRaFTConfig.from_pretrained(str(ckpt))
    wrapper = CRaFTPolicy.from_pretrained(str(ckpt), config=cfg).eval()
    pre, post = make_pre_post_processors(cfg.base_config, pretrained_path=str(ckpt))
    torch.manual_seed(0)
    wrapper.reset()
    expected = post(wrapper.select_action(pre(obs)))

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_PLUGIN, str(out), str(tmp_path / "obs.pt"), str(tmp_path / "act.pt")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "plugin importable: False" in run.stdout
    assert torch.equal(torch.load(tmp_path / "act.pt", weights_only=True), expected)


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--policy.craft.retention_freq=0", "retention_freq=0: Input should be greater than or equal to 1"),
        ("--policy.craft.pooling=[max]", "Cannot convert 'max' (<class 'str'>) into one of: mean_image_tokens, mean_masked"),
        ("--policy.craft.retnetion_freq=2", "unrecognized arguments: --policy.craft.retnetion_freq=2"),
    ],
)
def test_bad_craft_values_are_refused_by_lerobots_own_parser_with_a_readable_message(
    world, monkeypatch, capsys, caplog, arg, message
):
    """The same parser `lerobot-train` uses, in-process (the subprocess path is the test above)."""
    import logging

    from lerobot.configs import parser
    from lerobot.configs.train import TrainPipelineConfig

    import craft_plugin.policies  # noqa: F401  (registers the craft type, as --discover_packages_path does)

    def parse(cfg):
        return cfg

    parse.__annotations__["cfg"] = TrainPipelineConfig
    argv = ["lerobot-train", "--policy.push_to_hub=false", "--dataset.repo_id=local/tiny", *_craft_args(world)[1:], arg]
    monkeypatch.setattr(sys, "argv", argv)
    with caplog.at_level(logging.ERROR), pytest.raises(BaseException):
        parser.wrap()(parse)()
    out = capsys.readouterr()
    assert message in caplog.text + out.out + out.err


def test_cache_from_another_policy_type_and_layers_stops_before_step_1(world, tmp_path):
    """A cache whose teacher was another policy type (manifest says diffusion) and whose layers
    differ from the config: one message lists both and prints the right build-cache command.
    (In-process: the policy's start-up check, what lerobot-train's make_policy runs; the message
    reaching lerobot-train's console alone is checked by the missing-cache test above.)"""
    import shutil

    import craft_plugin.policies  # noqa: F401
    from craft_plugin import CraftConfig
    from craft_plugin.policies.craft.configuration_craft import CRaFTConfig, CraftStartupError
    from craft_plugin.policies.craft.modeling_craft import CRaFTPolicy

    cache = tmp_path / "cache"
    shutil.copytree(world / "cache", cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["teacher"]["policy_type"] = "diffusion"
    (cache / "manifest.json").write_text(json.dumps(manifest))
    craft = CraftConfig(anchor_cache_dir=cache, anchor_batch_size=4, layers=[-3, -1])
    with pytest.raises(CraftStartupError) as info:
        CRaFTPolicy(CRaFTConfig(base_path=str(world / "act"), device="cpu", craft=craft))
    log = str(info.value.code)
    assert "policy type: training 'act', cache teacher 'diffusion'" in log
    assert "layers: config [-3, -1]" in log and "craft build-cache" in log


def test_two_process_run_keeps_lambda_and_weights_identical_across_ranks(world, tmp_path):
    """`accelerate launch` (LeRobot's documented way), 2 CPU processes: `--multi_gpu` starts them
    through torch's elastic launcher and ACCELERATE_USE_CPU=true makes each a CPU (gloo) rank.
    L_ret is averaged over ranks before the dual step; each rank draws its own anchors."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    cmd = [
        str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29577",
        str(Path(__file__).with_name("train_probe.py")), *_craft_args(world), "--policy.craft.lambda_lr=0.5",
        "--policy.push_to_hub=false", "--policy.device=cpu", "--dataset.repo_id=local/tiny",
        f"--dataset.root={world / 'data'}", f"--output_dir={tmp_path / 'run'}", "--steps=5", "--batch_size=2",
        "--log_freq=1", "--save_freq=5", "--num_workers=0", "--wandb.enable=false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(world / "hf"), "ACCELERATE_USE_CPU": "true",
           "CRAFT_PROBE_DIR": str(probe_dir)}  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Effective batch size: 2 x 2 = 4" in res.stdout + res.stderr
    r0, r1 = (json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0["lambda"]) == 5 and r0["lambda"] == r1["lambda"]
    assert len(set(r0["lambda"])) > 1, "λ must have moved"
    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert (r0["sampler"], r1["sampler"]) == ({"seed": 0, "draws": 5}, {"seed": 1, "draws": 5})


def test_lora_run_trains_with_craft_and_changes_only_adapter_weights(world, tmp_path):
    """`--peft.method_type=LORA`: the regex is written as for the base policy (the wrapper roots
    it at `base.`); only adapter weights take part in CRaFT and change."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    out = tmp_path / "run"
    cmd = [
        sys.executable, str(Path(__file__).with_name("train_probe.py")), *_craft_args(world),
        "--peft.method_type=LORA", r"--peft.target_modules=model\.encoder\..*\.(linear1|linear2)", "--peft.r=4",
        "--policy.craft.lambda_lr=0.5", "--policy.push_to_hub=false", "--policy.device=cpu",
        "--dataset.repo_id=local/tiny", f"--dataset.root={world / 'data'}", f"--output_dir={out}", "--steps=3",
        "--batch_size=4", "--log_freq=1", "--save_freq=3", "--num_workers=0", "--wandb.enable=false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(world / "hf"), "CRAFT_PROBE_DIR": str(probe_dir)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    steps = _steps(log)
    assert [int(s["step"]) for s in steps] == [1, 2, 3] and all(f in steps[-1] for f in FIELDS)
    probe = json.loads((probe_dir / "rank0.json").read_text())
    trainable, changed = set(probe["trainable"]), set(probe["changed"])
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable), sorted(trainable)[:4]
    assert len(trainable) == 12, "lora_A and lora_B of linear1/linear2 in the tiny ACT's 3 encoder layers"
    assert "CRaFT: enabled=True | mode=hidden" in log and "| 12 trainable tensors" in log
    assert changed and changed <= trainable, sorted(changed - trainable)[:4]
    assert any(".lora_B." in n for n in changed)
    assert len(set(probe["lambda"])) > 1
    ckpt = out / "checkpoints" / "000003" / "pretrained_model"
    adapter = json.loads((ckpt / "adapter_config.json").read_text())
    assert adapter["target_modules"] == r"base\.(?:model\.encoder\..*\.(linear1|linear2))"
    state = json.loads((ckpt / "craft_state.json").read_text())
    assert state["step"] == 3 and state["lambda"] == pytest.approx(probe["lambda"][-1], abs=1e-9)

    # `craft export` merges the adapters into the base weights: what PEFT itself computes
    from safetensors.torch import load_file

    exp = craft_cli("export", str(ckpt), str(tmp_path / "exported"))
    assert exp.exit_code == 0, exp.output[-2000:]
    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    original = load_file(str(world / "act" / "model.safetensors"))
    merged = load_file(str(probe_dir / "lora_merged.safetensors"))
    assert set(exported) == set(original) and len(merged) == 6
    for key, w in exported.items():
        if key in merged:
            torch.testing.assert_close(w, merged[key], atol=1e-6, rtol=0)
            assert not torch.equal(w, original[key])
        else:
            assert torch.equal(w, original[key]), key
