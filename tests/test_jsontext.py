"""The JSON every file of the mount writes (jsontext.py): strict, readable line by line, lossless."""
from __future__ import annotations

import json
import math

import numpy as np

from mef3fs.jsontext import json_bytes


def test_a_document_reads_back_as_it_was_written():
    doc = {"session": "sub-01/ses-1/night1.mefd", "units": "µV", "fs": 255.99966850667516,
           "start_uutc": 1_600_000_000_123_456, "ok": True, "none": None,
           "channels": [{"name": "LA1", "segments": [{"segment": 0, "end": 12}]}, {"name": "LA,2"}],
           "file_names": {"LA1": "LA1.f32", "a\tb": "a_b.f32"}, "empty": {}, "levels": [10, 100]}
    text = json_bytes(doc)
    assert json.loads(text) == doc
    assert text.decode("utf-8").splitlines()[:2] == ["{", ' "session": "sub-01/ses-1/night1.mefd",']
    assert ' "channels": [\n  {"name": "LA1", "segments": [{"segment": 0, "end": 12}]},' in text.decode()


def test_what_strict_json_cannot_hold_is_written_the_careful_way():
    doc = {"nan": float("nan"), "inf": [math.inf], "np": np.float32(1.5), "n": np.int64(7),
           "raw": b"ab", 3: "an int key", "deep": {"x": {4: np.nan}}}
    got = json.loads(json_bytes(doc))      # strict: json.loads would fail on NaN or a bare 3
    assert got == {"nan": None, "inf": [None], "np": 1.5, "n": 7, "raw": "ab", "3": "an int key",
                   "deep": {"x": {"4": None}}}


def test_a_key_that_is_not_a_string_alone_still_gives_json():
    assert json.loads(json_bytes({"a": 1, 2: "b", "c": {5: [1]}})) == {"a": 1, "2": "b", "c": {"5": [1]}}
