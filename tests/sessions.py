"""Builders for the MEF 3.0 sessions the test suite mounts, and the reference.

Everything here uses the real writers (``mef3io.Writer`` and the independent
``mef_tools.io.MefWriter``) and the real reader (``mef3io.Reader``); nothing is
mocked. All data is small (seconds to a few minutes of signal, a one-hour
channel at 256 Hz for the damaged-block case) and every random stream has a
fixed seed, so a rebuild gives the same sessions.

Public helpers (imported by tests all over the project, keep the names):

* ``reference(session_path, channel, password="")`` -- DESIGN.md's reference
  for every byte of a channel file: ``mef3io.Reader(session, password).read(
  channel, t0, t_end, dtype="float32")`` with ``t0`` the earliest start and
  ``t_end`` the latest end over ALL channels of the session.
* ``session_grid(session_path, password="")`` -- ``Grid`` with t0, t_end and
  per-channel rates; ``Grid.n_samples(channel)`` is DESIGN's
  ``round((t_end - t0) * fs / 1e6)``.
* ``build_corpus(base)``, ``build_encrypted(base)``, ``build_damaged(base)``,
  plus the single-session builders they call.
"""
from __future__ import annotations

import functools
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import mef3io

# An arbitrary recording start that is not a round number of seconds.
T0 = 1_600_000_000_123_456

ENC_PASSWORD1 = "tech-pw"  # level 1 (technical)
ENC_PASSWORD2 = "subject-pw"  # level 2 (subject)

# Channel names that are legal in MEF but need care as file names.
ODD_NAMES = (
    "LA 1",  # space: a valid file name, must be kept as is
    "Fp1\u2013Ref \u00b5V",  # en dash and micro sign: valid UTF-8 file name
    "\u03a9mega",  # Greek capital omega
    ".hidden",  # leading dot: CONTRACT.md says it gets a safe name
    "hidden",  # ... and the safe name of ".hidden" must not collide with this
    "tab\tname",  # control character
    "..",  # leading dot and a path component of its own
)
# Names that are safe file names and so must be served as "<name>.f32".
SAFE_ODD_NAMES = ("LA 1", "Fp1\u2013Ref \u00b5V", "\u03a9mega", "hidden")


def _reader(session_path, password=""):
    with warnings.catch_warnings():
        # mef_tools-written sessions leave section-2 size declarations unset;
        # mef3io warns about it (harmless for mef3io reads).
        warnings.simplefilter("ignore")
        return mef3io.Reader(str(session_path), password=password)


@dataclass(frozen=True)
class Grid:
    t0: int
    t_end: int
    fs: dict  # channel -> sampling frequency (Hz)
    info: dict = field(default_factory=dict, compare=False)  # channel -> Reader.info

    def n_samples(self, channel):
        return int(round((self.t_end - self.t0) * self.fs[channel] / 1e6))

    def file_size(self, channel):
        return 4 * self.n_samples(channel)

    def sample_time(self, channel, i):
        return self.t0 + i * 1e6 / self.fs[channel]


@functools.lru_cache(maxsize=None)
def session_grid(session_path, password=""):
    """t0 = min start_time and t_end = max end_time over ALL channels."""
    r = _reader(session_path, password)
    try:
        info = {c: r.info(c) for c in r.channels}
    finally:
        r.close()
    if not info:
        raise ValueError(f"{session_path}: no channels")
    t0 = min(i["start_time"] for i in info.values())
    t_end = max(i["end_time"] for i in info.values())
    return Grid(t0, t_end, {c: i["sampling_frequency"] for c, i in info.items()}, info)


@functools.lru_cache(maxsize=None)
def _reference(session_path, channel, password):
    g = session_grid(session_path, password)
    r = _reader(session_path, password)
    try:
        x = r.read(channel, g.t0, g.t_end, dtype="float32")
    finally:
        r.close()
    x = np.ascontiguousarray(x, dtype="<f4")
    x.flags.writeable = False
    return x


def reference(session_path, channel, password=""):
    """DESIGN.md's reference for every byte of ``<channel>.f32`` (float32 array)."""
    return _reference(str(session_path), channel, password)


def reference_bytes(session_path, channel, password=""):
    return reference(session_path, channel, password).tobytes()


def channels_of(session_path, password=""):
    r = _reader(session_path, password)
    try:
        return list(r.channels)
    finally:
        r.close()


def _rng(seed):
    return np.random.default_rng(seed)


def _signal(rng, n, scale=50.0):
    # A smooth-ish signal plus noise, values around +-scale, 3 decimals after
    # quantisation (precision=3).
    t = np.arange(n)
    return scale * np.sin(2 * np.pi * t / 97.3) + scale * 0.3 * rng.standard_normal(n)


