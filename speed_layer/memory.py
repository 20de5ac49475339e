"""Process-wide settings for a process that runs only the speed layer: memory and threads.

Most of the layer's resident memory is libraries, not data (``docs/benchmarks.md``): these
settings keep what the libraries hold to what the layer uses. Call
:func:`configure_process_memory` first thing, before the speed layer's modules are imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.abc
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

__all__ = ["configure_process_memory", "release_freed_memory"]

#: jemalloc options of the Rust libraries (delta-rs, polars; tikv-jemallocator reads the
#: prefixed variable): hand freed pages back at once instead of after 10 s, so each
#: commit's DataFusion MERGE does not leave its peak resident until the next one.
_JEMALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"


class _WithoutPandas(importlib.abc.MetaPathFinder):
    """Makes ``import pandas`` fail as if pandas were not installed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError("no pandas in a speed-layer process", name=fullname)
        return None


def configure_process_memory() -> None:
    """Settings that only a process of its own may take (they are process-wide)."""
    # pyarrow imports pandas on its first array, to recognise pandas objects (~55 MiB); the
    # speed layer never hands it any, and pyarrow, delta-rs and polars all take a failing
    # import as "pandas is not installed".
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas())
    # Both read once, when the library loads: no effect if it is already imported.
    # Last, so that it wins over what a parent process left (importing polars sets it).
    options = [os.environ.get("_RJEM_MALLOC_CONF"), _JEMALLOC_CONF]
    os.environ["_RJEM_MALLOC_CONF"] = ",".join(o for o in options if o)
    # Arrow's default pool (mimalloc) keeps what each commit's aggregation freed; the C
    # library's malloc hands most of it back (-50 MiB at the peak, same throughput).
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    # polars only encodes each commit's agg1m records here (a few ms each): a pool of one
    # thread per core, which it starts by default, spends more CPU handing the work around
    # than it saves, on cores the fetcher and the main thread need (A/B in
    # docs/benchmarks.md), and holds memory of its own.
    os.environ.setdefault("POLARS_MAX_THREADS", "1")


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc; elsewhere nothing).

    With Arrow on the C library's malloc, each commit's buffers are freed into glibc's heap,
    which keeps them resident for the next use; returning them after a commit holds the
    layer ~15 MiB lower at its peak, on the sink thread (a trim of 100 MiB free: ~11 ms).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
