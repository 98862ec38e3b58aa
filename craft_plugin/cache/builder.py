"""Building an anchor cache from a LeRobot dataset and a teacher policy (``craft build-cache``).

Per shard: load the anchor frames (a ``DataLoader`` over the fixed anchor indices, with the
same delta timestamps a training run would use), run the teacher's own preprocessor, run the
feature tap under ``no_grad`` with the teacher in ``eval()``, and write the pooled features,
the action pathway's output with the randomness it used (``--actions``, the default), and the
*raw* frames (see ``docs/cache-format.md``): the student runs its own preprocessor on them.

The action side's randomness is drawn per anchor row from a generator seeded by
``(seed, row)``, so a cache does not depend on ``--batch-size`` or on where a build resumed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from craft_plugin.cache.inputs import action_affine, decode_inputs, encode_inputs, run_preprocessor
from craft_plugin.cache.manifest import CacheError, DatasetInfo, Manifest, TeacherInfo, utc_now
from craft_plugin.cache.shards import cat_rows, file_sha256
from craft_plugin.cache.writer import CacheWriter

__all__ = ["BuildOptions", "BuildSummary", "anchor_rows", "build_cache", "describe_actions", "encode_inputs", "decode_inputs", "row_generator"]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BuildOptions:
    """Everything ``craft build-cache`` takes (see its ``--help``)."""

    policy_path: str
    output_dir: str
    dataset_repo_id: str | None = None
    dataset_root: str | None = None
    num_anchors: int | None = None  # None: every frame of the dataset
    layers: list[int] = field(default_factory=lambda: [-2, -1])
    pooling: list[str] | None = None  # None: the tap family's default
    batch_size: int = 8
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    shard_size: int = 256
    store_inputs: bool = True
    actions: bool = True  # also anchor the action pathway (its output and randomness)
    #: Rows per anchor frame, each with its own draw of the action side's randomness (flow-matching
    #: noise and time, diffusion noise and timestep): the student is held to the teacher's action
    #: pathway at several points per frame. 1 for families that draw nothing is enough.
    draws_per_anchor: int = 1
    overwrite: bool = False

    def identity(self) -> dict[str, Any]:
        """The arguments that define the cache's content (not how fast it is built)."""
        d = asdict(self)
        for k in ("num_workers", "device", "overwrite", "batch_size"):
            d.pop(k)
        return d


@dataclass
class BuildSummary:
    directory: str
    state: str  # "complete-already" | "built" | "resumed"
    anchors: int
    shards: int
    bytes: int
    seconds: float
    feature_shape: list[int]
    every_frame: bool = False  # --num-anchors was not given: every frame of the dataset is an anchor

    @property
    def bytes_per_anchor(self) -> float:
        return self.bytes / max(self.anchors, 1)


