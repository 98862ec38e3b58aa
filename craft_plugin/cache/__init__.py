"""The anchor cache: ``manifest.json`` + ``shard_NNNNN.safetensors`` (see docs/cache-format.md)."""

from craft_plugin.cache.anchor_cache import INPUT_PREFIX, AnchorBatch, AnchorCache
from craft_plugin.cache.manifest import SCHEMA_VERSION, CacheError, DatasetInfo, Manifest, ShardInfo, TeacherInfo
from craft_plugin.cache.writer import CacheWriter

__all__ = [
    "INPUT_PREFIX",
    "SCHEMA_VERSION",
    "AnchorBatch",
    "AnchorCache",
    "CacheError",
    "CacheWriter",
    "DatasetInfo",
    "Manifest",
    "ShardInfo",
    "TeacherInfo",
]
