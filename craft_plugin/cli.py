"""The ``craft`` command line (Typer). Commands are thin: parse, call one function, print."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from craft_plugin import __version__
from craft_plugin.config import CraftConfig, CraftConfigError, config_reference_markdown
from craft_plugin.demo.workers import quiet_torchcodec_warning

app = typer.Typer(
    name="craft",
    help="CRaFT (Constrained Retention Fine-Tuning) for LeRobot policies.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"craft-plugin {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """CRaFT (Constrained Retention Fine-Tuning) for LeRobot policies."""
    quiet_torchcodec_warning()


@app.command("config")
def config_cmd(
    file: Annotated[
        Path | None, typer.Argument(help="A CRaFT config (.json/.yaml) to validate; omit to print the defaults.")
    ] = None,
    schema: Annotated[bool, typer.Option("--schema", help="Print the JSON schema instead.")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the configuration reference table (as in the README).")
    ] = False,
) -> None:
    """Validate a CRaFT config file and print it resolved with defaults (or print the schema)."""
    if markdown:
        typer.echo(config_reference_markdown(), nl=False)
        return
    if schema:
        typer.echo(json.dumps(CraftConfig.json_schema(), indent=2, ensure_ascii=False))
        return
    try:
        cfg = CraftConfig.from_file(file) if file is not None else CraftConfig()
    except CraftConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(code=2) from err
    typer.echo(json.dumps(cfg.to_dict(), indent=2))


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers (e.g. -2,-1)", param_hint=option)
    if not values:
        raise typer.BadParameter("is empty: give at least one layer (e.g. -2,-1, the default)", param_hint=option)
    return values


@app.command("build-cache")
def build_cache_cmd(
    policy_path: Annotated[str, typer.Option("--policy.path", help="Teacher: a LeRobot pretrained_model folder or hub id.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Cache directory to create (or resume).")],
    dataset_repo_id: Annotated[
        str | None, typer.Option("--dataset.repo_id", help="Dataset repo id (with --dataset.root: a local copy).")
    ] = None,
    dataset_root: Annotated[Path | None, typer.Option("--dataset.root", help="Local dataset folder.")] = None,
    num_anchors: Annotated[
        int | None, typer.Option("--num-anchors", min=1, help="Anchor frames to cache. Default: every frame of the dataset.")
    ] = None,
    layers: Annotated[str, typer.Option("--layers", help="Comma-separated layers; negative count from the last.")] = "-2,-1",
    pooling: Annotated[
        str | None,
        typer.Option(
            "--pooling",
            help="Comma-separated pooling strategies (mean_image_tokens, mean_masked, last_token, cls_token). "
            "Default per family: VLAs mean_image_tokens,last_token; act/diffusion see the docs.",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Teacher forward batch size.")] = 8,
    num_workers: Annotated[int, typer.Option("--num-workers", min=0, help="DataLoader workers.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the anchor sampling.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="Teacher pass dtype: float32, bfloat16, float16.")] = "float32",
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Anchors per shard file.")] = 256,
    no_inputs: Annotated[
        bool, typer.Option("--no-inputs", help="Store dataset indices only, not the student inputs.")
    ] = False,
    actions: Annotated[
        bool,
        typer.Option(
            "--actions/--no-actions",
            help="Also cache the action pathway's output and the randomness it used, so hidden mode anchors "
            "actions as well as backbone features (default).",
        ),
    ] = True,
    draws_per_anchor: Annotated[
        int,
        typer.Option(
            "--draws-per-anchor", min=1,
            help="Cache rows per anchor frame, each with its own draw of the action side's randomness "
            "(flow-matching noise and time, diffusion noise and timestep).",
        ),
    ] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a cache built with other arguments.")] = False,
) -> None:
    """Run the teacher once over anchor frames and cache its pooled hidden states (and inputs).

    Rerunning the same command resumes an interrupted build; on a finished cache it does nothing.
    """
    from craft_plugin.cache.builder import BuildOptions, build_cache
    from craft_plugin.cache.manifest import CacheError

    from_pool = [p for p in pooling.replace(" ", "").split(",") if p] if pooling else None
    opts = BuildOptions(
        policy_path=policy_path,
        output_dir=str(output_dir),
        dataset_repo_id=dataset_repo_id,
        dataset_root=str(dataset_root) if dataset_root else None,
        num_anchors=num_anchors,
        layers=_int_list(layers, "--layers"),
        pooling=from_pool,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        device=device,
        dtype=dtype,
        shard_size=shard_size,
        store_inputs=not no_inputs,
        actions=actions,
        draws_per_anchor=draws_per_anchor,
        overwrite=overwrite,
    )
    try:
        summary = build_cache(opts)
    except (CacheError, ValueError, FileNotFoundError) as err:
        typer.echo(f"craft build-cache: {err}", err=True)
        raise typer.Exit(code=2) from err
    if summary.every_frame:
        typer.echo(f"--num-anchors not given: every frame of the dataset is an anchor ({summary.anchors} anchors)")
    if summary.state == "complete-already":
        typer.echo(f"{summary.directory} is already complete ({summary.anchors} anchors); nothing to do.")
        return
    typer.echo(
        f"{summary.state}: {summary.directory}\n"
        f"  anchors {summary.anchors} | shards {summary.shards} | {summary.bytes / 2**20:.2f} MiB "
        f"({summary.bytes_per_anchor / 1024:.1f} KiB per anchor) | features {summary.feature_shape} | "
        f"{summary.seconds:.1f} s"
    )


@app.command("cache-info")
def cache_info_cmd(
    directory: Annotated[Path, typer.Argument(help="An anchor cache directory.")],
) -> None:
    """Print an anchor cache's manifest and verify every shard's sha256 (exit 1 on any problem)."""
    from craft_plugin.cache.manifest import CacheError, load_manifest
    from craft_plugin.cache.shards import ShardError, ShardReader, file_sha256

    try:
        m = load_manifest(directory)
    except CacheError as err:
        typer.echo(f"craft cache-info: {err}", err=True)
        raise typer.Exit(code=1) from err
    typer.echo(f"anchor cache {directory} (schema {m.schema_version}, {'complete' if m.complete else 'PARTIAL'})")
    typer.echo(f"  created {m.created_at}, updated {m.updated_at}; " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))
    typer.echo(f"  teacher   {m.teacher.path} ({m.teacher.policy_type}); config {m.teacher.config_sha256[:12]}, weights {m.teacher.weights_sha256[:12]}")
    typer.echo(f"  dataset   {m.dataset.repo_id or ''} {m.dataset.root or ''}; {m.dataset.num_frames} frames, seed {m.dataset.seed}, info {m.dataset.info_sha256[:12]}")
    typer.echo(f"  anchors   {m.rows_done}/{m.num_anchors} in {len(m.shards)} shard(s) of up to {m.shard_size}")
    typer.echo(f"  layers    {m.layers} (requested {m.layers_requested}, of {m.num_layers_total}); pooling {m.pooling}")
    typer.echo(f"  features  {m.feature_shape} {m.dtype}; modes {m.retention_modes}; inputs stored: {m.stores_inputs}")
    if "actions" in m.anchor_targets:
        typer.echo(f"  actions   {m.action_kind} output {m.action_shape}; stored randomness {m.draw_keys or 'none'}")
    else:
        typer.echo("  actions   not anchored (built with --no-actions)")
    problems = 0
    total = 0
    for info in m.shards:
        path = Path(directory) / info.file
        if not path.is_file():
            typer.echo(f"  MISSING   {info.file}")
            problems += 1
            continue
        total += path.stat().st_size
        why = "" if file_sha256(path) == info.sha256 else "sha256 differs from the manifest's"
        if not why:  # a matching hash is not enough: the file must open as safetensors with its rows
            try:
                rows = ShardReader(path).num_rows()
                why = "" if rows == info.rows else f"{rows} rows, the manifest says {info.rows}"
            except ShardError as err:
                why = str(err).replace(f"shard {path} ", "")
        problems += 1 if why else 0
        status = "ok" if not why else "CORRUPT"
        typer.echo(f"  {status:<9} {info.file}  {info.rows} rows  {path.stat().st_size / 2**20:.2f} MiB" + (f"  ({why})" if why else ""))
    total += (Path(directory) / "manifest.json").stat().st_size
    typer.echo(f"  size      {total / 2**20:.2f} MiB with the manifest ({total / max(m.rows_done, 1) / 1024:.1f} KiB per anchor)")
    if not m.complete:
        typer.echo("  the build is not finished: rerun the same `craft build-cache` command to resume it")
    elif problems:
        typer.echo(f"  {problems} damaged shard(s): rebuild the cache with `craft build-cache ... --output-dir {directory} --overwrite`")
    if problems or not m.complete:
        raise typer.Exit(code=1)


@app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def train_cmd(ctx: typer.Context) -> None:
    """Run LeRobot's own `lerobot-train` in this process with the `craft` policy type registered.

    Every argument is passed through unchanged, e.g.
    `craft train --policy.type=craft --policy.base_path=... --policy.craft.anchor_cache_dir=... --dataset.repo_id=...`;
    the run's length, output folder and log period are added as `--policy.run.*` (and
    `--output_dir`, chosen as LeRobot would, when not given): see craft_plugin/policies/craft/run_config.py.
    """
    import sys

    import craft_plugin.policies  # noqa: F401  (registers --policy.type=craft)
    from lerobot.scripts.lerobot_train import main as lerobot_train_main

    from craft_plugin.policies.craft.run_config import run_flags

    try:
        args = run_flags(ctx.args)
    except ValueError as err:
        typer.echo(f"craft train: {err}", err=True)
        raise typer.Exit(code=2) from None
    sys.argv = ["lerobot-train", *args]
    lerobot_train_main()


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A craft checkpoint (its pretrained_model folder).")],
    output: Annotated[Path, typer.Argument(help="Folder for the plain base-policy checkpoint.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output folder.")] = False,
) -> None:
    """Write a plain base-policy checkpoint (config, weights, processors) stock LeRobot loads."""
    from craft_plugin.policies.craft.export import export_base_checkpoint

    try:
        out = export_base_checkpoint(checkpoint, output, overwrite=overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        typer.echo(f"craft export: {err}", err=True)
        raise typer.Exit(code=2) from err
    base_type = json.loads((out / "config.json").read_text()).get("type")
    typer.echo(f"exported the {base_type} base policy to {out} (load it with --policy.path={out}; no plugin needed)")


@app.command("eval-mcq")
def eval_mcq_cmd(
    policy_path: Annotated[
        str, typer.Option("--policy.path", help="Checkpoint A: a LeRobot pretrained_model folder (pi0, pi05, pi0_fast, smolvla, craft) or a HF image-text-to-text model folder.")
    ],
    data: Annotated[Path, typer.Option("--data", help="MCQ JSONL file, one question a line.")],
    compare: Annotated[str | None, typer.Option("--compare", help="Checkpoint B, scored on the same questions and compared with A.")] = None,
    image_root: Annotated[Path | None, typer.Option("--image-root", help="Folder relative image paths resolve against (default: the JSONL's folder).")] = None,
    max_samples: Annotated[int | None, typer.Option("--max-samples", min=1, help="Score only the first N valid questions.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Rows (choices) per forward pass.")] = 8,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    dtype: Annotated[str | None, typer.Option("--dtype", help="float32, bfloat16 or float16 (default: the checkpoint's).")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write the JSON report (settings, metrics, every question) here.")] = None,
    normalize: Annotated[str, typer.Option("--normalize", help="Prediction score: none (summed log-prob) or length (per-token mean). Both are reported.")] = "none",
    naive: Annotated[bool, typer.Option("--naive", help="Reference path: run every choice's whole sequence from scratch.")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Score the valid lines and report the invalid ones, instead of stopping.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap confidence intervals.")] = 0,
) -> None:
    """Score each choice's log-likelihood given image + question; accuracy, margins, A/B comparison."""
    import logging

    from craft_plugin.mcq.data import MCQDataError
    from craft_plugin.mcq.evaluate import EvalOptions, format_summary, run_eval_mcq

    if normalize not in ("none", "length"):
        raise typer.BadParameter(f"{normalize!r} is not one of: none, length", param_hint="--normalize")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    opts = EvalOptions(
        policy_path=policy_path,
        data=str(data),
        compare_path=compare,
        image_root=str(image_root) if image_root else None,
        max_samples=max_samples,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        output=str(output) if output else None,
        normalize=normalize,
        naive=naive,
        skip_invalid=skip_invalid,
        seed=seed,
    )
    try:
        report = run_eval_mcq(opts)
    except MCQDataError as err:
        typer.echo(f"craft eval-mcq: {err}", err=True)
        raise typer.Exit(code=2) from err
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"craft eval-mcq: {err}", err=True)
        raise typer.Exit(code=2) from err
    typer.echo(format_summary(report))
    if output:
        typer.echo(f"report written to {output}")


