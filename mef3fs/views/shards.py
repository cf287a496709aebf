"""Zarr shard files as byte layouts: inner chunks back to back, then the shard index.

A Zarr v3 `sharding_indexed` chunk with every inner chunk present, stored
uncompressed, is a header-free run of `count` equal chunks followed by the
index: one (offset, nbytes) pair of little-endian uint64 per inner chunk
(no checksum: the array metadata says `index_codecs: [bytes]`). Both halves
follow from the chunk length and count alone, so a shard's size and index
need no block index, and zarr reads the index and then byte ranges of the
run: a slice costs only the inner chunks it touches.

`SampleShard` is one channel's float32 samples (the `.f32` bytes, through
the tile cache) padded with NaN to whole chunks; `TimeShard` is the time
coordinate, int64 nanoseconds computed from the grid.
"""

from __future__ import annotations

import functools

import numpy as np

from .files import File, SignalFile

INDEX_ENTRY = 16                    # (offset, nbytes), uint64 each
NAN32 = np.array([np.nan], dtype="<f4").view(np.uint8)


class Shard(File):
    """`count` inner chunks of `chunk_bytes`, then their index; subclasses fill the run."""

    # Through the page cache, like the channel files: re-reads never reach the
    # daemon, and chunks of whole 4 KiB pages (zarr.chunk_length) keep a
    # chunk's read to its own pages, so a slice decodes what direct_io would
    # (measured: docs/scale-out.md). A whole-shard read (a task of a whole
    # channel) is a sequential stream that read-ahead decodes in parallel.
    def __init__(self, count: int, chunk_bytes: int, label: str = ""):
        self.count = count
        self.chunk_bytes = chunk_bytes
        self.run_bytes = count * chunk_bytes
        self.size = self.run_bytes + INDEX_ENTRY * count
        self.label = label

    def read_into(self, cache, offset: int, dest: np.ndarray) -> int:
        end = min(offset + len(dest), self.size)
        if offset >= end:
            return 0
        n = end - offset
        split = min(max(self.run_bytes - offset, 0), n)
        if split:
            self._run_into(cache, offset, dest[:split])
        if split < n:
            dest[split:n] = self._index(offset + split - self.run_bytes, end - self.run_bytes)
        return n

    def _index(self, lo: int, hi: int) -> np.ndarray:
        """Bytes [lo, hi) of the index: computed, never stored (a week is a megabyte)."""
        e0, e1 = lo // INDEX_ENTRY, -(-hi // INDEX_ENTRY)
        entries = np.empty((e1 - e0, 2), dtype="<u8")
        entries[:, 0] = np.arange(e0, e1, dtype=np.uint64) * np.uint64(self.chunk_bytes)
        entries[:, 1] = self.chunk_bytes
        skip = lo - e0 * INDEX_ENTRY
        return entries.reshape(-1).view(np.uint8)[skip:skip + hi - lo]

    def _run_into(self, cache, offset: int, dest: np.ndarray) -> None:
        raise NotImplementedError

    def prefetch(self, cache, lo: int, hi: int):
        return ()


class SampleShard(Shard):
    """One channel's row of a rate's array: its samples, NaN up to whole chunks, the index."""

    def __init__(self, tiles, chunk: int, count: int, label: str = ""):
        super().__init__(count, 4 * chunk, label)
        self.rows = [tiles]                     # what the file is decoded from (owners, modes)
        self._data_end = 4 * tiles.n
        # A handle open while the recording grows follows the new shard while its
        # chunks and index stay where they were; one more chunk moves the index.
        self.layout = ("shard", self.chunk_bytes, count)

    @functools.cached_property
    def _samples(self) -> SignalFile:
        """The channel's .f32 bytes; made on first read (listing builds a shard per channel)."""
        return SignalFile(self.rows, b"", self.label)

    def _run_into(self, cache, offset: int, dest: np.ndarray) -> None:
        k = min(max(self._data_end - offset, 0), len(dest))
        if k:
            self._samples.read_into(cache, offset, dest[:k])
        if k < len(dest):                       # the last chunk's padding
            pad = dest[k:]
            phase = (offset + k) % 4
            pad[:] = np.resize(np.roll(NAN32, -phase), len(pad))

    def prefetch(self, cache, lo: int, hi: int):
        return self._samples.prefetch(cache, lo, min(hi, self._data_end))


def grid_nanoseconds(t0: int, fs: float, s0: int, s1: int) -> np.ndarray:
    """Grid samples [s0, s1) as int64 ns since the epoch: t0 * 1000 + round(i * 1e9 / fs)."""
    i = np.arange(s0, s1, dtype=np.float64)
    return np.int64(t0) * 1000 + np.rint(i * 1e9 / fs).astype(np.int64)


class TimeShard(Shard):
    """The time coordinate of a rate: int64 ns of every grid sample, computed on read."""

    def __init__(self, t0: int, fs: float, chunk: int, count: int, label: str = ""):
        super().__init__(count, 8 * chunk, label)
        self.t0, self.fs = t0, fs

    def _run_into(self, cache, offset: int, dest: np.ndarray) -> None:
        s0, s1 = offset // 8, -(-(offset + len(dest)) // 8)
        values = grid_nanoseconds(self.t0, self.fs, s0, s1).view(np.uint8)
        skip = offset - 8 * s0
        dest[:] = values[skip:skip + len(dest)]
