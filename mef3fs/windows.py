"""Read-ahead of windows: decode what readers of channels read together (a
memmap per channel, a viewer drawing every trace) will ask for next, and
nothing they will not. readahead.py follows sequential streams.

`InStep`, one per rate group: the channel read first in a window leads it.
The first window is learned from the lead's reads and decoded for the whole
group as soon as a second channel reads it too (and stored into the page
cache of the channels open but not read yet, all but their first page);
from then on each window the lead opens is decoded at once for every
channel read recently, its own part first. When the lead's new window is
next to its last one (a step, forward or backward), the AHEAD_WINDOWS
windows after it in the direction of travel and the one behind are decoded
too, and all of it is put into the kernel's page cache of the followers'
files (pagecache.py), and of the lead's but for the farthest window's first
page: the reader's read there is the next that reaches us, so it pays a
round trip once every AHEAD_WINDOWS pages (a step of that many windows);
a jump or a turn cancels what is no longer wanted. A window opened by a
jump gets nothing speculative while windows are read back to back (a
script); once nobody has read for 10 ms (a viewer showing it), both its
neighbours are read ahead, so the first step either way is ready too.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref

from .pool import AHEAD, WINDOW

log = logging.getLogger("mef3fs.readahead")

STALE = 5.0                   # seconds after which a window or a reader no longer counts
WINDOW_SECONDS = 300.0        # a window longer than this is a scan
WHOLE_SCAN = 1 << 20          # bytes: a channel at least this long read whole is scanned, not windowed
LEAD_TRIGGER = 1024           # samples (a page) of the lead's next window kept out of its page cache
# windows read ahead in the direction of travel, all but the farthest whole: a
# viewer's read reaches us (and costs it a round trip) once every this many pages
AHEAD_WINDOWS = 3
PAGE_SAMPLES = 1024           # float32 samples in a 4 KiB page
GUESS_AFTER = 0.01            # seconds without a read after a window was opened: someone looks at it
GUESS_FOR = 1.0               # seconds after the opening that such a pause still counts

_groups: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()    # channel key -> InStep


def group_of(tiles):
    """The InStep of a channel's rate group, if it has one."""
    return _groups.get(tiles.key)


