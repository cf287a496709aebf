"""Open mef3io readers of one process: a bounded set, least recently used let go first.

Opening a session costs more than decoding a tile, so readers stay open. But
a mef3io reader keeps the block index of every segment it has read from
(about 56 bytes per block: a week of 1 s blocks is 34 MB per channel), so
they are bounded by that memory as well as by count. The budget is the
mount's --index-size, for each process (the daemon and every decoder
worker); spawned workers find it in the environment.
"""

from __future__ import annotations

import collections
import os
import threading

MAX_OPEN_READERS = 16          # per process: thousands of sessions must not exhaust fds
INDEX_ENTRY_BYTES = 56         # what mef3io keeps per block once it read a segment's index
BUDGET_ENV = "MEF3FS_INDEX_SIZE"
DEFAULT_BUDGET = 64 << 20


class SessionChanged(Exception):
    """The session at this path is gone, or is not the one the caller opened."""


def budget_from_env() -> int:
    try:
        return int(os.environ.get(BUDGET_ENV, "")) or DEFAULT_BUDGET
    except ValueError:
        return DEFAULT_BUDGET


class _Entry:
    __slots__ = ("reader", "bytes", "segments")

    def __init__(self, reader):
        self.reader, self.bytes, self.segments = reader, 0, set()


class ReaderCache:
    def __init__(self, open_reader, max_open: int = MAX_OPEN_READERS, budget: int | None = None):
        self._open = open_reader
        self._max = max_open
        self.budget = budget_from_env() if budget is None else budget
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict = collections.OrderedDict()   # key -> _Entry
        self._bytes = 0

    def get(self, path: str, identity: tuple = ()):
        # A session replaced at the same path (another inode or mtime) must
        # not be read for a file of the old one: that is an error, not data.
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SessionChanged(f"{exc.strerror}: the session is gone") from None
        now = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if identity and tuple(identity[:3]) != now:
            raise SessionChanged("the session was replaced or changed on disk since it was opened")
        # a later generation of a growing session (identity[3:]) needs a reader
        # opened after the growth: an older one does not see the new blocks
        key = (path,) + (tuple(identity) if identity else now)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry.reader
        reader = self._open(path)
        with self._lock:
            for old in [k for k in self._entries if k[0] == path]:
                self._bytes -= self._entries.pop(old).bytes
            self._entries[key] = _Entry(reader)
            self._trim(keep=key)
        return reader

    def discard(self, path: str, identity: tuple) -> None:
        """Let go of the reader opened for this identity: it saw files half written,
        and the next read of that generation must look at them again."""
        with self._lock:
            entry = self._entries.pop((path,) + tuple(identity), None)
            if entry is not None:
                self._bytes -= entry.bytes

    def loaded(self, reader, channel: str, t0: float, t1: float) -> None:
        """`reader` read [t0, t1) of a channel: mef3io now holds the index of every
        segment that overlaps it. Counts those bytes; lets go of older readers
        when over budget (the newest one always stays)."""
        with self._lock:
            key = next((k for k, e in self._entries.items() if e.reader is reader), None)
        if key is None:
            return
        new = 0
        for seg in reader.segments(channel):
            tag = (channel, seg["segment"])
            if seg["start_time"] < t1 and t0 < seg["end_time"]:
                with self._lock:
                    entry = self._entries.get(key)
                    if entry is None or tag in entry.segments:
                        continue
                    entry.segments.add(tag)
                new += int(seg["number_of_blocks"]) * INDEX_ENTRY_BYTES
        if new:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.bytes += new
                    self._bytes += new
                    self._trim(keep=key)

    def _trim(self, keep) -> None:
        """Lock held. Dropped, not closed: a thread may still read from it; the
        last reference closes it."""
        while len(self._entries) > 1 and (len(self._entries) > self._max or self._bytes > self.budget):
            old = next(k for k in self._entries if k != keep)
            self._bytes -= self._entries.pop(old).bytes

    def snapshot(self) -> dict:
        with self._lock:
            return {"readers_open": len(self._entries), "reader_index_bytes": self._bytes}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
