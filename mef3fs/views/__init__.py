"""The views: every file of a session folder, each kind in its own module over the same tiles.

A view is a module with `add(layout)`: it registers its files and the
info.json keys that name them (views/layout.py). They run in this order;
info.json comes last, from everything the others added. A new view is a new
module here, over the tiles: never a second decode path.
"""

from __future__ import annotations

from . import brainvision, channels, envelopes, gaps, info, matrix, minmax, preview, records, zarr
from .layout import Layout

VIEWS = (channels, matrix, records, gaps, brainvision, zarr, envelopes, minmax, preview, info)


def lay_out(meta, reader, readers, index) -> Layout:
    layout = Layout(meta, reader, readers, index)
    for view in VIEWS:
        view.add(layout)
    return layout
