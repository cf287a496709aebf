"""The kinds of file a session folder holds, and what the FUSE layer asks of them.

Every file is a `File`: `size`, `keep_cache`, `direct_io`, `xattrs`, `label`,
`opened()` (what the reads of one open go to: the file itself, or bytes made
for that open), `read_into(cache, offset, dest) -> count` and
`prefetch(cache, lo, hi)`. A `SignalFile` is an optional header followed by
one or more channels' float32 samples back to back, read through the
shared tiles, so no view ever decodes twice. `StaticFile` holds bytes made
at listing; a `GeneratedFile` is made on first open (it needs block
indexes or records that listing must not read) and kept, a `PlannedFile`
likewise but with a size known at listing; a `DynamicFile` is made anew at
every open (the stats file).
"""

from __future__ import annotations

import threading

import numpy as np

SAMPLE = 4  # float32


def npy_header(shape: tuple, descr: str = "<f4") -> bytes:
    """NPY v1.0 header, C order, padded to 64 bytes."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, tuple(shape))
    total = 10 + len(text) + 1
    text += " " * ((64 - total % 64) % 64) + "\n"
    if 10 + len(text) > 65535:
        raise ValueError("NPY header too long")
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


class File:
    """What every file of the mount is to the FUSE layer (fuseops.py)."""
    keep_cache = True      # the kernel may keep its pages from one open to the next
    direct_io = False      # reads go by content, not by the size the kernel was told
    xattrs: dict = {}
    label = ""

    def opened(self, cached: bool = False) -> "File":
        """What the reads of one open go to (closed at release). cached: the kernel
        probably holds this file's pages from an earlier open (a file made on open
        may then wait for a read that reaches us before making anything)."""
        return self

    def close(self) -> None:
        pass

    def prefetch(self, cache, lo: int, hi: int):
        return ()


class StaticFile(File):
    def __init__(self, data: bytes, label: str = ""):
        self.data = data
        self.label = label

    @property
    def size(self) -> int:
        return len(self.data)

    def read_into(self, cache, offset: int, dest: np.ndarray) -> int:
        piece = self.data[offset:offset + len(dest)]
        dest[:len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        return len(piece)


class DynamicFile(File):
    """Content made anew at each open (the stats file); served with direct_io."""
    keep_cache = False
    direct_io = True

    def __init__(self, make, label: str = ""):
        self._make = make
        self.label = label

    @property
    def size(self) -> int:
        return len(self._make())

    def opened(self, cached: bool = False) -> StaticFile:
        return StaticFile(self._make(), self.label)


class GeneratedFile(File):
    """Bytes made on first open and kept. Until then its size is unknown and
    stated as 0 (as /proc does); it is served with direct_io, so reads go by
    the content, not by a size the kernel cached before it was made."""
    keep_cache = False
    direct_io = True

    def __init__(self, make, label: str = ""):
        self._make = make
        self.label = label
        self._data: bytes | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self._data) if self._data is not None else 0

    @property
    def made(self) -> bool:
        return self._data is not None

    def opened(self, cached: bool = False) -> StaticFile:
        with self._lock:
            if self._data is None:
                self._data = self._make()
        return StaticFile(self._data, self.label)


class PlannedFile(File):
    """Bytes made on open, of a size known from metadata before (a block
    envelope, a picture): listed with that size and served like a static file
    (page cache, memmap). Up to KEEP bytes are kept once made (unless
    keep=False); a bigger file is made again at each open (the kernel's page
    cache keeps what was read), but only once a read reaches us: an open the
    kernel can serve from its pages makes nothing. Should the bytes disagree with the plan
    (metadata that was wrong), the bytes win: the file then states its true
    size and is served with direct_io, so no reader is cut short at the size
    the kernel was told at listing."""
    KEEP = 1 << 20

    def __init__(self, size: int, make, label: str = "", keep: bool = True):
        self.planned = int(size)
        self.keep = keep
        self._make = make
        self.label = label
        self._data: bytes | None = None
        self._made: int | None = None      # the size of what was made
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.planned if self._made is None else self._made

    @property
    def direct_io(self) -> bool:
        return self._made is not None and self._made != self.planned

    def opened(self, cached: bool = False) -> File:
        with self._lock:
            data = self._data
            if data is None:
                if cached and self._made is not None and not self.direct_io:
                    return _MadeOnRead(self)        # size known: nothing to make until a read
                data = self._make()
                self._made = len(data)
                if self.keep and len(data) <= self.KEEP:
                    self._data = data
        return StaticFile(data, self.label)


class _MadeOnRead(File):
    """A planned file's open whose bytes are made by the first read that reaches us."""

    def __init__(self, planned: PlannedFile):
        self.planned, self.label = planned, planned.label
        self._served: StaticFile | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.planned.size

    def read_into(self, cache, offset: int, dest: np.ndarray) -> int:
        with self._lock:
            if self._served is None:
                self._served = self.planned.opened()
        return self._served.read_into(cache, offset, dest)


