"""`overview/blocks/<name>.npy`: every MEF block's start, end, minimum and maximum, from the block index.

MEF's block index stores each block's extremes, so a whole recording's
envelope costs no decoding at all: this is mef3io's `block_envelope`, as an
NPY float64 array (n_blocks, 4) = start uUTC, end uUTC, min, max (the
channel's units, like the .f32 values; NaN where the writer left a block's
extremes unset). Its size comes from the segments' block counts (metadata),
its bytes from the index when first opened. Should the index hold another
number of blocks than the metadata says, the index wins (the file is what
`block_envelope` returns) and the log says so.
"""

from __future__ import annotations

import logging

import numpy as np

from ..decoders import DecodeError
from .files import PlannedFile, npy_header
from .layout import Layout

log = logging.getLogger("mef3fs.views")

COLUMNS = ("start_uutc", "end_uutc", "min", "max")
ROW_BYTES = 8 * len(COLUMNS)


def stated_blocks(channel) -> int:
    """The block count segment metadata states (what listing may know)."""
    return sum(int(s["number_of_blocks"]) for s in channel.segments)


def envelopes(reader, names: list, label: str = "") -> dict:
    """name -> float64 (n_blocks, 4), from the block indexes only (read concurrently)."""
    try:
        got = reader.block_envelope(list(names))
    except Exception as exc:   # a damaged or vanished index: EIO for whoever asked
        raise DecodeError(f"{label}: block index cannot be read: {type(exc).__name__}: {exc}") from None
    return {name: np.stack([np.asarray(got[name][c], dtype=np.float64) for c in COLUMNS], axis=1)
            .reshape(-1, len(COLUMNS)) for name in names}


def npy_bytes(env: np.ndarray) -> bytes:
    return npy_header(env.shape, "<f8") + np.ascontiguousarray(env, dtype="<f8").tobytes()


def add(layout: Layout) -> None:
    meta = layout.meta
    readers = layout.readers
    for ch in meta.channels:
        rel = f"overview/blocks/{ch.stem}.npy"
        label = f"{meta.shown_path}/{rel}"
        blocks = stated_blocks(ch)

        def make(ch=ch, label=label, blocks=blocks) -> bytes:
            reader = readers.get(meta.path, meta.identity)
            env = envelopes(reader, [ch.name], label)[ch.name]
            if len(env) != blocks:
                log.warning("%s: the block index holds %d blocks, segment metadata says %d: "
                            "serving the index's", label, len(env), blocks)
            return npy_bytes(env)

        size = len(npy_header((blocks, len(COLUMNS)), "<f8")) + ROW_BYTES * blocks
        layout.channel_keys[ch.name]["envelope_file"] = layout.add(rel, PlannedFile(size, make, label))
    layout.session_keys.setdefault("overview_layout", {})["envelope_file"] = (
        "NPY float64 (n_blocks, 4): start_uutc, end_uutc, min, max of each MEF block in time order, "
        "from the block index (mef3io's block_envelope); min/max in the channel's units, NaN where "
        "the writer left them unset; a gap is a start later than the previous end")
