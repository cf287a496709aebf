"""A session's metadata: what listing may read (session, channel and segment metadata, never blocks).

Everything a folder listing, a file size or info.json needs comes from here:
channel names and safe file names, rates, the shared time grid, units,
segments, the password level. Each channel gets its `ChannelTiles`, whose
tables the index cache loads only when the channel is first read.
Metadata always comes from mef3io, whichever decoder serves samples: the
grid is mef3io's, so the layout must be too.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from .tiles import ChannelTiles, grid_length, piece_starts, tile_target
from .jsontext import clean

MAX_NAME_BYTES = 240          # room for ".f32"/".npy" under the 255-byte limit


def rate_label(fs: float) -> str:
    """'1000', '499.907', '255.99966850667516': the shortest repr that round-trips."""
    text = repr(float(fs))
    return text[:-2] if text.endswith(".0") else text


def printable(text: str, fill: str = "_", also: str = "") -> str:
    """`text` with every character that is not printable, or is in `also`, as `fill`.
    Nearly every name and line needs nothing: one C call then, not a Python step
    per character (a BrainVision header has thousands)."""
    if text.isprintable() and not (also and any(c in text for c in also)):
        return text
    return "".join(fill if not c.isprintable() or c in also else c for c in text)


def safe_names(names: list[str]) -> dict[str, str]:
    """Channel name -> file stem. Names that are fine stay as they are."""
    out, taken = {}, set()
    for name in names:
        stem = printable(name, also="/\\")
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


@dataclass
class ChannelMeta:
    name: str
    stem: str                 # file name without extension
    fs: float
    n: int                    # samples on the grid
    info: dict                # mef3io's info()
    segments: list            # mef3io's segments()
    tiles: ChannelTiles

    @property
    def units(self):
        return clean(self.info.get("units_description"))

    @property
    def first_index(self) -> int:
        return grid_length(self.tiles.t0, int(self.info["start_time"]), self.fs)


@dataclass
class GridMeta:
    """All channels of one rate: one grid, one matrix, one view of each kind."""
    fs: float
    n: int
    t0: int
    channels: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return rate_label(self.fs)

    @property
    def rows(self) -> list:
        return [c.tiles for c in self.channels]


class SessionLocked(Exception):
    """Every channel of the session is encrypted with a password we do not have."""


def _why(problems: list, password: str, no_password: str) -> str:
    """Why a channel cannot be read, in words that fit this mount."""
    reasons = [p["reason"] for p in problems] or ["mef3io lists no segment of it"]
    if any("password" in r for r in reasons):
        return ("it is encrypted with a password other than the one given" if password
                else f"it is encrypted and {no_password}")
    return "; ".join(dict.fromkeys(reasons))


@dataclass
class SessionMeta:
    path: str                 # real path we open
    shown_path: str           # the path the user knows
    identity: tuple
    password_level: int       # 0 none, 1 technical (times relative), 2 subject
    t0: int
    t_end: int
    first: dict               # info() of the first channel: session-wide fields
    channels: list
    grids: list
    left_out: list            # channels not shown: [{"name", "reason"}]
    damaged: list = field(default_factory=list)   # segments of shown channels that cannot be read

    @property
    def partial(self) -> bool:
        return bool(self.left_out or self.damaged)


CHANNEL_FIELDS = ("start_time", "end_time", "number_of_samples", "sampling_frequency",
                  "units_description", "units_conversion_factor", "acquisition_channel_number",
                  "channel_description", "recording_time_offset", "gmt_offset", "subject_name_1",
                  "subject_name_2", "subject_id", "recording_location", "session_description")


SEGMENT_FIELDS = ("segment", "path", "start_time", "end_time", "start_sample", "number_of_samples",
                  "number_of_blocks", "units_conversion_factor")


def _kept(info: dict) -> dict:
    """The fields of mef3io's info() that the views use: sessions stay open by the hundred."""
    return {k: info.get(k) for k in CHANNEL_FIELDS}


def _outside(session_path: str, segments, inside) -> bool:
    """A channel whose segment files resolve outside SOURCE (tar members have no such path).

    The session's own path is already resolved, so a segment folder reached
    through no symbolic link is inside: two lstat calls instead of a realpath
    walk of every component (which was a fifth of listing a session)."""
    for seg in segments:
        path = seg.get("path") or ""
        folder = os.path.dirname(path)
        if os.path.dirname(folder) == session_path and not (os.path.islink(folder) or os.path.islink(path)):
            continue
        if os.path.exists(path) and not inside(os.path.realpath(path)):
            return True
    return False


