"""The tile cache: how a sample range becomes decoded float32 arrays.

Shared by every session: one byte budget, LRU eviction, idle expiry, and
single-flight (two readers of one missing tile cause one decode). Missing
tiles are decoded in jobs (jobs.py): consecutive tiles of a channel, and
the same tiles of several channels of one rate, go to a worker as one
call, which costs less per tile and crosses to the daemon once. Read-ahead
(windows.py, readahead.py) asks for tiles through `want`; it may hold at most half the
budget (in flight or decoded and not yet read), so it never evicts what
readers are using.

Counters (stats.py) say what happened to every tile: decoded, used by a
reader (or pushed into the kernel's page cache for one), read ahead and used,
read ahead and dropped unused.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import CancelledError

import numpy as np

from . import jobs
from .decoders import DecodeError, Job
from .pool import AHEAD, FOREGROUND, Ticket
from .tiles import grid_time

log = logging.getLogger("mef3fs.cache")


class _Entry:
    __slots__ = ("arr", "first", "used_at", "prefetched", "used")

    def __init__(self, arr, first: int, prefetched: bool, used: bool):
        self.arr, self.first, self.prefetched, self.used = arr, first, prefetched, used
        self.used_at = time.monotonic()


class _Flight:
    """One tile being decoded, as tile `index` of a ticket's job."""
    __slots__ = ("key", "first", "ticket", "index", "nbytes", "background", "wanted")

    def __init__(self, key, first: int, nbytes: int, background: bool):
        self.key, self.first, self.nbytes, self.background = key, first, nbytes, background
        self.ticket: Ticket | None = None
        self.index = 0
        self.wanted = True        # False once read-ahead cancelled it


