"""Per rate, `rates/<fs>Hz.npy`: the (channels, samples) float32 matrix, rows in the grid's channel order."""

from __future__ import annotations

from .files import SignalFile, npy_header
from .layout import Layout


def add(layout: Layout) -> None:
    shown = layout.meta.shown_path
    for grid in layout.meta.grids:
        rel = f"rates/{grid.label}Hz.npy"
        layout.add(rel, SignalFile(grid.rows, npy_header((len(grid.rows), grid.n)), f"{shown}/{rel}"))
        layout.grid_keys[grid.label]["npy_file"] = rel
