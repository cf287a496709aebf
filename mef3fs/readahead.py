"""Read-ahead of sequential streams: decode what a reader will ask for next, and
nothing it will not. Windows of channels read together are windows.py's.

`ReadAhead`, one per open handle: streams (next offset = last end,
forward or backward), like the kernel's readahead: once a run is longer
than a window of its group, the window doubles while the run goes on, up
to --readahead and to twice what the run has read; a read that fits no
stream starts one, and the stream it displaces has its read-ahead
cancelled. A stream of page faults (a memmap read through) has what it
reads ahead put into the kernel's page cache as it lands (pagecache.py),
but for a page halfway through each batch: the reader's fault there
reaches us and carries the stream on while half the batch is still ahead
of it. What is pushed runs a margin ahead of the reader (it would race us
for the nearest pages) and goes out in batches: a stream still growing
asks for read-ahead a few pages at a time, and stores that small cost what
the faults would. A handful are tracked because a memmap or several threads
interleave several. A channel whose group is being read window by window
gets no stream read-ahead: the windows say better what comes next.
"""

from __future__ import annotations

import collections
import logging
import time

from .pagecache import PAGE

log = logging.getLogger("mef3fs.readahead")

MAX_STREAMS = 4
MIN_WINDOW = 128 << 10        # bytes: the first stream window once a run is seen
MIN_RUN = 256 << 10           # bytes a run must have read before a stream reads ahead
SLACK = 128 << 10             # kernel readahead may reorder requests by this much
BATCHES = 4                   # a widest window is topped up a quarter at a time
FAULT_REQUEST = 32 << 10      # bytes: requests this small are page faults (a memmap), not read()
PUSH_MARGIN = 64 << 10        # bytes between a faulting reader and what is pushed for it
PUSH_BATCH = 256 << 10        # bytes: pushes go out once this much is due


class _Stream:
    __slots__ = ("start", "end", "origin", "direction", "window", "horizon", "tokens", "pushed", "since")

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end
        self.origin = (start, end)    # where the run began: its length is how far it got
        self.direction = 0        # +1 forward, -1 backward, 0 not yet known
        self.window = 0
        self.horizon = None       # how far read-ahead has been requested already
        self.tokens = collections.deque()   # (file offset, cancel token) of scheduled tiles
        self.pushed = None        # how far pushes into the page cache have been asked for
        self.since = time.monotonic()   # when the run began


