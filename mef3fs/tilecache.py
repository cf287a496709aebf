"""The tile cache: how a sample range becomes decoded float32 arrays.

Tiles are cut by tiles.py; the cache is shared by every session: a global
byte budget, LRU eviction, idle expiry, and single-flight (two readers of one
missing tile cause one decode).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future, CancelledError
import numpy as np

from .decoders import BACKGROUND, FOREGROUND, DecodeError, DecodeSpec
from .tiles import ChannelTiles, grid_time

log = logging.getLogger("mef3fs.cache")


class _Flight:
    """A tile being decoded: readers wait on `future`; `task` is the pool's, if any."""
    __slots__ = ("future", "task", "background", "spec", "nbytes", "overflow", "inprocess")

    def __init__(self, future: Future, task, background: bool, spec: DecodeSpec):
        self.future, self.task, self.background, self.spec = future, task, background, spec
        self.nbytes = spec.nbytes
        self.inprocess = task is None   # decoded by the thread that started it
        self.overflow = False     # decoded in the caller's thread because every worker was busy


class TileCache:
    """Decoded tiles of every mounted session under one byte budget."""

    def __init__(self, budget: int, ttl: float, pool, inprocess_decoder, inprocess_samples: int, stats,
                 readahead: bool = True):
        self.budget = int(budget)
        self.readahead = readahead              # --readahead 0 turns every kind off
        self.ttl = float(ttl)
        self._pool = pool                       # None: decode everything in-process
        # One foreground tile at a time may skip the queue and be decoded in
        # the caller's thread while read-ahead keeps every worker busy; more
        # would oversubscribe the cores and hold a tile's buffers per thread.
        self._overflow = threading.BoundedSemaphore(1)
        self._inprocess = inprocess_decoder
        self._inprocess_samples = inprocess_samples
        self._stats = stats
        # Re-entrant: a decode that finishes before its callback is attached
        # runs the callback at once, in the thread that holds the lock.
        self._lock = threading.RLock()
        self._tiles: collections.OrderedDict = collections.OrderedDict()   # key -> (array, last use)
        self._bytes = 0
        self._flights: dict = {}
        self._unread: dict = {}                 # prefetched tiles no reader has used yet -> bytes
        self._readahead_bytes = 0               # read-ahead in flight + unread: at most budget/2
        self._stop = threading.Event()
        self._janitor = None
        self.on_decoded = None                  # (key, first grid sample, samples) per tile decoded

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        self._janitor = threading.Thread(target=self._expire_loop, name="mef3fs-janitor", daemon=True)
        self._janitor.start()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._tiles.clear()
            self._bytes = 0

    def snapshot(self) -> dict:
        with self._lock:
            return {"cache_bytes": self._bytes, "cache_tiles": len(self._tiles),
                    "cache_budget": self.budget, "tiles_in_flight": len(self._flights)}

    # -- reading ------------------------------------------------------------

    def samples(self, tiles: ChannelTiles, s0: int, s1: int, out: np.ndarray) -> None:
        """Fill out[:s1-s0] with grid samples [s0, s1) of the channel."""
        for i in tiles.tiles_for(s0, s1):
            a, b = tiles.bounds(i)
            lo, hi = max(a, s0), min(b, s1)
            dst = out[lo - s0:hi - s0]
            if not tiles.has_data(i):
                dst.fill(np.nan)
                continue
            tile = self.get(tiles, i)
            dst[:] = tile[lo - a:hi - a]

    def get(self, tiles: ChannelTiles, i: int) -> np.ndarray:
        key = tiles.key + (i,)
        with self._lock:
            hit = self._tiles.get(key)
            if hit is not None:
                self._tiles[key] = (hit[0], time.monotonic())
                self._tiles.move_to_end(key)
                self._stats.add("hits")
                if key in self._unread:
                    self._readahead_bytes -= self._unread.pop(key)
                    self._stats.add("readahead_hits")
                log.debug("cache hit %s tile %d", tiles.label, i)
                return hit[0]
            flight = self._flights.get(key)
            if flight is not None:
                self._stats.add("single_flight_waits")
                if flight.background:
                    self._stats.add("readahead_hits")
                    flight.background = False
                    self._readahead_bytes -= flight.nbytes
                    if flight.task is not None:
                        self._pool.promote(flight.task)
                log.debug("cache wait %s tile %d (already decoding)", tiles.label, i)
                own, future = False, flight.future
            else:
                self._stats.add("misses")
                flight, future = self._start(tiles, i, key, background=False)
                own = flight.inprocess
        if own:
            self._decode_here(tiles, i, key, flight)
        try:
            return future.result()
        except CancelledError:
            # a read-ahead that was cancelled just as we came to wait on it
            return self.get(tiles, i)
        except DecodeError as exc:
            a, b = tiles.bounds(i)
            ts, te = grid_time(tiles.t0, tiles.fs, a), grid_time(tiles.t0, tiles.fs, b)
            err = DecodeError(f"{tiles.label} uUTC {ts:.0f}-{te:.0f}: {exc}")
            err.channel, err.span, err.reason = tiles.channel, (round(ts), round(te)), str(exc)
            raise err from None

    def _start(self, tiles: ChannelTiles, i: int, key, background: bool):
        """Register a decode (lock held); returns the flight and its future (the
        flight lets go of it when it lands). Small tiles are decoded by the caller."""
        spec = tiles.spec(i)
        if self._pool is None or (not background and (
                spec.n <= self._inprocess_samples
                or (not self._pool.idle() and self._overflow.acquire(blocking=False)))):
            flight = _Flight(Future(), None, background, spec)
            flight.overflow = self._pool is not None and spec.n > self._inprocess_samples
        else:
            lane = BACKGROUND if background else FOREGROUND
            task = self._pool.submit(spec, lane)
            flight = _Flight(task.future, task, background, spec)
        self._flights[key] = flight
        if background:
            self._readahead_bytes += spec.nbytes
        future = flight.future
        if flight.task is not None:
            future.add_done_callback(lambda f, k=key, fl=flight: self._landed(k, fl, f))
        log.debug("cache miss %s tile %d [%d, %d) -> %s", tiles.label, i, *tiles.bounds(i),
                  "in-process" if flight.inprocess else ("background" if background else "foreground") + " lane")
        return flight, future

    def _decode_here(self, tiles: ChannelTiles, i: int, key, flight: _Flight) -> None:
        self._stats.add("decodes_inprocess")
        try:
            arr = self._inprocess.read(flight.spec)
        except DecodeError as exc:
            flight.future.set_exception(exc)
        except Exception as exc:   # never leave waiters hanging
            flight.future.set_exception(DecodeError(f"{type(exc).__name__}: {exc}"))
        else:
            arr.setflags(write=False)
            flight.future.set_result(arr)
        finally:
            if flight.overflow:
                self._overflow.release()
        self._landed(key, flight, flight.future)

    def _landed(self, key, flight: _Flight, future: Future) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if flight.background:
                self._readahead_bytes -= flight.nbytes
            # Read-ahead tokens keep the flight until their stream passes it;
            # they must not keep the decoded tile alive once the cache drops it.
            flight.future = flight.task = None
            if future.cancelled():
                return
            if future.exception() is not None:
                self._stats.add("decode_errors")
                return
            arr = future.result()
            self._insert(key, arr, flight.background)
        if self.on_decoded is not None:
            try:
                self.on_decoded(key, flight.spec.first, arr)
            except Exception:
                log.exception("on_decoded hook failed for %s", key)

    def _insert(self, key, arr: np.ndarray, prefetched: bool) -> None:
        """Lock held. A tile larger than the whole budget is served, not kept."""
        nbytes = arr.nbytes
        if nbytes > self.budget or key in self._tiles:
            return
        while self._bytes + nbytes > self.budget and self._tiles:
            old, (old_arr, _) = self._tiles.popitem(last=False)
            self._bytes -= old_arr.nbytes
            self._readahead_bytes -= self._unread.pop(old, 0)
            self._stats.add("evictions")
            log.debug("cache evict %s (%d bytes)", old, old_arr.nbytes)
        self._tiles[key] = (arr, time.monotonic())
        self._bytes += nbytes
        if prefetched:
            self._unread[key] = nbytes
            self._readahead_bytes += nbytes

    # -- read-ahead ---------------------------------------------------------

    def prefetch(self, tiles: ChannelTiles, i: int):
        """Start a background decode of tile i unless present; returns a token to cancel it."""
        if self._pool is None or not self.readahead or not tiles.has_data(i):
            return None
        key = tiles.key + (i,)
        with self._lock:
            if key in self._tiles or key in self._flights:
                return None
            a, b = tiles.bounds(i)
            if self._readahead_bytes + 4 * (b - a) > self.budget // 2:
                return None   # read-ahead may use half the budget, never the readers' half
            flight, _ = self._start(tiles, i, key, background=True)
        self._stats.add("readahead_scheduled")
        return key, flight

    def cancel(self, token) -> None:
        """Drop a read-ahead that nobody needs any more, if it has not started."""
        key, flight = token
        task = flight.task
        if flight.background and task is not None and self._pool.cancel(task):
            # the cancelled future's callback (_landed) forgets the flight
            self._stats.add("readahead_cancelled")
            log.debug("read-ahead cancelled %s", key)

    # -- idle expiry --------------------------------------------------------

    def _expire_loop(self) -> None:
        period = max(0.05, min(self.ttl / 4, 5.0))
        while not self._stop.wait(period):
            self.expire()

    def expire(self) -> None:
        limit = time.monotonic() - self.ttl
        with self._lock:
            stale = [k for k, (_, used) in self._tiles.items() if used < limit]
            for k in stale:
                arr, _ = self._tiles.pop(k)
                self._bytes -= arr.nbytes
                self._readahead_bytes -= self._unread.pop(k, 0)
            if stale:
                self._stats.add("expired", len(stale))
                log.debug("cache expired %d idle tiles", len(stale))
