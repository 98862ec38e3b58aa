"""``AnchorCache``: random anchor batches out of a cache directory, memory-mapped.

Opening a cache reads only ``manifest.json`` and each shard's small header; with
``verify=True`` (the default) it also streams every shard once through sha256, so a flipped
byte is reported by file name before training starts. Sampling copies just the chosen rows
out of the memory-mapped shards.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from craft_plugin.cache.manifest import CacheError, Manifest, load_manifest
from craft_plugin.cache.shards import ShardError, ShardReader, cat_rows, file_sha256

__all__ = ["AnchorBatch", "AnchorCache", "INPUT_PREFIX"]

#: Shard keys of stored student inputs are ``input.<batch key>``.
INPUT_PREFIX = "input."


#: Shard keys of the action side's stored randomness are ``draw.<name>``.
DRAW_PREFIX = "draw."


class AnchorBatch(dict):
    """``{"features": [B, n_layers, n_vectors, D], "index": [B], "inputs": {raw key: tensor},
    "action_target": [B, ...] or None, "draw": {name: tensor}, "task_index": [B] or None}``."""

    @property
    def features(self) -> Tensor:
        return self["features"]

    @property
    def inputs(self) -> dict[str, Tensor]:
        return self["inputs"]

    @property
    def action_target(self) -> Tensor | None:
        return self.get("action_target")

    @property
    def draw(self) -> dict[str, Tensor]:
        return self.get("draw", {})

    @property
    def task_index(self) -> Tensor | None:
        return self.get("task_index")


class AnchorCache:
    """A built anchor cache, opened for training.

    Args:
        directory: the cache directory (``manifest.json`` + ``shard_NNNNN.safetensors``).
        verify: check every shard's sha256 against the manifest on open.
    """

    def __init__(self, directory: str | Path, *, verify: bool = True) -> None:
        self.directory = Path(directory)
        self.manifest: Manifest = load_manifest(self.directory)
        m = self.manifest
        if not m.complete:
            raise CacheError(
                f"anchor cache {self.directory} is partial: {m.rows_done} of {m.num_anchors} anchors in "
                f"{len(m.shards)} complete shard(s). Rerun the same `craft build-cache` command to resume it."
            )
        self._readers: list[ShardReader] = []
        self._starts: list[int] = []
        start = 0
        for info in m.shards:
            path = self.directory / info.file
            if not path.is_file():
                raise CacheError(f"anchor cache {self.directory}: shard {info.file} listed in the manifest is missing")
            if verify:
                digest = file_sha256(path)
                if digest != info.sha256:
                    raise CacheError(
                        f"anchor cache {self.directory}: shard {info.file} is corrupt (sha256 {digest[:12]}… "
                        f"!= manifest {info.sha256[:12]}…); rebuild the cache (`craft build-cache ... --overwrite`)"
                    )
            try:
                reader = ShardReader(path)
            except ShardError as err:
                raise CacheError(str(err)) from err
            if reader.num_rows() != info.rows:
                raise CacheError(
                    f"anchor cache {self.directory}: shard {info.file} has {reader.num_rows()} rows, manifest says {info.rows}"
                )
            self._readers.append(reader)
            self._starts.append(start)
            start += info.rows
        self._len = start
        self._input_keys = sorted(m.input_keys) if m.stores_inputs else []

    # ------------------------------------------------------------------ description
    def __len__(self) -> int:
        return self._len

    @property
    def layers(self) -> list[int]:
        return list(self.manifest.layers)

    @property
    def pooling(self) -> list[str]:
        return list(self.manifest.pooling)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest.feature_shape)

    @property
    def input_keys(self) -> list[str]:
        return list(self._input_keys)

    def feature_stats(self) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and std of the teacher features, each shaped ``feature_shape``."""
        m = self.manifest
        if m.feature_mean is None or m.feature_std is None:
            raise CacheError(f"anchor cache {self.directory} has no feature statistics (built without them)")
        shape = tuple(m.feature_shape)
        return torch.tensor(m.feature_mean).reshape(shape), torch.tensor(m.feature_std).reshape(shape)

    def action_stats(self) -> tuple[Tensor, Tensor]:
        """Per-element mean and std of the teacher's action targets, each shaped ``action_shape``."""
        m = self.manifest
        if m.action_mean is None or m.action_std is None or m.action_shape is None:
            raise CacheError(f"anchor cache {self.directory} holds no action anchors (built with --no-actions)")
        shape = tuple(m.action_shape)
        return torch.tensor(m.action_mean).reshape(shape), torch.tensor(m.action_std).reshape(shape)

    # ------------------------------------------------------------------ reading
    def rows(self, indices: Sequence[int] | Tensor, *, with_inputs: bool = True) -> AnchorBatch:
        """The anchors at global row ``indices`` (in that order)."""
        idx = np.asarray(torch.as_tensor(indices).tolist(), dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._len):
            raise IndexError(f"anchor index out of range 0..{self._len - 1}")
        m = self.manifest
        names = ["features", "index"] + [INPUT_PREFIX + k for k in (self._input_keys if with_inputs else [])]
        if "actions" in m.anchor_targets:
            names += ["action_target"] + [DRAW_PREFIX + k for k in m.draw_keys]
        if with_inputs and m.stores_inputs and m.tasks:
            names.append("task_index")
        parts: dict[str, list[Tensor]] = {n: [] for n in names}
        order: list[np.ndarray] = []
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        for s in np.unique(shard_of):
            positions = np.nonzero(shard_of == s)[0]
            local = idx[positions] - self._starts[s]
            got = self._readers[s].rows(names, local)
            for n in names:
                parts[n].append(got[n])
            order.append(positions)
        if not order:
            raise ValueError("no indices given")
        perm = np.argsort(np.concatenate(order), kind="stable")
        merged = {n: cat_rows(v, n)[torch.from_numpy(perm)] for n, v in parts.items()}
        return AnchorBatch(
            features=merged.pop("features"),
            index=merged.pop("index"),
            action_target=merged.pop("action_target", None),
            task_index=merged.pop("task_index", None),
            draw={k[len(DRAW_PREFIX) :]: merged.pop(k) for k in list(merged) if k.startswith(DRAW_PREFIX)},
            inputs={k[len(INPUT_PREFIX) :]: v for k, v in merged.items()},
        )

    def sample(self, batch_size: int, generator: torch.Generator, *, with_inputs: bool = True) -> AnchorBatch:
        """``batch_size`` distinct anchors drawn uniformly with ``generator`` (reproducible)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size > self._len:
            raise ValueError(f"batch_size {batch_size} exceeds the {self._len} anchors in {self.directory}")
        chosen = torch.randperm(self._len, generator=generator)[:batch_size]
        return self.rows(chosen, with_inputs=with_inputs)

    # ------------------------------------------------------------------ compatibility
    def check_compatible(
        self,
        *,
        retention_mode: str,
        layers: Sequence[int] | None = None,
        pooling: Sequence[str] | None = None,
        anchor_targets: Sequence[str] | None = None,
        policy_type: str | None = None,
        hidden_dim: int | None = None,
        num_layers: int | None = None,
    ) -> None:
        """Raise :class:`CacheError` when this cache cannot serve the training config.

        ``layers``, ``pooling`` and ``anchor_targets`` left ``None`` take the cache's own values:
        only what the user set is checked. The message names each mismatching field with both
        values and gives the ``craft build-cache`` command line that builds the right cache.
        """
        m = self.manifest
        problems: list[str] = []
        missing: list[str] = []
        if retention_mode not in m.retention_modes:
            problems.append(f"retention_mode: config {retention_mode!r}, cache supports {m.retention_modes}")
        if policy_type is not None and policy_type != m.teacher.policy_type:
            problems.append(f"policy type: training {policy_type!r}, cache teacher {m.teacher.policy_type!r}")
        if num_layers is not None and num_layers != m.num_layers_total:
            problems.append(f"number of layers: policy {num_layers}, cache teacher {m.num_layers_total}")
        if retention_mode == "hidden":
            total = num_layers if num_layers is not None else m.num_layers_total
            if layers is not None:
                resolved = [li + total if li < 0 else li for li in layers]
                if resolved != list(m.layers):
                    problems.append(f"layers: config {list(layers)} (absolute {resolved}), cache {m.layers}")
            if pooling is not None and list(pooling) != list(m.pooling):
                problems.append(f"pooling: config {list(pooling)}, cache {m.pooling}")
            missing = [t for t in (anchor_targets or []) if t not in m.anchor_targets]
            if missing:
                problems.append(f"anchor_targets: config {list(anchor_targets or [])}, cache holds {m.anchor_targets}")
            if hidden_dim is not None and hidden_dim != m.feature_shape[-1]:
                problems.append(f"hidden size: policy {hidden_dim}, cache {m.feature_shape[-1]}")
        if problems:
            raise CacheError(
                f"anchor cache {self.directory} does not fit the training config:\n  - "
                + "\n  - ".join(problems)
                + "\nBuild the right cache with:\n  "
                + self.build_command(layers=layers, pooling=pooling, actions=True if missing else None)
            )

    def build_command(
        self, *, layers: Sequence[int] | None = None, pooling: Sequence[str] | None = None, actions: bool | None = None
    ) -> str:
        """The ``craft build-cache`` command line that rebuilds this cache (optionally with
        other layers/pooling)."""
        m = self.manifest
        args: list[str] = ["craft", "build-cache"]
        if m.dataset.repo_id:
            args.append(f"--dataset.repo_id={m.dataset.repo_id}")
        if m.dataset.root:
            args.append(f"--dataset.root={m.dataset.root}")
        args += [
            f"--policy.path={m.teacher.path}",
            f"--output-dir={self.directory}",
            f"--num-anchors={m.num_anchors}",
            f"--layers={','.join(str(x) for x in (layers if layers is not None else m.layers_requested))}",
            f"--pooling={','.join(pooling if pooling is not None else m.pooling)}",
            f"--seed={m.dataset.seed}",
        ]
        if not (actions if actions is not None else "actions" in m.anchor_targets):
            args.append("--no-actions")
        args.append("--overwrite")
        return " ".join(shlex.quote(a) for a in args)

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "directory": str(self.directory),
            "anchors": len(self),
            "shards": len(m.shards),
            "layers": m.layers,
            "pooling": m.pooling,
            "feature_shape": m.feature_shape,
            "anchor_targets": m.anchor_targets,
            "action_kind": m.action_kind,
            "action_shape": m.action_shape,
            "teacher": m.teacher.path,
            "policy_type": m.teacher.policy_type,
        }
