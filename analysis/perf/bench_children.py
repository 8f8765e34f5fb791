"""The parts of ``riemann bench`` that must run in a fresh process, so that the peak resident memory
they report is their own: ``python -m analysis.perf.bench_children memory WIDTH DEPTH N`` (a path
integral with ``N`` nodes) and ``... load MODE PATH`` (loading a checkpoint with ``ours`` or
``safetensors``). Each prints its figures on one line."""

from __future__ import annotations

import glob
import sys
import time


def _kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (``getrusage``'s ``ru_maxrss`` can carry the
    parent's high-water mark into a child on Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory(width: int, depth: int, n: int) -> tuple[int, int]:
    """Resident KiB before and at the peak of a Gauss–Legendre path integral with ``n`` nodes."""
    import jax

    import riemann
    from analysis.perf.bench import mlp

    loss, params, direction, data = mlp(width, depth, 8)
    jax.block_until_ready((params, direction))
    base = _kib("VmRSS")
    res = riemann.integrate_path(loss, params, direction, [data, data], rule="gauss-legendre", n=n)
    jax.block_until_ready(res.grad)
    return base, _kib("VmHWM")


def load(mode: str, path: str) -> tuple[float, int, int]:
    """Seconds, resident KiB before and at the peak of loading the checkpoint at ``path``. Both
    readers are imported before the baseline is taken, so neither pays for imports."""
    import jax
    from safetensors.numpy import load_file

    from analysis.hf import checkpoints

    if mode not in ("ours", "safetensors"):
        raise ValueError(f"mode={mode!r}; expected 'ours' or 'safetensors'")
    jax.block_until_ready(jax.numpy.zeros(1))
    base = _kib("VmRSS")
    t0 = time.perf_counter()
    if mode == "ours":
        jax.block_until_ready(checkpoints.load(path).params)
    else:
        tensors = {}
        for f in sorted(glob.glob(path + "/*.safetensors")):
            tensors.update(load_file(f))
    return time.perf_counter() - t0, base, _kib("VmHWM")


def main(argv: list[str]) -> int:
    if argv[:1] == ["memory"] and len(argv) == 4:
        print(*memory(*map(int, argv[1:])))
    elif argv[:1] == ["load"] and len(argv) == 3:
        print(*load(argv[1], argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
