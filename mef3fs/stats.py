"""Counters behind `.mef3fs-stats.json`: the only way to see what the engine did.

Tests use them to prove cache hits, single-flight, read-ahead and worker
restarts without timing anything; the bench divides them (tiles decoded per
tile used, read-ahead used before eviction).
"""

import threading
from collections import Counter

COUNTERS = (
    "hits", "misses", "single_flight_waits",
    "decodes_foreground", "decodes_background", "decodes_inprocess", "decode_errors",
    "readahead_scheduled", "readahead_hits", "readahead_cancelled",
    "evictions", "expired", "worker_restarts", "task_retries",
    "indexes_loaded", "indexes_dropped",
    # what happened to tiles: decoded, used by a reader (read through FUSE or
    # pushed into the kernel's page cache for one), read ahead but dropped unused
    "tiles_decoded", "tiles_used", "tiles_pushed", "readahead_unused",
    "jobs", "windows", "windows_ahead", "pushes", "push_bytes",
    # folder listings handed to the kernel (one a folder while it keeps them)
    "listings",
    # sessions opened by the statahead before a walk reached them (statahead.py)
    "sessions_ahead",
)


class Stats:
    """Thread-safe named counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = Counter({name: 0 for name in COUNTERS})

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def add_many(self, counts: dict) -> None:
        """Several counters under one lock (the read path adds five per request)."""
        with self._lock:
            for name, n in counts.items():
                if n:
                    self._counts[name] += n

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._counts)