@app.command("report")
def report_cmd(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Run folders (each with eval.json, train.log and/or craft_metrics.jsonl)."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for report.md, report.json and the PNG plots.")
    ] = Path("craft-report"),
    base: Annotated[
        str | None,
        typer.Option("--base", help="The reference run for forgetting (method or folder name); default: eval.json role 'base'."),
    ] = None,
) -> None:
    """Compare runs: a table (report.md) and plots of task loss, L_ret vs ε, λ, conflicts, forgetting."""
    from craft_plugin.demo.report import build_report

    try:
        result = build_report(run_dirs, output, base=base)
    except (FileNotFoundError, ValueError) as err:
        typer.echo(f"craft report: {err}", err=True)
        raise typer.Exit(code=2) from err
    from craft_plugin.demo.report import NO_MATPLOTLIB, can_plot

    drawn = [name for name in result.plots.values() if name]
    plots = ", ".join(drawn) or ("none" if can_plot() else f"none: {NO_MATPLOTLIB}")
    typer.echo(f"report: {result.markdown} ({len(result.rows)} method(s)); plots: {plots}")

@app.command("demo")
def demo_cmd(
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Folder for the runs, report.md and the plots.")] = Path("demo-out"),
    quick: Annotated[bool, typer.Option("--quick", help="A few steps of everything (the test suite's end-to-end run).")] = False,
    family: Annotated[str, typer.Option("--family", help="Policy family: smolvla (a small VLA, MCQ measured) or act (a tiny ACT, no MCQ).")] = "smolvla",
    train_expert_only: Annotated[
        bool | None,
        typer.Option("--train-expert-only/--train-vlm", help="smolvla: freeze the VLM (LeRobot's default) or train it too (the demo's default: it can forget)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of data, model init and training.")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing non-empty --output-dir once the new run is complete (a failed run puts it back).")
    ] = False,
) -> None:
    """The forgetting experiment, offline: a base on Meta-World faucet-open, then naive / CRaFT off / replay / CRaFT on faucet-close; report."""
    import logging

    from craft_plugin.demo.pipeline import FAMILIES, plan_for, run_demo

    if family not in FAMILIES:
        raise typer.BadParameter(f"{family!r} is not one of: {', '.join(FAMILIES)}", param_hint="--family")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    changes: dict[str, object] = {"seed": seed}
    if train_expert_only is not None:
        changes["train_expert_only"] = train_expert_only
    import signal
    import sys

    # A SIGTERM (a job's time limit, `kill`) unwinds like Ctrl-C, so --overwrite puts the previous output back.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        plan = plan_for(family, quick=quick, **changes)
        result = run_demo(output_dir, plan, overwrite=overwrite, echo=typer.echo)
    except (OSError, RuntimeError, ValueError) as err:  # OSError: FileExistsError, a path under a file, ...
        typer.echo(f"craft demo: {err}", err=True)
        raise typer.Exit(code=2) from err
    typer.echo("")
    typer.echo(result.report_md.read_text())
    typer.echo(f"craft demo finished in {result.seconds:.0f} s: {result.report_md} and {len(result.plots)} plots in {result.report_md.parent}")


if __name__ == "__main__":  # pragma: no cover
    app()
