"""Per rate, `brainvision/<fs>Hz.vhdr` + `.vmrk` + `.eeg`: the rate group as BrainVision data for MNE, EEGLAB and FieldTrip.

The `.eeg` is IEEE_FLOAT_32, VECTORIZED (channel after channel): the bytes of
the rate group's (channels, samples) matrix, read through the same tiles as
`rates/<fs>Hz.npy`, resolution 1 in the channels' own units, NaN where there
is no data. The `.vhdr` comes from metadata at listing. The `.vmrk` needs to
know where data is, which only the block indexes say, so it is made on first
open (size 0 until then): a `New Segment` carrying the grid start as the
recording date, a `Bad Interval` (`BAD_no_data`) over every stretch where no
channel of the group has a sample, and the MEF records as `Comment`s.

What the readers need: no blank line anywhere and every line of a section
`key=value` or a `;` comment (EEGLAB's readbvconf); a marker file that exists
(FieldTrip); no `=` in a marker description (FieldTrip and EEGLAB split marker
lines at `=`), commas as `\\1`; a unit MNE knows, or `n/a`, never empty (an
empty unit reads as µV in MNE). FieldTrip ignores the resolution on
vectorized data, so it is always 1.

A huge marker list: every stretch without data is kept (leaving one out would
let a reader average NaN it was told nothing about); records past
MAX_COMMENTS are left out with a `;` line saying how many (records.json has
them all).
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from .. import __version__
from ..index import channel_gaps, sample_index
from ..meta import printable
from .files import GeneratedFile, SignalFile, StaticFile
from .layout import Layout

FOLDER = "brainvision"
BAD = "BAD_no_data"
MAX_COMMENTS = 100_000
UNITS = {"uv": "µV", "µv": "µV", "μv": "µV", "microvolts": "µV", "microvolt": "µV",
         "mv": "mV", "millivolts": "mV", "v": "V", "volts": "V", "nv": "nV"}
LAYOUT = ("brainvision_file (per grid) is the rate group as BrainVision data: the .vhdr, with "
          "brainvision_data_file (.eeg: IEEE_FLOAT_32, VECTORIZED, the bytes of npy_file's matrix, "
          "resolution 1 in the channels' units, NaN where there is no data) and "
          "brainvision_marker_file (.vmrk: New Segment with the grid start as recording date, "
          f"a Bad Interval '{BAD}' over every stretch where no channel of the grid has data, "
          "MEF records as Comments). The .vmrk is made from the block indexes on first open: "
          "its listed size is 0 until then.")


def add(layout: Layout) -> None:
    meta, readers = layout.meta, layout.readers
    for grid in meta.grids:
        if not grid.n:
            continue
        stem = f"{grid.label}Hz"
        base = f"{FOLDER}/{stem}"
        label = f"{meta.shown_path}/{base}"
        names = channel_labels([c.name for c in grid.channels])
        layout.add(base + ".vhdr", StaticFile(header(meta, grid, stem, names), label + ".vhdr"))
        layout.add(base + ".eeg", SignalFile(grid.rows, b"", label + ".eeg"))
        layout.add(base + ".vmrk", GeneratedFile(
            lambda grid=grid, stem=stem: markers(meta, grid, stem, _records(readers, meta, grid)),
            label + ".vmrk"))
        layout.grid_keys[grid.label].update(brainvision_file=base + ".vhdr",
                                            brainvision_marker_file=base + ".vmrk",
                                            brainvision_data_file=base + ".eeg")
    if meta.grids:
        layout.session_keys["brainvision_layout"] = LAYOUT


# -- the header ---------------------------------------------------------------

def sampling_interval(fs: float) -> float:
    """Microseconds per sample such that 1e6 / interval gives fs back (MNE, EEGLAB and FieldTrip all
    take the rate as 1e6 / SamplingInterval). Some rates (about one double in eight) are no
    1e6 / s of any double s: then the nearest, one ulp off (1e-16 relative)."""
    fs = float(fs)
    candidates = [1e6 / fs]             # first: kept on a tie
    lo = hi = candidates[0]
    for _ in range(8):
        lo, hi = float(np.nextafter(lo, -math.inf)), float(np.nextafter(hi, math.inf))
        candidates += [lo, hi]
    return min(candidates, key=lambda s: abs(1e6 / s - fs))


def _field(text: str) -> str:
    """One comma-separated field of a BrainVision line: no control characters, commas as \\1."""
    return printable(text).replace(",", r"\1")


def channel_labels(names: list[str]) -> list[str]:
    """BrainVision channel names: the MEF names, fit for a field, unique (MNE requires it)."""
    out, taken = [], set()
    for name in names:
        label = _field(name).strip() or "_"
        base, k = label, 1
        while label in taken:
            k += 1
            label = f"{base}~{k}"
        taken.add(label)
        out.append(label)
    return out


def unit(units) -> str:
    """The unit MNE scales by (µV, mV, V, nV); anything else as it is, or n/a (never empty)."""
    text = (units or "").strip()
    return UNITS.get(text.lower(), _field(text) or "n/a")


def header(meta, grid, stem: str, names: list[str]) -> bytes:
    lines = [
        "Brain Vision Data Exchange Header File Version 1.0",
        f"; mef3fs {__version__}: a view of the MEF 3.0 session {meta.shown_path}, not a copy",
        "[Common Infos]",
        "Codepage=UTF-8",
        f"DataFile={stem}.eeg",
        f"MarkerFile={stem}.vmrk",
        "DataFormat=BINARY",
        "; Data orientation: VECTORIZED = channel after channel",
        "DataOrientation=VECTORIZED",
        "DataType=TIMEDOMAIN",
        f"NumberOfChannels={len(grid.channels)}",
        f"DataPoints={grid.n}",
        "; Sampling interval in microseconds",
        f"SamplingInterval={sampling_interval(grid.fs)!r}",
        "[Binary Infos]",
        "BinaryFormat=IEEE_FLOAT_32",
        "[Channel Infos]",
        "; Each entry: Ch<Channel number>=<Name>,<Reference channel name>,<Resolution in \"Unit\">,<Unit>",
    ]
    lines += [f"Ch{k}={name},,1,{unit(ch.units)}" for k, (name, ch) in enumerate(zip(names, grid.channels), 1)]
    lines += [
        "[Comment]",
        f"Session: {meta.shown_path}",
        f"Sampling frequency: {grid.label} Hz; grid start: {grid.t0} uUTC; "
        f"sample i is at grid start + i * 1e6 / sampling frequency.",
        "Samples where a channel has no data are NaN. The marker file marks every stretch where no channel",
        f"has data as a Bad Interval '{BAD}'. Channels are in the order of info.json's grid channels:",
    ]
    lines += [f"  Ch{k}: {name}" for k, name in enumerate((c.name for c in grid.channels), 1)]
    return ("\n".join(printable(x) for x in lines) + "\n").encode("utf-8")


# -- the markers --------------------------------------------------------------

def data_spans(tiles) -> list[tuple[int, int]]:
    """Grid samples [a, b) where the channel has blocks: from its first block to its last, less
    its gaps (gaps.json's), each edge on the sample mef3io puts it on."""
    tables = [t for t in (tiles.table(p) for p in range(tiles.pieces)) if t.blocks]
    if not tables:
        return []
    gaps = channel_gaps(tiles)
    starts = [sample_index(tiles.t0, tiles.fs, min(t.first_start for t in tables))]
    starts += [g["end_index"] for g in gaps]
    ends = [g["start_index"] for g in gaps]
    ends.append(sample_index(tiles.t0, tiles.fs, max(t.last_end for t in tables)))
    return list(zip(starts, ends))


def no_data(grid) -> list[tuple[int, int]]:
    """Grid samples [a, b) where no channel of the group has data: all of them read NaN there."""
    spans = [span for tiles in grid.rows for span in data_spans(tiles)]
    a = np.clip(np.array([x for x, _ in spans], dtype=np.int64), 0, grid.n)
    b = np.clip(np.array([y for _, y in spans], dtype=np.int64), 0, grid.n)
    keep = b > a
    order = np.argsort(a[keep], kind="stable")
    a, b = a[keep][order], b[keep][order]
    if not len(a):
        return [(0, grid.n)]
    reach = np.maximum.accumulate(b)
    holes = np.flatnonzero(a[1:] > reach[:-1])
    lo = np.concatenate(([0], reach[holes], [reach[-1]]))
    hi = np.concatenate(([a[0]], a[holes + 1], [grid.n]))
    return [(int(x), int(y)) for x, y in zip(lo, hi) if y > x]


def _records(readers, meta, grid) -> list:
    """The session's records and those of this group's channels (a reader opened now, metadata only)."""
    try:
        records = readers.get(meta.path, meta.identity).records(level="all")
    except Exception:   # records.json says why; the markers still mark the data
        return []
    mine = {c.name for c in grid.channels}
    return [r for r in records if r.get("channel") is None or r.get("channel") in mine]


def _date(t0: int) -> str:
    """YYYYMMDDhhmmssuuuuuu (UTC) of a uUTC time; zeros (no date) before year 1000."""
    when = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(t0))
    return when.strftime("%Y%m%d%H%M%S%f") if when.year >= 1000 else "0" * 20


