"""Tile math: how a channel's grid is cut into decode units, and which of them a read needs.

A channel's grid [0, n) is split into *pieces*, one per MEF segment, from
segment metadata alone (listing never reads a block index); boundaries sit
halfway between segments. A piece is cut into tiles from its blocks, loaded
on first use (index.py) and droppable: tile edges fall on block starts, so
no block is decoded for two tiles, and stretches with no block are "empty"
tiles, NaN, never decoded. Pieces are only a partition of the grid: a block
that strays across a boundary is clipped on both sides and decoded by both,
so bytes never depend on the metadata being right.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

import numpy as np

from .decoders import DecodeSpec

PIECE_SHIFT = 32              # tile id = piece serial << 32 | tile within the piece
LOCAL = (1 << PIECE_SHIFT) - 1
EDGE_MARGIN = 0.45            # samples: keeps a window's sample count round((te - ts) * fs) unchanged
DEFAULT_TILE_SECONDS = 10.0   # a tile, unless --tile-seconds says otherwise: a mef3io block at 1 kHz
DEFAULT_TILE_SAMPLES = 50_000     # ... or this many samples if fewer (2 s of 1 s blocks at 32 kHz)


def grid_time(t0: int, fs: float, i: int) -> float:
    """uUTC of grid sample i. The one formula every window edge uses."""
    return t0 + i * 1e6 / fs


def grid_length(t0: int, t_end: float, fs: float) -> int:
    """Samples on a grid from t0 to t_end, rounded half away from zero like mef3io."""
    return max(0, math.floor((t_end - t0) * fs / 1e6 + 0.5))


def tile_target(tile_seconds: float | None, fs: float) -> tuple[int, bool]:
    """Samples a channel's tiles aim at, and whether a tile holds whole blocks at least.

    Tiles are cut at the first block start `target` samples on (tile_edges).
    --tile-seconds is taken as it is. By default a tile is 10 s, or
    DEFAULT_TILE_SAMPLES if that is less: a random 10 s window at 32 kHz decoded
    20 s of every channel in 10 s tiles (1.28 MB each), 10-12 s in 2 s ones.
    And never less than a block: a block cut inside is decoded once for every part."""
    if tile_seconds is None:
        return max(1, min(round(DEFAULT_TILE_SECONDS * fs), DEFAULT_TILE_SAMPLES)), True
    return max(1, round(tile_seconds * fs)), False


def tile_edges(n: int, t0: int, fs: float, block_starts, block_lengths, target: int, first: int = 0,
               whole_blocks: bool = False):
    """Tile edges over grid samples [first, n) and a per-tile 'has data' flag.

    Edges fall on block starts; a block longer than twice the target is cut
    inside (it will be decoded for each part, which only happens when the
    target is smaller than the file's blocks; with `whole_blocks` the target
    is at least the median block, so only an unusually long block is). Stretches with no block
    (gaps, before a late start, after an early end) become data-free tiles,
    kept one sample clear of any block so rounding cannot hide a sample.
    The work is per tile, not per block: a week of 1 s blocks is 600,000.
    """
    target = max(1, int(target))
    if whole_blocks and len(block_lengths):
        target = max(target, int(np.median(block_lengths)))     # at least a typical block
    starts = np.rint((np.asarray(block_starts, dtype=np.float64) - t0) * fs / 1e6).astype(np.int64)
    lengths = np.asarray(block_lengths, dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    starts, lengths = starts[order], lengths[order]
    ends = starts + lengths
    reach = np.maximum.accumulate(ends) if len(ends) else ends
    # blocks are clipped to the grid: samples outside it are never read
    s_clip = np.clip(starts, first, max(first, n))
    e_clip = np.minimum(ends, n)
    # a run: blocks that follow each other without a gap of more than one sample
    run_heads = np.flatnonzero(np.concatenate(([True], starts[1:] > reach[:-1] + 1))) if len(starts) else starts
    # a regular stretch: blocks of one length, each starting where the last ended
    breaks = np.flatnonzero((s_clip[1:] - s_clip[:-1] != lengths[:-1]) | (lengths[1:] != lengths[:-1]))

    edges = [first]
    has_data = []

    def cut(at: int, data: bool) -> None:
        at = min(max(int(at), edges[-1]), n)
        if at > edges[-1]:
            edges.append(at)
            has_data.append(data)

    for r, i in enumerate(run_heads):
        j = (run_heads[r + 1] if r + 1 < len(run_heads) else len(starts)) - 1
        cut(starts[i] - 1, False)                 # the empty stretch before the run
        s_run, e_run = s_clip[i:j + 1], e_clip[i:j + 1]
        e_reach = np.maximum.accumulate(e_run)
        k = 0
        while k <= j - i:
            tile_start = edges[-1]
            if s_run[k] - tile_start >= target:   # a block start far enough on: cut there
                cut(s_run[k], True)
                tile_start = edges[-1]
                k = _through_regular(k, i, j, s_run, lengths, breaks, target, n, edges, has_data)
                tile_start = edges[-1]
            if e_run[k] - tile_start > 2 * target:   # an oversized block
                over = -(-(int(e_run[k]) - tile_start - 2 * target) // target)
                for m in range(1, over + 1):
                    cut(tile_start + m * target, True)
                tile_start = edges[-1]
            # skip the blocks that neither start a tile nor are oversized
            nxt = min(int(np.searchsorted(s_run, tile_start + target, side="left")),
                      int(np.searchsorted(e_reach, tile_start + 2 * target, side="right")))
            k = max(k + 1, nxt)
        cut(reach[j] + 1, True)
    cut(n, False)
    return np.asarray(edges, dtype=np.int64), np.asarray(has_data, dtype=bool)


def _through_regular(k, i, j, s_run, lengths, breaks, target, n, edges, has_data) -> int:
    """A tile was just cut at block k's start: if a regular stretch follows, cut all of it
    at once (every ceil(target / length) blocks, as the block-by-block rule would) and
    return the block of the last cut."""
    length = int(lengths[i + k])
    if edges[-1] != s_run[k] or length > 2 * target:
        return k
    b = int(np.searchsorted(breaks, i + k))
    last = (int(breaks[b]) if b < len(breaks) else len(lengths) - 1) - i     # the stretch's last block
    step = -(-target // length)
    count = min((min(last, j - i) - k) // step, (n - 1 - int(s_run[k])) // (step * length))
    if count <= 0:
        return k
    edges.extend((int(s_run[k]) + step * length * np.arange(1, count + 1)).tolist())
    has_data.extend([True] * count)
    return k + count * step


def tile_windows(edges, has_data, t0: int, fs: float, block_starts):
    """How far (in samples) each tile's decode window is pulled in from its grid edges.

    A block rarely starts exactly on a grid point. A window [grid(a), grid(b))
    then reaches a fraction of a sample into the neighbouring block, and the
    decoder reads (and checks) that whole block too: a damaged neighbour would
    fail an intact tile. Pulling the end in to the next block's start, and the
    start up to the tile's first block, keeps each tile's reads to its own
    blocks. The start moves only where no block in the tile changes the grid
    sample it lands on, and the two together stay under half a sample, so the
    samples returned are exactly the same.
    """
    edges = np.asarray(edges, dtype=np.int64)
    has_data = np.asarray(has_data, dtype=bool)
    nt = len(has_data)
    lo, hi = np.zeros(nt), np.zeros(nt)
    pos = np.sort((np.asarray(block_starts, dtype=np.float64) - t0) * fs / 1e6)
    if not len(pos) or not nt:
        return lo, hi
    first = np.rint(pos)
    k = np.minimum(np.searchsorted(first, edges), len(first) - 1)
    x = np.where(first[k] == edges, pos[k], np.nan)        # exact start of a block at each edge
    a, b = edges[:-1], edges[1:]
    with np.errstate(invalid="ignore"):
        pull_end = has_data & (x[1:] < b)
    hi[pull_end] = np.minimum(b - x[1:], EDGE_MARGIN)[pull_end]
    with np.errstate(invalid="ignore"):
        candidate = has_data & (x[:-1] > a) & (x[:-1] - a + hi < EDGE_MARGIN)
    if candidate.any():
        # every block inside a candidate tile must land on the same grid sample after the shift
        tile = np.searchsorted(edges, first, side="right") - 1
        inside = (tile >= 0) & (tile < nt)
        tile = np.where(inside, tile, 0)
        inner = pos - (x[:-1] - a)[tile]
        ok = (np.rint(inner) == first) & (np.abs(inner - np.floor(inner) - 0.5) > 0.02)
        failed = np.bincount(tile[inside & candidate[tile] & ~ok], minlength=nt) > 0
        take = candidate & ~failed
        lo[take] = (x[:-1] - a)[take]
    return lo, hi


@dataclass(frozen=True)
class TileTable:
    """One piece's tiles, from its blocks: edges in grid samples of the whole channel."""
    edges: np.ndarray
    has_data: np.ndarray
    lo: np.ndarray            # window pulled in at the start, in samples (tile_windows)
    hi: np.ndarray            # ... and at the end
    gaps: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))   # (end of a block, start of the next) uUTC, per hole
    first_start: float = math.nan         # uUTC of the piece's first block, end of its last
    last_end: float = math.nan
    blocks: int = 0
    digest: bytes = b""                   # of the blocks it was made from (index.read_blocks)

    def __post_init__(self):
        # The read path looks up every request here: bisect and tolist over a
        # memoryview cost half of numpy's searchsorted and slicing per call.
        object.__setattr__(self, "edge_view", memoryview(np.ascontiguousarray(self.edges)))
        object.__setattr__(self, "data_view", memoryview(np.ascontiguousarray(self.has_data)))

    @property
    def nbytes(self) -> int:
        return (self.edges.nbytes + self.has_data.nbytes + self.lo.nbytes + self.hi.nbytes
                + self.gaps.nbytes + 600)


