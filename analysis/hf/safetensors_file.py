"""Reading and writing the safetensors format directly: an 8-byte little-endian header length, a
JSON header ``{name: {dtype, shape, data_offsets}, "__metadata__": {...}}``, then raw
little-endian data (https://github.com/huggingface/safetensors, "Format").

Reading parses and checks headers before any data is touched, then maps each tensor's bytes with
``numpy.memmap``, so tensors can be streamed one at a time to a device and host memory stays near
one tensor. Nothing here ever unpickles: pickle-based ``.bin``/``.pt`` files are refused.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
CODES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 2**20


class CheckpointError(ValueError):
    """A checkpoint file or directory is missing, corrupt, or not what was expected."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int
    file: Path


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor infos and metadata of one ``.safetensors`` file, validated against the file size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: corrupt header length {n} for a file of {size} bytes")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    data_start = 8 + n
    for name, h in header.items():
        try:
            dtype = DTYPES[h["dtype"]]
            shape = tuple(int(s) for s in h["shape"])
            begin, end = (int(o) for o in h["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r}: unsupported or malformed entry {h!r}") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(f"{path}: tensor {name!r}: {end - begin} bytes stored for shape {shape} {h['dtype']}")
        if data_start + end > size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} ends at byte {data_start + end}, file has {size}"
            )
        infos[name] = TensorInfo(name, dtype, shape, data_start + begin, nbytes, path)
    return infos, meta


def read_tensor(info: TensorInfo) -> np.ndarray:
    """The tensor's data, read into a fresh array of its own.

    A copy, not a memory map: ``jax.device_put`` of a host array on the CPU may alias its memory,
    and an aliased map would let later changes to the file show through in loaded parameters.
    """
    out = np.empty(info.shape, info.dtype)
    if info.nbytes:
        with open(info.file, "rb") as f:
            f.seek(info.start)
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != info.nbytes:
            raise CheckpointError(f"{info.file}: truncated while reading tensor {info.name!r}")
    return out


def read_slice(info: TensorInfo, index: tuple[slice, ...]) -> np.ndarray:
    """``tensor[index]`` read into a fresh array, touching only the bytes of that slice when it is a
    block of leading rows (the usual slice of a parameter sharded over its first axis): the file is
    memory-mapped and the slice copied out, so a host holding one shard of a model reads that shard."""
    if not info.nbytes:
        return np.empty(info.shape, info.dtype)[index]
    mapped = np.memmap(info.file, dtype=info.dtype, mode="r", offset=info.start, shape=info.shape)
    try:
        return np.array(mapped[index])
    finally:
        del mapped


def write_file(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> int:
    """Write ``tensors`` (name → array) as one safetensors file; returns bytes written.

    The caller arranges atomicity (``analysis.hf.checkpoints.save`` writes into a temporary directory
    and renames it into place).
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    arrays = []
    for name, x in tensors.items():
        a = np.asarray(x)
        if a.dtype not in CODES:
            raise CheckpointError(f"tensor {name!r}: dtype {a.dtype} cannot be written to safetensors")
        a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
        header[name] = {"dtype": CODES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays:
            f.write(a.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(blob) + offset
