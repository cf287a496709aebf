"""Per rate, `overview/<fs>Hz/minmax_x<k>.npy`: min-max levels a viewer draws a whole recording from.

NPY float32 (channels, ceil(n / k), 2), rows in the grid's channel order:
`[c, j, 0]` / `[c, j, 1]` are the nanmin / nanmax of channel c's grid
samples [j*k, min((j+1)*k, n)), NaN for a bin without data; k = 10, 100,
1000, ... up to the first level with at most MAX_BINS bins. The sizes come
from the grid (metadata); the bins are computed when read, from the same
tiles as every other view (`cache.samples`): a bin over cached tiles costs
no decode, and levels with k >= 100 come from the summaries every decoded
tile leaves behind when it is evicted (summaries.py), so once data was read they cost no
decode even after its tiles were evicted. Data never decoded is decoded
through the pool, the next tiles read ahead while one is reduced.
"""

from __future__ import annotations

import numpy as np

from ..summaries import STEP, reduce_bins, store_of, summarize
from .files import File, copy_header, npy_header, row_pieces
from .layout import Layout

MAX_BINS = 4096
AHEAD = 16                    # tiles asked for ahead of the one being reduced
BIN_BYTES = 8                 # two float32


def decimations(n: int) -> list[int]:
    """k = 10, 100, ... up to the first with at most MAX_BINS bins."""
    out, k = [], 10
    while True:
        out.append(k)
        if -(-n // k) <= MAX_BINS:
            return out
        k *= 10


class MinMaxFile(File):

    def __init__(self, rows: list, n: int, k: int, label: str = ""):
        self.rows, self.n, self.k, self.label = rows, n, k, label
        self.bins = -(-n // k)
        self.header = npy_header((len(rows), self.bins, 2))
        self.row_bytes = BIN_BYTES * self.bins
        self.size = len(self.header) + self.row_bytes * len(rows)
        self.summarized = k % STEP == 0

    def _pieces(self, lo: int, hi: int):
        """(row, first bin, end bin, first byte, end byte) of bytes [lo, hi)."""
        return row_pieces(lo, hi, len(self.header), self.row_bytes, len(self.rows), BIN_BYTES)

    def read_into(self, cache, offset: int, dest: np.ndarray) -> int:
        end = min(offset + len(dest), self.size)
        if offset >= end:
            return 0
        pos = copy_header(self.header, offset, end, dest)
        for r, j0, j1, a, b in self._pieces(offset, end):
            got = self.level(cache, r, j0, j1).view(np.uint8).reshape(-1)
            skip = a - BIN_BYTES * j0
            dest[pos:pos + b - a] = got[skip:skip + b - a]
            pos += b - a
        return pos

    def prefetch(self, cache, lo: int, hi: int):
        """Decode in the background what bytes [lo, hi) will need (read-ahead of a sequential reader)."""
        for r, j0, j1, _, _ in self._pieces(lo, hi):
            tiles = self.rows[r]
            base = len(self.header) + r * self.row_bytes
            for i in self._needed(cache, tiles, j0, j1)[1]:
                token = cache.prefetch(tiles, i)
                if token is not None:
                    yield base + BIN_BYTES * (tiles.bounds(i)[0] // self.k), token

    # -- the bins -----------------------------------------------------------

    def _span(self, j0: int, j1: int) -> tuple[int, int]:
        return j0 * self.k, min(j1 * self.k, self.n)

    def _needed(self, cache, tiles, j0: int, j1: int):
        """({tile: summary} already kept, [tiles whose samples must be read]) for bins [j0, j1)."""
        s0, s1 = self._span(j0, j1)
        ids = [i for i in tiles.tiles_for(s0, s1) if tiles.has_data(i)]
        store = store_of(cache) if self.summarized else None
        if store is None:
            return {}, ids
        kept, todo = {}, []
        for i in ids:
            got = store.get(tiles.key + (i,))
            if got is None:
                todo.append(i)
            else:
                kept[i] = got
        return kept, todo

    def level(self, cache, r: int, j0: int, j1: int) -> np.ndarray:
        """(j1 - j0, 2) float32: bins [j0, j1) of row r."""
        tiles = self.rows[r]
        s0, s1 = self._span(j0, j1)
        kept, todo = self._needed(cache, tiles, j0, j1)
        if not self.summarized:
            _ahead(cache, tiles, todo)
            x = np.empty(s1 - s0, dtype=np.float32)
            cache.samples(tiles, s0, s1, x)
            return reduce_bins(x, self.k)
        store = store_of(cache)
        for c, i in enumerate(todo):
            if c % AHEAD == 0:          # the next AHEAD tiles decode while these are reduced
                _ahead(cache, tiles, todo[c + AHEAD if c else 0:c + 2 * AHEAD])
            a, b = tiles.bounds(i)
            x = np.empty(b - a, dtype=np.float32)
            cache.samples(tiles, a, b, x)
            key = tiles.key + (i,)
            got = store.get(key) if store is not None else None    # evicted meanwhile: summarized
            if got is None:
                got = summarize(a, x)
                if store is not None:
                    store.put(key, got)
            kept[i] = got
        # STEP-sample bins over [s0, s1) (s0 is a multiple of k, so of STEP), then groups of k / STEP;
        # bins past s1 (only ever after the grid's end) stay NaN
        g, b0 = self.k // STEP, s0 // STEP
        b1 = -(-s1 // STEP)
        fine = np.full(((j1 - j0) * g, 2), np.nan, dtype=np.float32)
        for first, mm in kept.values():
            lo, hi = max(first, b0), min(first + len(mm), b1)
            if hi > lo:
                part, src = fine[lo - b0:hi - b0], mm[lo - first:hi - first]
                np.fmin(part[:, 0], src[:, 0], out=part[:, 0])
                np.fmax(part[:, 1], src[:, 1], out=part[:, 1])
        fine = fine.reshape(j1 - j0, g, 2)
        out = np.empty((j1 - j0, 2), dtype=np.float32)
        np.fmin.reduce(fine[:, :, 0], axis=1, out=out[:, 0])
        np.fmax.reduce(fine[:, :, 1], axis=1, out=out[:, 1])
        return out


def _ahead(cache, tiles, ids) -> None:
    """Ask for these tiles in the background, so the pool decodes them while one is reduced."""
    if len(ids) > 1:
        for i in ids:
            cache.prefetch(tiles, i)


def add(layout: Layout) -> None:
    shown = layout.meta.shown_path
    for grid in layout.meta.grids:
        files = []
        for k in decimations(grid.n):
            rel = f"overview/{grid.label}Hz/minmax_x{k}.npy"
            layout.add(rel, MinMaxFile(grid.rows, grid.n, k, f"{shown}/{rel}"))
            files.append({"decimation": k, "file": rel})
        layout.grid_keys[grid.label]["overview_files"] = files
    layout.session_keys.setdefault("overview_layout", {})["overview_files"] = (
        "NPY float32 (channels, ceil(n / k), 2), rows in grids[].channels order: [c, j, 0] and "
        "[c, j, 1] are the minimum and maximum of grid samples [j*k, min((j+1)*k, n)) ignoring NaN, "
        "NaN where the bin holds no data")
