"""The engine: decoder pool + tile cache + read-ahead + page cache + trace, wired from the options.

Built before mounting, started in FUSE's init (after daemonizing: threads and
worker processes do not survive a fork) and closed in destroy. Each open
file handle gets a `ReadContext`: what the views call `cache` (`samples`,
`prefetch`), so every read passes the window tracker of its rate group
before it waits, and read-ahead knows which file a reader has open.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
import time

from . import summaries
from .decoders import make_decoder, return_big_buffers_to_the_os
from .pagecache import PageCache
from .pool import AHEAD, WINDOW, ThreadPool
from .procpool import ProcessPool
from .windows import WINDOW_SECONDS, group_of
from .stats import Stats
from .tilecache import TileCache
from .trace import Trace
from .views.files import SignalFile

log = logging.getLogger("mef3fs.engine")

# Tiles at most this many samples are decoded in the calling thread: below
# ~1 ms of decoding, the round trip to a worker costs more than it saves.
INPROCESS_SAMPLES = 4096
WORKERS_PER_CPU = 4            # --workers above this many per CPU is refused
QUIET = 0.002                  # seconds without a FUSE read: the reader paused (see Engine.plan)
DEFER_AT_MOST = 0.02           # seconds read-ahead of the next window waits for such a pause


def cpu_count() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def default_workers(decoder: str = "mef3io") -> int:
    """Worker processes when --workers is not given. None for mef3io: it
    releases the GIL while it decodes, so threads of the daemon decode
    without a socket between decoder and cache (every tile copied into the
    kernel and out again, a lane thread per worker) and without processes
    competing with the daemon for the cores. In two bench runs back to
    back here, processes then threads: cold .f32 scans 0.72 / 0.59x ->
    0.89 / 0.97x direct (1 kHz / 32 kHz), peak RSS 231 -> 159 MB. pymef is
    not known to be thread-safe (one decoding thread at most): processes
    for it. With --workers N a decoder that crashes costs a worker, not the
    mount."""
    return 0 if decoder == "mef3io" else cpu_count()


def decode_threads(decoder: str = "mef3io") -> int:
    """Decoding threads in the daemon (--workers 0): one more than the CPUs
    for mef3io. A decode releases the GIL, but storing its tiles and waking
    their readers needs it back, and with one thread per CPU a core idled
    while its thread waited for the daemon's Python. A/B on 2 CPUs, 7
    alternating bench runs each (2026-12-02): random windows p50 33.6 ->
    30.1 ms (median of runs), p95 43 -> 40 ms, paging p95 0.95 -> 0.8 ms,
    the first page in a slow hour 61 -> 51 ms; scans unchanged (0.88 /
    0.95x direct either way). More threads than that only queue on the
    same cores. pymef is not known to be thread-safe: one thread."""
    return cpu_count() + 1 if decoder == "mef3io" else 1


def max_workers() -> int:
    """More decoder processes than this only compete for the same cores (and take
    seconds to start and stop): the command line refuses them."""
    return max(4, WORKERS_PER_CPU * cpu_count())


class Engine:
    def __init__(self, decoder: str, password: str, workers: int | None, cache_size: int, cache_ttl: float,
                 readahead: bool = True, inprocess_samples: int = INPROCESS_SAMPLES,
                 trace: str | None = None, mountpoint: str | None = None):
        self.decoder_name = decoder
        self.workers = default_workers(decoder) if workers is None else workers
        self.stats = Stats()
        self._password = password
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._inprocess_samples = inprocess_samples
        self.readahead = readahead
        self._trace_path = trace
        self._mountpoint = mountpoint
        self.pool = None
        self.cache = None
        self.pagecache = None
        self.trace = None               # trace.Trace while --trace is on; the read path tests it
        self.tls = threading.local()    # .rec: the trace record of the read this thread serves
        self.reporters = []             # more () -> dict for the stats file (namespace, index cache)
        self._plans: queue.SimpleQueue = queue.SimpleQueue()   # read-ahead decisions to carry out
        self._plans_lock = threading.Lock()
        self._plans_pending = 0
        self.last_read = 0.0            # time.monotonic() of the last FUSE read begun or ended
        self._begun, self._ended = itertools.count(1), itertools.count(1)
        self.reads_begun = self.reads_ended = 0     # next() of a count is atomic: no lock per read
        self._planner_thread = None

    def start(self) -> None:
        return_big_buffers_to_the_os()
        inprocess = make_decoder(self.decoder_name, self._password)
        if self.workers > 0:
            self.pool = ProcessPool(self.decoder_name, self._password, self.workers, self.stats, inprocess)
        else:
            self.pool = ThreadPool(inprocess, decode_threads(self.decoder_name), self.stats)
        self.pool.start()
        self.cache = TileCache(self._cache_size, self._cache_ttl, self.pool, inprocess,
                               self._inprocess_samples, self.stats, self.readahead,
                               workers=self.workers or cpu_count())
        self.cache.start()
        self.reporters.append(summaries.attach(self.cache).snapshot)   # min-max of every decoded tile
        self.pagecache = PageCache(self.cache, self.stats, self._mountpoint)
        self._planner_thread = threading.Thread(target=self._planner, name="mef3fs-planner", daemon=True)
        self._planner_thread.start()
        if self._trace_path:
            self.trace = Trace(self._trace_path)

    def attach_fuse(self, config) -> None:
        """In FUSE's init: page-cache read-ahead needs the FUSE session."""
        if self.pagecache is not None and self.readahead and self.pagecache.attach(config):
            log.info("read-ahead stores windows into the kernel page cache")

    def session_first_read(self, path: str, identity: tuple) -> None:
        """Workers open a session when it is first read, in parallel with that read
        (not when it is merely listed: a listing must not open it in every worker)."""
        if self.pool is not None:
            self.pool.warm(path, identity)

    def open_handle(self, file, path: str) -> "ReadContext":
        return ReadContext(self, file, path)

    # -- read-ahead, for windows.InStep -------------------------------------

    def window(self, rows: list, a: int, b: int, prio: int, push: list, reading=None,
               reading_ctx=None) -> list:
        """Decode samples [a, b) of these channels in the background, and store them into
        the page cache of the files their readers have open (push: [(ReadContext, tiles, a, b)]).

        `reading` (tiles, s0, s1) is the read that opened the window: its own tiles are
        left to it (a foreground decode of its own), the rest of its channel goes first
        in a job of its own (so it does not wait for a job of every channel) and into the
        page cache of its file after what it reads now."""
        if not self.readahead:
            return []
        flights = {}
        if reading is not None:
            tiles, s0, s1 = reading
            own = set(tiles.tiles_for(s0, s1))
            flights.update(self.cache.want([(tiles, i) for i in tiles.tiles_for(a, b) if i not in own], prio))
            rows = [r for r in rows if r.key != tiles.key]
        items = [(row, i) for row in rows for i in row.tiles_for(a, b)]
        flights.update(self.cache.want(items, prio))
        self.stats.add("windows" if prio == WINDOW else "windows_ahead")
        if self.trace is not None:
            self.trace.event(event="window", lane="window" if prio == WINDOW else "ahead",
                             channels=len(rows) + (reading is not None), a=a, b=b, tiles=len(flights),
                             by=reading[0].channel if reading is not None else None)
        if self.pagecache.on:
            for ctx, row, x0, x1 in push:
                if ctx is not None and x1 > x0:
                    self.pagecache.push(ctx, row, x0, x1)
            if reading is not None and reading_ctx is not None and reading[2] < b:
                self.pagecache.push(reading_ctx, reading[0], reading[2], b)
        return list(flights.values())

    def cancel(self, tokens) -> None:
        for token in tokens:
            self.cache.cancel(token)

    def read_begins(self) -> None:
        self.reads_begun = next(self._begun)
        self.last_read = time.monotonic()

    def read_ends(self) -> None:
        self.reads_ended = next(self._ended)
        self.last_read = time.monotonic()

    def reading(self) -> bool:
        """Is a FUSE read in progress (waiting for a decode, say)? Or a store into the page
        cache, which a reader's page fault may be waiting for?"""
        return self.reads_begun > self.reads_ended or (self.pagecache is not None and self.pagecache.busy)

    def plan(self, work, defer: bool = False) -> None:
        """Run a read-ahead decision in the planner thread, in order, so the read that
        made it does not wait for it. A deferred one (only read-ahead of windows not
        read yet) waits until the reads have paused: carrying it out holds the GIL for
        a millisecond or two, which the reads of the page being read would wait for."""
        with self._plans_lock:
            self._plans_pending += 1
        self._plans.put((work, defer))

    def _planner(self) -> None:
        while True:
            item = self._plans.get()
            if item is None:
                return
            work, defer = item
            try:
                if defer:
                    self._wait_for_a_pause()
                work()
            except Exception:              # read-ahead is an accelerator: never fatal
                log.exception("read-ahead plan failed")
            finally:
                with self._plans_lock:
                    self._plans_pending -= 1

    def _wait_for_a_pause(self) -> None:
        give_up = time.monotonic() + DEFER_AT_MOST
        while True:
            now = time.monotonic()
            if now - self.last_read >= QUIET or now >= give_up:
                return
            time.sleep(QUIET / 2)

    # -- life cycle -----------------------------------------------------------

    def close(self) -> None:
        if self._planner_thread is not None:
            self._plans.put(None)
            self._planner_thread.join(2.0)
        if self.pagecache is not None:
            self.pagecache.close()
        if self.pool is not None:
            self.pool.close()
        if self.cache is not None:
            self.cache.close()
        if self.trace is not None:
            self.trace.close()

    def describe(self) -> str:
        where = f"{self.workers} worker process(es)" if self.workers else "decoding in the daemon"
        return (f"decoder {self.decoder_name}, {where}, cache {self._cache_size} bytes, "
                f"idle expiry {self._cache_ttl:g} s")

    def stats_json(self) -> bytes:
        if self.trace is not None:
            self.trace.flush()          # whoever reads the counters reads the trace next
        out = self.stats.snapshot()
        out.update(self.cache.snapshot() if self.cache else {})
        out["worker_pids"] = self.pool.pids() if self.pool else []
        out["workers"] = self.workers
        out["workers_ready"] = self.pool.ready if self.pool else 0
        out["jobs_pending"] = self.pool.pending() if self.pool else 0
        out["decoder"] = self.decoder_name
        out["page_cache_push"] = bool(self.pagecache and self.pagecache.on)
        out["readahead_pending"] = self._plans_pending
        out["pushes_pending"] = int(bool(self.pagecache and self.pagecache.pending))
        for report in self.reporters:
            out.update(report())
        return (json.dumps(out, indent=1, sort_keys=True) + "\n").encode()