def piece_starts(t0: int, fs: float, n: int, segments) -> np.ndarray:
    """First grid sample of each piece, from (start uUTC, end uUTC) of each segment."""
    spans = sorted((grid_length(t0, s, fs), grid_length(t0, e, fs)) for s, e in segments)
    starts = [0]
    for (_, prev_end), (nxt_start, _) in zip(spans, spans[1:]):
        cut = min(max((prev_end + nxt_start) // 2, starts[-1]), n)
        if cut > starts[-1]:
            starts.append(cut)
    return np.asarray(starts, dtype=np.int64)


class ChannelTiles:
    """The tiles of one channel's grid, with each piece's table loaded on demand.

    `load(tiles, piece) -> TileTable` is the index cache (index.py): it may
    drop a table and build it again, and builds the same one, so tile ids
    stay valid for as long as the session is the same. A piece has a serial,
    and a tile id is serial << 32 | tile: when a growing recording is read
    again (refresh.py), pieces that did not change keep their serials, so
    their tiles stay cached, and the piece that grew gets a new one.
    """

    __slots__ = ("key", "session_path", "channel", "label", "t0", "fs", "n", "identity",
                 "target", "whole_blocks", "starts", "serials", "_piece_of", "_load", "report", "_starts")

    def __init__(self, key: tuple, session_path: str, channel: str, label: str, t0: int, fs: float,
                 n: int, identity: tuple = (), target: int = 1, starts=None, load=None, serials=None,
                 whole_blocks: bool = False):
        self.key = key                    # unique per opened session and channel
        self.session_path = session_path
        self.channel = channel
        self.label = label                # for log lines: "session/channel"
        self.t0, self.fs, self.n = t0, fs, n
        self.identity = identity          # what decoders check the session against
        self.target = target              # samples per tile, about
        self.whole_blocks = whole_blocks  # ... or a block's, if that is more (tile_target)
        self.starts = np.zeros(1, dtype=np.int64) if starts is None else np.asarray(starts, dtype=np.int64)
        self.serials = list(range(len(self.starts))) if serials is None else list(serials)
        self._starts = self.starts.tolist()
        self._piece_of = {serial: p for p, serial in enumerate(self.serials)}
        self._load = load
        self.report = None                # report(damage dict): a range found unreadable

    @classmethod
    def fixed(cls, key, session_path, channel, label, t0, fs, n, edges, has_data, lo=None, hi=None,
              identity=()):
        """A channel whose tiles are already known: one piece, never dropped."""
        nt = len(has_data)
        table = TileTable(np.asarray(edges, dtype=np.int64), np.asarray(has_data, dtype=bool),
                          np.zeros(nt) if lo is None else np.asarray(lo, dtype=np.float64),
                          np.zeros(nt) if hi is None else np.asarray(hi, dtype=np.float64))
        return cls(key, session_path, channel, label, t0, fs, n, identity, load=lambda _t, _p: table)

    # -- pieces -------------------------------------------------------------

    @property
    def pieces(self) -> int:
        return len(self.starts)

    def piece_range(self, p: int) -> tuple[int, int]:
        """Grid samples [a, b) of piece p."""
        b = int(self.starts[p + 1]) if p + 1 < len(self.starts) else self.n
        return int(self.starts[p]), b

    def table(self, p: int) -> TileTable:
        return self._load(self, p)

    def _table_of(self, i: int) -> TileTable:
        return self._load(self, self._piece_of[i >> PIECE_SHIFT])

    # -- tiles --------------------------------------------------------------

    def tiles_for(self, s0: int, s1: int) -> list[int]:
        """Ids of the tiles covering grid samples [s0, s1), in grid order."""
        return [span[0] for span in self.spans(s0, s1)]

    def spans(self, s0: int, s1: int) -> list[tuple[int, int, int, bool]]:
        """(tile id, first sample, end sample, has data) of the tiles covering [s0, s1),
        in grid order: what the read path asks of every request, with one look at each
        piece's table."""
        s0, s1 = max(s0, 0), min(s1, self.n)
        if s1 <= s0:
            return []
        starts = self._starts
        p0 = bisect_right(starts, s0) - 1 if len(starts) > 1 else 0
        out = []
        for p in range(p0, len(starts)):
            if p > p0 and starts[p] >= s1:
                break
            table = self._load(self, p)
            edges = table.edge_view
            first = max(bisect_right(edges, s0) - 1, 0)
            last = min(bisect_left(edges, s1), len(edges) - 1)
            if last <= first:
                continue
            base = self.serials[p] << PIECE_SHIFT
            bounds = edges[first:last + 1].tolist()
            out.extend(zip(range(base + first, base + last), bounds, bounds[1:],
                           table.data_view[first:last].tolist()))
        return out

    def bounds(self, i: int) -> tuple[int, int]:
        edges = self._table_of(i).edges
        j = i & LOCAL
        return int(edges[j]), int(edges[j + 1])

    def has_data(self, i: int) -> bool:
        return bool(self._table_of(i).has_data[i & LOCAL])

    def spec(self, i: int) -> DecodeSpec:
        table = self._table_of(i)
        j = i & LOCAL
        a, b = int(table.edges[j]), int(table.edges[j + 1])
        lo, hi = float(table.lo[j]), float(table.hi[j])
        return DecodeSpec(self.session_path, self.channel,
                          grid_time(self.t0, self.fs, a) + lo * 1e6 / self.fs,
                          grid_time(self.t0, self.fs, b) - hi * 1e6 / self.fs, b - a,
                          self.t0, self.fs, a, self.identity)

    def all_tiles(self) -> list[int]:
        """Every tile id of the channel (loads every piece)."""
        return self.tiles_for(0, self.n)
