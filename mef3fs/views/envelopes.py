"""`overview/blocks/<name>.npy`: every MEF block's start, end, minimum and maximum, from the block index.

MEF's block index stores each block's extremes, so a whole recording's
envelope costs no decoding at all: this is mef3io's `block_envelope`, as an
NPY float64 array (n_blocks, 4) = start uUTC, end uUTC, min, max (the
channel's units, like the .f32 values; NaN where the writer left a block's
extremes unset). Its size comes from the segments' block counts (metadata),
its bytes from the index when first opened. Should the index hold another
number of blocks than the metadata says, the index wins (the file is what
`block_envelope` returns) and the log says so.

The first envelope file opened in a session reads every channel's index at
once (concurrently, on the reader's threads) and the others wait for their
files' opens under a small shared budget: walking all channels' envelopes
then costs one index read, not one per file. Made bytes are not kept: an
open the kernel cannot serve from its page cache makes them again from the
index (files.PlannedFile).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading

import numpy as np

from ..decoders import DecodeError
from .files import PlannedFile, npy_header
from .layout import Layout, reader_of

log = logging.getLogger("mef3fs.views")

COLUMNS = ("start_uutc", "end_uutc", "min", "max")
ROW_BYTES = 8 * len(COLUMNS)
BATCH_BUDGET = 32 << 20       # envelopes read ahead for their files, every session together


@functools.lru_cache(maxsize=1024)
def planned_size(blocks: int) -> int:
    """The file's size for this many blocks (most channels of a session share one count)."""
    return len(npy_header((blocks, len(COLUMNS)), "<f8")) + ROW_BYTES * blocks


def stated_blocks(channel) -> int:
    """The block count segment metadata states (what listing may know)."""
    return sum(int(s["number_of_blocks"]) for s in channel.segments)


def _broken(reader, names) -> dict:
    """name -> why, for the channels of which the (lenient) reader skipped a segment."""
    out: dict = {}
    for p in getattr(reader, "problems", None) or ():
        if p.get("kind", "segment") == "segment" and p.get("channel") in names:
            out.setdefault(p["channel"], []).append(f"segment {p.get('segment_number')}: {p.get('reason')}")
    return out


def envelopes(reader, names: list, label: str = "") -> dict:
    """name -> float64 (n_blocks, 4), from the block indexes only (read concurrently).

    A channel the reader could not read in full (it skips what a strict one
    raises for) fails the call: its envelope would silently lack blocks."""
    try:
        got = reader.block_envelope(list(names))
    except Exception as exc:   # a damaged or vanished index: EIO for whoever asked
        raise DecodeError(f"{label}: block index cannot be read: {type(exc).__name__}: {exc}") from None
    broken = _broken(reader, names)
    if broken:
        raise DecodeError(f"{label}: block index cannot be read: " + "; ".join(
            f"{name}: {', '.join(why)}" for name, why in broken.items()))
    return {name: _rows(got[name]) for name in names}


def _rows(columns: dict) -> np.ndarray:
    """(n_blocks, 4) float64 from block_envelope's columns (column by column: half np.stack's time)."""
    n = len(columns[COLUMNS[0]])
    out = np.empty((n, len(COLUMNS)), dtype=np.float64)
    for k, c in enumerate(COLUMNS):
        out[:, k] = columns[c]
    return out


def envelopes_or_none(reader, names: list, label: str = "") -> dict:
    """Like envelopes, but a channel whose index cannot be read maps to None (the others still come)."""
    try:
        return envelopes(reader, names, label)
    except DecodeError:
        out = {}
        for name in names:
            try:
                out[name] = envelopes(reader, [name], label)[name]
            except DecodeError as exc:
                log.warning("%s: %s", label, exc)
                out[name] = None
        return out


class _Batches:
    """Envelopes read with the first of their session, each waiting to be taken once by its file.

    All of them together stay under a byte budget, oldest dropped first (a
    dropped one is read alone when its file opens); a session whose metadata
    states more than a quarter of the budget is never read in one go."""

    def __init__(self, budget: int):
        self.budget = budget
        self._lock = threading.Lock()
        self._items: collections.OrderedDict = collections.OrderedDict()   # (session, name) -> array
        self._bytes = 0
        self._seen: collections.OrderedDict = collections.OrderedDict()    # sessions read in one go

    def take(self, get_reader, session, names: list, name: str, stated_bytes: int, label: str) -> np.ndarray:
        """`get_reader()` gives the session's reader: asked only when something must be read
        (a lookup in the reader cache cost a quarter of an envelope file's open)."""
        with self._lock:
            env = self._items.pop((session, name), None)
            if env is not None:
                self._bytes -= env.nbytes
                return env
            first = session not in self._seen
            if first:
                self._seen[session] = True
                while len(self._seen) > 1024:
                    self._seen.popitem(last=False)
        reader = get_reader()
        if first and len(names) > 1 and stated_bytes <= self.budget // 4:
            try:
                got = envelopes(reader, names, label)
            except DecodeError:
                got = None            # a channel's index is broken: each file reads its own
            if got is not None:
                env = got.pop(name)
                with self._lock:
                    for other, e in got.items():
                        self._items[(session, other)] = e
                        self._bytes += e.nbytes
                    while self._bytes > self.budget and self._items:
                        self._bytes -= self._items.popitem(last=False)[1].nbytes
                return env
        return envelopes(reader, [name], label)[name]


_batches = _Batches(BATCH_BUDGET)


def npy_bytes(env: np.ndarray) -> bytes:
    return npy_header(env.shape, "<f8") + np.ascontiguousarray(env, dtype="<f8").tobytes()


def add(layout: Layout) -> None:
    meta = layout.meta
    readers = layout.readers
    names = [c.name for c in meta.channels]
    session = (meta.path, meta.identity)
    stated = {c.name: stated_blocks(c) for c in meta.channels}
    stated_bytes = ROW_BYTES * sum(stated.values())
    for ch in meta.channels:
        rel = f"overview/blocks/{ch.stem}.npy"
        label = f"{meta.shown_path}/{rel}"
        blocks = stated[ch.name]

        def make(ch=ch, label=label, blocks=blocks) -> bytes:
            env = _batches.take(lambda: reader_of(readers, meta), session, names, ch.name,
                                stated_bytes, label)
            if len(env) != blocks:
                log.warning("%s: the block index holds %d blocks, segment metadata says %d: "
                            "serving the index's", label, len(env), blocks)
            return npy_bytes(env)

        planned = PlannedFile(planned_size(blocks), make, label, keep=False)
        planned.rows = [ch.tiles]          # what it summarises: its owners and modes (attrs.py)
        layout.channel_keys[ch.name]["envelope_file"] = layout.add(rel, planned)
    layout.session_keys.setdefault("overview_layout", {})["envelope_file"] = (
        "NPY float64 (n_blocks, 4): start_uutc, end_uutc, min, max of each MEF block in time order, "
        "from the block index (mef3io's block_envelope); min/max in the channel's units, NaN where "
        "the writer left them unset; a gap is a start later than the previous end")
