"""Put read-ahead into the kernel's page cache, so the reader's next reads never reach us.

A FUSE read costs about 90 us here however small (kernel round trip,
libfuse, ctypes); a viewer's page of 16 channels is 16-48 of them, over a
millisecond even when every tile is decoded. So when the tiles of a window
read ahead for a channel land, their bytes are stored into the page cache
of the file that reader has open with FUSE's notify_store (libfuse3
`fuse_lowlevel_notify_store`): one write to /dev/fuse, no request, no
open file on the mount (which would make unmounting fail with EBUSY).

The kernel file is named by its node id, which libfuse's high-level API
reports as st_ino unless `use_ino` is set: so this is on only then. Only
whole pages are stored (a partial page would be left not up to date), never
past the end of the file (that would grow it). A thread does it, never a
FUSE thread: storing into a page waits for that page's own pending read.
A store whose tiles are still decoding is set aside until they land, and
the thread goes on with the next: waiting for them in line (as it once did)
held every later store behind read-ahead still queued, and at 32 kHz a
random window's pages then came one FUSE read at a time (1,250 a window).

The one exception is a small file made whole for an open (a block
envelope, a picture, a JSON file): `store_file` puts all of it in before
the open returns, so its reader's reads (3 round trips for an np.load of a
69 KB envelope, since the kernel reads ahead one page) never reach us. No
read of this open can be pending yet; another open's read that holds a page
is served by another FUSE thread meanwhile.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
import time

import numpy as np

log = logging.getLogger("mef3fs.pagecache")

PAGE = 4096
MAX_STORE = 1 << 20           # bytes per notify_store call
STORE_ON_OPEN = 8 << 20       # a made file up to this size goes in whole when opened
LAND_WAIT = 5.0               # seconds to wait for a window's tiles to land


class _FuseBuf(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64),
                ("mem_size", ctypes.c_size_t)]          # libfuse >= 3.17; zero-cost before


class _FuseBufvec(ctypes.Structure):
    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
                ("buf", _FuseBuf * 1)]


def byte_range(file, tiles, a: int, b: int):
    """Bytes [lo, hi) of `file` holding samples [a, b) of channel `tiles`, or None."""
    rows = getattr(file, "rows", None)
    if not rows:
        return None
    for r, row in enumerate(rows):
        if row.key == tiles.key:
            base = len(file.header) + r * file.row_bytes
            return base + 4 * a, base + 4 * b, base
    return None


class PageCache:
    """The pusher: a queue of (handle context, channel, samples) and the thread that stores them."""

    def __init__(self, cache, stats, mountpoint: str):
        self._cache = cache
        self._stats = stats
        self._mountpoint = mountpoint
        self._se = None
        self._notify = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = None
        self._stopped = threading.Event()
        self._storing = False
        self._parked = 0                # stores waiting for their tiles to land
        self._parked_lock = threading.Lock()

    @property
    def busy(self) -> bool:
        """Stores queued or under way (a reader's page fault may wait for one)."""
        return self._storing or not self._queue.empty()

    @property
    def pending(self) -> bool:
        """Stores not done yet, including those waiting for their tiles."""
        return self.busy or self._parked > 0

    @property
    def on(self) -> bool:
        return self._se is not None

    def attach(self, config) -> bool:
        """In FUSE's init (a FUSE thread): find the session to notify; False if we cannot."""
        if config is None or getattr(config, "use_ino", 1) or not self._mountpoint:
            return False
        if os.environ.get("MEF3FS_PAGECACHE", "1") == "0":      # a switch to measure without it
            return False
        try:
            import mfusepy
            lib = mfusepy._libfuse
            if mfusepy.fuse_version_major != 3:
                return False
            lib.fuse_get_session.restype = ctypes.c_void_p
            lib.fuse_get_session.argtypes = [ctypes.c_void_p]
            notify = lib.fuse_lowlevel_notify_store
            notify.restype = ctypes.c_int
            notify.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64,
                               ctypes.POINTER(_FuseBufvec), ctypes.c_int]
            fuse_ptr = lib.fuse_get_context().contents.fuse
            se = lib.fuse_get_session(ctypes.c_void_p(fuse_ptr)) if fuse_ptr else None
        except (AttributeError, OSError, ImportError) as exc:
            log.info("page-cache read-ahead off: %s", exc)
            return False
        if not se:
            return False
        self._se, self._notify = se, notify
        self._thread = threading.Thread(target=self._run, name="mef3fs-pagecache", daemon=True)
        self._thread.start()
        return True

    def push(self, ctx, tiles, a: int, b: int) -> None:
        """Store samples [a, b) of a channel into the page cache of ctx's file, once decoded."""
        if self._se is not None and not ctx.closed:
            self._queue.put((ctx, tiles, a, b))

    def push_bytes(self, ctx, lo: int, hi: int) -> None:
        """The same for bytes [lo, hi) of ctx's file (a stream's read-ahead)."""
        if self._se is not None and not ctx.closed:
            file = ctx.file              # a SignalFile: push_stream sends only those
            for r, a, b, _, _ in file.pieces(lo, hi):
                self._queue.put((ctx, file.rows[r], a, b))

    def store_file(self, ctx, data: bytes) -> bool:
        """All of `data`, ctx's file's content made for this open, into its page cache
        now (called from the open handler, see the module's docstring); False when
        any of it did not go in."""
        if self._se is None or len(data) > STORE_ON_OPEN or len(data) != ctx.file.size:
            return False
        view = np.frombuffer(data, dtype=np.uint8)
        for at in range(0, len(data), MAX_STORE):
            if not self._notify_store(ctx, at, view[at:at + MAX_STORE]):
                return False
        return True

    def close(self) -> None:
        """Before libfuse ends the session: the thread must not notify after that."""
        self._stopped.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(2.0)
        self._se = None

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped.is_set():
            item = self._queue.get()
            if item is None:
                return
            self._storing = True
            try:
                self._store(*item)
            except Exception as exc:      # never let the pusher die: it is only an accelerator
                log.debug("page-cache store failed: %s", exc)
            finally:
                self._storing = False

    def _park(self, tickets, item) -> None:
        """Put `item` back in the queue once these tickets' jobs are done (landed,
        failed or cancelled: every job ends, at the latest when the mount does)."""
        left = [len(tickets)]
        lock = threading.Lock()
        with self._parked_lock:
            self._parked += 1

        def release(_future) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            with self._parked_lock:
                self._parked -= 1
            if not self._stopped.is_set():
                self._queue.put(item)

        for t in tickets:
            t.future.add_done_callback(release)

    def _store(self, ctx, tiles, a: int, b: int, since: float | None = None) -> None:
        """`since`: when the store was asked for; its tiles landing LAND_WAIT later
        come too late to matter (the reader has been through by then)."""
        now = time.monotonic()
        since = now if since is None else since
        if ctx.closed or now - since > LAND_WAIT:
            return
        span = byte_range(ctx.file, tiles, a, b)
        if span is None:
            return
        lo, hi, base = span
        size = ctx.file.size
        lo = -(-lo // PAGE) * PAGE                  # whole pages only ...
        hi = min(hi, size)
        if hi < size:
            hi = hi // PAGE * PAGE                  # ... or up to the end of the file
        # piece by piece, each as soon as its tiles have landed: the pages before the
        # first tile still decoding go in now (a faulting reader is right behind them;
        # waiting for a whole piece's 26 tiles at 1 kHz, it read a third of a cold
        # memmap read-through itself, a FUSE read a page), the rest once it lands
        for at in range(lo, hi, MAX_STORE):
            end = min(hi, at + MAX_STORE)
            s0, s1 = (at - base) // 4, -(-(end - base) // 4)
            # (a job done whose tiles are not in yet is landing this very moment)
            pending = [(a, t) for a, t in self._cache.pending_from(tiles, s0, s1) if not t.future.done()]
            if pending:
                first = min(a for a, _ in pending)
                cut = (base + 4 * first) // PAGE * PAGE
                if cut > at and not self._store_piece(ctx, tiles, base, at, cut):
                    return
                # back once the first of them lands, for the pages it brings
                rest = (ctx, tiles, max(s0, (cut - base) // 4), b, since)
                self._park([t for a, t in pending if a == first][:1], rest)
                return
            if not self._store_piece(ctx, tiles, base, at, end):
                return

    def _store_piece(self, ctx, tiles, base: int, at: int, end: int) -> bool:
        """Bytes [at, end) of ctx's file (row at `base`) from cached tiles; False: stop."""
        if self._stopped.is_set() or ctx.closed:
            return False
        s0, s1 = (at - base) // 4, -(-(end - base) // 4)
        samples = np.empty(s1 - s0, dtype=np.float32)
        if not self._cache.peek(tiles, s0, s1, samples):
            return True                             # evicted or failed: the reader will ask
        return self._notify_store(ctx, at, samples.view(np.uint8)[:end - at])

    def _notify_store(self, ctx, offset: int, data: np.ndarray) -> bool:
        ino = self._ino(ctx)
        se = self._se
        if not ino or se is None:
            return False
        vec = _FuseBufvec(1, 0, 0)
        vec.buf[0].size = vec.buf[0].mem_size = len(data)
        vec.buf[0].mem = data.ctypes.data
        err = self._notify(se, ino, offset, ctypes.byref(vec), 0)
        if err:
            if err == -2:                            # ENOENT: the kernel forgot the file
                ctx.ino = None
            return False
        self._stats.add_many({"pushes": 1, "push_bytes": len(data)})
        return True

    def _ino(self, ctx) -> int:
        if ctx.ino is None:
            try:
                ctx.ino = os.stat(os.path.join(self._mountpoint, ctx.path.lstrip("/"))).st_ino
            except OSError:
                ctx.ino = 0
        return ctx.ino
