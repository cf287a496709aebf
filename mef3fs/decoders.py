"""Decoding: two MEF backends behind one call.

A decode is "the grid samples [ts, te) of one channel, exactly n of them, as
float32" (a `DecodeSpec`, one tile), or the same window of several channels
of one rate at once (a `Job`, one or more consecutive tiles): mef3io decodes
a list of channels in one call, and a longer window costs less per block
than several short ones. Where the decoding runs (worker processes or
threads in the daemon) is pool.py's business.

This module must not import the FUSE layer: worker processes import it.
"""

from __future__ import annotations

import ctypes
import logging
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .readers import ReaderCache, SessionChanged

log = logging.getLogger("mef3fs.decoders")

DECODERS = ("mef3io", "mef_tools")


class DecodeError(Exception):
    """A window that cannot be decoded (damaged block, locked data): EIO for the reader.

    `channel` and `span` (uUTC start, end), when set, say where: the session
    lists the range as damaged in info.json."""
    channel: str | None = None
    span: tuple | None = None
    reason: str = ""


class Cancelled(Exception):
    """A job stopped through its cancel token: nobody wants its tiles any more."""


@dataclass(frozen=True)
class DecodeSpec:
    """One tile: grid samples [first, first + n) of `channel`, i.e. uUTC [ts, te).

    The grid (origin t0, rate fs) travels along for decoders that cannot take
    fractional window edges and must anchor on it themselves.
    """
    session_path: str
    channel: str
    ts: float
    te: float
    n: int
    t0: int = 0
    fs: float = 0.0
    first: int = 0
    identity: tuple = ()      # (device, inode, mtime) of the session when it was opened

    @property
    def nbytes(self) -> int:
        return 4 * self.n


@dataclass(frozen=True)
class Job:
    """Grid samples [first, first + n) of one or more channels of one rate, one window for all.

    `cuts` are the tile edges inside the window (offsets from `first`, 0 and
    n included): the result is one array per channel and tile, channel-major.
    A window of several tiles is only ever their exact grid window
    (ts = grid(first), te = grid(first + n)), which gives the same samples as
    the tiles one by one; tiles whose windows are pulled in (tile_windows) go
    one per job.
    """
    session_path: str
    channels: tuple
    ts: float
    te: float
    n: int
    t0: int
    fs: float
    first: int
    cuts: tuple
    identity: tuple = ()

    @property
    def tiles(self) -> int:
        return len(self.channels) * (len(self.cuts) - 1)

    @property
    def nbytes(self) -> int:
        return 4 * self.n * len(self.channels)

    def spec(self, channel: str) -> DecodeSpec:
        return DecodeSpec(self.session_path, channel, self.ts, self.te, self.n, self.t0, self.fs,
                          self.first, self.identity)

    def split(self, rows: np.ndarray) -> list:
        """(channels, n) samples -> the job's tiles, channel-major, each its own buffer."""
        if len(self.cuts) == 2 and rows.shape[0] == 1:
            return [rows[0]]
        return [np.array(rows[c, a:b]) for c in range(rows.shape[0])
                for a, b in zip(self.cuts, self.cuts[1:])]


def read_job(decoder, job: Job, cancel=None) -> list:
    """A job's tiles, channel-major: arrays, or DecodeError for a tile that cannot be decoded.

    The whole window in one call when the decoder can (`read_job`). If that
    fails, each tile is decoded alone, so a damaged block fails only its own
    tile. `cancel` is what the decoder's `new_token()` gave (None: cannot be
    stopped)."""
    if hasattr(decoder, "read_job"):
        try:
            return job.split(decoder.read_job(job, cancel))
        except DecodeError:
            if job.tiles == 1:
                raise
    elif job.tiles == 1:
        return [_fit(decoder.read(job.spec(job.channels[0])), job.n)]
    out = []
    for ch in job.channels:
        for a, b in zip(job.cuts, job.cuts[1:]):
            spec = DecodeSpec(job.session_path, ch, job.ts if a == 0 else job.t0 + (job.first + a) * 1e6 / job.fs,
                              job.te if b == job.n else job.t0 + (job.first + b) * 1e6 / job.fs,
                              b - a, job.t0, job.fs, job.first + a, job.identity)
            try:
                out.append(_fit(decoder.read(spec), b - a))
            except DecodeError as exc:
                out.append(exc)
    return out


