"""The FUSE operations: a thin, read-only shell over the namespace and the engine.

Everything that changes anything fails with EROFS. Channel files are opened
with keep_cache (they change only when a session grows), so re-reads and memmaps
are served by the kernel's page cache without reaching us.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import itertools
import logging
import os
import signal
import threading
import time

import numpy as np

from . import dirflags
from .fuselib import FUSE_CAP_READDIRPLUS_AUTO, KernelCache, Listing, fuse

from .attrs import BLOCK, Attributes
from .decoders import DecodeError
from .namespace import Namespace, fserror
from .readahead import ReadAhead
from .views.files import StaticFile

log = logging.getLogger("mef3fs.fuse")

KERNEL_READAHEAD = 4 << 10
OPEN_DIRS = 256               # open folders whose node or listing is kept (a find or a file browser has a few)
LISTING_SLACK = 1.0           # seconds: a kept listing must outlive the `ls` that reads it
XATTR_PREFIX = "user.mef3fs."
ENODATA = getattr(errno, "ENODATA", 61)
UNSUPPORTED_XATTRS = ("security.", "system.", "trusted.")


def _ignore_sigpipe() -> None:
    """signal.signal works only on the main thread; libc's works on any."""
    try:
        ctypes.CDLL(None).signal(signal.SIGPIPE, ctypes.c_void_p(1))  # SIG_IGN
    except (OSError, AttributeError):
        pass


class _Handle:
    __slots__ = ("file", "ctx", "readahead", "lock", "session", "rel")

    def __init__(self, file, ctx, readahead, session=None, rel=""):
        self.file = file
        self.ctx = ctx                  # engine.ReadContext: what the views read through
        self.readahead = readahead
        self.lock = threading.Lock()
        self.session = session      # the session the file belongs to, as it was when opened
        self.rel = rel


def _layout(file) -> tuple:
    """Where a signal file's samples sit: a file read again (refresh) that keeps it
    keeps its old bytes at the same offsets. One channel may grow at its end; a
    matrix whose rows got longer moved every row after the first."""
    own = getattr(file, "layout", None)      # a file kind that says it itself (views/shards.py)
    if own is not None:
        return own
    rows = getattr(file, "rows", None)
    if rows is None:
        return ()
    return (len(file.header), len(rows)) + ((file.n,) if len(rows) > 1 else ())


def _erofs(*_args, **_kwargs):
    raise fuse.FuseOSError(errno.EROFS)


