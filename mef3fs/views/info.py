"""`info.json`: everything needed to interpret every file of the folder, without a MEF library.

Written last, from the session metadata and the keys every other view added
(which file is whose). Listing-cheap: nothing here needs a block index.
"""

from __future__ import annotations

import json

from .. import __version__
from ..jsontext import clean, json_bytes
from ..tiles import grid_length
from .files import StaticFile
from .layout import Layout

NAME = "info.json"


def add(layout: Layout) -> None:
    meta = layout.meta
    first = meta.first
    channels = []
    for ch in meta.channels:
        info = ch.info
        channels.append({
            "name": ch.name, **layout.channel_keys[ch.name],
            "dtype": "float32", "byte_order": "little",
            "sampling_frequency": ch.fs, "number_of_samples": ch.n, "grid_start_uutc": meta.t0,
            "start_uutc": int(info["start_time"]), "end_uutc": int(info["end_time"]),
            "first_index": ch.first_index,
            "stored_samples": int(info["number_of_samples"]),
            "units": ch.units, "units_conversion_factor": info.get("units_conversion_factor"),
            "segments": [{"segment": s["segment"], "start_uutc": int(s["start_time"]),
                          "end_uutc": int(s["end_time"]),
                          "start_index": grid_length(meta.t0, int(s["start_time"]), ch.fs),
                          "number_of_samples": int(s["number_of_samples"]),
                          "number_of_blocks": int(s["number_of_blocks"]),
                          "units_conversion_factor": s["units_conversion_factor"]}
                         for s in ch.segments],
            "acquisition_channel_number": info.get("acquisition_channel_number"),
            "channel_description": clean(info.get("channel_description")),
        })
    grids = [{"sampling_frequency": g.fs, "grid_start_uutc": g.t0, "number_of_samples": g.n,
              "sample_period_us": 1e6 / g.fs, "channels": [c.name for c in g.channels],
              **layout.grid_keys[g.label]} for g in meta.grids]
    level = meta.password_level
    doc = {
        "mef3fs_version": __version__,
        "session": meta.shown_path,
        "status": "partial" if meta.partial else "ok",
        "start_uutc": meta.t0, "end_uutc": meta.t_end, "duration_s": (meta.t_end - meta.t0) / 1e6,
        "time_reference": ("relative to the recording-time offset (level-1 password: "
                           "the offset is locked)" if level == 1 else "uUTC"),
        "password_level": level,
        "recording_time_offset": first.get("recording_time_offset"),
        "gmt_offset": first.get("gmt_offset"),
        "subject": None if level == 1 else {k: clean(first.get(k)) for k in
                                            ("subject_name_1", "subject_name_2", "subject_id",
                                             "recording_location")},
        "session_description": clean(first.get("session_description")),
        "layout": ("Each channel file is raw float32 little-endian; sample i is at "
                   "grid_start_uutc + i * 1e6 / sampling_frequency; NaN where there is no data. "
                   "Gaps (holes between MEF blocks) are listed in gaps_file, made on first read "
                   "from the block index; gaps between segments also follow from segments."),
        "grids": grids,
        "channels": channels,
        "file_names": {c["name"]: c["file"] for c in channels},
        "renamed": {c["file"][:-4]: c["name"] for c in channels if c["file"][:-4] != c["name"]},
        **layout.session_keys,
        "left_out": meta.left_out,
        "damaged": meta.damaged,
    }
    layout.add(NAME, StaticFile(json_bytes(doc), f"{meta.shown_path}/{NAME}"))


def remade(old: StaticFile, meta) -> StaticFile:
    """info.json again, after damage was found while reading (meta.damaged grew).
    Made from the old one's bytes: a session does not keep its document twice.
    Served with direct_io: the kernel may still hold the old, shorter size for a
    while, and a reader must not be cut short at it."""
    doc = json.loads(old.data)
    doc.update(status="partial" if meta.partial else "ok", damaged=list(meta.damaged))
    new = StaticFile(json_bytes(doc), old.label)
    new.keep_cache, new.direct_io = False, True
    return new