class ReadAhead:
    """Per open file handle; `file.prefetch(ctx, lo, hi)` yields (offset, token) pairs."""

    def __init__(self, file, ctx, max_window: int):
        self._file = file
        self._ctx = ctx
        self._max = max(0, int(max_window))
        self._streams: list[_Stream] = []

    def after_read(self, offset: int, size: int) -> None:
        if self._max == 0 or size <= 0:
            return
        end = offset + size
        stream, direction = self._match(offset, end)
        if stream is None:
            if len(self._streams) >= MAX_STREAMS:
                self._drop(self._streams.pop(0))
            self._streams.append(_Stream(offset, end))
            return
        self._streams.remove(stream)
        self._streams.append(stream)            # most recently used last
        if stream.direction not in (0, direction):
            stream.window, stream.horizon, stream.pushed = 0, None, None
            stream.origin = (offset, end)
            stream.since = time.monotonic()
        stream.direction = direction
        if direction > 0:
            stream.start, stream.end = max(stream.start, offset), max(stream.end, end)
            run = stream.end - stream.origin[0]
        else:
            stream.start, stream.end = min(stream.start, offset), min(stream.end, end)
            run = stream.origin[1] - stream.start
        self._forget_behind(stream)
        if not self._due(stream):
            return
        wanted = self._ctx.stream_wanted(offset, run, MIN_RUN)
        if not wanted:
            return
        if stream.window < self._max:
            # at least two tiles ahead (a window smaller than a tile only ever waits for
            # it), doubling, but never ahead by more than twice what the run has read: a
            # reader of one 10 s window at 32 kHz reads 1.25 MB in a run of page faults,
            # and a window doubled at every fault sent it to the end of the file (80 s)
            stream.window = min(self._max, max(stream.window, MIN_WINDOW, 2 * size,
                                               2 * self._ctx.tile_bytes(offset),
                                               min(2 * stream.window, 2 * run)))
        self._schedule(stream, size)

    def before_read(self, offset: int, size: int) -> None:
        """An open whose channel was read whole (ctx.whole) reads windows again once a
        read of it continues none of its streams (ReadContext.jumped); told before the
        read, so the window tracker sees the jump itself."""
        if self._ctx.whole and self._match(offset, offset + size)[0] is None:
            self._ctx.jumped()

    def _match(self, offset: int, end: int):
        """The stream this read continues, and which way: forward runs first,
        so a late request inside a forward run is never taken for a backward one.
        A faulting reader comes back to us past what was pushed for it."""
        # Requests in flight together (kernel readahead, memmap faults) may
        # finish out of order by a request or two.
        tol = max(SLACK, 2 * (end - offset))
        for s in reversed(self._streams):
            lo = s.start - tol if s.direction > 0 else s.start
            reached = s.end if s.pushed is None else max(s.end, s.pushed)
            if s.direction >= 0 and lo <= offset <= reached + tol:
                return s, 1
        for s in reversed(self._streams):
            hi = s.end + tol if s.direction < 0 else s.end
            reached = s.start if s.pushed is None else min(s.start, s.pushed)
            if s.direction <= 0 and (s.direction < 0 or offset < s.start) and reached - tol <= end <= hi:
                return s, -1
        return None, 0

    @staticmethod
    def _unasked(s: _Stream) -> tuple[int, int]:
        """Bytes [lo, hi) the stream's window covers and read-ahead has not asked for,
        before the file's ends clip them."""
        if s.direction > 0:
            lo = s.end if s.horizon is None else max(s.end, s.horizon)
            return lo, s.end + s.window
        hi = s.start if s.horizon is None else min(s.start, s.horizon)
        return s.start - s.window, hi

    def _due(self, s: _Stream) -> bool:
        """Is there read-ahead to ask for? Not once it reaches the end of the file;
        and a stream at its widest is topped up in batches, as the kernel's readahead
        is: once the reader has used a quarter of the window since the last time.
        Topping up after every read walked a read's worth of tiles the cache already
        had (a re-read from the tile cache spent a third of its time there). Until
        the run is known to be a scan (ctx.streaming), every read is looked at."""
        if s.horizon is None or not self._ctx.streaming:
            return True
        at_end = s.horizon >= self._file.size if s.direction > 0 else s.horizon <= 0
        if at_end:
            return False
        lo, hi = self._unasked(s)
        return s.window < self._max or hi - lo >= s.window // BATCHES

    def _schedule(self, s: _Stream, request: int) -> None:
        """`request`: the size of the read that carried the stream on (a page fault's
        is small, and what such a stream reads ahead goes into the page cache)."""
        size = self._file.size
        lo, hi = self._unasked(s)
        lo, hi = max(0, lo), min(size, hi)
        if hi <= lo:
            return
        if s.direction > 0:
            s.horizon = hi
        else:
            s.horizon = lo
        got = self._ctx.prefetch_range(self._file, lo, hi)
        for offset, token in got:
            s.tokens.append((offset, token))
        if s.direction > 0 and hi >= size:
            self._ctx.stream_reached_end()      # a scan, maybe of one channel after another
        if request <= FAULT_REQUEST:      # big read() requests cost what storing would
            self._push(s)
        log.debug("read-ahead %s [%d, %d) window %d", self._file.label, lo, hi, s.window)

    def _push(self, s: _Stream) -> None:
        """What the stream has asked for, from PUSH_MARGIN past the reader to PUSH_MARGIN
        short of the horizon (or to the file's end), as far as not pushed yet, but for
        one page halfway (see _push_around)."""
        size = self._file.size
        if s.direction > 0:
            lo = max(s.end + PUSH_MARGIN, s.pushed or 0)
            hi = size if s.horizon >= size else s.horizon - PUSH_MARGIN
            if hi - lo >= PUSH_BATCH or (hi == size and hi > lo):
                if self._push_around(lo, hi, s.since):
                    s.pushed = hi
        else:
            hi = min(s.start - PUSH_MARGIN, size if s.pushed is None else s.pushed)
            lo = 0 if s.horizon <= 0 else s.horizon + PUSH_MARGIN
            if hi - lo >= PUSH_BATCH or (lo == 0 and hi > lo):
                if self._push_around(lo, hi, s.since):
                    s.pushed = lo

    def _push_around(self, lo: int, hi: int, since: float) -> bool:
        """Bytes [lo, hi) but the page halfway: the reader's fault there reaches us while
        half the batch is still ahead of it, and carries the stream on (the next batch
        goes in while it reads that half), as the kernel's readahead marks a page to
        start the next window early. Pushed whole, a batch was next heard of when the
        reader faulted past it: it then faulted a page at a time until the next batch
        landed (from the tile cache at 1 kHz, 176 of a channel's 3,516 pages came as
        FUSE reads, which took most of the read-through's time)."""
        if hi - lo < 4 * PAGE:
            return self._ctx.push_stream(lo, hi, since)
        mark = (lo + (hi - lo) // 2) // PAGE * PAGE
        if not self._ctx.push_stream(lo, mark, since):
            return False
        self._ctx.push_stream(mark + PAGE, hi, since)
        return True

    def _forget_behind(self, s: _Stream) -> None:
        """Tokens the stream has passed are not cancelled later; forget them."""
        while s.tokens and ((s.direction > 0 and s.tokens[0][0] < s.start) or
                            (s.direction < 0 and s.tokens[0][0] > s.end)):
            s.tokens.popleft()

    def _drop(self, s: _Stream) -> None:
        self._ctx.cancel([token for _, token in s.tokens])
        s.tokens.clear()

    def close(self) -> None:
        for s in self._streams:
            self._drop(s)
        self._streams.clear()