def row_generator(seed: int, row: int) -> torch.Generator:
    """The generator of anchor row ``row``'s action-side randomness (independent of batching)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(row)) % (2**63 - 1))


# ---------------------------------------------------------------------------------- build
def build_cache(opts: BuildOptions, *, progress: bool = True) -> BuildSummary:
    """Build (or resume, or confirm) the cache described by ``opts``."""
    import lerobot
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from torch.utils.data import default_collate
    from tqdm.auto import tqdm

    import craft_plugin
    from craft_plugin.taps import make_tap

    t0 = time.perf_counter()
    if opts.dtype not in _DTYPES:
        raise ValueError(f"--dtype {opts.dtype!r} is not supported; use one of {', '.join(_DTYPES)}")
    if Path(opts.output_dir).exists() and not Path(opts.output_dir).is_dir():
        raise CacheError(f"--output-dir {opts.output_dir} is a file, not a folder; choose a folder for the cache")
    if opts.dataset_repo_id is None and opts.dataset_root is None:
        raise ValueError("give the dataset with --dataset.repo_id and/or --dataset.root")
    policy_dir = _resolve_policy_dir(opts.policy_path)
    cfg = PreTrainedConfig.from_pretrained(str(policy_dir))
    cfg.device = opts.device
    policy = get_policy_class(cfg.type).from_pretrained(str(policy_dir), config=cfg)
    policy.to(device=opts.device).eval()
    # --dtype bfloat16/float16: mixed precision (autocast), as a training run would use;
    # weights stay as loaded, so the student can reproduce the pass under the same autocast.
    autocast = torch.autocast(
        device_type=torch.device(opts.device).type, dtype=_DTYPES[opts.dtype], enabled=opts.dtype != "float32"
    )
    preprocessor, _ = make_pre_post_processors(cfg, pretrained_path=str(policy_dir))

    repo_id = opts.dataset_repo_id or f"local/{Path(opts.dataset_root or 'dataset').name}"
    if opts.dataset_root is not None and not (Path(opts.dataset_root) / "meta" / "info.json").is_file():
        raise FileNotFoundError(
            f"--dataset.root {opts.dataset_root} has no meta/info.json: it is not a LeRobot dataset folder"
        )
    try:
        # Metadata first (no frames read), then the one dataset with the policy's delta timestamps.
        meta = LeRobotDatasetMetadata(repo_id, root=opts.dataset_root)
        dataset = LeRobotDataset(repo_id, root=opts.dataset_root, delta_timestamps=resolve_delta_timestamps(cfg, meta))
    except Exception as err:  # hub / network / format errors from LeRobot
        raise ValueError(
            f"could not load the dataset (repo_id={opts.dataset_repo_id}, root={opts.dataset_root}): {err}. "
            "Without network access, pass --dataset.root pointing at a local copy."
        ) from err
    n_frames = len(dataset)
    every_frame = opts.num_anchors is None
    num_anchors = opts.num_anchors
    if num_anchors is None:
        num_anchors = n_frames
        logger.info("--num-anchors not given: taking every frame of the dataset (%d anchors)", n_frames)
    elif num_anchors < 1 or num_anchors > n_frames:
        raise ValueError(
            f"--num-anchors={num_anchors} cannot be met: the dataset has {n_frames} frames (give 1..{n_frames}, "
            "or leave --num-anchors out to take every frame)"
        )
    opts = replace(opts, num_anchors=num_anchors)
    g = torch.Generator().manual_seed(opts.seed)
    frames_chosen = sorted(torch.randperm(n_frames, generator=g)[:num_anchors].tolist())
    if opts.draws_per_anchor < 1:
        raise ValueError(f"--draws-per-anchor must be >= 1, got {opts.draws_per_anchor}")
    # One cache row per (frame, draw): row r holds frame frames_chosen[r // K] with draw r.
    anchor_indices = [f for f in frames_chosen for _ in range(opts.draws_per_anchor)]
    num_anchors = len(anchor_indices)
    tasks = _task_list(meta)

    tap = make_tap(policy)
    layers_abs = tap.resolve_layers(opts.layers)
    pooling = list(opts.pooling or tap.default_pooling)
    probe_raw = default_collate([dataset[anchor_indices[0]]])
    with tap, torch.no_grad(), autocast:
        probe = anchor_rows(
            tap, preprocessor, probe_raw, layers=opts.layers, pooling=pooling, seed=opts.seed, rows=[0],
            actions=opts.actions, store_inputs=False, device=opts.device,
        )  # fmt: skip
        feats = probe["features"]
        _, input_spec = encode_inputs(probe_raw)
        action_info = describe_actions(tap, preprocessor, probe) if opts.actions else {}
    root = Path(dataset.root)
    manifest = Manifest(
        created_at=utc_now(),
        updated_at=utc_now(),
        versions={"craft_plugin": craft_plugin.__version__, "lerobot": lerobot.__version__, "torch": torch.__version__},
        teacher=TeacherInfo(
            path=str(opts.policy_path),
            policy_type=cfg.type,
            config_sha256=config_fingerprint(policy_dir / "config.json"),
            weights_sha256=file_sha256(policy_dir / "model.safetensors"),
        ),
        dataset=DatasetInfo(
            repo_id=opts.dataset_repo_id,
            root=str(opts.dataset_root) if opts.dataset_root else None,
            info_sha256=file_sha256(root / "meta" / "info.json"),
            stats_sha256=file_sha256(root / "meta" / "stats.json") if (root / "meta" / "stats.json").is_file() else None,
            num_frames=n_frames,
            anchor_indices=anchor_indices,
            seed=opts.seed,
        ),
        anchor_targets=["features", "actions"] if opts.actions else ["features"],
        tasks=tasks,
        **action_info,
        layers=layers_abs,
        layers_requested=list(opts.layers),
        num_layers_total=tap.num_layers,
        pooling=pooling,
        feature_shape=list(feats.shape[1:]),
        dtype=opts.dtype,
        retention_modes=["hidden", "token_ce"] if opts.store_inputs and "action" in input_spec else ["hidden"],
        stores_inputs=opts.store_inputs,
        input_keys=input_spec if opts.store_inputs else {},
        num_anchors=num_anchors,
        shard_size=opts.shard_size,
        build_args=opts.identity(),
    )
    try:
        writer = CacheWriter(opts.output_dir, manifest, overwrite=opts.overwrite)
    except OSError as err:
        raise _write_error(err, opts.output_dir, None) from err
    state = {"complete": "complete-already", "resume": "resumed", "new": "built"}[writer.state]
    if writer.state == "complete":
        logger.info("anchor cache %s is already complete (%d anchors); nothing to do", opts.output_dir, num_anchors)
    else:
        pending = writer.pending()
        todo = sum(len(rows) for _, rows in pending)
        bar = tqdm(total=todo, unit="anchor", desc="build-cache", disable=not progress, dynamic_ncols=True)
        loader_kwargs = {"num_workers": opts.num_workers}
        with tap, torch.no_grad(), autocast:
            for k, rows in pending:
                frames = [anchor_indices[r] for r in rows]
                loader = torch.utils.data.DataLoader(
                    torch.utils.data.Subset(dataset, frames), batch_size=opts.batch_size, shuffle=False, **loader_kwargs
                )
                parts: dict[str, list[Tensor]] = {}
                done = 0
                for raw in loader:
                    n = len(next(v for v in raw.values() if isinstance(v, Tensor)))
                    got = anchor_rows(
                        tap, preprocessor, raw, layers=opts.layers, pooling=pooling, seed=opts.seed,
                        rows=rows[done : done + n], actions=opts.actions, store_inputs=opts.store_inputs,
                        device=opts.device,
                    )  # fmt: skip
                    for name, t in got.items():
                        parts.setdefault(name, []).append(t)
                    done += n
                    bar.update(n)
                tensors = {name: cat_rows(v, name) for name, v in parts.items()}
                tensors["index"] = torch.tensor(frames, dtype=torch.int64)
                try:
                    writer.add_shard(k, tensors)
                except OSError as err:
                    bar.close()
                    left = len(writer.pending())  # this shard and the ones after it
                    need = sum(t.numel() * t.element_size() for t in tensors.values()) * left
                    raise _write_error(err, opts.output_dir, need) from err
        bar.close()
        try:
            writer.finalize()
        except OSError as err:
            raise _write_error(err, opts.output_dir, None) from err
    return BuildSummary(
        directory=str(opts.output_dir),
        state=state,
        anchors=num_anchors,
        shards=len(writer.manifest.shards),
        bytes=writer.total_bytes(),
        seconds=time.perf_counter() - t0,
        feature_shape=list(writer.manifest.feature_shape),
        every_frame=every_frame,
    )


def anchor_rows(
    tap: Any,
    preprocessor: Any,
    raw: dict[str, Any],
    *,
    layers: list[int],
    pooling: list[str],
    seed: int,
    rows: list[int],
    actions: bool = True,
    store_inputs: bool = True,
    device: str = "cpu",
) -> dict[str, Tensor]:
    """One batch of anchor rows as a shard stores them: the teacher's pooled ``features``, its
    ``action_target`` and ``draw.<name>`` randomness (``actions``), the raw frames as
    ``input.<key>`` and ``task_index`` (``store_inputs``). ``raw`` is a collated dataset batch;
    the teacher (in ``eval()``, under ``no_grad``, tap entered) sees it through ``preprocessor``."""
    batch = run_preprocessor(preprocessor, raw, device)
    out: dict[str, Tensor] = {"features": tap.features(batch, layers, pooling).float().cpu()}
    if actions:
        draw = _draws(tap, batch, seed, rows)
        out["action_target"] = tap.action_output(batch, draw).float().cpu()
        out.update({"draw." + name: t.cpu() for name, t in draw.items()})
    if store_inputs:
        enc, _ = encode_inputs(raw)
        out.update({"input." + key: t for key, t in enc.items()})
        if "task_index" in raw and isinstance(raw["task_index"], Tensor):
            out["task_index"] = raw["task_index"].reshape(-1).to(torch.int64)
    return out


def describe_actions(tap: Any, preprocessor: Any, probe: dict[str, Tensor]) -> dict[str, Any]:
    """The manifest's action fields for a tap, from one probe row of :func:`anchor_rows`."""
    scale, shift = action_affine(preprocessor, tap.action_dim)
    return {
        "action_kind": tap.action_kind,
        "action_shape": list(probe["action_target"].shape[1:]),
        "action_norm": {"scale": scale.tolist(), "shift": shift.tolist()},
        "draw_keys": sorted(k.removeprefix("draw.") for k in probe if k.startswith("draw.")),
    }


