"""One program in flight when several processes run collectives on their CPUs.

A loop that dispatches jitted programs without reading their results lets JAX queue them, and
that is what makes it fast. Under ``jax.distributed`` on CPU devices every program over
arrays that span processes runs collectives (Gloo), and XLA's CPU client can then deadlock: a
device admits a bounded number of in-flight programs, launches whose inputs are ready take those
places in the order they become ready, not in the order they were dispatched, and a later
program holding a place waits for the earlier collective, which on that device can no longer
start. Both processes then sit in an all-reduce forever (seen with two processes of two CPU
devices each, in about half of the runs of a 100-step path integral). Waiting for each program
before dispatching the next removes the overtaking. On accelerators, where launches are ordered
on a stream, and in a single process nothing waits.
"""

from __future__ import annotations

from typing import TypeVar

import jax

T = TypeVar("T")


def must_pace() -> bool:
    """Whether programs are to be waited for one by one: several processes on CPU devices."""
    return jax.process_count() > 1 and jax.default_backend() == "cpu"


def pace(out: T) -> T:
    """``out`` (a result of a dispatched program), waited for when :func:`must_pace` says so.

    Call it on each result inside a loop of dispatches; it costs nothing elsewhere.

    Example:
      >>> import jax.numpy as jnp
      >>> float(pace(jnp.ones(3).sum()))
      3.0
    """
    if must_pace():
        jax.block_until_ready(out)
    return out
