"""`--trace FILE`: one JSON line per FUSE read, saying where its time went.

    {"t": 1764581234.123456, "path": "/s.mefd/ch01.f32", "offset": 0, "size": 32768,
     "returned": 32768, "ms": 2.31, "wait_ms": 2.05, "queued_ms": 0.02,
     "decode_ms": 1.71, "ipc_ms": 0.09, "copy_ms": 0.01,
     "tiles": [["ch01", 4294967296, 0, 10000, "decoded"]], "pid": 1234}

`t` is when the read arrived (Unix seconds), `ms` how long it took in the
daemon. `wait_ms` is the time it spent waiting for decodes; `queued_ms`,
`decode_ms` and `ipc_ms` are how much of that wait the jobs it waited for
spent queued, decoding, and travelling back to the daemon (the parts of
each job's life that overlap the read; jobs waited for together can add up
to more than the wait). `copy_ms` is copying samples into the kernel's
buffer. Each tile it needed is [channel, tile id, first sample, end sample,
how]: "hit" (cached, used before), "readahead" (cached by read-ahead, first
use), "inflight" (being decoded already: read-ahead or another reader),
"decoded" (decoded for this read). `pid` is the process that read.

Lines with an "event" key are read-ahead decisions, not reads: {"event":
"window", "channels": 16, "a": ..., "b": ..., "lane": "window" or "ahead",
"tiles": scheduled, "why": ...}.

Off (the default), the read path does one `is None` test per read. On, a
read only files its record: lines are written when the counters are read,
at unmount, or every PENDING records (encoding one on the read's thread
added 120-200 us to a 4 KiB read, which the bench would have counted).
"""

from __future__ import annotations

import collections
import json
import threading
import time

PENDING = 4096                # records filed before a read writes them out


class Record:
    """One read being traced."""

    __slots__ = ("path", "offset", "size", "t", "t0", "t1", "tiles", "wait", "queued", "decode", "ipc",
                 "copy", "pid", "returned", "error", "_seen")

    def __init__(self, path: str, offset: int, size: int, pid: int = 0):
        self.path, self.offset, self.size, self.pid = path, offset, size, pid
        self.t = time.time()
        self.t0 = self.t1 = time.monotonic()
        self.returned, self.error = 0, None
        self.tiles: list = []
        self.wait = self.queued = self.decode = self.ipc = self.copy = 0.0
        self._seen: set = set()

    def tile(self, channel: str, i: int, a: int, b: int, how: str) -> None:
        self.tiles.append([channel, i, a, b, how])

    def waited(self, ticket, t_from: float, t_to: float) -> None:
        """A wait on a job from t_from to t_to; its stages are counted once per read."""
        self.wait += t_to - t_from
        if id(ticket) in self._seen:
            return
        self._seen.add(id(ticket))
        start = self.t0
        end = time.monotonic()
        done = ticket.t_done or ticket.t_landed or end
        landed = ticket.t_landed or end
        started = ticket.t_start or done
        self.queued += _overlap(ticket.t_submit, started, start, end)
        self.decode += _overlap(started, done, start, end)
        self.ipc += _overlap(done, landed, start, end)

    def ended(self, returned: int, error: str | None = None) -> None:
        self.t1 = time.monotonic()
        self.returned, self.error = returned, error

    def line(self) -> str:
        ms = lambda x: round(x * 1e3, 3)  # noqa: E731
        out = {"t": round(self.t, 6), "path": self.path, "offset": self.offset, "size": self.size,
               "returned": self.returned, "ms": ms(self.t1 - self.t0), "wait_ms": ms(self.wait),
               "queued_ms": ms(self.queued), "decode_ms": ms(self.decode), "ipc_ms": ms(self.ipc),
               "copy_ms": ms(self.copy), "tiles": self.tiles, "pid": self.pid}
        if self.error:
            out["error"] = self.error
        return json.dumps(out, separators=(",", ":"))


def _overlap(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


class Trace:
    """The trace file: records filed by the reads (a deque: no lock on the read path),
    written out in order by whoever flushes."""

    def __init__(self, path: str):
        self._f = open(path, "a", encoding="utf-8", buffering=1 << 16)
        self._lock = threading.Lock()
        self._pending: collections.deque = collections.deque()   # Records and event dicts

    def begin(self, path: str, offset: int, size: int, pid: int = 0) -> Record:
        return Record(path, offset, size, pid)

    def end(self, rec: Record, returned: int, error: str | None = None) -> None:
        rec.ended(returned, error)
        self._file(rec)

    def event(self, **fields) -> None:
        """A read-ahead decision (not a read): {"event": ..., ...}."""
        self._file({"event": fields.pop("event"), "t": round(time.time(), 6), **fields})

    def _file(self, item) -> None:
        self._pending.append(item)
        if len(self._pending) >= PENDING:
            self._write()

    def _write(self) -> None:
        with self._lock:
            while True:
                try:
                    item = self._pending.popleft()
                except IndexError:
                    return
                if self._f is None:
                    continue
                if isinstance(item, Record):
                    self._f.write(item.line() + "\n")
                else:
                    self._f.write(json.dumps(item, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self._write()
        with self._lock:
            if self._f is not None:
                self._f.flush()

    def close(self) -> None:
        self._write()
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None
