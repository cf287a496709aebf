"""Block indexes: each channel's tiles and gaps, read per segment on first use, dropped under pressure.

Listing a session reads only session, channel and segment metadata; the
block index (`.tidx`, a row per MEF block: a week of 1 s blocks is 600,000
rows per channel) is read here, when a read or a view first needs a piece
of a channel. mef3io's `block_envelope` reads it for a time window, so a
piece costs only its own segment's index. Tables live under one byte budget,
least recently used dropped first; a dropped table is built again, the same,
when it is needed again.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import os
import struct
import threading
import warnings

import numpy as np

from .decoders import DecodeError
from .readers import ReaderCache
from .tiles import ChannelTiles, TileTable, grid_time, tile_edges, tile_windows

log = logging.getLogger("mef3fs.index")

class MetaReaders:
    """The daemon's mef3io readers, for metadata and block indexes (never samples)."""

    def __init__(self, password: str, budget: int | None = None):
        import mef3io
        self._mef3io = mef3io

        def open_reader(path):
            # lenient: a broken or locked channel is left out (and said so), not the session
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return mef3io.Reader(path, password=password, strict=False)
        self._open = open_reader
        self._readers = ReaderCache(open_reader, budget=budget)

    def get(self, path: str, identity: tuple = ()):
        return self._readers.get(path, identity)

    def fresh(self, path: str):
        """A reader of its own (not kept): a lenient reader that failed on a segment
        once skips it for good, and would answer with fewer blocks from then on."""
        return self._open(path)

    def discard(self, path: str, identity: tuple) -> None:
        self._readers.discard(path, identity)

    def loaded(self, reader, channel: str, t0: float, t1: float) -> None:
        self._readers.loaded(reader, channel, t0, t1)

    def snapshot(self) -> dict:
        return self._readers.snapshot()

    def clear(self) -> None:
        self._readers.clear()


def read_blocks(reader, channel: str, ts: float, te: float) -> tuple[np.ndarray, np.ndarray, bytes]:
    """(start uUTC, end uUTC) of every block overlapping [ts, te), in time order, from
    the index alone, and a digest of the blocks (times and extremes): what a session
    written anew would change, and one that only grew would keep."""
    env = reader.block_envelope(channel, int(math.floor(ts)), int(math.ceil(te)))
    starts = np.asarray(env["start_uutc"], dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], np.asarray(env["end_uutc"], dtype=np.int64)[order]
    return starts, ends, block_digest(env, order)


def block_digest(env: dict, order: np.ndarray, count: int | None = None) -> bytes:
    """Digest of the first `count` blocks (all by default) of a block envelope."""
    h = hashlib.blake2b(digest_size=16)
    for key in ("start_uutc", "end_uutc", "min", "max"):
        h.update(np.ascontiguousarray(np.asarray(env[key])[order][:count]).tobytes())
    return h.digest()


def same_blocks(reader, tiles: ChannelTiles, piece: int, table: TileTable) -> bool:
    """Does the session as `reader` sees it now still hold, first in this piece,
    exactly the blocks `table` was made from? (Growth appends after them.)"""
    a, b = tiles.piece_range(piece)
    ts, te = grid_time(tiles.t0, tiles.fs, a), grid_time(tiles.t0, tiles.fs, b)
    env = reader.block_envelope(tiles.channel, int(math.floor(ts)), int(math.ceil(te)))
    order = np.argsort(np.asarray(env["start_uutc"], dtype=np.int64), kind="stable")
    return len(order) >= table.blocks and block_digest(env, order, table.blocks) == table.digest


INDEX_HEADER = 1024             # a .tidx: the universal header, then one 56-byte entry per block
INDEX_ENTRY = 56


