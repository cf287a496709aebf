"""JSON as every file of the mount writes it: strict (no NaN), UTF-8, readable by MATLAB's jsondecode."""

from __future__ import annotations

import json
import math

import numpy as np


def clean(value):
    """JSON-safe: bytes as text, numpy scalars as Python, NaN/inf as null (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):      # file names that are not UTF-8 arrive surrogate-escaped
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _default(value):
    """What json's C encoder cannot write itself."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


_text = json.encoder.encode_basestring          # a str as JSON, non-ASCII kept (UTF-8 files)


def _c_compact():
    """json's C encoder made once: JSONEncoder.encode makes it anew at every call,
    which was most of the cost of a number or a small dict (2.6 -> 0.9 us), and
    info.json is written value by value for every session listed. The same text."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(", ", ": "),
                                default=_default).encode
    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys, allow_nan)
    chunks = make(None, _default, _text, None, ": ", ", ", False, False, False)

    def compact(value) -> str:
        return _text(value) if isinstance(value, str) else "".join(chunks(value, 0))
    return compact


_compact = _c_compact()


def _key(key) -> str:
    if not isinstance(key, str):       # json_bytes then writes it the careful way (clean)
        raise TypeError(f"a key that is not a string: {key!r}")
    return _text(key)


def _lines(value, indent: str) -> str:
    """Dicts and lists of dicts one entry per line, anything deeper on one line:
    readable with cat, and encoded by json's C encoder (an indented dump is
    pure Python, and info.json is written for every session listed)."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        items = [f"{inner}{_key(k)}: {_lines(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and all(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _compact(v) for v in value) + "\n" + indent + "]"
    return _compact(value)


def json_bytes(obj) -> bytes:
    try:
        return (_lines(obj, "") + "\n").encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError):
        # NaN, keys that are not strings, names that are not UTF-8: the slow, careful way
        return (_lines(clean(obj), "") + "\n").encode("utf-8")
