"""Load the FUSE binding, preferring libfuse3, and the two callbacks we do better than mfusepy.

libfuse3 lets the kernel send reads of up to 1 MiB (libfuse2: 128 KiB):
fewer, bigger requests is the cheapest speed-up there is. mfusepy looks for
libfuse2 first unless told otherwise; FUSE_LIBRARY_PATH / FUSE_LIBRARY_NAME
set by the user still win.
"""

import os
from ctypes.util import find_library

if not (os.environ.get("FUSE_LIBRARY_PATH") or os.environ.get("FUSE_LIBRARY_NAME")) \
        and find_library("fuse3"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import ctypes  # noqa: E402
import operator  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import mfusepy as fuse  # noqa: E402

from . import dirflags  # noqa: E402


_U8 = np.dtype(np.uint8)
FUSE_READDIR_PLUS = 1        # readdir flag: the kernel wants attributes with the names
FUSE_FILL_DIR_PLUS = 2       # filler flag: these attributes are complete, keep them
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14


IDLE_THREADS = 64             # libfuse threads kept idle (each keeps its Python thread state)

_pinned = threading.local()


def _pin_thread_state() -> None:
    """Keep this libfuse thread's Python thread state from one callback to the next.

    libfuse's threads are not Python's: ctypes gives each callback a new
    thread state and deletes it on return, so every request started on
    fresh, cold memory (its frame stack is allocated anew). Measured here
    on a minimal mfusepy file system: a 4 KiB read 74-83 -> 44-59 us, an
    open and close 118-136 -> 39-54 us. One more PyGILState_Ensure, never
    released, keeps the state for the thread's life; libfuse keeps up to
    IDLE_THREADS idle threads, so the few that end leave a few KiB each."""
    ctypes.pythonapi.PyGILState_Ensure()
    _pinned.on = True          # a thread-local lives as long as the thread state


# attrs.Attributes' answers: these keys, times in ns (the FUSE class's use_ns)
_ANSWER = frozenset(("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_atime", "st_mtime",
                     "st_ctime", "st_blksize", "st_blocks"))
_SHARED = operator.itemgetter("st_mode", "st_nlink", "st_uid", "st_gid", "st_atime", "st_mtime",
                              "st_ctime", "st_blksize")
_NS = 10**9
_TEMPLATES: dict = {}         # _SHARED(attrs) -> a struct stat with those fields, for every listing
MAX_TEMPLATES = 4096


def _c_stat(attrs: dict):
    """A struct stat from one of our answers (_ANSWER, times in ns), in one constructor
    call: 4 us, where mfusepy's field-by-field set_st_attrs takes 6.5."""
    ts = fuse.c_timespec
    return fuse.c_stat(st_mode=attrs["st_mode"], st_nlink=attrs["st_nlink"], st_uid=attrs["st_uid"],
                       st_gid=attrs["st_gid"], st_size=attrs["st_size"], st_blksize=attrs["st_blksize"],
                       st_blocks=attrs["st_blocks"], st_atimespec=ts(*divmod(attrs["st_atime"], _NS)),
                       st_mtimespec=ts(*divmod(attrs["st_mtime"], _NS)),
                       st_ctimespec=ts(*divmod(attrs["st_ctime"], _NS)))


class Listing:
    """A folder's entries as readdir hands them to the kernel: (name, attributes, file),
    turned into C structs once, however often the folder is listed."""

    __slots__ = ("entries", "_structs", "made", "sent")

    def __init__(self, entries: list):
        self.entries = entries          # (name, attrs dict or None, file or None)
        self._structs = None
        self.made = time.monotonic()    # its attributes are the source's as of then
        self.sent = None                # last handed to the kernel with attributes (monotonic)

    def names(self) -> list[str]:
        return [name for name, _, _ in self.entries]

    def structs(self, fs: "FUSE") -> list:
        if self._structs is None:
            # entries with the same owner, mode and times (a channel's files, in every
            # folder of its session) differ only in size: a copy of the first one's
            # struct (1 us against 4); size and blocks are set on every copy
            out, made = [], _TEMPLATES
            if len(made) > MAX_TEMPLATES:
                made.clear()
            for name, attrs, file in self.entries:
                st = None
                if attrs is None:
                    pass
                elif not fs.use_ns or attrs.keys() != _ANSWER:       # not one of ours: mfusepy's way
                    st = fuse.c_stat()
                    fuse.set_st_attrs(st, attrs, use_ns=fs.use_ns)
                else:
                    key = _SHARED(attrs)
                    template = made.get(key)
                    if template is None:
                        st = made[key] = _c_stat(attrs)
                    else:
                        st = fuse.c_stat.from_buffer_copy(template)
                        st.st_size = attrs["st_size"]
                        st.st_blocks = attrs["st_blocks"]
                out.append((name.encode(fs.encoding, fs.errors), st, file))
            self._structs = out
        return self._structs


class FUSE(fuse.FUSE):
    """mfusepy's FUSE with a zero-copy read: the operations fill the kernel's
    buffer in place (`read_into`) instead of returning bytes that are then
    copied again (measured: about twice the warm throughput); and readdirplus,
    which mfusepy leaves out: a listing carries every entry's attributes, so
    `ls -l` of a session folder costs a few requests, not one per file.

    libfuse up to 3.15 drops the attributes of entries given without offsets,
    so entries carry their position as offset and a listing resumes there."""

    def _wrapper(self, func, *args, **kwargs):
        if not getattr(_pinned, "on", False):
            _pin_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def opendir(self, path, fip):
        """A folder the operations say does not change (a session's, while it is
        the same) is listed once and then kept by the kernel, as pages of a file
        are (cache_readdir + keep_cache; dropped when the session changes), for
        as long as the kernel may trust the attributes that listing carried.
        libfuse passes these flags on from 3.16; dirflags.py gets them through
        on Debian 12's 3.14."""
        fh, cache, keep = self.operations.opendir_cached(path.decode(self.encoding, self.errors))
        fi = fip.contents
        fi.fh = fh
        if cache and fuse.fuse_version_major >= 3 and hasattr(fi, "cache_readdir"):
            dirflags.set_flags(fi, keep)
        return 0

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
        listing = self.operations.readdir_entries(path.decode(self.encoding, self.errors), fip.contents.fh)
        entries = listing.structs(self)
        plus = FUSE_FILL_DIR_PLUS if flags & FUSE_READDIR_PLUS else 0
        if offset == 0 and plus:
            self.operations.listing_sent(listing)
        for k in range(offset, len(entries)):
            name, st, file = entries[k]
            if file is not None and file.direct_io:
                st.st_size = file.size          # made on open: its size is known only once made
            if filler(buf, name, st, k + 1, plus if st is not None else 0) != 0:
                break
        return 0

    _buffers: dict = {}              # size -> ctypes array type (making one costs more than a read)

    def read(self, path, buf, size, offset, fip):
        # the kernel's buffer as a numpy array without copying: 2.6 us where
        # np.ctypeslib.as_array took 29 (a FUSE read costs about 90 us in all)
        kind = self._buffers.get(size)
        if kind is None:
            if len(self._buffers) > 4096:       # direct_io files are read at any size
                self._buffers.clear()
            kind = self._buffers.setdefault(size, ctypes.c_uint8 * size)
        dest = np.frombuffer(kind.from_address(ctypes.addressof(buf.contents)), _U8)
        fi = fip.contents
        return self.operations.read_into(None if path is None else path.decode(self.encoding, self.errors),
                                         dest, offset, fi if self.raw_fi else fi.fh)


class KernelCache:
    """Drops what the kernel caches of a path: its pages and attributes (libfuse3's
    fuse_invalidate_path). Bound in init, where a FUSE context gives the mount's
    handle; with libfuse2, which has no such call, it does nothing."""

    def __init__(self):
        self._fuse = None
        self._call = getattr(fuse._libfuse, "fuse_invalidate_path", None)
        if self._call is not None:
            self._call.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            self._call.restype = ctypes.c_int

    @property
    def works(self) -> bool:
        return self._call is not None and fuse.fuse_version_major >= 3

    def bind(self) -> None:
        ctx = fuse._libfuse.fuse_get_context()
        self._fuse = ctx.contents.fuse if ctx else None

    def invalidate(self, path: str) -> int:
        """0, or -ENOENT when the kernel never looked the path up (nothing cached)."""
        if not self.works or not self._fuse:
            return 0
        return self._call(self._fuse, path.encode("utf-8", "surrogateescape"))
