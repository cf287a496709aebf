"""One file per channel: `<name>.f32` (raw float32, little-endian) and `<name>.npy` (the same after an NPY header).

The files of one rate read together (a memmap per channel, a viewer drawing
every trace) share one `InStep`, which reads ahead for the others.
"""

from __future__ import annotations

from ..windows import InStep
from .files import SignalFile, npy_header
from .layout import Layout


def add(layout: Layout) -> None:
    for grid in layout.meta.grids:
        in_step = InStep(grid.rows)
        for ch in grid.channels:
            label = ch.tiles.label
            xattrs = {"user.mef3fs.channel": ch.name, "user.mef3fs.sampling_frequency": grid.label,
                      "user.mef3fs.grid_start_uutc": str(grid.t0), "user.mef3fs.units": ch.units or "",
                      "user.mef3fs.number_of_samples": str(ch.n)}
            keys = layout.channel_keys[ch.name]
            keys["file"] = layout.add(f"{ch.stem}.f32", SignalFile([ch.tiles], b"", label, xattrs, in_step))
            keys["npy_file"] = layout.add(f"{ch.stem}.npy",
                                          SignalFile([ch.tiles], npy_header((ch.n,)), label, xattrs, in_step))
