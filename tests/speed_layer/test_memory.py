"""The speed-layer process's memory settings, in a fresh interpreter (they are process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, os, sys
from speed_layer.memory import configure_process_memory
configure_process_memory()
import polars, pyarrow
from speed_layer.aggregate import aggregate_windows
pyarrow.array([1.0, 2.0])
print(json.dumps({
    "pandas": "pandas" in sys.modules,
    "pool": pyarrow.default_memory_pool().backend_name,
    "jemalloc": os.environ.get("_RJEM_MALLOC_CONF"),
    "polars_from_arrow": polars.from_arrow(pyarrow.table({"a": [1]})).height,
    "polars_threads": polars.thread_pool_size(),
}))
"""


def test_a_speed_layer_process_drops_pandas_uses_system_malloc_and_one_polars_thread() -> None:
    env = {k: v for k, v in os.environ.items() if k != "POLARS_MAX_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["pandas"] and got["pool"] == "system" and got["polars_from_arrow"] == 1
    assert got["polars_threads"] == 1  # on any number of cores
    # polars puts its own defaults in front; jemalloc lets the later options win.
    assert got["jemalloc"].endswith("dirty_decay_ms:0,muzzy_decay_ms:0")


TRIM_PROBE = """
import json, psutil
from speed_layer.memory import release_freed_memory

def rss():
    return psutil.Process().memory_info().rss / 2**20

# 200 MiB of blocks too large for Python's small-object allocator, freed but for one in a
# hundred, which keeps glibc from trimming the heap's top by itself.
blocks = [bytes(2048) for _ in range(100_000)]
kept = blocks[::100]
del blocks
before = rss()
release_freed_memory()
print(json.dumps({"before": before, "after": rss(), "kept": len(kept)}))
"""


def test_freed_heap_memory_goes_back_to_the_system() -> None:
    out = subprocess.run(
        [sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # ~195 MiB of free blocks stay resident until trimmed.
    assert got["before"] - got["after"] > 150, got