def _serials(old: ChannelTiles | None, old_segments, starts, n: int, segments) -> list | None:
    """Piece serials for a channel read again: a piece with the same grid range over
    the same segment keeps its serial (and so its cached tiles); others get new ones."""
    if old is None:
        return None

    def shape(segs):
        return sorted((int(s["start_time"]), int(s["end_time"]), int(s["number_of_samples"]),
                       int(s["number_of_blocks"])) for s in segs)
    before, now = shape(old_segments), shape(segments)
    nxt = max(old.serials) + 1
    out = []
    for p in range(len(starts)):
        span = (int(starts[p]), int(starts[p + 1]) if p + 1 < len(starts) else n)
        if p < old.pieces and p < len(before) and p < len(now) and before[p] == now[p] \
                and old.piece_range(p) == span:
            out.append(old.serials[p])
        else:
            out.append(nxt)
            nxt += 1
    return out


def read_meta(reader, path: str, shown_path: str, keyspace: tuple, identity: tuple, password: str,
              tile_seconds: float | None, index, inside=lambda real: True, previous=None,
              no_password: str = "no password was given", report=None, open_path: str | None = None,
              denied=()) -> SessionMeta:
    """Metadata of an opened mef3io reader; `index` loads tile tables later (IndexCache).

    `keyspace` names the tiles (the same for every generation of a growing
    session), `identity` is what decoders check; `previous` is the metadata
    of the session this one replaces, whose unchanged pieces are kept.
    `open_path` is what decoders open (a readable view, readable.py, when
    some channel folders cannot be read: `denied` names them)."""
    open_path = open_path or path
    # the reader is lenient: what it could not open is in its problems, not an exception
    problems: dict = {}
    for p in reader.problems:
        if p.get("kind", "segment") == "segment":
            problems.setdefault(p["channel"], []).append(p)
    segments = {n: [{k: s.get(k) for k in SEGMENT_FIELDS} for s in reader.segments(n)] for n in reader.channels}
    unreadable = [n for n in reader.channels if not segments[n]]
    outside = [n for n in reader.channels if segments[n] and _outside(open_path, segments[n], inside)]
    names = [n for n in reader.channels if n not in unreadable and n not in outside]
    left_out = [{"name": n, "reason": "it leads outside SOURCE (symbolic link)"} for n in sorted(outside)]
    left_out += [{"name": n, "reason": _why(problems.get(n, []), password, no_password)} for n in unreadable]
    left_out += list(denied)
    damaged = [{"channel": n, "segment": p["segment_number"], "reason": p["reason"]}
               for n in names for p in problems.get(n, [])]
    if previous is not None:          # found while reading an earlier generation: still true
        damaged += [d for d in previous.damaged if "start_uutc" in d and d["channel"] in names]
    if not names:
        if unreadable and all("password" in p["reason"] for ps in problems.values() for p in ps):
            raise SessionLocked("every channel is encrypted and cannot be opened")
        if left_out:
            raise ValueError("no channel can be read: " + "; ".join(
                f"{item['name']}: {item['reason']}" for item in left_out))
        raise ValueError("no channel with samples in this session")
    infos = {name: _kept(reader.info(name)) for name in names}
    t0 = min(int(i["start_time"]) for i in infos.values())
    t_end = max(int(i["end_time"]) for i in infos.values())
    stems = safe_names(names)
    first = infos[names[0]]
    level = 0 if not password else (2 if first.get("subject_id") is not None else 1)

    before = {c.name: c for c in previous.channels} if previous is not None and previous.t0 == t0 else {}
    channels, grids = [], {}
    for name in names:
        info = infos[name]
        fs = float(info["sampling_frequency"])
        n = grid_length(t0, t_end, fs)
        starts = piece_starts(t0, fs, n, [(int(s["start_time"]), int(s["end_time"])) for s in segments[name]])
        old = before.get(name)
        serials = _serials(old.tiles, old.segments, starts, n, segments[name]) \
            if old is not None and old.fs == fs else None
        target, whole_blocks = tile_target(tile_seconds, fs)
        tiles = ChannelTiles((path, keyspace, name), open_path, name, f"{shown_path}/{name}", t0, fs, n,
                             identity, target=target, starts=starts, load=index, serials=serials,
                             whole_blocks=whole_blocks)
        tiles.report = report
        channel = ChannelMeta(name, stems[name], fs, n, info, segments[name], tiles)
        channels.append(channel)
        grids.setdefault(fs, GridMeta(fs, n, t0)).channels.append(channel)
    return SessionMeta(path, shown_path, identity, level, t0, t_end, first, channels,
                       list(grids.values()), left_out, damaged)
