"""A new user's mistakes (issue 12): nothing lost, nothing silently damaged, one message each.

One tiny ACT world per module, built in-process (dataset, two teachers with other weights, a
cache with `craft build-cache`'s defaults); commands whose output is the point run as
subprocesses and must not print a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.train_log import has_traceback as _traceback

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from support.tiny_classic import make_tiny_act
    from support.tiny_dataset import make_dataset, save_policy

    from craft_plugin.cache.builder import BuildOptions, build_cache

    root = tmp_path_factory.mktemp("user-errors")
    make_dataset(root / "data")
    save_policy(*make_tiny_act(seed=0), root / "act")
    save_policy(*make_tiny_act(seed=1), root / "act_other")
    build_cache(
        BuildOptions(policy_path=str(root / "act"), output_dir=str(root / "cache"), dataset_root=str(root / "data"),
                     dataset_repo_id="local/tiny"),
        progress=False,
    )  # fmt: skip
    return root


def _craft_policy(world: Path, base: str = "act", cache: Path | None = None, **craft):
    import craft_plugin.policies  # noqa: F401
    from craft_plugin import CraftConfig
    from craft_plugin.policies.craft.configuration_craft import CRaFTConfig
    from craft_plugin.policies.craft.modeling_craft import CRaFTPolicy

    settings = {"anchor_cache_dir": cache or world / "cache", "anchor_batch_size": 4, **craft}
    return CRaFTPolicy(CRaFTConfig(base_path=str(world / base), device="cpu", craft=CraftConfig(**settings)))


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def checkpoint(world, tmp_path_factory):
    """A craft checkpoint as lerobot-train lays it out: run/checkpoints/000002/pretrained_model,
    with an unrelated file next to it."""
    ck = tmp_path_factory.mktemp("ck") / "000002"
    policy = _craft_policy(world, enabled=False)
    policy.save_pretrained(ck / "pretrained_model")
    (ck / "notes.txt").write_text("the user's own file")
    return ck


# ------------------------------------------------------------------ 1. export --overwrite
@pytest.mark.parametrize(("source", "target"), [("ck", "ck"), ("ck/pretrained_model", "ck"), ("ck", "ck/pretrained_model")])
def test_export_overwrite_onto_the_checkpoint_or_its_folder_leaves_it_byte_identical(checkpoint, source, target):
    from typer.testing import CliRunner

    from craft_plugin.cli import app

    before = _hashes(checkpoint)
    as_path = {"ck": checkpoint, "ck/pretrained_model": checkpoint / "pretrained_model"}
    result = CliRunner().invoke(app, ["export", str(as_path[source]), str(as_path[target]), "--overwrite"])
    assert result.exit_code == 2, result.output
    assert "is the checkpoint" in result.output and "choose an output outside it" in result.output
    assert _hashes(checkpoint) == before


def test_export_overwrite_keeps_the_old_export_until_the_new_one_is_complete(checkpoint, tmp_path, monkeypatch):
    from craft_plugin.policies.craft import export

    out = tmp_path / "exported"
    export.export_base_checkpoint(checkpoint, out)
    old = _hashes(out)
    assert set(old) >= {"config.json", "model.safetensors"}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export.export_base_checkpoint(checkpoint, out, overwrite=True)
    assert _hashes(out) == old, "the old export is untouched by a failed overwrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"], "no temp folder left behind"
    monkeypatch.undo()
    export.export_base_checkpoint(checkpoint, out, overwrite=True)
    assert _hashes(out) == old  # the same export again, swapped in
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# ------------------------------------------------------------------ 2. cache from another teacher
def test_cache_from_another_teacher_stops_before_step_1_with_both_hashes(world, caplog):
    from craft_plugin.cache.manifest import CacheError
    from craft_plugin.cache.shards import file_sha256
    from craft_plugin.policies.craft.modeling_craft import CraftStartupError

    with pytest.raises(CraftStartupError) as info:
        _craft_policy(world, base="act_other")
    text = str(info.value.code)
    assert isinstance(info.value.error, CacheError)
    assert text.startswith("craft: anchor cache") and "was built from another teacher" in text
    assert file_sha256(world / "act" / "model.safetensors")[:16] in text
    assert file_sha256(world / "act_other" / "model.safetensors")[:16] in text
    assert f"craft build-cache --dataset.repo_id=local/tiny --dataset.root={world / 'data'} --policy.path={world / 'act_other'}" in text
    assert "--policy.craft.allow_other_teacher=true" in text

    with caplog.at_level(logging.WARNING):
        policy = _craft_policy(world, base="act_other", allow_other_teacher=True)
    assert policy._retention is not None
    assert "allow_other_teacher=true: training against a cache from another teacher" in caplog.text
    assert _craft_policy(world)._retention is not None, "the cache's own teacher passes"


# ------------------------------------------------------------------ 3. cache-info
def _cache_info(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "craft"), "cache-info", str(directory)], capture_output=True, text=True, env=ENV, timeout=60)


def _cache_info_in_process(directory: Path):
    from typer.testing import CliRunner

    from craft_plugin.cli import app

    return CliRunner().invoke(app, ["cache-info", str(directory)])


def test_cache_info_and_training_refuse_a_manifest_without_its_shards(world, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(world / "cache", cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    del manifest["shards"]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    res = _cache_info(cache)
    assert res.returncode == 1
    assert "is corrupt: it says complete but its shards list holds 0 of its 24 anchors" in res.stderr
    assert not _traceback(res.stderr + res.stdout)

    from craft_plugin.policies.craft.modeling_craft import CraftStartupError

    with pytest.raises(CraftStartupError, match="is corrupt: it says complete"):
        _craft_policy(world, cache=cache)


def test_cache_info_opens_each_shard_as_safetensors(world, tmp_path):
    from craft_plugin.cache.shards import file_sha256

    cache = tmp_path / "cache"
    shutil.copytree(world / "cache", cache)
    shard = cache / "shard_00000.safetensors"
    shard.write_bytes(b"not a safetensors file at all, but its hash is in the manifest")
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = file_sha256(shard)
    (cache / "manifest.json").write_text(json.dumps(manifest))
    res = _cache_info_in_process(cache)
    assert res.exit_code == 1
    assert "CORRUPT   shard_00000.safetensors" in res.output and "is not a readable safetensors file" in res.output
    assert "--overwrite" in res.output

    from craft_plugin.policies.craft.modeling_craft import CraftStartupError

    with pytest.raises(CraftStartupError, match="is not a readable safetensors file"):
        _craft_policy(world, cache=cache)


# ------------------------------------------------------------------ 5. messages, not tracebacks
def test_anchor_batch_larger_than_the_cache_is_one_message(world):
    from craft_plugin.policies.craft.modeling_craft import CraftStartupError

    with pytest.raises(CraftStartupError) as info:
        _craft_policy(world, anchor_batch_size=100)
    assert info.value.code == (
        f"craft: anchor_batch_size=100 exceeds the 24 anchors in {world / 'cache'}; "
        "lower anchor_batch_size or build a larger cache (--num-anchors)"
    )


def test_build_cache_user_errors_are_one_message(world, tmp_path):
    from typer.testing import CliRunner

    from craft_plugin.cli import app

    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    result = CliRunner().invoke(app, ["build-cache", f"--policy.path={world / 'act'}", f"--output-dir={a_file}", "--dataset.root=x"])
    assert result.exit_code == 2 and f"--output-dir {a_file} is a file, not a folder" in result.output
    assert a_file.read_text() == "mine"

    result = CliRunner().invoke(app, ["build-cache", "--policy.path=x", f"--output-dir={tmp_path / 'c'}", "--layers="])
    assert result.exit_code == 2 and "is empty: give at least one layer" in result.output
    assert "max() iterable" not in result.output


def test_build_cache_overwrite_never_empties_a_folder_that_is_not_a_cache(world, tmp_path):
    from typer.testing import CliRunner

    from craft_plugin.cli import app

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    args = ["build-cache", f"--policy.path={world / 'act'}", f"--dataset.root={world / 'data'}",
            "--dataset.repo_id=local/tiny", f"--output-dir={mine}", "--overwrite"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "is not an anchor cache" in result.output
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_build_cache_overwrite_replaces_a_cache_only_when_the_new_one_is_complete(world, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from craft_plugin.cache import writer
    from craft_plugin.cli import app

    cache = tmp_path / "cache"
    shutil.copytree(world / "cache", cache)
    before = _hashes(cache)
    real, calls = writer.write_shard, []

    def killed_at_the_second_shard(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, tensors, metadata)

    monkeypatch.setattr(writer, "write_shard", killed_at_the_second_shard)
    args = ["build-cache", f"--policy.path={world / 'act'}", f"--dataset.root={world / 'data'}",
            "--dataset.repo_id=local/tiny", f"--output-dir={cache}", "--num-anchors=16", "--shard-size=8", "--overwrite"]  # fmt: skip
    CliRunner().invoke(app, args)
    assert calls and calls[0].parent.name == ".cache.overwrite", "the new build is staged next to the old cache"
    assert _hashes(cache) == before, "the old cache is intact until the new one is complete"
    monkeypatch.undo()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((cache / "manifest.json").read_text())["num_anchors"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"], "no staging folder left"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, "disk full while writing the anchor cache {out}"),
        (errno.EACCES, "cannot write the anchor cache to {out}"),
    ],
)
def test_build_cache_write_failures_say_what_to_do(world, tmp_path, monkeypatch, code, expected):
    from typer.testing import CliRunner

    from craft_plugin.cache import writer
    from craft_plugin.cli import app

    real = writer.write_shard
    calls = []

    def failing(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(code, os.strerror(code), str(path))
        return real(path, tensors, metadata)

    monkeypatch.setattr(writer, "write_shard", failing)
    out = tmp_path / "cache"
    args = ["build-cache", f"--policy.path={world / 'act'}", f"--dataset.root={world / 'data'}",
            "--dataset.repo_id=local/tiny", f"--output-dir={out}", "--shard-size=8"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    text = result.output
    assert expected.format(out=out) in text and result.exception is not None
    if code == errno.ENOSPC:
        # shards 1 and 2 of 8 rows (of 24) are still to write: the message gives their size
        shard0 = (out / "shard_00000.safetensors").stat().st_size
        assert "the rest of the cache needs about" in text and "rerun the same command: it resumes" in text
        needed = float(text.split("needs about ")[1].split(" MiB")[0])
        assert needed == pytest.approx(2 * shard0 / 2**20, rel=0.05, abs=0.05)
        assert not list(out.glob("*.tmp")), "the half-written shard is removed"
        monkeypatch.undo()
        again = CliRunner().invoke(app, args)
        assert again.exit_code == 0 and "resumed" in again.output, again.output


# ------------------------------------------------------------------ 7. shard file mode
def test_shards_get_the_manifests_file_mode(world):
    modes = {p.name: p.stat().st_mode & 0o777 for p in (world / "cache").iterdir()}
    assert modes["manifest.json"] == 0o666 & ~_umask()
    assert {m for n, m in modes.items() if n.startswith("shard_")} == {modes["manifest.json"]}


# ------------------------------------------------------------------ the run's CRaFT state (issue 14.1)
def test_the_run_state_is_data_on_the_config_saved_as_craft_state_json(world, tmp_path):
    """No callback on the config: the policy keeps `config.run_state` current, and every save of
    the config (plain or PEFT checkpoint) writes it; loading a checkpoint sets it back."""
    from craft_plugin import CraftConfig
    from craft_plugin.policies.craft.configuration_craft import CRaFTConfig
    from craft_plugin.policies.craft.modeling_craft import CRaFTPolicy

    cfg = CRaFTConfig(base_path=str(world / "act"), device="cpu", craft=CraftConfig(enabled=False))
    cfg.save_pretrained(tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "craft_state.json").exists(), "no CRaFT step yet: nothing to save"
    state = {"step": 7, "lambda": 1.25, "schedule": {"kind": "linear"}, "sampler_draws": 7}
    cfg.run_state = dict(state)
    cfg.save_pretrained(tmp_path / "saved")  # what LeRobot does with a PEFT checkpoint's config
    assert json.loads((tmp_path / "saved" / "craft_state.json").read_text()) == state
    assert "run_state" not in json.loads((tmp_path / "saved" / "config.json").read_text())

    policy = _craft_policy(world)
    policy.config.run_state = dict(state)
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = CRaFTPolicy.from_pretrained(str(tmp_path / "ckpt"), config=CRaFTConfig.from_pretrained(str(tmp_path / "ckpt")))
    assert loaded.config.run_state == state and loaded._pending_state == state


# ------------------------------------------------------------------ the run's length and folder (issue 14.1)
def test_without_the_runs_length_the_first_step_names_the_fields_to_set(world):
    """Outside lerobot-train and `craft train` (here: pytest), nothing gives the run's length:
    the first CRaFT step says which field to set; setting it trains."""
    from support.tiny_classic import make_batch

    policy = _craft_policy(world)
    assert policy.run.steps is None and policy.config.metrics_file is None
    batch = policy.retention_preprocessor()(make_batch("act", batch_size=4))
    policy.train()
    with pytest.raises(ValueError, match=r"--policy\.run\.steps=N \(config\.run\.steps\), or --policy\.craft\.epsilon_decay_steps=N"):
        policy.forward(batch)
    policy = _craft_policy(world)
    policy.run.steps = 10
    policy.train()
    loss, out = policy.forward(batch)
    assert loss.ndim == 0 and out["epsilon"] == pytest.approx(0.1)


def test_metrics_wait_for_the_first_checkpoint_when_the_output_folder_is_unknown(world, tmp_path):
    """A run whose output folder LeRobot chose itself: the records go to the run folder of its
    first checkpoint, then straight there; checkpoints save the run fields empty."""
    from support.tiny_classic import make_batch

    policy = _craft_policy(world)
    policy.run.steps, policy.run.log_freq = 10, 1
    batch = policy.retention_preprocessor()(make_batch("act", batch_size=4))
    policy.train()
    policy.forward(batch)
    policy.forward(batch)
    assert [r["step"] for r in policy.config.unwritten_metrics] == [1, 2]
    policy.save_pretrained(tmp_path / "export")  # not a checkpoint folder: the records wait
    assert len(policy.config.unwritten_metrics) == 2 and not (tmp_path / "craft_metrics.jsonl").exists()
    run = tmp_path / "outputs" / "train" / "x"
    policy.save_pretrained(run / "checkpoints" / "000002" / "pretrained_model")
    policy.forward(batch)
    records = [json.loads(line) for line in (run / "craft_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and policy.config.unwritten_metrics == []
    saved = json.loads((run / "checkpoints" / "000002" / "pretrained_model" / "config.json").read_text())
    assert saved["run"] == {"steps": None, "output_dir": None, "log_freq": None}, "the next run's are its own"
    assert policy.run.steps == 10, "saving leaves the running values alone"