def row_pieces(lo: int, hi: int, header: int, row_bytes: int, rows: int, item: int):
    """(row, first item, end item, first byte, end byte) covering bytes [lo, hi) of a file
    that is a header of `header` bytes and then `rows` rows of `row_bytes` bytes each, in
    items of `item` bytes (byte offsets within the row)."""
    lo, hi = max(lo - header, 0), max(hi - header, 0)
    if not row_bytes:
        return
    for r in range(lo // row_bytes, rows):
        row_lo = r * row_bytes
        if row_lo >= hi:
            break
        a, b = max(lo, row_lo) - row_lo, min(hi, row_lo + row_bytes) - row_lo
        if b > a:
            yield r, a // item, -(-b // item), a, b


def copy_header(header: bytes, offset: int, end: int, dest: np.ndarray) -> int:
    """The part of a file's header in bytes [offset, end) into dest; -> bytes copied."""
    if offset >= len(header):
        return 0
    head = header[offset:end]
    dest[:len(head)] = np.frombuffer(head, dtype=np.uint8)
    return len(head)


class SignalFile(File):
    __slots__ = ("rows", "in_step", "header", "label", "xattrs", "n", "row_bytes", "size")

    def __init__(self, rows: list, header: bytes = b"", label: str = "", xattrs=None, in_step=None):
        self.rows = rows            # tiles.ChannelTiles, one per channel, back to back
        self.in_step = in_step      # windows.InStep of the rate group: kept alive by its files
        self.header = header
        self.label = label
        self.xattrs = xattrs or {}
        self.n = rows[0].n if rows else 0
        self.row_bytes = SAMPLE * self.n
        self.size = len(header) + self.row_bytes * len(rows)

    def pieces(self, lo: int, hi: int):
        """(row, first sample, end sample, first byte, end byte) of bytes [lo, hi)."""
        return row_pieces(lo, hi, len(self.header), self.row_bytes, len(self.rows), SAMPLE)

    def read_into(self, cache, offset: int, dest: np.ndarray) -> int:
        """Write the bytes at offset into dest (uint8, the kernel's buffer); return the count."""
        end = min(offset + len(dest), self.size)
        if offset >= end:
            return 0
        pos = copy_header(self.header, offset, end, dest)
        for r, s0, s1, a, b in self.pieces(offset, end):
            skip = a - s0 * SAMPLE
            whole = skip == 0 and (b - a) % SAMPLE == 0
            into = dest[pos:pos + (b - a)].view("<f4") if whole else None
            if whole and into.flags.aligned:
                # tiles are copied straight into the kernel's buffer
                cache.samples(self.rows[r], s0, s1, into)
            else:
                samples = np.empty(s1 - s0, dtype="<f4")
                cache.samples(self.rows[r], s0, s1, samples)
                dest[pos:pos + (b - a)] = samples.view(np.uint8)[skip:skip + (b - a)]
            pos += b - a
        return pos

    def prefetch(self, cache, lo: int, hi: int):
        """Ask the cache to decode, in the background, the tiles behind bytes [lo, hi)."""
        for r, s0, s1, a, _ in self.pieces(lo, hi):
            row = self.rows[r]
            base = len(self.header) + r * self.row_bytes
            for i, first, _, data in row.spans(s0, s1):     # a gap has nothing to decode
                if data:
                    token = cache.prefetch(row, i)
                    if token is not None:
                        yield base + SAMPLE * first, token