class InStep:
    """Windows of the channels of one rate group (see the module docstring).

    The channel that opens a window (the first one read there: a viewer's
    first trace) is its lead; the others follow. The start of the lead's next
    window is left out of the page cache, so its first read there reaches us
    and says where the reader went: next to the last window (a step, forward
    or backward), or elsewhere (a jump). Followers' reads may never reach us
    (their window went into the page cache), so they only say who reads.
    """

    def __init__(self, rows=()):
        self.rows: list = []
        self._lock = threading.Lock()
        self._members: dict = {}              # channel key -> (last read or push, its ReadContext)
        self._lead = None                     # key of the channel that opened the current window
        self._win = None                      # (a, b): the current window, in grid samples
        self._grown = True                    # the window is still being learned (its first)
        self._t = 0.0                         # last activity in the current window
        self._last_end = -1                   # where the lead's last read ended
        self._lead_back = 0.0                 # when the lead's last read returned
        self._run_start = -1                  # where the lead's run of back-to-back reads began
        self._width = 0                       # samples: a window's length, once known
        self._direction = 0
        self._t_fanned = -STALE               # when a window was last decoded for the followers
        self._planned: list = []              # [(a, b, tokens)] read ahead, still cancellable
        self._done: collections.deque = collections.deque(maxlen=8)   # (a, b, time) read ahead
        self._opened = None                   # (window, time, rows) of a window opened by a jump, not a step
        for tiles in rows:
            self.add(tiles)

    def add(self, tiles) -> None:
        self.rows.append(tiles)
        _groups[tiles.key] = self

    def window_mode(self, tiles) -> bool:
        """Is this channel being read window by window (so streams should not read ahead)?"""
        now = time.monotonic()
        m = self._members.get(tiles.key)
        return now - self._t_fanned < STALE and m is not None and now - m[0] < STALE

    def read_to_end(self, tiles, ctx) -> None:
        """A stream of `ctx` (an open of this channel) reached the end of its file. When
        it leads a first window learned from the file's start, that is a read-through:
        see _read_whole."""
        with self._lock:
            if (self._lead == tiles.key and self._grown and self._win is not None
                    and self._win[0] == 0 and 4 * tiles.n >= WHOLE_SCAN):
                self._read_whole(tiles, ctx, "its stream reached the end")

    def _read_whole(self, tiles, ctx, why: str) -> None:
        """Lock held. The first window this channel leads is the channel read whole (a
        scan, not a window): forgotten, so the next channel's read is no follower's,
        and the open is a scan (its reads are no window's) until a read of it continues
        none of its runs (ReadContext.jumped). A channel read through became the group's
        first window, and the next channel's read fanned all of it out: the channels
        after it read window by window, with no stream."""
        log.debug("read-through of %s: %s, window %s forgotten", tiles.channel, why, self._win)
        self._win = None
        ctx.streaming = ctx.whole = True

    def alone(self, tiles, since: float) -> bool:
        """Is this channel read on its own since `since` (monotonic)? Not when another
        channel of the group is open and has not read yet (a viewer opens every channel
        it draws) or has read since. A channel read before and not yet released (the
        kernel releases a file some time after its last unmap) leaves it alone."""
        with self._lock:
            return all(c is None or c.closed or 0.0 < t < since
                       for k, (t, c) in self._members.items() if k != tiles.key)

    def width(self) -> int:
        return self._width

    def scanned(self, tiles) -> None:
        """This channel is being scanned: a window it opened is not one."""
        if self._lead == tiles.key and self._grown:
            with self._lock:
                self._forget_scanned(tiles.key)

    def _forget_scanned(self, key) -> None:
        """Lock held. See scanned."""
        if self._lead == key and self._grown:
            self._win = None

    def _together(self, now: float) -> list:
        return [r for r in self.rows if r.key in self._members and now - self._members[r.key][0] < STALE]

    def opened(self, tiles, ctx) -> None:
        """A channel of the group was opened: what is put into its page cache goes
        through its newest open. (A script that opens its memmaps anew for every
        window has closed the last ones, and a store for a closed open is dropped:
        every follower's pages then came one FUSE read at a time.) A channel not
        read yet is known from now on, at time 0: it is not read with the group
        until it reads (a viewer may open 128 channels and draw 16), but a window
        decoded for every channel (the first) is stored for it too, all but its
        first page, whose read says it reads with the group."""
        with self._lock:
            t, old = self._members.get(tiles.key, (0.0, None))
            if old is None or old.closed or old.file is ctx.file:
                self._members[tiles.key] = (t, ctx)

    def before_read(self, engine, ctx, tiles, s0: int, s1: int) -> None:
        """A read of samples [s0, s1) of `tiles` is about to wait for them."""
        now = time.monotonic()
        key = tiles.key
        with self._lock:
            self._members[key] = (now, ctx)
            self._opened = None
            plan, cancel = self._decide(tiles, ctx, s0, s1, now)
            opened = self._opened
        if opened is not None:
            self._arm_guess(engine, opened)
        if plan or cancel:
            # carried out by the engine's planner thread: this read returns at once;
            # once the page being read is read, unless followers wait for their part
            urgent = any(prio == WINDOW and push for _, _, _, prio, push, _, _ in plan)
            engine.plan(lambda: self._carry_out(engine, ctx, tiles, plan, cancel, now), defer=not urgent)

    def after_read(self, tiles) -> None:
        """A read of `tiles` returned (its copy goes on from the page cache)."""
        if tiles.key == self._lead:
            self._lead_back = time.monotonic()

    def _carry_out(self, engine, ctx, tiles, plan, cancel, now: float) -> None:
        for tokens in cancel:
            engine.cancel(tokens)
        for a, b, rows, prio, push, own, lead_span in plan:
            targets, unseen = [], []
            for r in push:
                t, c = self._members.get(r.key, (0.0, None))
                if c is None:
                    continue
                if not t:
                    # opened, never read: the window being read but for its first page,
                    # whose read makes it one of the group (nothing read ahead: that
                    # might hold the page)
                    if prio == WINDOW:
                        targets.append((c, r, min(b, a + PAGE_SAMPLES), b))
                    continue
                if r.key == tiles.key:
                    # the lead's next window, but for its first pages: its read there
                    # reaches us and says where the reader went
                    targets.append((c, r) + lead_span)
                else:
                    targets.append((c, r, a, b))
                unseen.append((r.key, c))
            tokens = engine.window(rows, a, b, prio, targets, own, ctx)
            with self._lock:
                for key, c in unseen:
                    self._members[key] = (now, c)   # it will read there, unseen
                if prio == AHEAD:
                    self._planned.append((a, b, tokens))

    def _decide(self, tiles, ctx, s0: int, s1: int, now: float):
        """Lock held. -> ([(a, b, rows, prio, rows to push, (tiles, s0, s1) or None, the lead's
        push span or None)], [tokens to cancel])"""
        key, n = tiles.key, tiles.n
        size = s1 - s0
        if ctx.streaming:
            # found a scan after the caller looked (a read of the same open in another
            # thread): no window
            self._forget_scanned(key)
            return [], []
        if self._win is None or now - self._t >= STALE:
            self._open(key, s0, s1, now, grown=True)
            self._last_end = s1
            return [], []
        a, b = self._win
        self._t = now
        if self._grown:
            # the first window: learned from the lead's reads, decoded for everyone once
            # another channel reads it too
            if key == self._lead:
                # what the lead reads, in whatever order (a memmap copy touches a window's
                # first and last pages first), until it is longer than a window can be
                a, b = self._win = (min(a, s0), max(b, s1))
                self._last_end = s1
                if a == 0 and b >= n and 4 * n >= WHOLE_SCAN:
                    # from its first page to its last: the channel whole, however it goes
                    # on (a copy of a whole memmap touches both before the rest)
                    self._read_whole(tiles, ctx, "its first and last pages read")
                elif b - a > tiles.fs * WINDOW_SECONDS:
                    self._open(key, s0, s1, now, grown=True)     # a scan, or elsewhere: start again
                return [], []
            if s0 < b and a < s1:
                self._last_end = -1
                self._grown = False
                self._width = b - a
                rows = self.rows
                self._t_fanned = now
                self._opened = (self._win, now, rows)
                return [(a, b, rows, WINDOW, [r for r in rows if r.key != key], (tiles, s0, s1), None)], []
        if key != self._lead:
            self._last_end = -1                # the lead's next read does not continue its last
            return [], []                      # a follower: it reads what the lead opened
        page = max(size, PAGE_SAMPLES)
        prev_end = self._last_end
        contiguous = abs(s0 - prev_end) <= page
        if not contiguous:
            self._run_start = s0
        self._last_end = s1
        # The window's length is known: a read past its end is the next window. One in
        # its last page is the lead's own: stepping forward, its page cache holds all
        # but its first pages and its last (see below), which a copy reads last.
        if a <= s0 < b or (s0 < a and contiguous):
            return [], []                      # more of the lead's own window
        if b <= s0 < b + page and a < prev_end <= b and now - self._lead_back < GUESS_AFTER:
            # The lead's copy goes on past the width learned, right after its last read
            # (the pages between were put into its page cache): n samples span n / 1024
            # pages rounded up, or one page more, with where they start. The same
            # window, a page wider, not a step.
            return self._widen(tiles, s0, s1, s1, now), []
        if contiguous and self._run_start <= a + page and b <= s0 < b + page:
            # the lead read all of the window we thought it had, and reads on: twice as wide
            return self._widen(tiles, s0, s1, b + (b - a), now), []
        # the lead left its window: the next one, the one before, or elsewhere
        width = self._width or (b - a)
        # where the lead's first read in a window lands moves by a page or two with what
        # the page cache already holds: a step is a window's width, give or take that
        slack = max(2 * page, width // 4)
        delta = s0 - a
        # the windows in between were read ahead whole: the reader passed them unseen
        step = next((m * d for m in range(1, AHEAD_WINDOWS + 1) for d in (1, -1)
                     if abs(delta - d * m * width) <= slack), 0)
        direction = (step > 0) - (step < 0)
        # The width stays what the first window taught (whole pages: up to two more than
        # the reader's), but for backward steps: there the lead's first read is the
        # first page of its window (what was pushed ends before it), so the distance
        # from the last one, over the windows stepped, says the width to a page / m.
        if step < 0 and abs(delta / step - width) <= 2 * page:
            width = int(round(delta / step))
        if width > tiles.fs * WINDOW_SECONDS:
            self._win = None                   # a scan, not windows
            return [], []
        self._width = width
        self._open(key, s0, s0 + width, now, grown=False)
        self._last_end = s1
        rows = self._together(now)
        if len(rows) < 2:
            return [], []
        self._t_fanned = now
        others = [r for r in rows if r.key != key]
        cur = (s0, min(n, s0 + width))
        lead = [r for r in rows if r.key == key]
        if self._done_before(cur, page, now):
            # read ahead already (and in the followers' page cache): the lead's own rest only
            plan = [(cur[0], cur[1], lead, WINDOW, [], (tiles, s0, s1), None)]
        else:
            plan = [(cur[0], cur[1], rows, WINDOW, others, (tiles, s0, s1), None)]
        wanted = [cur]
        if step:
            around, spans = self._around(s0, width, n, page, rows, now, (direction, -direction),
                                         AHEAD_WINDOWS)
            plan += around
            wanted += spans
        else:
            self._opened = (self._win, now, rows)
        cancel = []
        if direction != self._direction or not step:
            # a turn or a jump: read-ahead planned for other windows is no longer wanted
            keep = []
            for x0, x1, tokens in self._planned:
                if any(x0 < y and x < x1 for x, y in wanted):
                    keep.append((x0, x1, tokens))
                else:
                    cancel.append(tokens)
            self._planned = keep
        self._direction = direction
        return plan, cancel

    def _widen(self, tiles, s0: int, s1: int, end: int, now: float) -> list:
        """Lock held. The lead's read [s0, s1) says the window [a, b) reaches on to `end`:
        the new part is decoded for every channel read with it, the lead's read first."""
        a, b = self._win
        self._win = (a, end)
        self._width = max(self._width, end - a)
        rows = self._together(now)
        if len(rows) < 2:
            return []
        return [(b, min(tiles.n, end), rows, WINDOW, [r for r in rows if r.key != tiles.key],
                 (tiles, s0, s1), None)]

    def _around(self, s0: int, width: int, n: int, page: int, rows: list, now: float, steps,
                ahead: int = 1) -> tuple:
        """Read-ahead of the windows next to the one at s0: `ahead` of them in the
        direction of steps[0] (+1: after it, -1: before it), one in each other
        direction. -> (plan items, spans wanted)"""
        plan, wanted = [], []
        lead = [r for r in rows if r.key == self._lead]
        for k, step in enumerate(steps):
            count = ahead if k == 0 else 1
            for i in range(1, count + 1):
                x = s0 + step * i * width
                # a page more at both ends (reads start and end on page boundaries), and
                # one more per window away: a prediction is off by up to a page a window
                x0, x1 = max(0, x - i * page), min(n, x + width + i * page)
                if x1 <= x0:
                    break
                forward = step > 0
                if i < count:
                    # The reader passes through this window without a read reaching us:
                    # the lead's part goes in whole, but (forward) for the page where
                    # the next window starts, which may be the farthest one's first.
                    lead_span = (x0, min(x1, x + width)) if forward else (x0, x1)
                    if self._done_before((x0, x1), page, now):
                        # read ahead already, as a farthest window whose lead part left
                        # pages out at either end (up to 1 + AHEAD_WINDOWS of them): the
                        # lead's part again, whole (its tiles are decoded or on the way)
                        if lead:
                            plan.append((x0, x1, lead, AHEAD, lead, None, lead_span))
                    else:
                        plan.append((x0, x1, rows, AHEAD, rows, None, lead_span))
                    wanted.append((x0, x1))
                    continue
                # The farthest window's lead part leaves out its first page (the read
                # there tells us the reader came) and, ahead of a forward step, its last:
                # the window after it starts there, and a page stored now would move that
                # one's first read on. The width is known to a page (reads are whole
                # pages), so a prediction drifts: forward it drifts into the window and
                # the lead reads the pages before it (which re-anchors the window),
                # backward out of it by up to a page a window, so a page more per window.
                lo = min(x1, x + (LEAD_TRIGGER if forward else (1 + i) * LEAD_TRIGGER))
                hi = min(x1, x + width - PAGE_SAMPLES) if forward else x1
                lead_span = (lo, max(lo, hi))
                if not self._done_before((x0, x1), page, now):
                    plan.append((x0, x1, rows, AHEAD, rows, None, lead_span))
                wanted.append((x0, x1))
        return plan, wanted

    # -- a pause after a window opened by a jump: someone may be looking at it ---

    def _arm_guess(self, engine, opened) -> None:
        timer = threading.Timer(GUESS_AFTER, self._guess, (engine, opened))
        timer.daemon = True
        timer.start()

    def _guess(self, engine, opened) -> None:
        """A window of several channels opened by a jump (not a step), its tiles landed,
        and then nothing read for GUESS_AFTER: a viewer showing it, not a script reading
        windows back to back (which must not pay for guesses). Its neighbours on both
        sides are read ahead, so the first step either way finds its page in the page cache."""
        win, t_opened, rows = opened          # rows: the channels the window was decoded for
        now = time.monotonic()
        with self._lock:
            if self._win != win or self._grown or now - t_opened > GUESS_FOR:
                return                          # elsewhere by now, or too late to matter
            busy = now - self._t < GUESS_AFTER  # still being read
        # a read waiting, the window's own tiles still decoding or being stored into the
        # page cache: its reads wait (where we cannot see them), nobody looks at it yet
        busy = busy or engine.reading() or any(engine.cache.pending(r, win[0], win[1]) for r in rows)
        if busy:
            self._arm_guess(engine, opened)
            return
        log.debug("guess: window %s of %d channels, %.1f ms without a read", win, len(rows), (now - self._t) * 1e3)
        with self._lock:
            if self._win != win:
                return
            lead = next((r for r in self.rows if r.key == self._lead), None)
            ctx = self._members.get(self._lead, (0, None))[1]
            # a mount's first window was decoded for every channel: its neighbours only
            # for those that read it (a viewer may open 128 channels and draw 16)
            rows = [r for r in rows if now - self._members.get(r.key, (0.0, None))[0] < STALE]
            if lead is None or ctx is None or len(rows) < 2:
                return
            a, b = win
            plan, _ = self._around(a, self._width or b - a, lead.n, PAGE_SAMPLES, rows, now, (1, -1))
        if plan:
            engine.plan(lambda: self._carry_out(engine, ctx, lead, plan, [], now), defer=True)

    def _done_before(self, span: tuple, slack: int, now: float) -> bool:
        """Was this window (or one holding it, give or take a page) read ahead for the
        group just now? If not, it is now: nothing is decoded or stored twice."""
        x0, x1 = span
        for a, b, t in self._done:
            if a - slack <= x0 and x1 <= b + slack and now - t < STALE:
                return True
        self._done.append((x0, x1, now))
        return False

    def _open(self, key, a: int, b: int, now: float, grown: bool) -> None:
        self._lead, self._win, self._t, self._grown = key, (a, b), now, grown
        self._last_end = -1