# ---------------------------------------------------------------------------
# single-session builders (mef3io.Writer unless stated otherwise)
# ---------------------------------------------------------------------------

def build_gaps_session(path):
    """Gaps, several segments, a late channel, mixed rates, half-sample offset.

    * ``LA1`` 256 Hz: segment 0 (40 s) with a 300-sample NaN run and a single
      NaN sample, segment 1 (20 s, new_segment=True) after a 10 s gap.
    * ``LA2`` 256 Hz: starts 7.3 s late, one segment holding two appends
      separated by a 7 s gap (a discontinuity inside a segment), ends early.
    * ``HF`` 1000 Hz: a second rate in the same session; starts 500 us after
      t0, i.e. exactly half a sample off its grid (the case where mef3io and
      pymef round differently), with a NaN run.
    * session-level and channel-level records.
    """
    rng = _rng(101)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        x = _signal(rng, 256 * 40)
        x[1000:1300] = np.nan
        x[5000] = np.nan
        w.write("LA1", x, T0, fs=256.0, precision=3)
        w.write("LA1", _signal(rng, 256 * 20), T0 + 50_000_000, fs=256.0,
                precision=3, new_segment=True)
        w.write("LA2", _signal(rng, 256 * 30), T0 + 7_300_000, fs=256.0, precision=3)
        w.write("LA2", _signal(rng, 256 * 10), T0 + 44_300_000, fs=256.0, precision=3)
        z = _signal(rng, 1000 * 64, scale=200.0)
        z[20_000:21_500] = np.nan
        w.write("HF", z, T0 + 500, fs=1000.0, precision=3)
        w.write_annotations([
            {"time": T0 + 1_000_000, "type": "Note", "text": "start"},
            {"time": T0 + 45_000_000, "type": "Note", "text": "gap ends"},
        ])
        w.write_annotations([{"time": T0 + 2_000_000, "text": "LA1 note"}], channel="LA1")
    return path


def build_rates_session(path):
    """Non-integer rates (499.907 Hz, 255.99966850667516 Hz) and 32768 Hz."""
    rng = _rng(202)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        w.write("r499", _signal(rng, int(499.907 * 20)), T0 + 777, fs=499.907, precision=3)
        y = _signal(rng, 7680)
        y[3000:3333] = np.nan
        w.write("r256x", y, T0, fs=255.99966850667516, precision=3)
        k = _signal(rng, 32768 * 3, scale=500.0)
        k[10_000:10_100] = np.nan
        w.write("k32", k, T0 + 2_000_000, fs=32768.0, precision=3)
    return path


def build_names_session(path):
    """Channel names with spaces, unicode, a leading dot, a tab, and '..'."""
    rng = _rng(303)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        for k, name in enumerate(ODD_NAMES):
            w.write(name, _signal(rng, 256 * 5), T0 + k * 250_000, fs=256.0, precision=3)
    return path


def build_mef_tools_session(path):
    """Written by the second, independent writer (mef_tools over pymef)."""
    from mef_tools.io import MefWriter

    rng = _rng(404)
    if os.path.exists(path):
        shutil.rmtree(path)
    w = MefWriter(str(path), overwrite=True)
    w.data_units = "uV"
    x = _signal(rng, 256 * 30)
    x[2000:2600] = np.nan
    w.write_data(x, "A 1", T0, 256.0, precision=3)
    w.write_data(_signal(rng, 256 * 10), "A 1", T0 + 40_000_000, 256.0, precision=3,
                 new_segment=True)
    w.write_data(_signal(rng, 500 * 20), "B", T0 + 3_000_000, 500.0, precision=3)
    del w
    return path


def build_factors_session(path):
    """One channel whose two segments store different conversion factors.

    mef3io scales each segment by its own factor; mef_tools/pymef applies one
    factor to the whole channel (see NOTES.md), so a mef_tools decoder has to
    handle this itself.
    """
    rng = _rng(505)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        w.write("F", _signal(rng, 256 * 10), T0, fs=256.0, precision=1)
        w.write("F", _signal(rng, 256 * 10), T0 + 12_000_000, fs=256.0, precision=3,
                new_segment=True)
        w.write("G", _signal(rng, 256 * 22), T0, fs=256.0, precision=3)
    r = _reader(path)
    factors = [s["units_conversion_factor"] for s in r.segments("F")]
    r.close()
    assert len(set(factors)) == 2, factors
    return path