class Mef3fsOperations(fuse.Operations):
    use_ns = True

    def __init__(self, namespace: Namespace, engine, readahead_bytes: int, on_ready=None, refresher=None,
                 statahead=None, startup=lambda: [], attrs: Attributes | None = None, mountpoint: str = "",
                 listing_ttl: float = 0.0):
        self.ns = namespace
        self.attrs = attrs or Attributes()
        self.engine = engine
        self.readahead_bytes = readahead_bytes
        self.on_ready = on_ready        # on_ready(warnings): the mount is up (daemon.py tells the caller)
        self.startup = startup          # () -> warnings for the user, checked before on_ready
        self.refresher = refresher      # refresh.Refresher: started in init, after any fork
        self.statahead = statahead      # statahead.Statahead: the same
        self.kernel = KernelCache()
        self.mountpoint = mountpoint
        self.listing_ttl = listing_ttl  # seconds the kernel trusts the attributes a listing carried
        self._served: dict[str, tuple] = {}   # path -> the session generation its pages came from
        self._said: set[str] = set()           # read failures already logged
        self._handles: dict[int, _Handle] = {}
        # open folder -> its node, then its Listing once listed; the newest OPEN_DIRS only,
        # as releasedir is left to libfuse (see readdir_entries)
        self._dirs: collections.OrderedDict = collections.OrderedDict()
        self._fh = itertools.count(1)

    # -- life cycle: pools start here, after any fork, and end in destroy ---

    mounted = False

    def init_with_config(self, conn, config):
        # The kernel holds every request until init returns, so the caller can
        # be released first; workers then start with the daemon's stdio
        # already detached and never keep the caller's pipes open.
        self.mounted = True
        if conn is not None:
            # Kernel readahead one page: a memmap fault then asks for 4 KiB, not
            # 128 KiB or more (at 1 kHz, 3-26 tiles decoded for one touched;
            # cold 10 s windows of 16 channels went 781 -> 79 ms), and what a
            # viewer reads next is put into the page cache by us (pagecache.py).
            # Sequential streams are read ahead by us, tile by tile.
            log.debug("kernel offers max_readahead %d, max_write %d", conn.max_readahead, conn.max_write)
            conn.max_readahead = min(conn.max_readahead, KERNEL_READAHEAD)
            # readdirplus on every listing request, not only the first of each
            # folder: the later ones would otherwise cost a lookup per entry
            conn.want &= ~FUSE_CAP_READDIRPLUS_AUTO
        self.kernel.bind()
        if self.listing_ttl > 0 and self.mountpoint:
            dirflags.hook(fuse, self.mountpoint)
        warnings = self.startup()
        if self.on_ready:
            self.on_ready(warnings)
        else:
            for w in warnings:
                log.warning("%s", w)
        self.engine.start()
        self.engine.attach_fuse(config)
        if self.refresher is not None:
            if not self.kernel.works:
                log.warning("libfuse2 cannot drop the kernel's cached pages: a recording that grows "
                            "while mounted shows new sizes only after the attribute timeout")
            self.refresher.start()
        if self.statahead is not None:
            self.statahead.start()
        log.info("mounted; %s", self.engine.describe())

    def destroy(self, path):
        # libfuse puts SIGPIPE back to its default (terminate) when its loop
        # ends; a write to a worker that died in the same signal storm must
        # be an error we handle, not the end of the daemon.
        _ignore_sigpipe()
        if self.refresher is not None:
            self.refresher.close()
        if self.statahead is not None:
            self.statahead.close()
        for h in list(self._handles.values()):
            h.readahead.close()
            h.ctx.closed = True
        self._handles.clear()
        self.engine.close()
        log.info("unmounted")

    # -- metadata -----------------------------------------------------------

    def attrs_of(self, node) -> dict:
        """Owners, modes and times follow SOURCE's (mef3fs/attrs.py)."""
        return self.attrs.of(node)

    def getattr(self, path, fh=None):
        return self.attrs_of(self.ns.lookup(path))

    def opendir_cached(self, path) -> tuple[int, bool, bool]:
        """(handle, whether the kernel may cache the listing, whether it may keep
        what it holds of it). A session's folders do not change while it is the
        same session (refresh drops the kernel's copy); SOURCE's folders may, at
        any time. What the kernel holds is kept while the attributes it came with
        are still trusted: listed from its cache after that, every entry would
        cost a lookup (an `ls -lR` of 100 sessions 1.7 -> 3.1 s)."""
        fh = next(self._fh)
        node = self._dirs[fh] = self.ns.lookup(path)
        if len(self._dirs) > OPEN_DIRS:
            self._dirs.popitem(last=False)
        if node.kind != "sessiondir":
            return fh, False, False
        session = node.session or self.ns.open_session(node.real)
        listing = session.listings.get(node.rel) if session is not None else None
        sent = listing.sent if listing is not None else None
        keep = sent is not None and time.monotonic() - sent < self.listing_ttl - LISTING_SLACK
        return fh, True, keep

    def opendir(self, path):
        return self.opendir_cached(path)[0]

    def listing_sent(self, listing: Listing) -> None:
        """The kernel got this listing with its attributes (readdirplus from the start)."""
        listing.sent = time.monotonic()
        self.engine.stats.add("listings")

    def readdir_entries(self, path, fh) -> Listing:
        """Every entry with its attributes, listed once per open folder (a
        listing comes in several requests that resume at an offset, each
        carrying attributes: readdirplus, see fuselib.FUSE.readdir_fuse_3),
        and once per session folder: it does not change while the session
        is the same. There is no releasedir: libfuse frees its own handle, and
        a Python call for each (half the requests of a warm `ls -lR`) would
        only forget ours; the oldest are forgotten instead, and a folder still
        open past that is listed again from its path."""
        node = self._dirs.get(fh)
        if isinstance(node, Listing):
            return node
        node = node or self.ns.lookup(path)
        session = None
        if node.kind == "sessiondir":
            session = node.session = node.session or self.ns.session(node.real)
        listing = session.listings.get(node.rel) if session is not None else None
        if listing is None or not self.attrs.fresh(listing.made):    # owners, modes may change
            listing = Listing([(".", None, None), ("..", None, None)] + [
                (name, self.attrs_of(c), c.file) for name, c in self.ns.entries(node)])
            if session is not None:
                session.listings[node.rel] = listing
        self._dirs[fh] = listing
        return listing

    def readdir(self, path, fh):
        """libfuse2 only (no readdirplus there)."""
        return self.readdir_entries(path, fh).names()

    def statfs(self, path):
        return {"f_bsize": BLOCK, "f_frsize": BLOCK, "f_blocks": 0, "f_bfree": 0,
                "f_bavail": 0, "f_files": 0, "f_ffree": 0, "f_favail": 0, "f_namemax": 255}

    def access(self, path, amode):
        self.ns.lookup(path)
        if amode & os.W_OK:
            raise fuse.FuseOSError(errno.EROFS)
        return 0

    def getxattr(self, path, name, position=0):
        if not name.startswith(XATTR_PREFIX):
            # ls -l asks every file for security.selinux and the ACL names.
            # "Not supported" (not "no such attribute") for the namespaces we
            # have nothing in lets ls stop asking for the rest of the mount.
            if name.startswith(UNSUPPORTED_XATTRS):
                raise fuse.FuseOSError(errno.EOPNOTSUPP)
            raise fuse.FuseOSError(ENODATA)
        node = self.ns.lookup(path)
        attrs = getattr(node.file, "xattrs", None) or {}
        if name not in attrs:
            raise fuse.FuseOSError(ENODATA)
        return attrs[name].encode("utf-8")

    def listxattr(self, path):
        node = self.ns.lookup(path)
        return list(getattr(node.file, "xattrs", None) or {})

    # -- data ---------------------------------------------------------------

    def open(self, path, fi):
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise fuse.FuseOSError(errno.EROFS)
        node = self.ns.lookup(path)
        if node.kind != "file":
            raise fuse.FuseOSError(errno.EISDIR)
        file = node.file
        # The kernel keeps a file's pages from open to open, unless told not to:
        # not when they may come from another generation of its session, or an
        # earlier file at this path (info.json is made again when damage is found).
        token = (node.session.keyspace, node.session.generation, id(file)) if node.session else ()
        cached = self._served.get(path) == token
        try:
            served = file.opened(cached)    # the file itself, or bytes made for this open
        except DecodeError as exc:
            log.error("EIO opening %s: %s", path, exc)
            raise fuse.FuseOSError(errno.EIO)
        except OSError as exc:          # SOURCE's own file went away or may not be read
            raise fuse.FuseOSError(exc.errno or errno.EIO)
        fh = next(self._fh)
        ctx = self.engine.open_handle(served, path)
        if file.direct_io:              # asked after opened(): a planned file knows only once made
            fi.direct_io = 1
        elif file.keep_cache:
            # Bytes made for this open go into the page cache whole, replacing any
            # older pages: then they may be kept too.
            stored = not cached and isinstance(served, StaticFile) and ctx.store_whole(served.data)
            fi.keep_cache = int(stored or cached or path not in self._served)
            self._served[path] = token
        self._handles[fh] = _Handle(served, ctx, ReadAhead(served, ctx, self.readahead_bytes),
                                    node.session, node.rel)
        if node.session is not None:
            self.ns.opened(node.session)
        fi.fh = fh
        return 0

    def _follow(self, handle: _Handle):
        """The handle's file in the newest generation of its session, when the
        session grew since it was opened; ESTALE when it is another session now
        (written anew in place) or the file moved its bytes."""
        newest = handle.session.newest()
        s = handle.session
        while s is not newest:
            if not s.compatible:
                raise fuse.FuseOSError(errno.ESTALE)
            s = s.superseded_by
        file = newest.files.get(handle.rel)
        if file is None or _layout(file) != _layout(handle.file):
            raise fuse.FuseOSError(errno.ESTALE)
        if getattr(handle.file, "rows", None) is not None:   # files of samples follow; others are snapshots
            with handle.lock:
                handle.readahead.close()
                handle.ctx.closed = True
                handle.ctx = self.engine.open_handle(file, handle.ctx.path)
                handle.readahead = ReadAhead(file, handle.ctx, self.readahead_bytes)
                handle.file = file
        handle.session = newest
        return handle.file

    def read_into(self, path, dest, offset, fi) -> int:
        """FUSE's read (see fuselib.FUSE.read): bytes go straight into the kernel's buffer."""
        handle = self._handles.get(fi.fh)
        if handle is None:
            raise fuse.FuseOSError(errno.EBADF)
        file = handle.file
        if handle.session is not None and handle.session.superseded_by is not None:
            file = self._follow(handle)
        if handle.ctx.whole:            # rare: one attribute on every read, the rest only then
            with handle.lock:
                handle.readahead.before_read(offset, len(dest))
        engine = self.engine
        engine.read_begins()
        trace = engine.trace
        if trace is not None:
            rec = engine.tls.rec = trace.begin(path, offset, len(dest), fuse.fuse_get_context()[2])
        try:
            n = file.read_into(handle.ctx, offset, dest)
        except DecodeError as exc:
            if trace is not None:
                engine.tls.rec = None
                trace.end(rec, -errno.EIO, str(exc))
            self._failed(path, offset, len(dest), exc, handle.session)
            raise fuse.FuseOSError(errno.EIO)
        finally:
            engine.read_ends()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("read %s [%d, +%d) -> %d bytes", path, offset, len(dest), n)
        if n:
            with handle.lock:
                handle.readahead.after_read(offset, n)
        if trace is not None:
            engine.tls.rec = None
            trace.end(rec, n)
        return n

    def _failed(self, path, offset, size, exc: DecodeError, session) -> None:
        """One log line per damaged range, not per read: the kernel asks for a
        failing page again and again (readahead, then page by page, per open)."""
        text = str(exc)
        if text in self._said or (session is not None and session.knows_damage(exc.channel, exc.span)):
            log.debug("EIO reading %s bytes [%d, %d): %s", path, offset, offset + size, text)
            return
        self._said.add(text)
        log.error("EIO reading %s bytes [%d, %d): %s", path, offset, offset + size, text)
        if session is not None and exc.channel is not None:
            session.report_damage({"channel": exc.channel, "start_uutc": exc.span[0],
                                   "end_uutc": exc.span[1], "reason": exc.reason}, quiet=True)

    def read(self, path, size, offset, fi):
        """mfusepy registers FUSE's read callback only for operations that
        define `read`; fuselib.FUSE.read then calls read_into instead."""
        dest = np.empty(size, dtype=np.uint8)
        return dest[:self.read_into(path, dest, offset, fi)].tobytes()

    def release(self, path, fi):
        handle = self._handles.pop(fi.fh, None)
        if handle is not None:
            with handle.lock:
                handle.ctx.closed = True
                handle.readahead.close()
            if handle.session is not None:
                self.ns.closed(handle.session)
            handle.file.close()
        return 0

    # -- everything that would change something ----------------------------

    write = create = mkdir = rmdir = unlink = rename = symlink = link = _erofs
    chmod = chown = truncate = utimens = mknod = _erofs
    setxattr = removexattr = _erofs

    def readlink(self, path):
        raise fserror(errno.EINVAL)


class DebugOperations(fuse.LoggingMixIn, Mef3fsOperations):
    """-d: every FUSE call and its result in the log."""
