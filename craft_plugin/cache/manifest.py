"""The anchor cache's ``manifest.json``: what was cached, from what, and how to check it.

See ``docs/cache-format.md`` for the whole format. The manifest is rewritten atomically
(temp file + rename) after every shard, so a build killed at any moment leaves a manifest
that lists exactly the shards that are complete.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from craft_plugin.cache.shards import atomic_write_bytes

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "CacheError",
    "DatasetInfo",
    "Manifest",
    "ShardInfo",
    "TeacherInfo",
    "accounting_problems",
    "load_manifest",
    "save_manifest",
    "shard_name",
]

#: Version of the cache layout; a reader refuses a cache written with a newer one, and one
#: written with an older one (1: inputs stored after the teacher's preprocessor, no action
#: anchors) with a "rebuild it" message.
SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"


class CacheError(RuntimeError):
    """An anchor cache that cannot be used; the message says what is wrong and how to fix it."""


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherInfo(_Strict):
    path: str = Field(description="Local path or hub id of the teacher policy.")
    policy_type: str
    config_sha256: str = Field(description="sha256 of the teacher's config.json (canonical JSON).")
    weights_sha256: str = Field(description="sha256 of the teacher's weights (model.safetensors or state dict).")


class DatasetInfo(_Strict):
    repo_id: str | None = None
    root: str | None = None
    info_sha256: str = Field(description="sha256 of meta/info.json: the dataset's fingerprint.")
    stats_sha256: str | None = Field(None, description="sha256 of meta/stats.json, if any.")
    num_frames: int
    anchor_indices: list[int] = Field(description="Dataset frame index of each anchor row, in row order.")
    seed: int


class ShardInfo(_Strict):
    file: str
    rows: int
    sha256: str


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    created_at: str
    updated_at: str
    complete: bool = False
    versions: dict[str, str] = Field(description="craft_plugin, lerobot and torch versions of the build.")
    teacher: TeacherInfo
    dataset: DatasetInfo
    anchor_targets: list[Literal["features", "actions"]] = Field(
        default_factory=lambda: ["features"],
        description="What hidden mode can anchor: backbone features and/or the action pathway's output.",
    )
    action_kind: str | None = Field(None, description="The tap's action_kind: action, velocity, epsilon or hidden.")
    action_shape: list[int] | None = Field(None, description="Per-anchor shape of action_target.")
    action_norm: dict[str, list[float]] | None = Field(
        None,
        description="The teacher's action normalization as an affine map per action dimension: "
        "raw = normalized * scale + shift.",
    )
    draw_keys: list[str] = Field(default_factory=list, description="The action side's stored randomness (draw.<name>).")
    action_mean: list[float] | None = Field(None, description="Per-element mean of action_target (flat).")
    action_std: list[float] | None = Field(None, description="Per-element std of action_target (flat).")
    tasks: list[str] = Field(default_factory=list, description="Task strings; the task_index of each anchor points here.")
    layers: list[int] = Field(description="Absolute layer indices (negative ones resolved).")
    layers_requested: list[int]
    num_layers_total: int
    pooling: list[str]
    feature_shape: list[int] = Field(description="[n_layers, n_vectors, hidden_dim] of one anchor.")
    dtype: str
    retention_modes: list[Literal["hidden", "token_ce"]]
    stores_inputs: bool = Field(description="Shards hold the preprocessed student inputs of each anchor.")
    input_keys: dict[str, dict[str, Any]] = Field(default_factory=dict, description="key -> {dtype, shape} per row")
    num_anchors: int
    shard_size: int
    shards: list[ShardInfo] = Field(default_factory=list)
    feature_mean: list[float] | None = Field(None, description="Per-dimension mean of the teacher features (flat).")
    feature_std: list[float] | None = Field(None, description="Per-dimension std of the teacher features (flat).")
    build_args: dict[str, Any] = Field(default_factory=dict, description="The arguments that built this cache.")

    @property
    def rows_done(self) -> int:
        return sum(s.rows for s in self.shards)


def save_manifest(directory: str | Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically."""
    data = json.dumps(manifest.model_dump(mode="json"), indent=1, ensure_ascii=False).encode("utf-8")
    atomic_write_bytes(Path(directory) / MANIFEST_NAME, data)


def load_manifest(directory: str | Path) -> Manifest:
    """Read and validate ``manifest.json``; every failure is a :class:`CacheError` that says
    what is wrong (missing, truncated, from a newer craft-plugin, malformed field)."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    rebuild = "rebuild it with `craft build-cache ... --output-dir " + str(directory) + " --overwrite`"
    if not directory.is_dir():
        raise CacheError(f"anchor cache {directory} does not exist; build one with `craft build-cache`")
    if not path.is_file():
        raise CacheError(f"{path} is missing: {directory} is not an anchor cache (or its build never wrote a shard); {rebuild}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheError(f"{path} is not valid JSON (truncated or corrupt: {err}); {rebuild}") from err
    if not isinstance(raw, dict):
        raise CacheError(f"{path} does not hold a JSON object; {rebuild}")
    version = raw.get("schema_version")
    if isinstance(version, int) and version < SCHEMA_VERSION:
        raise CacheError(
            f"{path} has schema_version {version}: it was built by an older craft-plugin (inputs after the "
            "teacher's preprocessor, no action anchors), which this version cannot train from; " + rebuild
        )
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise CacheError(
            f"{path} has schema_version {version}, newer than this craft-plugin understands ({SCHEMA_VERSION}); "
            "upgrade craft-plugin (pip install -U craft-plugin) or rebuild the cache with this version"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        raise CacheError(f"{path} is malformed ({problems}); {rebuild}") from err
    problems = accounting_problems(manifest)
    if problems:
        state = "complete" if manifest.complete else "partial"
        raise CacheError(f"{path} is corrupt: it says {state} but {'; '.join(problems)}; {rebuild}")
    return manifest


def accounting_problems(m: Manifest) -> list[str]:
    """How ``m`` fails to account for its anchors: a complete manifest lists shards
    ``shard_00000``, ``shard_00001``... of ``shard_size`` rows (the last one the rest) holding
    exactly ``num_anchors`` rows, one dataset index per row; a partial one lists a prefix of them."""
    problems = []
    if len(m.dataset.anchor_indices) != m.num_anchors:
        problems.append(f"dataset.anchor_indices has {len(m.dataset.anchor_indices)} entries for {m.num_anchors} anchors")
    expected = [min(m.shard_size, m.num_anchors - k) for k in range(0, m.num_anchors, max(m.shard_size, 1))]
    listed = [s.rows for s in m.shards]
    names = [s.file for s in m.shards]
    if names != [shard_name(k) for k in range(len(names))]:
        problems.append(f"its shards list is not shard_00000, shard_00001, ... in order ({', '.join(names[:3])}...)")
    if m.complete and m.rows_done != m.num_anchors:
        problems.append(f"its shards list holds {m.rows_done} of its {m.num_anchors} anchors ({len(m.shards)} shard(s))")
    if listed != expected[: len(listed)]:
        problems.append(f"its shards hold {listed} rows, expected {expected[: len(listed)]} (shard_size {m.shard_size})")
    return problems