class _Want:
    """A tile a stream asked for while the views walk a byte range; its flight once scheduled."""
    __slots__ = ("tiles", "i", "flight")

    def __init__(self, tiles, i: int):
        self.tiles, self.i, self.flight = tiles, i, None


class ReadContext:
    """One open handle as the views see the engine (their `cache` argument)."""

    __slots__ = ("engine", "cache", "file", "path", "closed", "ino", "streaming", "whole", "samples_file",
                 "_wants")

    def __init__(self, engine: Engine, file, path: str):
        self.engine, self.cache, self.file, self.path = engine, engine.cache, file, path
        # channels' samples back to back (.f32, .npy, rates/*.npy): what windows, streams
        # and the page cache know the layout of; other views only read through the cache
        self.samples_file = isinstance(file, SignalFile)
        self.closed = False
        self.ino = None                 # the kernel's node id of the file (pagecache.py)
        self.streaming = False          # its reader scans: the stream reads ahead, not the windows
        self.whole = False              # ... because its channel was read whole (windows.py), until it jumps
        self._wants = None
        group = file.in_step if self.samples_file else None     # a channel's own file
        if group is not None:
            group.opened(file.rows[0], self)

    def samples(self, tiles, s0: int, s1: int, out) -> None:
        engine = self.engine
        group = group_of(tiles) if engine.readahead and self.samples_file else None
        if group is not None:
            if self.streaming:
                group.scanned(tiles)            # a scan: no window to fan out
                group = None
            else:
                group.before_read(engine, self, tiles, s0, s1)
        self.cache.samples(tiles, s0, s1, out, engine.tls.rec if engine.trace is not None else None)
        if group is not None:
            group.after_read(tiles)

    def jumped(self) -> None:
        """A read that continues none of this open's runs, after its channel was read
        whole: a viewer that looked where the channel starts and ends (its first and
        last pages) and now reads windows. Its reads are windows again: as a scan's,
        a viewer paging backward had every page decoded on demand."""
        log.debug("%s: a jump after the channel was read whole: windows again", self.path)
        self.streaming = self.whole = False

    def prefetch(self, tiles, i: int):
        """The views' per-tile call while a stream walks a byte range (see prefetch_range)."""
        if self._wants is None:
            return self.cache.prefetch(tiles, i)
        w = _Want(tiles, i)
        self._wants.append(w)
        return w

    def prefetch_range(self, file, lo: int, hi: int) -> list:
        """Read ahead the tiles behind bytes [lo, hi) of file, as few jobs as they make.
        -> [(offset, token)] of the tiles scheduled."""
        self._wants = []
        try:
            pairs = list(file.prefetch(self, lo, hi))
            wants = self._wants
        finally:
            self._wants = None
        if not wants:
            return []
        flights = self.cache.want([(w.tiles, w.i) for w in wants], AHEAD)
        for w in wants:
            w.flight = flights.get(w.tiles.key + (w.i,))
        return [(off, w) for off, w in pairs if w.flight is not None]

    def push_stream(self, lo: int, hi: int, since: float) -> bool:
        """Bytes [lo, hi) of this open's file into its page cache once their tiles land
        (readahead.py says which); False when nothing can be pushed for it. Not for a
        channel read with others of its group since `since` (the stream's start), until
        it is a scan: that is a viewer's window, and a push past it would hide the step
        to the next one from the window tracker (32 kHz paging, 0.2 s pauses: p95
        113-128 -> 180-207 ms)."""
        pc = self.engine.pagecache
        if pc is None or not pc.on or not self.samples_file:
            return False
        rows = self.file.rows
        group = group_of(rows[0]) if len(rows) == 1 else None
        if group is not None and not self.streaming and not group.alone(rows[0], since):
            return False
        pc.push_bytes(self, lo, hi)
        return True

    def store_whole(self, data: bytes) -> bool:
        """This open's file is `data`, made whole: into the page cache before the open
        returns (pagecache.PageCache.store_file). -> whether all of it went in."""
        pc = self.engine.pagecache
        return pc is not None and pc.on and pc.store_file(self, data)

    def stream_reached_end(self) -> None:
        """A stream's read-ahead reached the end of a channel file. Read from the file's
        start (the window tracker's first window says, whatever streams the run took),
        that is a scan even when the channel is shorter than any window (read through,
        5 min or less became the group's first window, and the next channel's read
        fanned all of it out; the followers' page faults then came one FUSE read a
        page). A viewer's page near the end is no scan. The next channel of its rate
        group (in info.json's order) is likely read next: its first tiles go ahead."""
        rows = getattr(self.file, "rows", None)
        if not self.samples_file or not rows or len(rows) != 1:
            return
        group = group_of(rows[0])
        if group is None:
            return
        if not self.streaming:
            group.read_to_end(rows[0], self)
        keys = [r.key for r in group.rows]
        k = keys.index(rows[0].key) + 1 if rows[0].key in keys else len(keys)
        if k < len(keys):
            nxt = group.rows[k]
            ids = nxt.tiles_for(0, min(nxt.n, 2 * getattr(nxt, "target", 1) + 1))[:2]
            self.cache.want([(nxt, i) for i in ids], AHEAD)

    def tile_bytes(self, offset: int) -> int:
        """Bytes of the tile at this offset of the file (0 for files without tiles)."""
        row, s = self._row_at(offset)
        if row is None:
            return 0
        ids = row.tiles_for(s, s + 1)
        if not ids:
            return 0
        a, b = row.bounds(ids[0])
        return 4 * (b - a)

    def _row_at(self, offset: int):
        rows = getattr(self.file, "rows", None)
        if not self.samples_file or not rows or not self.file.row_bytes:
            return None, 0
        r = min(len(rows) - 1, max(0, (offset - len(self.file.header)) // self.file.row_bytes))
        return rows[r], max(0, (offset - len(self.file.header) - r * self.file.row_bytes) // 4)

    def stream_wanted(self, offset: int, run: int, min_run: int) -> bool:
        """Should a sequential run of `run` bytes at offset read ahead? Not for a channel
        read window by window, and not before the run is longer than its group's window."""
        row, _ = self._row_at(offset)
        group = group_of(row) if row is not None else None
        if group is None:
            return run >= min_run
        # longer than any window: a scan, which the window tracker leaves alone from now
        # on (a scan found at the end of a read-through must not be undone by the next
        # short run: the channel's reads would open a first window again)
        if run >= 4 * row.fs * WINDOW_SECONDS:
            self.streaming = True
        if group.window_mode(row):
            return False
        return run >= max(min_run, 8 * group.width())

    def cancel(self, tokens) -> None:
        for w in tokens:
            if w is not None and w.flight is not None:
                self.cache.cancel(w.flight)
