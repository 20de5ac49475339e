"""Batch rows before the watermark, kept between queries.

A dashboard asks for the same range again and again (``now-24h`` every 10 s): the windows
before the batch watermark change only when a batch job writes a new version of the table,
while each refresh moves the range's start by a minute at most. So a batch segment is split
at the first whole chunk after its start (an hour for ``rollup_1m``, a day for the coarser
tiers): the *head* before it is scanned on every query, the *body* from it to the segment's
end (the watermark) is scanned once per table version and kept, keyed on everything that
selects its rows. A refresh then reads at most a chunk of batch rows and the speed layer's
minutes, as Thanos' and Cortex's query frontends do with their results cache.

Entries are bounded by their size in memory (LRU); a new table version or a moved watermark
makes a new key, and the old entries age out.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import replace

import polars as pl
from cachetools import LRUCache

from fleetlens.serving.tiers import Segment, ceil_to

__all__ = ["SegmentCache", "split_for_cache"]

#: The chunk a segment's body starts at, per resolution of its table's windows.
_CHUNK_S = {60: 3600, 3600: 86_400, 86_400: 86_400}


def split_for_cache(segment: Segment) -> tuple[Segment | None, Segment | None]:
    """``(head, body)`` of a batch segment: the head up to the first chunk boundary after
    its start, scanned every time; the body from there, which may be cached. Either may be
    None (empty); a table of another resolution has no body."""
    chunk = _CHUNK_S.get(segment.resolution_s)
    if chunk is None:
        return segment, None
    boundary = min(ceil_to(segment.start, chunk), segment.end)
    head = replace(segment, end=boundary) if boundary > segment.start else None
    body = replace(segment, start=boundary) if boundary < segment.end else None
    return head, body


class SegmentCache:
    """A thread-safe LRU of segment bodies (polars frames), bounded in bytes.

    Args:
        max_bytes: The most the entries may hold (their ``estimated_size``); 0 disables it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.enabled = max_bytes > 0
        self._entries: LRUCache[Hashable, pl.DataFrame] = LRUCache(
            maxsize=max(max_bytes, 1), getsizeof=lambda frame: max(frame.estimated_size(), 1)
        )
        self._lock = threading.Lock()
        #: Lookups that found their body, and those that did not.
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> pl.DataFrame | None:
        """The body kept under ``key``, if any."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
            return found

    def put(self, key: Hashable, frame: pl.DataFrame) -> None:
        """Keep ``frame`` under ``key`` (not if it alone is larger than the cache)."""
        if frame.estimated_size() > self._entries.maxsize:
            return
        with self._lock:
            self._entries[key] = frame