def build_small_session(path, seed, seconds=10, channels=("C1", "C2"), fs=256.0,
                        start=T0):
    rng = _rng(seed)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        for k, ch in enumerate(channels):
            w.write(ch, _signal(rng, int(fs * seconds)), start + k * 100_000, fs=fs,
                    precision=3)
    return path


def build_archive(staging_dir, tar_path):
    """A .mefd.tar (mef3io.archive_session) of a two-rate session."""
    src = Path(staging_dir) / (Path(tar_path).name[: -len(".tar")])
    rng = _rng(606)
    with mef3io.Writer(str(src), overwrite=True, units="uV") as w:
        x = _signal(rng, 256 * 20)
        x[700:900] = np.nan
        w.write("T1", x, T0, fs=256.0, precision=3)
        w.write("T2", _signal(rng, 128 * 15), T0 + 2_500_000, fs=128.0, precision=3)
    mef3io.archive_session(str(src), str(tar_path), overwrite=True)
    return Path(tar_path)


def build_garbage_session(path):
    """A .mefd folder whose one 'segment' holds random bytes (FormatError)."""
    seg = Path(path) / "x.timd" / "x-000000.segd"
    seg.mkdir(parents=True, exist_ok=True)
    rng = _rng(707)
    for ext in ("tmet", "tidx", "tdat"):
        (seg / f"x-000000.{ext}").write_bytes(rng.bytes(3000))
    (Path(path) / "notes.txt").write_text("not a MEF file\n")
    try:
        _reader(path)
    except mef3io.MefError:
        pass
    else:  # pragma: no cover - builder self-check
        raise AssertionError("garbage session unexpectedly opened with mef3io")
    return path


# ---------------------------------------------------------------------------
# SOURCE trees
# ---------------------------------------------------------------------------

@dataclass
class Corpus:
    """A SOURCE tree holding every readable kind of session, and decoys."""

    source: Path
    sessions: dict  # mount-relative path -> session path on disk (readable ones)
    broken: dict  # mount-relative path -> on disk (empty / garbage .mefd)
    hidden: list  # mount-relative paths that must NOT be shown
    outside: Path  # a session outside SOURCE that symlinks point to
    shown_dirs: list  # non-session folders that must be shown (lead to sessions)

    def path(self, rel):
        return self.source / rel


def build_corpus(base):
    base = Path(base)
    source = base / "source"
    staging = base / "staging"
    outside = base / "outside"
    for d in (source, staging, outside):
        d.mkdir(parents=True, exist_ok=True)

    sessions = {}
    sessions["gaps.mefd"] = build_gaps_session(source / "gaps.mefd")
    sessions["rates.mefd"] = build_rates_session(source / "rates.mefd")
    sessions["names.mefd"] = build_names_session(source / "names.mefd")
    sessions["mt.mefd"] = build_mef_tools_session(source / "mt.mefd")
    sessions["factors.mefd"] = build_factors_session(source / "factors.mefd")
    sessions["arch.mefd.tar"] = build_archive(staging, source / "arch.mefd.tar")
    nested = source / "sub-01" / "ses-1"
    nested.mkdir(parents=True)
    sessions["sub-01/ses-1/night1.mefd"] = build_small_session(nested / "night1.mefd", 808)
    (nested / "notes.txt").write_text("a stray file next to a session\n")

    broken = {}
    (source / "empty.mefd").mkdir()
    broken["empty.mefd"] = source / "empty.mefd"
    broken["garbage.mefd"] = build_garbage_session(source / "garbage.mefd")

    # decoys: a folder that leads to no session, stray files
    (source / "unrelated" / "data").mkdir(parents=True)
    (source / "unrelated" / "data" / "readme.txt").write_text("no session here\n")
    (source / "stray.txt").write_text("stray\n")
    (source / "fake.mefd.txt").write_text("a file, not a session\n")

    # a session outside SOURCE and symlinks leading to it
    out_session = build_small_session(outside / "outside.mefd", 909)
    os.symlink(outside, source / "escape")
    os.symlink(out_session, source / "escape.mefd")
    os.symlink(os.path.relpath(out_session, nested), nested / "up.mefd")

    hidden = ["unrelated", "stray.txt", "fake.mefd.txt", "escape", "escape.mefd",
              "sub-01/ses-1/notes.txt", "sub-01/ses-1/up.mefd"]
    return Corpus(source=source, sessions=sessions, broken=broken, hidden=hidden,
                  outside=out_session, shown_dirs=["sub-01", "sub-01/ses-1"])


@dataclass
class Encrypted:
    source: Path  # SOURCE folder holding enc.mefd
    session: Path
    rel: str
    password1: str
    password2: str


