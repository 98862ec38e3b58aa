"""Building an anchor cache from a LeRobot dataset and a teacher policy (``craft build-cache``).

Per shard: load the anchor frames (a ``DataLoader`` over the fixed anchor indices, with the
same delta timestamps a training run would use), run the teacher's own preprocessor, run the
feature tap under ``no_grad`` with the teacher in ``eval()``, and write the pooled features
plus the preprocessed inputs (see ``docs/cache-format.md``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from craft_plugin.cache.manifest import DatasetInfo, Manifest, TeacherInfo, utc_now
from craft_plugin.cache.shards import cat_rows, file_sha256
from craft_plugin.cache.writer import CacheWriter

__all__ = ["BuildOptions", "BuildSummary", "build_cache", "encode_inputs", "decode_inputs"]

logger = logging.getLogger(__name__)

#: Dataset bookkeeping columns: not model inputs, not stored (the frame index is in `index`).
_BOOKKEEPING = frozenset({"index", "frame_index", "episode_index", "task_index", "timestamp"})

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BuildOptions:
    """Everything ``craft build-cache`` takes (see its ``--help``)."""

    policy_path: str
    output_dir: str
    dataset_repo_id: str | None = None
    dataset_root: str | None = None
    num_anchors: int = 1000
    layers: list[int] = field(default_factory=lambda: [-2, -1])
    pooling: list[str] | None = None  # None: the tap family's default
    batch_size: int = 8
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    shard_size: int = 256
    store_inputs: bool = True
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

    @property
    def bytes_per_anchor(self) -> float:
        return self.bytes / max(self.anchors, 1)


# ---------------------------------------------------------------------------------- inputs
def encode_inputs(batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """Tensors of a preprocessed batch for storage: images as uint8 when that is lossless.

    An image tensor whose values are exactly ``k/255`` is stored as uint8 ``k`` (decoded back
    bit-exactly); any other float image (e.g. mean/std-normalized) is stored as float32.
    Non-tensor entries (task strings) are not stored: their token ids are.
    """
    out: dict[str, Tensor] = {}
    spec: dict[str, dict[str, Any]] = {}
    for key, value in batch.items():
        if not isinstance(value, Tensor) or key in _BOOKKEEPING:
            continue
        t = value.detach().cpu()
        encoding = "raw"
        if "image" in key and t.is_floating_point():
            as_u8 = torch.round(t.float() * 255.0).clamp(0, 255)
            if torch.equal((as_u8 / 255.0).to(t.dtype), t):
                t, encoding = as_u8.to(torch.uint8), "uint8/255"
            else:
                t = t.float()
        elif t.is_floating_point() and t.dtype != torch.float32:
            t = t.float()
        out[key] = t.contiguous()
        spec[key] = {"dtype": str(value.dtype).removeprefix("torch."), "shape": list(t.shape[1:]), "encoding": encoding}
    return out, spec


def decode_inputs(inputs: dict[str, Tensor], spec: dict[str, dict[str, Any]], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Undo :func:`encode_inputs`: the tensors exactly as the preprocessor produced them."""
    out = {}
    for key, t in inputs.items():
        s = spec.get(key, {})
        dtype = getattr(torch, s.get("dtype", str(t.dtype).removeprefix("torch.")))
        if s.get("encoding") == "uint8/255":
            t = (t.float() / 255.0).to(dtype)
        else:
            t = t.to(dtype)
        out[key] = t.to(device)
    return out


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
    if opts.num_anchors < 1 or opts.num_anchors > n_frames:
        raise ValueError(f"--num-anchors must be in 1..{n_frames} (frames in the dataset), got {opts.num_anchors}")
    g = torch.Generator().manual_seed(opts.seed)
    anchor_indices = sorted(torch.randperm(n_frames, generator=g)[: opts.num_anchors].tolist())

    tap = make_tap(policy)
    layers_abs = tap.resolve_layers(opts.layers)
    pooling = list(opts.pooling or tap.default_pooling)
    with tap, torch.no_grad(), autocast:
        probe = _preprocess(preprocessor, default_collate([dataset[anchor_indices[0]]]), opts.device)
        feats = tap.features(probe, opts.layers, pooling)
        _, input_spec = encode_inputs(probe)
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
        layers=layers_abs,
        layers_requested=list(opts.layers),
        num_layers_total=tap.num_layers,
        pooling=pooling,
        feature_shape=list(feats.shape[1:]),
        dtype=opts.dtype,
        retention_modes=["hidden", "token_ce"] if opts.store_inputs and "action" in input_spec else ["hidden"],
        stores_inputs=opts.store_inputs,
        input_keys=input_spec if opts.store_inputs else {},
        num_anchors=opts.num_anchors,
        shard_size=opts.shard_size,
        build_args=opts.identity(),
    )
    writer = CacheWriter(opts.output_dir, manifest, overwrite=opts.overwrite)
    state = {"complete": "complete-already", "resume": "resumed", "new": "built"}[writer.state]
    if writer.state == "complete":
        logger.info("anchor cache %s is already complete (%d anchors); nothing to do", opts.output_dir, opts.num_anchors)
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
                for raw in loader:
                    batch = _preprocess(preprocessor, raw, opts.device)
                    f = tap.features(batch, opts.layers, pooling).float().cpu()
                    parts.setdefault("features", []).append(f)
                    if opts.store_inputs:
                        enc, _ = encode_inputs(batch)
                        for key, t in enc.items():
                            parts.setdefault("input." + key, []).append(t)
                    bar.update(f.shape[0])
                tensors = {name: cat_rows(v, name) for name, v in parts.items()}
                tensors["index"] = torch.tensor(frames, dtype=torch.int64)
                writer.add_shard(k, tensors)
        bar.close()
        writer.finalize()
    return BuildSummary(
        directory=str(opts.output_dir),
        state=state,
        anchors=opts.num_anchors,
        shards=len(writer.manifest.shards),
        bytes=writer.total_bytes(),
        seconds=time.perf_counter() - t0,
        feature_shape=list(writer.manifest.feature_shape),
    )


def _preprocess(preprocessor: Any, raw: dict[str, Any], device: str) -> dict[str, Any]:
    batch = preprocessor(raw)
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


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
