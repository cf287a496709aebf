"""One MEF session as the folder a user sees: its grids, files and info.json.

Metadata always comes from mef3io, whichever decoder serves samples: the
grid is mef3io's, so the layout must be too. A session that cannot be
opened becomes a folder with only an info.json that says why.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .readahead import InStep
from .tilecache import ChannelTiles, tile_edges, tile_windows
from .views import SignalFile, StaticFile, npy_header

log = logging.getLogger("mef3fs.session")

_ids = itertools.count(1)
MAX_NAME_BYTES = 240          # room for ".f32"/".npy" under the 255-byte limit


def grid_length(t0: int, t_end: int, fs: float) -> int:
    """Samples on a grid from t0 to t_end, rounded half away from zero like mef3io."""
    return max(0, math.floor((t_end - t0) * fs / 1e6 + 0.5))


def rate_label(fs: float) -> str:
    """'1000', '499.907', '255.99966850667516': the shortest repr that round-trips."""
    text = repr(float(fs))
    return text[:-2] if text.endswith(".0") else text


def safe_names(names: list[str]) -> dict[str, str]:
    """Channel name -> file stem. Names that are fine stay as they are."""
    out, taken = {}, set()
    for name in names:
        stem = "".join(c if c.isprintable() and c not in "/\\" else "_" for c in name)
        try:
            stem.encode("utf-8")
        except UnicodeEncodeError:
            stem = stem.encode("utf-8", "replace").decode("utf-8")
        if stem.startswith("."):
            stem = "_" + stem[1:]          # a hidden channel file would be missed by ls and globs
        if not stem:
            stem = "_"
        if len(stem.encode("utf-8")) > MAX_NAME_BYTES:
            digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
            stem = stem.encode("utf-8")[:MAX_NAME_BYTES - 9].decode("utf-8", "ignore") + "~" + digest
        base, k = stem, 1
        while stem in taken:
            k += 1
            stem = f"{base}~{k}"
        taken.add(stem)
        out[name] = stem
    return out


def _clean(value):
    """JSON-safe: bytes as text, numpy scalars as Python, NaN/inf as null (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
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


def _dumps(obj) -> bytes:
    return (json.dumps(_clean(obj), indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


@dataclass
class Session:
    """What the namespace serves for one session folder."""
    path: str                     # real path we open
    shown_path: str               # the path the user knows (host path under --host-root)
    error: str | None = None
    identity: tuple = ()          # (device, inode, mtime) of what was opened
    files: dict = field(default_factory=dict)    # relative path -> file object
    dirs: dict = field(default_factory=dict)     # relative dir path -> sorted entry names

    @property
    def ok(self) -> bool:
        return self.error is None


def open_session(path: str, shown_path: str, password: str, tile_seconds: float,
                 inside=lambda real: True, identity: tuple = ()) -> Session:
    """Read a session's metadata and lay out its files. Never raises for a bad session.

    `inside(real_path)` says whether a file may be exposed: a channel whose
    segments resolve outside SOURCE (a symbolic link leading out) is left out.
    """
    import mef3io
    session = Session(path, shown_path, identity=identity)
    try:
        _check_readable(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = mef3io.Reader(path, password=password)
            try:
                _lay_out(session, reader, password, tile_seconds, inside)
            finally:
                reader.close()
    except Exception as exc:  # damaged metadata, wrong password, not MEF at all
        session.error = _explain(exc, password)
        session.files = {"info.json": StaticFile(_dumps(_error_info(session)), f"{shown_path}/info.json")}
        session.dirs = {"": ["info.json"]}
        log.warning("session %s cannot be opened: %s", shown_path, session.error)
    return session


def _check_readable(path: str) -> None:
    """Say 'permission denied' plainly; mef3io reports only that it could not open."""
    if os.path.isdir(path):
        os.listdir(path)
    else:
        with open(path, "rb"):
            pass
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the session's path is not valid UTF-8, which mef3io cannot open") from None


def _explain(exc: Exception, password: str) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "PasswordError":
        hint = "no password was given" if not password else "the password given does not open it"
        return f"encrypted session: {hint} (use --password or --password-file). {text}"
    return text


def _error_info(session: Session) -> dict:
    return {"mef3fs_version": __version__, "session": session.shown_path,
            "status": "error", "error": session.error, "channels": [], "files": ["info.json"]}


def _gaps(toc: list[dict], fs: float, t0: int) -> list[dict]:
    """Holes between consecutive blocks, longer than half a sample, in uUTC and grid indices."""
    gaps = []
    step = 1e6 / fs
    for prev, nxt in zip(toc, toc[1:]):
        end = prev["start_uutc"] + prev["number_of_samples"] * step
        if nxt["start_uutc"] - end > step / 2:
            gaps.append({"start_uutc": int(round(end)), "end_uutc": int(nxt["start_uutc"]),
                         "start_index": grid_length(t0, end, fs),
                         "end_index": grid_length(t0, nxt["start_uutc"], fs)})
    return gaps


def _outside(reader, name: str, inside) -> bool:
    """A channel whose segment files resolve outside SOURCE (tar members have no such path)."""
    for seg in reader.segments(name):
        path = seg.get("path") or ""
        if os.path.exists(path) and not inside(os.path.realpath(path)):
            return True
    return False


def _lay_out(session: Session, reader, password: str, tile_seconds: float, inside) -> None:
    sid = next(_ids)
    names = [n for n in reader.channels if not _outside(reader, n, inside)]
    left_out = sorted(set(reader.channels) - set(names))
    for name in left_out:
        log.warning("session %s: channel %s leads outside SOURCE (symbolic link); not shown",
                    session.shown_path, name)
    if not names:
        raise ValueError("no channel with samples in this session")
    infos = {name: reader.info(name) for name in names}
    t0 = min(int(i["start_time"]) for i in infos.values())
    t_end = max(int(i["end_time"]) for i in infos.values())
    stems = safe_names(names)
    first = infos[names[0]]
    level = 0 if not password else (2 if first.get("subject_id") is not None else 1)

    channels, by_rate = [], {}
    for name in names:
        info = infos[name]
        fs = float(info["sampling_frequency"])
        n = grid_length(t0, t_end, fs)
        toc = reader.toc(name)
        block_starts = [b["start_uutc"] for b in toc]
        edges, has_data = tile_edges(n, t0, fs, block_starts, [b["number_of_samples"] for b in toc],
                                     max(1, round(tile_seconds * fs)))
        lo, hi = tile_windows(edges, has_data, t0, fs, block_starts)
        label = f"{session.shown_path}/{name}"
        tiles = ChannelTiles((sid, name), session.path, name, label, t0, fs, n, edges, has_data,
                             session.identity, lo, hi)
        stem = stems[name]
        units = _clean(info.get("units_description"))
        xattrs = {"user.mef3fs.channel": name, "user.mef3fs.sampling_frequency": rate_label(fs),
                  "user.mef3fs.grid_start_uutc": str(t0), "user.mef3fs.units": units or "",
                  "user.mef3fs.number_of_samples": str(n)}
        group = by_rate.setdefault(fs, ([], InStep([])))
        group[0].append((name, tiles))
        group[1].add(tiles)
        session.files[f"{stem}.f32"] = SignalFile([tiles], b"", label, xattrs, group[1])
        session.files[f"{stem}.npy"] = SignalFile([tiles], npy_header((n,)), label, xattrs, group[1])
        channels.append({
            "name": name, "file": f"{stem}.f32", "npy_file": f"{stem}.npy",
            "dtype": "float32", "byte_order": "little",
            "sampling_frequency": fs, "number_of_samples": n, "grid_start_uutc": t0,
            "start_uutc": int(info["start_time"]), "end_uutc": int(info["end_time"]),
            "first_index": grid_length(t0, int(info["start_time"]), fs),
            "stored_samples": int(info["number_of_samples"]),
            "units": units, "units_conversion_factor": info.get("units_conversion_factor"),
            "segments": [{"segment": s["segment"], "start_uutc": int(s["start_time"]),
                          "end_uutc": int(s["end_time"]),
                          "start_index": grid_length(t0, int(s["start_time"]), fs),
                          "number_of_samples": int(s["number_of_samples"]),
                          "units_conversion_factor": s["units_conversion_factor"]}
                         for s in reader.segments(name)],
            "gaps": _gaps(toc, fs, t0),
            "acquisition_channel_number": info.get("acquisition_channel_number"),
            "channel_description": _clean(info.get("channel_description")),
        })

    grids = []
    for fs, (members, _) in by_rate.items():
        label = rate_label(fs)
        rows = [tiles for _, tiles in members]
        n = rows[0].n
        session.files[f"rates/{label}Hz.npy"] = SignalFile(
            rows, npy_header((len(rows), n)), f"{session.shown_path}/rates/{label}Hz.npy")
        grids.append({"sampling_frequency": fs, "grid_start_uutc": t0, "number_of_samples": n,
                      "sample_period_us": 1e6 / fs, "channels": [name for name, _ in members],
                      "npy_file": f"rates/{label}Hz.npy"})

    try:
        records = reader.records(level="all")
    except Exception as exc:
        records = {"error": f"{type(exc).__name__}: {exc}"}
    session.files["records.json"] = StaticFile(_dumps(records), f"{session.shown_path}/records.json")

    info = {
        "mef3fs_version": __version__,
        "session": session.shown_path,
        "status": "ok",
        "start_uutc": t0, "end_uutc": t_end, "duration_s": (t_end - t0) / 1e6,
        "time_reference": ("relative to the recording-time offset (level-1 password: "
                           "the offset is locked)" if level == 1 else "uUTC"),
        "password_level": level,
        "recording_time_offset": first.get("recording_time_offset"),
        "gmt_offset": first.get("gmt_offset"),
        "subject": None if level == 1 else {k: _clean(first.get(k)) for k in
                                            ("subject_name_1", "subject_name_2", "subject_id",
                                             "recording_location")},
        "session_description": _clean(first.get("session_description")),
        "layout": ("Each channel file is raw float32 little-endian; sample i is at "
                   "grid_start_uutc + i * 1e6 / sampling_frequency; NaN where there is no data."),
        "grids": grids,
        "channels": channels,
        "file_names": {c["name"]: c["file"] for c in channels},
        "renamed": {c["file"][:-4]: c["name"] for c in channels if c["file"][:-4] != c["name"]},
        "records_file": "records.json",
        "left_out": [{"name": n, "reason": "leads outside SOURCE"} for n in left_out],
    }
    session.files["info.json"] = StaticFile(_dumps(info), f"{session.shown_path}/info.json")
    top = sorted(name for name in session.files if "/" not in name) + ["rates"]
    session.dirs = {"": sorted(top), "rates": sorted(n[6:] for n in session.files if n.startswith("rates/"))}