def _description(rec: dict) -> str:
    text = rec.get("text")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    kind = str(rec.get("type") or "Record")
    desc = f"{kind}: {text}" if text not in (None, "") else kind
    return printable(desc, " ").replace(",", r"\1").replace("=", ":")


def markers(meta, grid, stem: str, records: list) -> bytes:
    """The .vmrk text: markers in order of position, numbered from 1 (EEGLAB warns on a jump)."""
    channel_no = {c.name: k for k, c in enumerate(grid.channels, 1)}
    items = [(a + 1, 0, f"Bad Interval,{BAD},{a + 1},{b - a},0") for a, b in no_data(grid)]
    timed = [r for r in records if isinstance(r.get("time"), (int, float)) and math.isfinite(r["time"])]
    comments, outside = [], len(records) - len(timed)
    for rec in timed:
        i = sample_index(grid.t0, grid.fs, rec["time"])
        if not 0 <= i < grid.n:
            outside += 1
            continue
        comments.append((i + 1, 1, f"Comment,{_description(rec)},{i + 1},1,"
                                        f"{channel_no.get(rec.get('channel'), 0)}"))
    left_out = max(0, len(comments) - MAX_COMMENTS)
    items += comments[:MAX_COMMENTS]
    items.sort(key=lambda item: item[:2])
    lines = [
        "Brain Vision Data Exchange Marker File, Version 1.0",
        f"; mef3fs {__version__}: markers of {printable(meta.shown_path)} at {grid.label} Hz",
        "[Common Infos]",
        "Codepage=UTF-8",
        f"DataFile={stem}.eeg",
        "[Marker Infos]",
        "; Each entry: Mk<Marker number>=<Type>,<Description>,<Position in data points>,"
        "<Size in data points>,<Channel number (0 = marker is related to all channels)>"
        "[,<Date (YYYYMMDDhhmmssuuuuuu)>]",
        f"; {BAD}: no channel has data there (NaN); Comment: a MEF record (records.json)",
    ]
    if outside:
        lines.append(f"; {outside} records lie outside the grid and are not marked")
    if left_out:
        lines.append(f"; {left_out} more records are left out here (more than {MAX_COMMENTS}): see records.json")
    lines.append(f"Mk1=New Segment,,1,1,0,{_date(grid.t0)}")
    lines += [f"Mk{k}={text}" for k, (_, _, text) in enumerate(items, 2)]
    return ("\n".join(lines) + "\n").encode("utf-8")
