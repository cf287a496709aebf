"""`records.json`: the session's MEF records (annotations) as mef3io reads them, every level.

Records are read on first open, not at listing: mef3io reads a records file
per channel and segment that has one, and a cold `ls -lR` of 100 sessions x
64 channels spent 190 ms of its 3.2 s of session opening there. Until then
the file's size is 0 (files.GeneratedFile).
"""

from __future__ import annotations

from ..jsontext import json_bytes
from .files import GeneratedFile
from .layout import Layout, reader_of


def add(layout: Layout) -> None:
    meta, readers = layout.meta, layout.readers

    def make() -> bytes:
        try:
            records = reader_of(readers, meta).records(level="all")
        except Exception as exc:
            records = {"error": f"{type(exc).__name__}: {exc}"}
        return json_bytes(records)

    layout.add("records.json", GeneratedFile(make, f"{meta.shown_path}/records.json"))
    layout.session_keys["records_file"] = "records.json"