def _draws(tap: Any, batch: dict[str, Any], seed: int, rows: list[int]) -> dict[str, Tensor]:
    """The action side's randomness for ``rows`` of ``batch``: one seeded generator per anchor row."""
    per_row: list[dict[str, Tensor]] = []
    for i, row in enumerate(rows):
        one = {k: (v[i : i + 1] if isinstance(v, (Tensor, list)) else v) for k, v in batch.items()}
        per_row.append(tap.draw_action_randomness(one, row_generator(seed, row)))
    names = sorted(per_row[0]) if per_row else []
    return {name: torch.cat([d[name] for d in per_row]) for name in names}


def _write_error(err: OSError, directory: str, need_bytes: int | None) -> CacheError:
    """A write failure of the cache as one message: what failed, and what to do."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC:
        need = f"; the rest of the cache needs about {need_bytes / 2**20:.1f} MiB" if need_bytes else ""
        return CacheError(
            f"disk full while writing the anchor cache {directory}{where}{need}. Free that much space (or "
            "choose another --output-dir) and rerun the same command: it resumes from the last complete shard"
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CacheError(f"cannot write the anchor cache to {directory}{where}: {err.strerror}; choose a writable --output-dir")
    return CacheError(f"could not write the anchor cache {directory}{where}: {err.strerror or err}")


def _task_list(meta: Any) -> list[str]:
    """The dataset's task strings, at their ``task_index``."""
    tasks = getattr(meta, "tasks", None)
    if tasks is None or len(tasks) == 0:
        return []
    by_index = {int(row.task_index): str(name) for name, row in tasks.iterrows()}
    return [by_index.get(i, "") for i in range(max(by_index) + 1)]


def _resolve_policy_dir(path: str) -> Path:
    """A local checkpoint directory, or a hub id downloaded to the local HF cache."""
    p = Path(path)
    looks_local = path.startswith((".", "/", "~")) or path.count("/") != 1
    if looks_local and not p.exists():
        raise FileNotFoundError(f"--policy.path {path} does not exist (and is not a hub id like 'user/model')")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"--policy.path {p} has no config.json: is it a LeRobot `pretrained_model` folder?")
        return p
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=path))


def config_fingerprint(path: Path) -> str:
    """sha256 of a JSON file's canonical form (key order and whitespace do not matter)."""
    data = json.loads(path.read_text())
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
