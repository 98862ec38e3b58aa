"""Shard files: safetensors written atomically, hashed, and read back memory-mapped.

A shard is a plain safetensors file (no pickles). Writing goes to ``<name>.tmp`` in the same
directory, is flushed to disk, then renamed, so a reader (or a resumed build) never sees a
half-written shard. Reading maps the file with ``numpy.memmap`` from the safetensors header,
so picking a few rows out of a large shard reads only those rows' pages.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

__all__ = [
    "ShardError", "ShardReader", "atomic_write_bytes", "cat_rows", "file_sha256", "umask_mode", "write_shard",
]  # fmt: skip

# safetensors dtype tag -> (numpy dtype used to map the bytes, torch dtype to view them as)
_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "F64": (np.dtype("<f8"), torch.float64),
    "F32": (np.dtype("<f4"), torch.float32),
    "F16": (np.dtype("<f2"), torch.float16),
    "BF16": (np.dtype("<u2"), torch.bfloat16),  # numpy has no bfloat16: map raw, view in torch
    "I64": (np.dtype("<i8"), torch.int64),
    "I32": (np.dtype("<i4"), torch.int32),
    "I16": (np.dtype("<i2"), torch.int16),
    "I8": (np.dtype("i1"), torch.int8),
    "U8": (np.dtype("u1"), torch.uint8),
    "BOOL": (np.dtype("?"), torch.bool),
}


def cat_rows(parts: Sequence[Tensor], name: str = "tensor") -> Tensor:
    """Concatenate row blocks; 2-d integer/bool blocks of different widths (token ids and
    attention masks from a tokenizer that pads to the longest prompt of each batch) are first
    right-padded with 0 / False to the widest. The attention mask marks those positions as
    padding, so the model's features of the real tokens do not change."""
    widths = {tuple(p.shape[1:]) for p in parts}
    if len(widths) <= 1:
        return torch.cat(list(parts))
    if all(p.dim() == 2 and (p.dtype == torch.bool or not p.is_floating_point()) for p in parts):
        width = max(p.shape[1] for p in parts)
        return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
    raise ValueError(f"{name}: row blocks differ in shape {sorted(widths)} and cannot be padded (only 2-d ids/masks can)")


class ShardError(RuntimeError):
    """A shard that cannot be used (missing, corrupt, wrong hash); the message names the file."""


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` with the process's umask applied: what ``open()`` gives a new file (0o666) or
    ``mkdir`` a new folder (0o777). Files made by other means (safetensors writes 0600,
    ``tempfile`` makes 0700 folders) are set to it so a shared cache or export stays readable."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename (all or nothing)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_shard(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """Write ``tensors`` as a safetensors shard atomically; returns the file's sha256.

    Every tensor must share the leading (row) dimension.
    """
    path = Path(path)
    rows = {k: int(v.shape[0]) for k, v in tensors.items()}
    if len(set(rows.values())) > 1:
        raise ValueError(f"shard {path.name}: tensors disagree on the number of rows: {rows}")
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))
        os.chmod(tmp, umask_mode(0o666))  # safetensors creates 0600; the manifest is written with the umask
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: free what the half-written shard took
        raise
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return digest


class ShardReader:
    """Memory-mapped, read-only view of one safetensors shard.

    ``reader.rows(["features", "input.action"], [3, 17])`` copies just those rows into tensors.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ShardError(f"shard {self.path} is missing")
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > self.path.stat().st_size - 8:
                    raise ValueError(f"its header length ({n} bytes) exceeds the file")
                header = json.loads(f.read(n))
            if not isinstance(header, dict):
                raise ValueError("its header is not a JSON object")
        except (struct.error, ValueError, UnicodeDecodeError) as err:
            raise ShardError(f"shard {self.path} is not a readable safetensors file: {err}") from err
        self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
        self._data_start = 8 + n
        self._specs: dict[str, tuple[str, list[int], int, int]] = {}
        size = self.path.stat().st_size
        for name, spec in header.items():
            try:
                start, end = spec["data_offsets"]
                tag, shape = spec["dtype"], list(spec["shape"])
            except (KeyError, TypeError, ValueError) as err:
                raise ShardError(f"shard {self.path} is not a readable safetensors file: tensor {name!r} has no valid spec") from err
            if tag not in _DTYPES or self._data_start + end > size:
                raise ShardError(f"shard {self.path}: tensor {name!r} has an unsupported dtype or lies past the file end")
            self._specs[name] = (tag, shape, start, end)
        self._maps: dict[str, np.ndarray] = {}

    @property
    def keys(self) -> list[str]:
        return sorted(self._specs)

    def shape(self, name: str) -> list[int]:
        return list(self._specs[name][1])

    def num_rows(self) -> int:
        shapes = {s[1][0] if s[1] else 1 for s in self._specs.values()}
        return shapes.pop() if len(shapes) == 1 else -1

    def _map(self, name: str) -> np.ndarray:
        if name not in self._maps:
            if name not in self._specs:
                raise KeyError(f"shard {self.path.name} has no tensor {name!r}; it has: {', '.join(self.keys)}")
            tag, shape, start, end = self._specs[name]
            np_dtype = _DTYPES[tag][0]
            count = (end - start) // np_dtype.itemsize
            if count == 0:
                self._maps[name] = np.zeros(shape, dtype=np_dtype)
            else:
                self._maps[name] = np.memmap(
                    self.path, dtype=np_dtype, mode="r", offset=self._data_start + start, shape=tuple(shape)
                )
        return self._maps[name]

    def rows(self, names: Sequence[str], index: Sequence[int] | np.ndarray) -> dict[str, Tensor]:
        """Copy rows ``index`` of each named tensor out of the map (other pages are not read)."""
        idx = np.asarray(index, dtype=np.int64)
        out = {}
        for name in names:
            arr = np.ascontiguousarray(self._map(name)[idx])
            t = torch.from_numpy(arr)
            torch_dtype = _DTYPES[self._specs[name][0]][1]
            out[name] = t.view(torch_dtype) if torch_dtype == torch.bfloat16 else t
        return out

    def tensor(self, name: str) -> Tensor:
        """The whole tensor (copied)."""
        n = self._specs[name][1][0] if self._specs[name][1] else 1
        return self.rows([name], np.arange(n))[name]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