def build_encrypted(base):
    base = Path(base)
    source = base / "enc_source"
    source.mkdir(parents=True, exist_ok=True)
    path = source / "enc.mefd"
    rng = _rng(1001)
    meta = {"subject_name_1": "Jane", "subject_id": "S-007"}
    with mef3io.Writer(str(path), overwrite=True, password1=ENC_PASSWORD1,
                       password2=ENC_PASSWORD2, units="uV", metadata=meta) as w:
        x = _signal(rng, 256 * 20)
        x[600:800] = np.nan
        w.write("E1", x, T0, fs=256.0, precision=3)
        w.write("E2", _signal(rng, 512 * 15), T0 + 1_000_000, fs=512.0, precision=3)
    try:
        _reader(path)
    except mef3io.PasswordError:
        pass
    else:  # pragma: no cover
        raise AssertionError("encrypted session opened without password")
    return Encrypted(source, path, "enc.mefd", ENC_PASSWORD1, ENC_PASSWORD2)


@dataclass
class Damaged:
    source: Path  # SOURCE folder holding dmg.mefd
    session: Path  # the damaged session
    pristine: Path  # an undamaged copy (outside SOURCE): the reference
    rel: str
    channel: str  # the damaged channel
    good_channel: str
    bad_t0: int  # uUTC window of the damaged block, half-open
    bad_t1: int
    bad_first_sample: int  # grid sample range [first, last) the block covers
    bad_last_sample: int


def build_damaged(base, minutes=60):
    """A one-hour 256 Hz session; one RED block of channel 'bad' is corrupted.

    Verified here with mef3io directly: reading the damaged block's window
    raises CrcError, reading any other block of the channel works.
    """
    base = Path(base)
    source = base / "dmg_source"
    source.mkdir(parents=True, exist_ok=True)
    pristine = base / "dmg_pristine" / "dmg.mefd"
    pristine.parent.mkdir(parents=True, exist_ok=True)
    rng = _rng(1101)
    n = 256 * 60 * minutes
    with mef3io.Writer(str(pristine), overwrite=True, units="uV") as w:
        w.write("bad", _signal(rng, n), T0, fs=256.0, precision=3)
        w.write("good", _signal(rng, n), T0, fs=256.0, precision=3)
    session = source / "dmg.mefd"
    shutil.copytree(pristine, session)

    r = _reader(pristine)
    toc = r.toc("bad")
    r.close()
    (tdat,) = list((session / "bad.timd").glob("*.segd/*.tdat"))
    clean = tdat.read_bytes()

    def block_of(reader):
        failing = []
        for k, blk in enumerate(toc):
            t_a = blk["start_uutc"]
            t_b = toc[k + 1]["start_uutc"] if k + 1 < len(toc) else reader.info("bad")["end_time"]
            try:
                reader.read("bad", t_a, t_b, dtype="float32")
            except mef3io.CrcError:
                failing.append((k, t_a, t_b))
        return failing

    for shift in (0, 37, 101, 997, 4099):
        b = bytearray(clean)
        mid = len(b) // 2 + shift
        for i in range(mid, mid + 16):
            b[i] ^= 0xFF
        tdat.write_bytes(bytes(b))
        try:
            rd = _reader(session)
        except mef3io.MefError:
            continue
        try:
            failing = block_of(rd)
            g = session_grid(str(pristine))
            try:
                rd.read("bad", g.t0, g.t_end, dtype="float32")
                whole_fails = False
            except mef3io.CrcError:
                whole_fails = True
            rd.read("good", g.t0, g.t_end, dtype="float32")
        finally:
            rd.close()
        if len(failing) == 1 and whole_fails:
            break
    else:  # pragma: no cover
        raise AssertionError("could not produce a single CRC-failing block")

    k, bad_t0, bad_t1 = failing[0]
    fs = 256.0
    first = toc[k]["start_sample"]
    last = first + toc[k]["number_of_samples"]
    # the channel starts at t0 and has no gaps: block samples are grid samples
    assert round((bad_t0 - g.t0) * fs / 1e6) == first
    return Damaged(source=source, session=session, pristine=pristine, rel="dmg.mefd",
                   channel="bad", good_channel="good", bad_t0=bad_t0, bad_t1=bad_t1,
                   bad_first_sample=first, bad_last_sample=last)


def add_session_atomically(source_dir, rel, seed=4242):
    """Write a new session next to SOURCE and rename it in (as a copy would)."""
    source_dir = Path(source_dir)
    target = source_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = source_dir.parent / (".staging-" + target.name)
    if staging.exists():
        shutil.rmtree(staging)
    build_small_session(staging, seed)
    os.rename(staging, target)
    return target