def _fit(arr: np.ndarray, n: int) -> np.ndarray:
    """Exactly n float32 samples: the grid length is ours, not the decoder's."""
    arr = np.asarray(arr, dtype=np.float32).reshape(-1)
    if len(arr) == n:
        return arr
    out = np.full(n, np.nan, dtype=np.float32)
    m = min(n, len(arr))
    out[:m] = arr[:m]
    return out


class Mef3ioDecoder:
    """The reference decoder: its read over the whole grid defines every byte."""

    name = "mef3io"

    def __init__(self, password: str = ""):
        import mef3io
        import warnings
        self._mef3io = mef3io
        self._password = password
        warnings.filterwarnings("ignore", module="mef3io")
        self._readers = ReaderCache(self._open)

    def _open(self, path: str, strict: bool = True):
        """A strict reader, which raises where it cannot read. A session with a
        broken or locked channel does not open strictly: then a lenient one,
        whose problems say what it skipped (see read)."""
        try:
            return self._mef3io.Reader(path, password=self._password, n_threads=1, strict=strict)
        except (self._mef3io.CrcError, self._mef3io.FormatError, self._mef3io.PasswordError,
                self._mef3io.IoError, OSError):
            if not strict:
                raise
            reader = self._open(path, strict=False)
            if not reader.problems:
                raise
            return reader

    def open(self, path: str, identity: tuple = ()) -> None:
        self._readers.get(path, identity)

    def new_token(self):
        """Stops a running read_job from another thread (`.cancel()`)."""
        return self._mef3io.CancelToken()

    def _reader(self, path: str, identity: tuple):
        try:
            return self._readers.get(path, identity)
        except SessionChanged as exc:
            raise DecodeError(str(exc)) from None

    def read(self, spec: DecodeSpec) -> np.ndarray:
        reader = self._reader(spec.session_path, spec.identity)
        lenient = bool(reader.problems)     # a strict reader never has any
        if lenient and any(p["channel"] == spec.channel for p in reader.problems):
            # A lenient reader skips a segment for good once it failed and reads NaN
            # there: this channel failed before, so a reader that has not failed yet.
            reader = self._open(spec.session_path, strict=False)
        before = len(reader.problems)
        arr = self._read(reader, spec.channel, spec.ts, spec.te, None)
        if lenient:
            failed = [p for p in reader.problems[before:] if p["channel"] == spec.channel]
            if failed:                      # a lenient reader returns NaN where a strict one raises
                raise DecodeError(f"{failed[0]['reason']}")
        self._readers.loaded(reader, spec.channel, spec.ts, spec.te)
        return _fit(arr, spec.n)

    def read_job(self, job: Job, cancel=None) -> np.ndarray:
        """(channels, n): one multi-channel call decodes every block of every channel."""
        reader = self._reader(job.session_path, job.identity)
        if reader.problems:
            # a lenient reader hides failures as NaN: each channel on its own (read)
            return np.stack([self.read(job.spec(ch)) for ch in job.channels])
        names = list(job.channels)
        arr = self._read(reader, names[0] if len(names) == 1 else names, job.ts, job.te, cancel)
        arr = np.asarray(arr, dtype=np.float32).reshape(len(names), -1)
        if arr.shape[1] != job.n:
            arr = np.stack([_fit(row, job.n) for row in arr])
        for ch in dict.fromkeys(names):
            self._readers.loaded(reader, ch, job.ts, job.te)
        return arr

    def _read(self, reader, channel, ts, te, token):
        try:
            return reader.read(channel, ts, te, dtype="float32", cancel=token)
        except self._mef3io.Cancelled:
            raise Cancelled() from None
        except (self._mef3io.CrcError, self._mef3io.FormatError, self._mef3io.IoError,
                self._mef3io.PasswordError) as exc:
            raise DecodeError(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise DecodeError(f"OSError: {exc}") from None

    def close(self) -> None:
        self._readers.clear()


def _whole_us_step(fs: float) -> int:
    """Smallest k such that k samples last a whole number of microseconds."""
    return (Fraction(10**6) / Fraction(fs)).denominator


def _halves_possible(fs: float) -> bool:
    """Can an integer uUTC time fall exactly half a sample between grid points?"""
    return (Fraction(fs) / 10**6).denominator % 2 == 0


class MefToolsDecoder:
    """pymef through mef_tools, mapped onto mef3io's grid.

    pymef takes whole-microsecond windows and places each block at
    round-half-up((start - window) * fs / 1e6) where mef3io rounds half
    down. So the window starts on the nearest earlier grid point that falls
    on a whole microsecond (when one is within a tile), one microsecond late
    where exact halves can occur, which turns pymef's rounding into
    mef3io's; the samples before the tile are dropped. Rates with no such
    grid point near (499.907 Hz) fall back to the floored start and may place
    a block one sample off. pymef scales by one factor per channel (0 when
    its segments differ), so samples are read as counts and each segment's
    own factor from pymef's metadata is applied, as mef3io does. pymef
    cannot read tar archives nor list channels whose names start with '.':
    those reads fail (EIO) and say so.
    """

    name = "mef_tools"

    def __init__(self, password: str = ""):
        from mef_tools.io import MefReader
        self._readers = ReaderCache(lambda path: MefReader(path, password2=password or None))

    def open(self, path: str, identity: tuple = ()) -> None:
        if not path.lower().endswith(".tar"):
            self._readers.get(path, identity)

    def _window(self, spec: DecodeSpec) -> tuple[int, int]:
        """(first pymef uUTC, grid index of pymef's sample 0)."""
        if spec.fs > 0:
            step = _whole_us_step(spec.fs)
            anchor = spec.first - spec.first % step
            if spec.first - anchor <= max(spec.n, 1):
                start = spec.t0 + int(anchor * (Fraction(10**6) / Fraction(spec.fs)))
                return start + (1 if _halves_possible(spec.fs) else 0), anchor
        return int(math.floor(spec.ts)), spec.first

    def read(self, spec: DecodeSpec) -> np.ndarray:
        if spec.session_path.lower().endswith(".tar"):
            raise DecodeError("pymef (--decoder mef_tools) cannot read .mefd.tar archives in "
                              "place; use --decoder mef3io")
        start, anchor = self._window(spec)
        try:
            reader = self._readers.get(spec.session_path, spec.identity)
            if spec.channel not in reader.channels:
                raise DecodeError("pymef does not list this channel (it drops channels whose "
                                  "names start with '.'); use --decoder mef3io")
            end = spec.t0 + (spec.first + spec.n) * 1e6 / spec.fs if spec.fs > 0 else spec.te
            counts = reader.get_raw_data(spec.channel, start, int(math.ceil(end)) + 1)[0]
            arr = np.asarray(counts, dtype=np.float64) * self._factors(reader, spec, start, len(counts))
        except DecodeError:
            raise
        except Exception as exc:  # pymef raises plain RuntimeError/ValueError/TypeError
            raise DecodeError(f"mef_tools: {type(exc).__name__}: {exc}") from None
        if arr is None or np.size(arr) == 0:
            raise DecodeError("mef_tools returned no samples (a level-1 password does not "
                              "unlock data for pymef; use the level-2 password or --decoder mef3io)")
        skip = spec.first - anchor
        return _fit(arr[skip:skip + spec.n], spec.n)

    @staticmethod
    def _factors(reader, spec: DecodeSpec, start: int, n: int) -> np.ndarray:
        """Each output sample's conversion factor: that of the segment it falls in."""
        scale = np.ones(n)
        step = 1e6 / spec.fs if spec.fs > 0 else None
        segments = reader.session.session_md["time_series_channels"][spec.channel]["segments"]
        for seg in segments.values():
            factor = float(seg["section_2"]["units_conversion_factor"][0]) or 1.0   # 0: not set
            header = seg["universal_headers"]["metadata"]
            s0, s1 = int(header["start_time"][0]), int(header["end_time"][0])
            if step is None:
                scale[:] = factor
                break
            lo = max(0, math.floor((s0 - start) / step + 0.5))
            hi = min(n, math.floor((s1 - start) / step + 0.5))
            if hi > lo:
                scale[lo:hi] = factor
        return scale

    def close(self) -> None:
        self._readers.clear()


def make_decoder(name: str, password: str = ""):
    """A decoder of its own readers (each worker process or daemon makes one)."""
    if name == "mef3io":
        return Mef3ioDecoder(password)
    if name == "mef_tools":
        return MefToolsDecoder(password)
    raise ValueError(f"unknown decoder {name!r} (choose from {', '.join(DECODERS)})")


def return_big_buffers_to_the_os() -> None:
    """Tiles are 0.04-5 MB buffers made and freed all the time. glibc's
    dynamic mmap threshold soon serves them from the heap, which it rarely
    gives back: fix the threshold so they are mmapped and unmapped on free
    (measured: daemon peak over an 8 MiB cache +48 -> +32 MB)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 256 << 10)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