class TileCache:
    """Decoded tiles of every mounted session under one byte budget."""

    def __init__(self, budget: int, ttl: float, pool, inprocess_decoder, inprocess_samples: int, stats,
                 readahead: bool = True, workers: int = 1):
        self.budget = int(budget)
        self.readahead = readahead              # --readahead 0 turns every kind off
        self.ttl = float(ttl)
        self._pool = pool                       # None: decode everything in the caller's thread
        self._inprocess = inprocess_decoder
        self._inprocess_samples = inprocess_samples
        self._workers = max(1, workers)
        self._stats = stats
        # Re-entrant: a job that finishes before its callback is attached runs
        # the callback at once, in the thread that holds the lock.
        self._lock = threading.RLock()
        self._tiles: collections.OrderedDict = collections.OrderedDict()   # key -> _Entry
        self._bytes = 0
        self._flights: dict = {}                # key -> _Flight
        self._jobs: dict = {}                   # ticket id -> its flights, in job order
        self._readahead_bytes = 0               # read-ahead in flight + unread: at most budget/2
        self._stop = threading.Event()
        self._janitor = None
        # (key, first grid sample, samples) of every decoded tile as it leaves (evicted,
        # expired, or too big to keep): what summaries.py keeps of it
        self.on_leaving = None
        self._leaving: list = []                # lock held: (key, first, arr) to hand to on_leaving

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
                    "cache_budget": self.budget, "tiles_in_flight": len(self._flights),
                    "readahead_bytes": self._readahead_bytes}

    # -- reading ------------------------------------------------------------

    def samples(self, tiles, s0: int, s1: int, out: np.ndarray, rec=None) -> None:
        """Fill out[:s1-s0] with grid samples [s0, s1) of the channel.

        One pass under the lock finds what is cached, what is in flight and
        what to decode (one foreground job for all of it); then the cached
        parts are copied while the rest decodes."""
        spans = tiles.spans(s0, s1)
        ready, waits, missing = [], [], []
        label = tiles.channel
        hits = used = ahead = in_flight = 0
        base = tiles.key
        cached, flights = self._tiles, self._flights
        with self._lock:
            now = time.monotonic()
            for i, a, b, data in spans:
                if not data:
                    ready.append((a, b, None))
                    continue
                key = base + (i,)
                e = cached.get(key)
                if e is not None:
                    e.used_at = now
                    cached.move_to_end(key)
                    hits += 1
                    how = "hit"
                    if not e.used:
                        e.used = True
                        used += 1
                        if e.prefetched:
                            self._readahead_bytes -= e.arr.nbytes
                            ahead += 1
                            how = "readahead"
                    ready.append((a, b, e.arr))
                    if rec is not None:
                        rec.tile(label, i, a, b, how)
                    continue
                f = flights.get(key)
                if f is not None:
                    in_flight += 1
                    if f.background:
                        ahead += 1
                        f.background = False
                        self._readahead_bytes -= f.nbytes
                        if f.ticket is not None and self._pool is not None:
                            self._pool.promote(f.ticket)
                    f.wanted = True
                    waits.append((a, b, f, f.ticket))
                    if rec is not None:
                        rec.tile(label, i, a, b, "inflight")
                    continue
                missing.append((i, a, b))
                if rec is not None:
                    rec.tile(label, i, a, b, "decoded")
            here = []
            if missing:
                for f, a, b in self._start([(tiles, missing)], FOREGROUND):
                    waits.append((a, b, f, f.ticket))
                    if f.ticket.here:
                        here.append(f.ticket)
        if used or missing or in_flight or ahead:
            self._stats.add_many({"hits": hits, "misses": len(missing), "single_flight_waits": in_flight,
                                  "readahead_hits": ahead, "tiles_used": used})
        elif hits:
            self._stats.add("hits", hits)
        t = time.monotonic() if rec is not None else 0.0
        for a, b, arr in ready:
            lo, hi = max(a, s0), min(b, s1)
            if arr is None:
                out[lo - s0:hi - s0] = np.nan
            else:
                out[lo - s0:hi - s0] = arr[lo - a:hi - a]
        if rec is not None:
            rec.copy += time.monotonic() - t
        for ticket in dict.fromkeys(here):
            self._run_here(ticket)
        for a, b, f, ticket in waits:
            arr = self._wait(tiles, f, ticket, rec)
            t = time.monotonic() if rec is not None else 0.0
            lo, hi = max(a, s0), min(b, s1)
            if arr is None:           # cancelled under us: decode it again
                self.samples(tiles, lo, hi, out[lo - s0:hi - s0], rec)
            else:
                out[lo - s0:hi - s0] = arr[lo - a:hi - a]
            if rec is not None:
                rec.copy += time.monotonic() - t

    def _wait(self, tiles, f: _Flight, ticket: Ticket, rec):
        """The flight's tile once its job lands; None if the job was cancelled."""
        t = time.monotonic() if rec is not None else 0.0
        try:
            result = ticket.future.result()
        except CancelledError:
            with self._lock:
                if self._flights.get(f.key) is f:
                    del self._flights[f.key]
            return None
        except DecodeError as exc:
            result = [exc] * (f.index + 1)
        finally:
            if rec is not None:
                rec.waited(ticket, t, time.monotonic())
        item = result[f.index]
        if isinstance(item, Exception):
            a, b = tiles.bounds(f.key[-1])
            ts, te = grid_time(tiles.t0, tiles.fs, a), grid_time(tiles.t0, tiles.fs, b)
            err = DecodeError(f"{tiles.label} uUTC {ts:.0f}-{te:.0f}: {item}")
            err.channel, err.span, err.reason = tiles.channel, (round(ts), round(te)), str(item)
            raise err from None
        return item

    def peek(self, tiles, s0: int, s1: int, out: np.ndarray) -> bool:
        """Fill out from cached tiles only (for the kernel page cache); False if one is missing.
        Tiles seen here count as used: the reader will find them in the page cache."""
        spans = tiles.spans(s0, s1)
        got, used, ahead = [], 0, 0
        with self._lock:
            for i, a, b, data in spans:
                if not data:
                    got.append((a, b, None))
                    continue
                e = self._tiles.get(tiles.key + (i,))
                if e is None:
                    return False
                got.append((a, b, e))
            for _, _, e in got:
                if e is not None and not e.used:
                    e.used = True
                    used += 1
                    if e.prefetched:
                        self._readahead_bytes -= e.arr.nbytes
                        ahead += 1
        got = [(a, b, None if e is None else e.arr) for a, b, e in got]
        for a, b, arr in got:
            lo, hi = max(a, s0), min(b, s1)
            out[lo - s0:hi - s0] = np.nan if arr is None else arr[lo - a:hi - a]
        if used:
            self._stats.add_many({"tiles_used": used, "tiles_pushed": used, "readahead_hits": ahead})
        return True

    def pending(self, tiles, s0: int, s1: int) -> list:
        """Tickets still decoding tiles of [s0, s1) of a channel."""
        return [ticket for _, ticket in self.pending_from(tiles, s0, s1)]

    def pending_from(self, tiles, s0: int, s1: int) -> list:
        """(first sample, ticket) of the tiles of [s0, s1) of a channel still decoding."""
        with self._lock:
            out = []
            for i in tiles.tiles_for(s0, s1):
                f = self._flights.get(tiles.key + (i,))
                if f is not None and f.ticket is not None:
                    out.append((tiles.bounds(i)[0], f.ticket))
            return out

    # -- read-ahead ---------------------------------------------------------

    def want(self, items, prio: int = AHEAD) -> dict:
        """Decode these (tiles, tile id) in the background unless cached or in flight.
        Returns {tile key: cancel token} for the tiles scheduled."""
        if self._pool is None or not self.readahead:
            return {}
        by_row: dict = {}
        with self._lock:
            room = self.budget // 2 - self._readahead_bytes
            for tiles, i in items:
                key = tiles.key + (i,)
                if key in self._tiles or key in self._flights or not tiles.has_data(i):
                    continue
                a, b = tiles.bounds(i)
                if 4 * (b - a) > room:
                    break        # read-ahead may use half the budget, never the readers' half
                room -= 4 * (b - a)
                by_row.setdefault(tiles.key, (tiles, []))[1].append((i, a, b))
            flights = {f.key: f for f, _, _ in self._start(list(by_row.values()), prio)} if by_row else {}
        if flights:
            self._stats.add("readahead_scheduled", len(flights))
        return flights

    def prefetch(self, tiles, i: int):
        """One tile in the background; a token or None."""
        return self.want([(tiles, i)]).get(tiles.key + (i,))

    def cancel(self, token) -> None:
        """Read-ahead nobody needs any more: drop it, or stop its job if no tile of it is wanted."""
        with self._lock:
            if not token.background or not token.wanted:
                return
            token.wanted = False
            ticket = token.ticket
            flights = self._jobs.get(ticket.jid) if ticket is not None else None
            if not flights or any(f.wanted or not f.background for f in flights):
                return
            if self._pool.cancel(ticket):
                # its callback (_landed) forgets the flights; a running job's tiles
                # are forgotten now, so a reader that comes for them decodes anew
                for f in flights:
                    if self._flights.get(f.key) is f:
                        del self._flights[f.key]
                        self._readahead_bytes -= f.nbytes
                        f.background = False
                self._jobs.pop(ticket.jid, None)
                if not ticket.stopping:     # queued: never decoded (a running one counts if it stops)
                    self._stats.add("readahead_cancelled", len(flights))
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("read-ahead cancelled: job %d (%d tiles)", ticket.jid, len(flights))

    # -- decoding -----------------------------------------------------------

    def _start(self, rows: list, prio: int):
        """Lock held: jobs for these tiles, [(tiles, [(i, a, b), ...]), ...] (one or more
        channels); registers a flight per tile. -> [(flight, a, b)]"""
        background = prio != FOREGROUND
        groups = jobs.plan(rows, background, self._workers)
        out = []
        for job, members in groups:
            ticket = self._submit(job, prio, members)
            flights = []
            for k, (t, i, a, b) in enumerate(members):
                f = _Flight(t.key + (i,), a, 4 * (b - a), background)
                f.ticket, f.index = ticket, k
                self._flights[f.key] = f
                if background:
                    self._readahead_bytes += f.nbytes
                flights.append(f)
                out.append((f, a, b))
            self._jobs[ticket.jid] = flights
            if not ticket.here:
                # by id, not by ticket: the future keeps its callbacks, and a ticket in one
                # would keep the job's tiles alive until the garbage collector came by
                ticket.future.add_done_callback(lambda fut, jid=ticket.jid: self._landed(jid, fut))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("decode %s: %s x [%d, %d) in %d tile(s), lane %d, job %d%s",
                          job.session_path, ",".join(job.channels), job.first, job.first + job.n,
                          job.tiles, prio, ticket.jid, " (here)" if ticket.here else "")
        return out

    def _submit(self, job: Job, prio: int, members) -> Ticket:
        if self._pool is None or (prio == FOREGROUND and job.n * len(job.channels) <= self._inprocess_samples):
            # small tiles: the round trip to a worker costs more than decoding here
            t = Ticket(job, FOREGROUND, 0)
            t.here, t.jid = True, -id(t)
            return t
        return self._pool.submit(job, prio, here_ok=prio == FOREGROUND)

    def _run_here(self, ticket: Ticket) -> None:
        """Decode a job in the caller's thread (small tiles, or every worker busy)."""
        if ticket.jid > 0:
            self._pool.run_here(ticket)       # the pool counts it and lets the overflow slot go
        else:
            from .decoders import read_job
            try:
                tiles = read_job(self._inprocess, ticket.job)
            except DecodeError as exc:
                tiles = [exc] * ticket.job.tiles
            except Exception as exc:          # never leave waiters hanging
                tiles = [DecodeError(f"{type(exc).__name__}: {exc}")] * ticket.job.tiles
            ticket.t_done = ticket.t_landed = time.monotonic()
            self._stats.add_many({"decodes_inprocess": ticket.job.tiles, "jobs": 1})
            ticket.future.set_result(tiles)
        self._landed(ticket.jid, ticket.future)

    def _landed(self, jid: int, fut) -> None:
        with self._lock:
            flights = self._jobs.pop(jid, None)
            if flights is None:
                return
            result = None if fut.cancelled() else (fut.exception() or fut.result())
            if log.isEnabledFor(logging.DEBUG) and flights and flights[0].ticket is not None:
                t = flights[0].ticket
                if fut.cancelled():
                    log.debug("job %d cancelled (%d tile(s), lane %d)", jid, len(flights), t.prio)
                else:
                    done = t.t_done or time.monotonic()         # 0: it failed
                    log.debug("job %d landed (%d tile(s), lane %d): queued %.1f ms, decoding %.1f ms, "
                              "back %.1f ms", jid, len(flights), t.prio, 1e3 * (t.t_start - t.t_submit),
                              1e3 * (done - t.t_start), 1e3 * (time.monotonic() - done))
            decoded = 0
            for f in flights:
                if self._flights.get(f.key) is f:
                    del self._flights[f.key]
                if f.background:
                    self._readahead_bytes -= f.nbytes
                # read-ahead tokens keep their flight until the stream passes it: they
                # must not keep the job's tiles alive once the cache lets them go
                f.ticket = None
                item = result[f.index] if isinstance(result, list) else result
                if item is None or isinstance(item, BaseException):
                    if item is not None:
                        self._stats.add("decode_errors")
                    continue
                decoded += 1
                item.setflags(write=False)
                self._insert(f.key, item, f.first, f.background, used=not f.background)
            if decoded:
                self._stats.add_many({"tiles_decoded": decoded,
                                      "tiles_used": sum(1 for f in flights if not f.background)})
            leaving, self._leaving = self._leaving, []
        self._hand_over(leaving)

    def _hand_over(self, leaving: list) -> None:
        """Lock not held: the tiles that left the cache go to on_leaving. Summarizing
        each as it landed cost the daemon 0.34 CPU-s of a 16 ch x 1 h scan (2.6 in
        all) on the path that hands workers their next job; most tiles never leave
        before they are read again or the mount ends."""
        if self.on_leaving is not None:
            for key, first, arr in leaving:
                try:
                    self.on_leaving(key, first, arr)
                except Exception:
                    log.exception("on_leaving hook failed for %s", key)

    def _insert(self, key, arr: np.ndarray, first: int, prefetched: bool, used: bool) -> None:
        """Lock held. A tile larger than the whole budget is served, not kept."""
        nbytes = arr.nbytes
        if key in self._tiles:
            return
        if nbytes > self.budget:
            self._leaving.append((key, first, arr))
            return
        while self._bytes + nbytes > self.budget and self._tiles:
            old, e = self._tiles.popitem(last=False)
            self._drop(old, e)
            self._stats.add("evictions")
            if log.isEnabledFor(logging.DEBUG):
                log.debug("cache evict %s (%d bytes)", old, e.arr.nbytes)
        self._tiles[key] = _Entry(arr, first, prefetched, used)
        self._bytes += nbytes
        if prefetched:
            self._readahead_bytes += nbytes

    def _drop(self, key, e: _Entry) -> None:
        self._leaving.append((key, e.first, e.arr))
        self._bytes -= e.arr.nbytes
        if e.prefetched and not e.used:
            self._readahead_bytes -= e.arr.nbytes
            self._stats.add("readahead_unused")

    # -- idle expiry --------------------------------------------------------

    def _expire_loop(self) -> None:
        period = max(0.05, min(self.ttl / 4, 5.0))
        while not self._stop.wait(period):
            self.expire()

    def expire(self) -> None:
        limit = time.monotonic() - self.ttl
        with self._lock:
            stale = [k for k, e in self._tiles.items() if e.used_at < limit]
            for k in stale:
                self._drop(k, self._tiles.pop(k))
            if stale:
                self._stats.add("expired", len(stale))
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("cache expired %d idle tiles", len(stale))
            leaving, self._leaving = self._leaving, []
        self._hand_over(leaving)

