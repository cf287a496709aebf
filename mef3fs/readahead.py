"""Read-ahead: spot sequential streams on an open file and decode ahead of them.

Like the kernel's readahead: a stream is a run of reads that each start
where the last one ended (or, backwards, end where it started). Its window
starts at a few requests and doubles while the run continues, up to a cap;
a read that fits no stream starts a new one, and the stream it displaces
has its unstarted read-ahead cancelled. A handful of streams are tracked per
handle because a memmap or several threads interleave several.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

log = logging.getLogger("mef3fs.readahead")

MAX_STREAMS = 4
MIN_WINDOW = 128 << 10        # bytes: the first window once a run is seen
SLACK = 128 << 10             # kernel readahead may reorder requests by this much


class _Stream:
    __slots__ = ("start", "end", "direction", "window", "horizon", "tokens")

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end
        self.direction = 0        # +1 forward, -1 backward, 0 not yet known
        self.window = 0
        self.horizon = None       # how far read-ahead has been requested already
        self.tokens = collections.deque()   # (file offset, cancel token) of scheduled tiles


class ReadAhead:
    """Per open file handle; `file.prefetch(lo, hi)` yields (offset, token) pairs."""

    def __init__(self, file, cache, max_window: int):
        self._file = file
        self._cache = cache
        self._max = max(0, int(max_window))
        self._streams: list[_Stream] = []

    def after_read(self, offset: int, size: int) -> None:
        if self._max == 0 or size <= 0:
            return
        end = offset + size
        # Requests in flight together (kernel readahead, memmap faults) may
        # finish out of order by a request or two.
        tol = max(SLACK, 2 * size)
        stream, direction = self._match(offset, end, tol)
        if stream is None:
            if len(self._streams) >= MAX_STREAMS:
                self._drop(self._streams.pop(0))
            self._streams.append(_Stream(offset, end))
            return
        self._streams.remove(stream)
        self._streams.append(stream)            # most recently used last
        if stream.direction not in (0, direction):
            stream.window, stream.horizon = 0, None
        stream.direction = direction
        stream.window = min(self._max, max(MIN_WINDOW, 2 * size, 2 * stream.window))
        if direction > 0:
            stream.start, stream.end = max(stream.start, offset), max(stream.end, end)
        else:
            stream.start, stream.end = min(stream.start, offset), min(stream.end, end)
        self._forget_behind(stream)
        self._schedule(stream)

    def _match(self, offset: int, end: int, tol: int):
        """The stream this read continues, and which way: forward runs first,
        so a late request inside a forward run is never taken for a backward one."""
        for s in reversed(self._streams):
            lo = s.start - tol if s.direction > 0 else s.start
            if s.direction >= 0 and lo <= offset <= s.end + tol:
                return s, 1
        for s in reversed(self._streams):
            hi = s.end + tol if s.direction < 0 else s.end
            if s.direction <= 0 and (s.direction < 0 or offset < s.start) and s.start - tol <= end <= hi:
                return s, -1
        return None, 0

    def _schedule(self, s: _Stream) -> None:
        size = self._file.size
        if s.direction > 0:
            lo = max(s.end, s.horizon if s.horizon is not None else s.end)
            hi = min(size, s.end + s.window)
            if hi <= lo:
                return
            s.horizon = hi
        else:
            hi = min(s.start, s.horizon if s.horizon is not None else s.start)
            lo = max(0, s.start - s.window)
            if hi <= lo:
                return
            s.horizon = lo
        for offset, token in self._file.prefetch(self._cache, lo, hi):
            s.tokens.append((offset, token))
        log.debug("read-ahead %s [%d, %d) window %d", self._file.label, lo, hi, s.window)

    def _forget_behind(self, s: _Stream) -> None:
        """Tokens the stream has passed are not cancelled later; forget them."""
        while s.tokens and ((s.direction > 0 and s.tokens[0][0] < s.start) or
                            (s.direction < 0 and s.tokens[0][0] > s.end)):
            s.tokens.popleft()

    def _drop(self, s: _Stream) -> None:
        for _, token in s.tokens:
            self._cache.cancel(token)
        s.tokens.clear()

    def close(self) -> None:
        for s in self._streams:
            self._drop(s)
        self._streams.clear()


class InStep:
    """Channels of one sampling rate read at the same stretch of time.

    Reading the same window of every channel (a memmap per channel, a viewer
    drawing all traces) visits the channels one after another, each waiting
    on its own decode. Once a second channel reads a stretch that another
    channel just read, the stretch is decoded in the background for every
    other channel of the group, so the rest find it decoded.
    """

    WINDOW = 2.0          # seconds within which two channels count as in step
    REMEMBER = 64

    def __init__(self, group):
        self._group = group
        self._lock = threading.Lock()
        self._recent = collections.deque(maxlen=self.REMEMBER)   # (s0, s1, channel key, time)
        self._spread = collections.deque(maxlen=self.REMEMBER)   # stretches already fanned out

    def add(self, tiles) -> None:
        self._group.append(tiles)

    def after_read(self, cache, tiles, s0: int, s1: int) -> None:
        now = time.monotonic()
        with self._lock:
            partner = any(key != tiles.key and now - t < self.WINDOW and a < s1 and s0 < b
                          for a, b, key, t in self._recent)
            self._recent.append((s0, s1, tiles.key, now))
            if not partner or any(a <= s0 and s1 <= b for a, b in self._spread):
                return
            self._spread.append((s0, s1))
        scheduled = 0
        for row in self._group:
            if row.key != tiles.key:
                for i in row.tiles_for(s0, s1):
                    scheduled += cache.prefetch(row, i) is not None
        if scheduled:
            log.debug("in step: %s samples [%d, %d) read ahead on %d tiles of %d channels",
                      tiles.label, s0, s1, scheduled, len(self._group) - 1)