def first_lost_block(segment_folder: str) -> int | None:
    """The first block whose bytes lie past the end of its segment's .tdat (a file
    cut short), or None. Reads the last index entry, and a few more to find it."""
    stem = os.path.join(segment_folder, os.path.basename(segment_folder)[:-len(".segd")])
    try:
        data_size = os.stat(stem + ".tdat").st_size
        fd = os.open(stem + ".tidx", os.O_RDONLY)
    except OSError:
        return None
    try:
        blocks = (os.fstat(fd).st_size - INDEX_HEADER) // INDEX_ENTRY

        def ends_past(k: int) -> bool:
            entry = os.pread(fd, 32, INDEX_HEADER + k * INDEX_ENTRY)
            offset, _, _, _, nbytes = struct.unpack("<qqqII", entry)
            return offset + nbytes > data_size
        if blocks <= 0 or not ends_past(blocks - 1):
            return None
        lo, hi = 0, blocks - 1            # the first k that ends past the end
        while lo < hi:
            mid = (lo + hi) // 2
            if ends_past(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo
    finally:
        os.close(fd)


def lost_ranges(reader, tiles: ChannelTiles, ts: float, te: float, starts: np.ndarray) -> list[dict]:
    """uUTC ranges of the segments overlapping [ts, te) that a cut-short .tdat lost."""
    out = []
    for seg in reader.segments(tiles.channel):
        s0, s1 = int(seg["start_time"]), int(seg["end_time"])
        if s1 <= ts or s0 >= te or not seg.get("path") or not os.path.isdir(seg["path"]):
            continue
        k = first_lost_block(seg["path"])
        if k is None:
            continue
        mine = starts[(starts >= s0) & (starts < s1)]
        start = int(mine[k]) if k < len(mine) else s0
        out.append({"channel": tiles.channel, "segment": int(seg["segment"]), "start_uutc": start,
                    "end_uutc": s1, "reason": "the segment's .tdat file ends early: its blocks "
                    "from here on are missing (a file cut short)"})
    return out


def build_table(tiles: ChannelTiles, piece: int, starts: np.ndarray, ends: np.ndarray,
                digest: bytes = b"") -> TileTable:
    """A piece's tiles and gaps from its blocks (start/end uUTC, in time order)."""
    a, b = tiles.piece_range(piece)
    fs, t0 = tiles.fs, tiles.t0
    lengths = np.rint((ends - starts) * fs / 1e6).astype(np.int64)
    edges, has_data = tile_edges(b, t0, fs, starts, lengths, tiles.target, first=a,
                                 whole_blocks=tiles.whole_blocks)
    lo, hi = tile_windows(edges, has_data, t0, fs, starts)
    step = 1e6 / fs
    block_end = starts + lengths * step
    holes = np.flatnonzero(starts[1:] - block_end[:-1] > step / 2)
    gaps = np.stack([block_end[holes], starts[holes + 1].astype(np.float64)], axis=1) if len(holes) \
        else np.zeros((0, 2))
    first = float(starts[0]) if len(starts) else math.nan
    last = float(block_end[-1]) if len(starts) else math.nan
    return TileTable(edges, has_data, lo, hi, gaps=gaps, first_start=first, last_end=last,
                     blocks=len(starts), digest=digest)


class IndexCache:
    """Loaded tile tables of every session, under one byte budget, one load per piece in flight.

    `on_first_load(session_path, identity)` runs once per session, when its
    first table is loaded: that is when the decoder workers should open it,
    not when it was merely listed.
    """

    def __init__(self, readers: MetaReaders, budget: int, stats, on_first_load=None):
        self._readers = readers
        self.budget = int(budget)
        self._stats = stats
        self._on_first_load = on_first_load or (lambda path, identity: None)
        self._lock = threading.Lock()
        self._tables: collections.OrderedDict = collections.OrderedDict()   # key -> TileTable
        self._loading: dict = {}
        self._bytes = 0
        self._sessions_seen: set = set()

    def __call__(self, tiles: ChannelTiles, piece: int) -> TileTable:
        key = tiles.key + (tiles.serials[piece],)
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                table = self._tables.get(key)
                if table is not None:
                    return table
            table = self._load(tiles, piece)
            with self._lock:
                self._loading.pop(key, None)
                self._insert(key, table)
            return table

    def _load(self, tiles: ChannelTiles, piece: int) -> TileTable:
        a, b = tiles.piece_range(piece)
        ts, te = grid_time(tiles.t0, tiles.fs, a), grid_time(tiles.t0, tiles.fs, b)
        try:
            reader = self._readers.get(tiles.session_path, tiles.identity)
            if any(p["channel"] == tiles.channel for p in reader.problems):
                reader = self._readers.fresh(tiles.session_path)
            before = len(reader.problems)
            starts, ends, digest = read_blocks(reader, tiles.channel, ts, te)
            failed = [p for p in reader.problems[before:] if p["channel"] == tiles.channel]
            if failed:              # the lenient reader skipped it and answered without its blocks
                raise ValueError(failed[0]["reason"])
            self._readers.loaded(reader, tiles.channel, ts, te)
        except Exception as exc:   # a damaged or vanished index: EIO for this read
            raise DecodeError(f"{tiles.label}: block index of uUTC {ts:.0f}-{te:.0f} cannot be read: "
                              f"{type(exc).__name__}: {exc}") from None
        table = build_table(tiles, piece, starts, ends, digest)
        if tiles.report is not None:
            for damage in lost_ranges(reader, tiles, ts, te, starts):
                tiles.report(damage)
        self._stats.add("indexes_loaded")
        log.debug("index loaded %s piece %d [%d, %d): %d blocks, %d tiles, %d bytes", tiles.label,
                  piece, a, b, table.blocks, len(table.has_data), table.nbytes)
        session = (tiles.session_path, tiles.identity)
        if session not in self._sessions_seen:
            self._sessions_seen.add(session)
            self._on_first_load(*session)
        return table

    def _insert(self, key, table: TileTable) -> None:
        """Lock held. The newest table is always kept, even alone over budget."""
        if key in self._tables:
            return
        while self._tables and self._bytes + table.nbytes > self.budget:
            old_key, old = self._tables.popitem(last=False)
            self._bytes -= old.nbytes
            self._stats.add("indexes_dropped")
            log.debug("index dropped %s", old_key)
        self._tables[key] = table
        self._bytes += table.nbytes

    def peek(self, tiles: ChannelTiles, piece: int) -> TileTable | None:
        """The piece's table if it is loaded (never loads it)."""
        with self._lock:
            return self._tables.get(tiles.key + (tiles.serials[piece],))

    def snapshot(self) -> dict:
        with self._lock:
            return {"index_bytes": self._bytes, "index_tables": len(self._tables),
                    "index_budget": self.budget}


def still_the_same(old_meta, reader, index: IndexCache) -> bool:
    """Does the session as `reader` sees it still hold every block that was read
    from it before (a table loaded, so tiles of it may be cached)? A session
    written anew in place can keep its files' names, inodes (reused) and
    sizes; it does not keep their blocks."""
    for ch in old_meta.channels:
        for p in range(ch.tiles.pieces):
            table = index.peek(ch.tiles, p)
            if table is not None and table.digest and not same_blocks(reader, ch.tiles, p, table):
                return False
    return True


def channel_gaps(tiles: ChannelTiles) -> list[dict]:
    """Every hole between consecutive blocks longer than half a sample, in uUTC and grid indices.

    Holes inside a piece come from its table; a hole across two pieces (a
    segment boundary) from the last block of one and the first of the next.
    """
    fs, t0 = tiles.fs, tiles.t0
    holes = []
    prev_end = None
    for p in range(tiles.pieces):
        table = tiles.table(p)
        if not table.blocks:
            continue
        if prev_end is not None and table.first_start - prev_end > 1e6 / fs / 2:
            holes.append((prev_end, table.first_start))
        holes.extend(map(tuple, table.gaps))
        prev_end = max(prev_end, table.last_end) if prev_end is not None else table.last_end
    return [{"start_uutc": int(round(end)), "end_uutc": int(start),
             "start_index": sample_index(t0, fs, end), "end_index": sample_index(t0, fs, start)}
            for end, start in holes]


def sample_index(t0: int, fs: float, t: float) -> int:
    """The grid sample mef3io puts a block sample at uUTC t on: the nearest, and
    the earlier one when t falls exactly halfway (mef3io rounds halves down)."""
    return math.ceil((t - t0) * fs / 1e6 - 0.5)
