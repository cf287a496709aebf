"""The engine: decoder pool + tile cache + counters, wired from the options.

Built before mounting, started in FUSE's init (after daemonizing: threads and
worker processes do not survive a fork) and closed in destroy.
"""

from __future__ import annotations

import json
import os

from . import summaries
from .decoders import DecoderPool, make_decoder, return_big_buffers_to_the_os
from .stats import Stats
from .tilecache import TileCache

# Tiles at most this many samples are decoded in the calling thread: below
# ~1 ms of decoding, the round trip to a worker costs more than it saves.
INPROCESS_SAMPLES = 4096


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class Engine:
    def __init__(self, decoder: str, password: str, workers: int, cache_size: int, cache_ttl: float,
                 readahead: bool = True, inprocess_samples: int = INPROCESS_SAMPLES):
        self.decoder_name = decoder
        self.workers = workers
        self.stats = Stats()
        self._password = password
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._inprocess_samples = inprocess_samples
        self._readahead = readahead
        self.pool = None
        self.cache = None
        self.reporters = []       # more () -> dict for the stats file (namespace, index cache)

    def start(self) -> None:
        return_big_buffers_to_the_os()
        inprocess = make_decoder(self.decoder_name, self._password)
        if self.workers > 0:
            self.pool = DecoderPool(self.decoder_name, self._password, self.workers, self.stats)
            self.pool.start()
        self.cache = TileCache(self._cache_size, self._cache_ttl, self.pool, inprocess,
                               self._inprocess_samples, self.stats, self._readahead)
        self.cache.start()
        self.reporters.append(summaries.attach(self.cache).snapshot)   # min-max of every decoded tile

    def session_first_read(self, path: str, identity: tuple) -> None:
        """Workers open a session when it is first read, in parallel with that read
        (not when it is merely listed: a listing must not open it in every worker)."""
        if self.pool is not None:
            self.pool.warm(path, identity)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.cache is not None:
            self.cache.close()

    def describe(self) -> str:
        return (f"decoder {self.decoder_name}, {self.workers} worker process(es), "
                f"cache {self._cache_size} bytes, idle expiry {self._cache_ttl:g} s")

    def stats_json(self) -> bytes:
        out = self.stats.snapshot()
        out.update(self.cache.snapshot() if self.cache else {})
        out["worker_pids"] = self.pool.pids() if self.pool else []
        out["workers"] = self.workers
        out["decoder"] = self.decoder_name
        for report in self.reporters:
            out.update(report())
        return (json.dumps(out, indent=1, sort_keys=True) + "\n").encode()
