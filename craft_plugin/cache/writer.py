"""Writing an anchor cache shard by shard, resumable after any interruption.

The build is a deterministic function of its arguments: the anchor rows are fixed up front
(from the seed) and cut into shards of ``shard_size`` rows, so shard *k* always holds the
same anchors. Each shard is written to a temp name and renamed when complete, and the
manifest is rewritten atomically after each shard. Rerunning the same build after a crash
(even ``kill -9``) keeps the complete shards the manifest lists (re-checking their sha256),
discards anything else, and continues with the next shard.

``overwrite`` replaces an existing anchor cache only once the new one is complete: the new
build goes to a staging folder next to it (``.<name>.overwrite``), which :meth:`finalize`
swaps into place; until then the old cache is untouched and usable. ``overwrite`` never
empties a folder that is not an anchor cache.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from craft_plugin.cache.manifest import (
    MANIFEST_NAME,
    CacheError,
    Manifest,
    ShardInfo,
    load_manifest,
    save_manifest,
    shard_name,
    utc_now,
)
from craft_plugin.cache.shards import ShardReader, file_sha256, write_shard

__all__ = ["CacheWriter"]

logger = logging.getLogger(__name__)

#: Manifest fields that must match for a rerun to resume an existing build.
_IDENTITY_FIELDS = (
    "teacher", "dataset", "layers", "pooling", "feature_shape", "dtype", "stores_inputs", "shard_size", "num_anchors",
    "anchor_targets", "action_kind", "action_shape", "action_norm", "draw_keys",
)  # fmt: skip


class CacheWriter:
    """Owns one cache directory during a build.

    ``state`` after construction is one of ``"new"``, ``"resume"`` or ``"complete"``.
    """

    def __init__(self, directory: str | Path, manifest: Manifest, *, overwrite: bool = False) -> None:
        self.directory = Path(directory)
        #: Where the finished cache goes; differs from ``directory`` (the staging folder) while an
        #: ``overwrite`` build replaces an existing cache.
        self.target = self.directory
        self.state = "new"
        if self.directory.exists() and not self.directory.is_dir():
            raise CacheError(f"--output-dir {self.directory} is a file, not a folder; choose a folder for the cache")
        manifest = manifest.model_copy(deep=True)
        manifest.shards = []
        manifest.complete = False
        if (self.directory / MANIFEST_NAME).is_file() and not overwrite:
            existing = load_manifest(self.directory)
            diffs = _identity_diff(existing, manifest)
            if diffs:
                raise CacheError(
                    f"{self.directory} already holds an anchor cache built with different arguments "
                    f"({'; '.join(diffs)}). Pass --overwrite to replace it, or choose another --output-dir."
                )
            manifest.created_at = existing.created_at
            manifest.shards = self._keep_valid_shards(existing)
            manifest.complete = existing.complete and len(manifest.shards) == len(existing.shards)
            manifest.feature_mean, manifest.feature_std = existing.feature_mean, existing.feature_std
            manifest.action_mean, manifest.action_std = existing.action_mean, existing.action_std
            self.state = "complete" if manifest.complete else "resume"
        elif overwrite and (self.directory / MANIFEST_NAME).is_file():
            # Build next to the old cache; finalize() swaps the new one in once it is complete.
            self.directory = self.target.with_name(f".{self.target.name}.overwrite")
            if self.directory.exists():
                shutil.rmtree(self.directory)  # our own staging folder of an earlier, unfinished overwrite
        elif self.directory.exists() and any(self.directory.iterdir()):
            names = sorted(p.name for p in self.directory.iterdir())
            if all((n.startswith("shard_") or n.endswith(".tmp")) and (self.directory / n).is_file() for n in names):
                self._clear()  # a build that died before its first manifest: nothing to keep
            else:
                raise CacheError(
                    f"{self.directory} exists and is not an anchor cache (it holds {', '.join(names[:5])}); "
                    "choose an empty or new --output-dir" + (" (--overwrite replaces only an anchor cache)" if overwrite else "")
                )
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_strays(manifest)
        self.manifest = manifest
        if self.state != "complete":
            save_manifest(self.directory, self.manifest)

    # ------------------------------------------------------------------ plan
    @property
    def num_shards(self) -> int:
        m = self.manifest
        return (m.num_anchors + m.shard_size - 1) // m.shard_size

    def pending(self) -> list[tuple[int, list[int]]]:
        """``(shard number, anchor rows)`` of every shard still to write, in order."""
        m = self.manifest
        done = len(m.shards)
        out = []
        for k in range(done, self.num_shards):
            rows = list(range(k * m.shard_size, min((k + 1) * m.shard_size, m.num_anchors)))
            out.append((k, rows))
        return out

    # ------------------------------------------------------------------ writing
    def add_shard(self, k: int, tensors: Mapping[str, Tensor]) -> ShardInfo:
        """Write shard ``k`` (must be the next one) and record it in the manifest."""
        if k != len(self.manifest.shards):
            raise ValueError(f"shard {k} written out of order; next is {len(self.manifest.shards)}")
        name = shard_name(k)
        digest = write_shard(self.directory / name, tensors, metadata={"shard": str(k)})
        rows = int(next(iter(tensors.values())).shape[0])
        info = ShardInfo(file=name, rows=rows, sha256=digest)
        self.manifest.shards.append(info)
        self.manifest.updated_at = utc_now()
        save_manifest(self.directory, self.manifest)
        return info

    def finalize(self) -> Manifest:
        """Compute the per-dimension feature (and action-target) statistics and mark the cache complete."""
        m = self.manifest
        if m.rows_done != m.num_anchors:
            raise CacheError(f"cannot finalize {self.directory}: {m.rows_done} of {m.num_anchors} anchors written")
        mean, std = self._feature_stats()
        m.feature_mean = mean.flatten().tolist()
        m.feature_std = std.flatten().tolist()
        if "actions" in m.anchor_targets:
            mean, std = self._feature_stats("action_target")
            m.action_mean = mean.flatten().tolist()
            m.action_std = std.flatten().tolist()
        m.complete = True
        m.updated_at = utc_now()
        save_manifest(self.directory, m)
        if self.directory != self.target:
            self._swap_in()
        return m

    def _swap_in(self) -> None:
        """Replace the old cache at ``target`` by the complete staging folder."""
        old = self.target.with_name(f".{self.target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        self.target.rename(old)
        self.directory.rename(self.target)
        self.directory = self.target
        shutil.rmtree(old)
        logger.info("anchor cache %s replaced by the new build (--overwrite)", self.target)

    def total_bytes(self) -> int:
        return sum((self.directory / s.file).stat().st_size for s in self.manifest.shards) + (
            self.directory / MANIFEST_NAME
        ).stat().st_size

    # ------------------------------------------------------------------ helpers
    def _feature_stats(self, name: str = "features") -> tuple[Tensor, Tensor]:
        """Streamed over shards in float64 (one shard's tensor ``name`` in memory at a time)."""
        total = 0
        s1: Tensor | None = None
        s2: Tensor | None = None
        for info in self.manifest.shards:
            f = ShardReader(self.directory / info.file).tensor(name).double()
            s1 = f.sum(0) if s1 is None else s1 + f.sum(0)
            s2 = (f * f).sum(0) if s2 is None else s2 + (f * f).sum(0)
            total += f.shape[0]
        assert s1 is not None and s2 is not None
        mean = s1 / total
        var = (s2 / total - mean * mean).clamp_min(0.0)
        return mean.float(), var.sqrt().float()

    def _keep_valid_shards(self, existing: Manifest) -> list[ShardInfo]:
        kept: list[ShardInfo] = []
        for k, info in enumerate(existing.shards):
            path = self.directory / info.file
            if info.file != shard_name(k) or not path.is_file() or file_sha256(path) != info.sha256:
                logger.warning("anchor cache %s: %s is missing or damaged; rebuilding from it on", self.directory, info.file)
                break
            kept.append(info)
        return kept

    def _remove_strays(self, manifest: Manifest) -> None:
        listed = {s.file for s in manifest.shards} | {MANIFEST_NAME}
        for p in self.directory.iterdir():
            if p.name.endswith(".tmp") or (p.name.startswith("shard_") and p.name not in listed):
                p.unlink()

    def _clear(self) -> None:
        """Empty a folder that holds only shards and temp files (a build that died early)."""
        for p in self.directory.iterdir():
            p.unlink()


def _identity_diff(a: Manifest, b: Manifest) -> list[str]:
    da: dict[str, Any] = a.model_dump(mode="json")
    db: dict[str, Any] = b.model_dump(mode="json")
    out = []
    for f in _IDENTITY_FIELDS:
        if da[f] != db[f]:
            if isinstance(da[f], dict):
                keys = [k for k in sorted(set(da[f]) | set(db[f])) if da[f].get(k) != db[f].get(k)]
                out.append(f"{f}: " + ", ".join(f"{k} {_short(da[f].get(k))} vs {_short(db[f].get(k))}" for k in keys))
            else:
                out.append(f"{f}: existing {_short(da[f])} vs requested {_short(db[f])}")
    return out


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."

