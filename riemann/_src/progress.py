"""One way to show progress: a tqdm bar when asked for, an object that ignores updates otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class _Silent:
    """Stands in for a bar that is not shown."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


@contextlib.contextmanager
def progress_bar(
    enabled: bool, *, desc: str, unit: str = "step", total: int | None = None, initial: int = 0, leave: bool = True
) -> Iterator[Any]:
    """A tqdm progress bar (closed on exit) when ``enabled``, else an object whose ``update`` does
    nothing, so that callers never branch on whether progress is shown.

    Example:
      >>> with progress_bar(False, desc="work", total=3) as bar:
      ...     for _ in range(3):
      ...         bar.update(1)
    """
    if not enabled:
        yield _Silent()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave)
    try:
        yield bar
    finally:
        bar.close()
