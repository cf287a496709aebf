"""Min-max summaries of decoded tiles, kept after the tiles themselves are evicted.

Every decoded tile is summarized here (its minimum and maximum per STEP
grid samples, bins aligned to the grid) as it leaves the tile cache, and a
level summarizes the cached tiles it reads; so a min-max level of
decimation k >= STEP, a multiple of STEP, needs no decode once the data
was read, whatever the tile cache has dropped since. A tile still cached
needs no summary: the level reads it (no decode) and keeps what it made.
A summary is 2 float32 per STEP samples (2% of the tile at STEP = 100).
They live under their own byte budget (an eighth of the tile cache's, at
least MIN_BUDGET), least recently used dropped first; a dropped one is made
again from the tile.

The tile cache calls `add` through its one hook, `on_leaving(key, first,
samples)`; the views find the store of the cache they read through with
`store_of`.
"""

from __future__ import annotations

import collections
import logging
import threading
import weakref

import numpy as np

log = logging.getLogger("mef3fs.summaries")

STEP = 100                    # samples per summary bin
MIN_BUDGET = 4 << 20
ENTRY_OVERHEAD = 160          # bytes per summary besides its array: key, tuple, dict slot

_stores: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def reduce_bins(x: np.ndarray, k: int, pad_front: int = 0) -> np.ndarray:
    """(ceil((pad_front + len(x)) / k), 2) float32: nanmin and nanmax of each k samples
    of x placed after pad_front empty ones; NaN for a bin without data."""
    m = -(-(pad_front + len(x)) // k)
    if pad_front or m * k != len(x):
        full = np.full(m * k, np.nan, dtype=np.float32)
        full[pad_front:pad_front + len(x)] = x
        x = full
    x = x.reshape(m, k)
    out = np.empty((m, 2), dtype=np.float32)
    np.fmin.reduce(x, axis=1, out=out[:, 0])
    np.fmax.reduce(x, axis=1, out=out[:, 1])
    return out


def summarize(first: int, samples: np.ndarray) -> tuple[int, np.ndarray]:
    """(first bin, (bins, 2) min/max) of grid samples [first, first + len): bins of
    STEP samples aligned to the grid; an edge bin holds only this tile's part."""
    lead = first % STEP
    return first // STEP, reduce_bins(samples, STEP, lead)


class SummaryStore:
    """Tile key -> summary, under a byte budget, least recently used dropped first."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self._lock = threading.Lock()
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._bytes = 0
        self._counts = collections.Counter()

    def add(self, key, first: int, samples: np.ndarray) -> None:
        """A decoded tile leaves the tile cache (its hook): keep its summary."""
        if len(samples) and key not in self._items:
            self.put(key, summarize(first, samples))

    def put(self, key, summary: tuple[int, np.ndarray]) -> None:
        nbytes = summary[1].nbytes + ENTRY_OVERHEAD
        if nbytes > self.budget:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1].nbytes + ENTRY_OVERHEAD
            while self._items and self._bytes + nbytes > self.budget:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped[1].nbytes + ENTRY_OVERHEAD
                self._counts["summaries_dropped"] += 1
            self._items[key] = summary
            self._bytes += nbytes
            self._counts["summaries_made"] += 1

    def get(self, key):
        with self._lock:
            got = self._items.get(key)
            if got is not None:
                self._items.move_to_end(key)
                self._counts["summary_hits"] += 1
            return got

    def snapshot(self) -> dict:
        with self._lock:
            return {"summary_bytes": self._bytes, "summary_tiles": len(self._items),
                    "summary_budget": self.budget, "summaries_made": self._counts["summaries_made"],
                    "summaries_dropped": self._counts["summaries_dropped"],
                    "summary_hits": self._counts["summary_hits"]}


def attach(cache) -> SummaryStore:
    """Give a tile cache its summary store: every tile it lets go of from now on is summarized."""
    store = SummaryStore(max(MIN_BUDGET, cache.budget // 8))
    cache.on_leaving = store.add
    _stores[cache] = store
    return store


def store_of(cache) -> SummaryStore | None:
    """The store of the cache a view reads through (the TileCache, or a per-handle
    context that holds it as `.cache`); None if it has none."""
    try:
        return _stores.get(getattr(cache, "cache", cache))
    except TypeError:             # not a cache that can have one
        return None
