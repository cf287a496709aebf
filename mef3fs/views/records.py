"""`records.json`: the session's MEF records (annotations) as mef3io reads them, every level.

Records are read at listing: their cost follows the number of records, not
the length of the recording.
"""

from __future__ import annotations

from ..jsontext import json_bytes
from .files import StaticFile
from .layout import Layout


def add(layout: Layout) -> None:
    try:
        records = layout.reader.records(level="all")
    except Exception as exc:
        records = {"error": f"{type(exc).__name__}: {exc}"}
    layout.add("records.json", StaticFile(json_bytes(records), f"{layout.meta.shown_path}/records.json"))
    layout.session_keys["records_file"] = "records.json"
