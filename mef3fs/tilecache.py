"""Tiles and the tile cache: how a sample range becomes decoded float32 arrays.

A channel's grid is cut into tiles whose edges sit on MEF block starts
(so no block is decoded for two tiles) and whose length is near a target.
Stretches with no block at all are "empty" tiles: NaN, never decoded. The
cache is shared by every session: a global byte budget, LRU eviction, idle
expiry, and single-flight (two readers of one missing tile cause one decode).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future, CancelledError
from dataclasses import dataclass

import numpy as np

from .decoders import BACKGROUND, FOREGROUND, DecodeError, DecodeSpec

log = logging.getLogger("mef3fs.cache")


def grid_time(t0: int, fs: float, i: int) -> float:
    """uUTC of grid sample i. The one formula every window edge uses."""
    return t0 + i * 1e6 / fs


def tile_edges(n: int, t0: int, fs: float, block_starts, block_lengths, target: int):
    """Tile edges (n_tiles+1 grid indices) and a per-tile 'has data' flag.

    Edges fall on block starts; a block longer than twice the target is cut
    inside (it will be decoded for each part, which only happens when the
    target is smaller than the file's blocks). Stretches with no block
    (gaps, before a late start, after an early end) become data-free tiles,
    kept one sample clear of any block so rounding cannot hide a sample.
    """
    target = max(1, int(target))
    starts = np.rint((np.asarray(block_starts, dtype=np.float64) - t0) * fs / 1e6).astype(np.int64)
    lengths = np.asarray(block_lengths, dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    starts, lengths = starts[order], lengths[order]

    edges = [0]
    has_data = []

    def cut(at: int, data: bool) -> None:
        at = min(max(at, edges[-1]), n)
        if at > edges[-1]:
            edges.append(at)
            has_data.append(data)

    i = 0
    nb = len(starts)
    while i < nb:
        # one run of blocks that follow each other without a gap
        run_start = starts[i] - 1
        j = i
        run_end = starts[i] + lengths[i]
        while j + 1 < nb and starts[j + 1] <= run_end + 1:
            j += 1
            run_end = max(run_end, starts[j] + lengths[j])
        cut(run_start, False)                     # the empty stretch before the run
        tile_start = edges[-1]
        for k in range(i, j + 1):
            # blocks are clipped to the grid: samples outside it are never read
            b0, b1 = max(int(starts[k]), 0), min(int(starts[k] + lengths[k]), n)
            if b0 - tile_start >= target:
                cut(b0, True)
                tile_start = edges[-1]
            while b1 - tile_start > 2 * target:   # an oversized block
                cut(tile_start + target, True)
                tile_start = edges[-1]
        cut(run_end + 1, True)
        i = j + 1
    cut(n, False)
    return np.asarray(edges, dtype=np.int64), np.asarray(has_data, dtype=bool)


EDGE_MARGIN = 0.45    # samples: keeps a window's sample count round((te - ts) * fs) unchanged


def tile_windows(edges, has_data, t0: int, fs: float, block_starts):
    """How far (in samples) each tile's decode window is pulled in from its grid edges.

    A block rarely starts exactly on a grid point. A window [grid(a), grid(b))
    then reaches a fraction of a sample into the neighbouring block, and the
    decoder reads (and checks) that whole block too: a damaged neighbour would
    fail an intact tile. Pulling the end in to the next block's start, and the
    start up to the tile's first block, keeps each tile's reads to its own
    blocks. The start moves only where no block in the tile changes the grid
    sample it lands on, and the two together stay under half a sample, so the
    samples returned are exactly the same.
    """
    nt = len(has_data)
    lo, hi = np.zeros(nt), np.zeros(nt)
    pos = np.sort((np.asarray(block_starts, dtype=np.float64) - t0) * fs / 1e6)
    if not len(pos):
        return lo, hi
    first = np.rint(pos)
    k = np.minimum(np.searchsorted(first, edges), len(first) - 1)
    x = np.where(first[k] == edges, pos[k], np.nan)        # exact start of a block at each edge
    for t in np.flatnonzero(has_data):
        a, b = edges[t], edges[t + 1]
        if x[t + 1] < b:
            hi[t] = min(b - x[t + 1], EDGE_MARGIN)
        if x[t] > a and x[t] - a + hi[t] < EDGE_MARGIN:
            inner = pos[np.searchsorted(first, a):np.searchsorted(first, b)] - (x[t] - a)
            if np.all((np.rint(inner) == first[np.searchsorted(first, a):np.searchsorted(first, b)])
                      & (np.abs(inner - np.floor(inner) - 0.5) > 0.02)):
                lo[t] = x[t] - a
    return lo, hi


@dataclass
class ChannelTiles:
    """The tiles of one channel file: what to decode for each tile index."""
    key: tuple            # (session id, channel name): unique per opened session
    session_path: str
    channel: str
    label: str            # for log lines: "session/channel"
    t0: int
    fs: float
    n: int
    edges: np.ndarray
    has_data: np.ndarray
    identity: tuple = ()
    lo: np.ndarray | None = None     # window pulled in at the start, in samples (tile_windows)
    hi: np.ndarray | None = None     # ... and at the end

    def tiles_for(self, s0: int, s1: int) -> range:
        """Indices of the tiles covering grid samples [s0, s1)."""
        if s1 <= s0:
            return range(0)
        first = int(np.searchsorted(self.edges, s0, side="right")) - 1
        last = int(np.searchsorted(self.edges, s1, side="left"))
        return range(max(first, 0), min(last, len(self.has_data)))

    def bounds(self, i: int) -> tuple[int, int]:
        return int(self.edges[i]), int(self.edges[i + 1])

    def spec(self, i: int) -> DecodeSpec:
        a, b = self.bounds(i)
        lo = float(self.lo[i]) if self.lo is not None else 0.0
        hi = float(self.hi[i]) if self.hi is not None else 0.0
        return DecodeSpec(self.session_path, self.channel, grid_time(self.t0, self.fs, a) + lo * 1e6 / self.fs,
                          grid_time(self.t0, self.fs, b) - hi * 1e6 / self.fs, b - a,
                          self.t0, self.fs, a, self.identity)


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
            if not tiles.has_data[i]:
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
            raise DecodeError(f"{tiles.label} uUTC {grid_time(tiles.t0, tiles.fs, a):.0f}-"
                              f"{grid_time(tiles.t0, tiles.fs, b):.0f}: {exc}") from None

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
            self._insert(key, future.result(), flight.background)

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
        if self._pool is None or not self.readahead or not tiles.has_data[i]:
            return None
        key = tiles.key + (i,)
        with self._lock:
            if key in self._tiles or key in self._flights:
                return None
            if self._readahead_bytes + 4 * int(tiles.edges[i + 1] - tiles.edges[i]) > self.budget // 2:
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
