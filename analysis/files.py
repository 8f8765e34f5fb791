"""Output files written atomically (temporary file in the same directory, then ``os.replace``),
output directories that never overwrite what a user already has, and file-name slugs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from analysis import hosts


def _default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, never half."""
    path = Path(path)
    if not hosts.is_writer():  # several processes: process 0 writes, the others compute alike
        return path
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically. NaN and infinities, which JSON does not have,
    are written as ``null``; NumPy scalars and arrays as numbers and lists."""
    return write_text(path, json.dumps(_clean(obj), indent=2, default=_default, allow_nan=False) + "\n")


def _clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    return o


def slug(name: str) -> str:
    """``name`` as a file-name part: letters, digits, ``-_.`` kept, anything else ``_``.

    Example:
      >>> slug("lm/arithmetic-dpo")
      'lm_arithmetic-dpo'
    """
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return write_bytes(path, buf.getvalue())


def fresh_output_dir(out: str | os.PathLike | None, root: str | os.PathLike = "runs") -> Path:
    """The directory to write a run into: ``out`` if it does not exist or is empty, else an error;
    with ``out=None``, a new timestamped directory under ``root``."""
    if out is None:
        import datetime

        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(root) / stamp
        i = 1
        while out.exists():
            out = Path(root) / f"{stamp}-{i}"
            i += 1
    out = check_new_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_new_dir(out: str | os.PathLike) -> Path:
    """``out`` as a path if it does not exist or is an empty directory; else ``FileExistsError``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output directory {str(out)!r} exists and is not empty; choose a new --out")
    return out
