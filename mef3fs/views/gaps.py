"""`gaps.json`: every gap of every channel, in uUTC and grid indices, made on first read.

Gaps inside a segment are only in the block index, which listing must not
read (a week of 1 s blocks is 600,000 rows per channel): so this file is made
when it is first opened, from the same indexes reads use. Gaps between
segments are also in info.json's `segments`.
"""

from __future__ import annotations

from ..index import channel_gaps
from ..jsontext import json_bytes
from .files import GeneratedFile
from .layout import Layout

NAME = "gaps.json"


def add(layout: Layout) -> None:
    meta = layout.meta
    files = {c.name: layout.channel_keys[c.name].get("file") for c in meta.channels}

    def make() -> bytes:
        return json_bytes({
            "session": meta.shown_path,
            "grid_start_uutc": meta.t0,
            "layout": ("A gap is a hole between consecutive MEF blocks longer than half a sample: "
                       "uUTC [start_uutc, end_uutc), grid samples [start_index, end_index) "
                       "of the channel's file, which read as NaN."),
            "channels": [{"name": c.name, "file": files[c.name], "sampling_frequency": c.fs,
                          "gaps": channel_gaps(c.tiles)} for c in meta.channels],
        })

    layout.add(NAME, GeneratedFile(make, f"{meta.shown_path}/{NAME}"))
    layout.session_keys["gaps_file"] = NAME
