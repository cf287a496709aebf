"""The self-describing views of a session, through a real mount.

* ``<ch>.npy``: ``np.load(path, mmap_mode="r")`` gives float32 of shape (n,)
  with no info.json, and its data equals the ``.f32`` file and mef3io's
  reference byte for byte.
* ``rates/<fs>Hz.npy``: one 2-D (channels, samples) array per sampling rate,
  rows in info.json's channel order for that rate, each row equal to its
  channel's ``.f32`` file.
* ``records.json``: what ``mef3io.Reader(session).records(level="all")``
  returns (type, time, text, channel).
* extended attributes on ``.f32``/``.npy`` files: the values of info.json.
* info.json and records.json are strict JSON (no NaN/Infinity: MATLAB's
  ``jsondecode`` and other strict readers must take them).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings

import mef3io
import numpy as np
import pytest

from tests.sessions import reference

XATTRS = ("user.mef3fs.sampling_frequency", "user.mef3fs.grid_start_uutc",
          "user.mef3fs.units", "user.mef3fs.number_of_samples", "user.mef3fs.channel")


def strict_json(path):
    """json.load that refuses NaN / Infinity (not JSON; jsondecode rejects them)."""
    def bad(token):
        raise ValueError(f"{path}: {token} is not JSON")
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"), parse_constant=bad)


@pytest.fixture(scope="module")
def mounted(module_mount_fs, corpus):
    # small tiles and a small cache: the views must be right whatever the tiling
    m = module_mount_fs(corpus.source, "--workers", "2", "--tile-seconds", "3",
                        "--cache-size", "8M")
    return m.root, corpus


@pytest.fixture(params=["gaps.mefd", "rates.mefd", "names.mefd", "mt.mefd", "factors.mefd",
                        "arch.mefd.tar", "sub-01/ses-1/night1.mefd"])
def session(request, mounted):
    root, corpus = mounted
    rel = request.param
    assert rel in corpus.sessions, f"corpus has no {rel}: {sorted(corpus.sessions)}"
    folder = root / rel
    info = strict_json(folder / "info.json")
    assert info["status"] == "ok", info
    return folder, corpus.sessions[rel], info


def test_corpus_is_covered(mounted):
    _, corpus = mounted
    assert set(corpus.sessions) == {"gaps.mefd", "rates.mefd", "names.mefd", "mt.mefd",
                                    "factors.mefd", "arch.mefd.tar",
                                    "sub-01/ses-1/night1.mefd"}


# ---------------------------------------------------------------------------
# per-channel .npy
# ---------------------------------------------------------------------------

def test_channel_npy_equals_f32_and_reference(session):
    folder, on_disk, info = session
    assert info["channels"], "no channels"
    for ch in info["channels"]:
        f32 = (folder / ch["file"]).read_bytes()
        want = reference(on_disk, ch["name"])
        assert f32 == want.tobytes(), f"{ch['name']}: .f32 differs from the reference"

        path = folder / ch["npy_file"]
        assert path.suffix == ".npy" and path.is_file()
        arr = np.load(path, mmap_mode="r")
        assert isinstance(arr, np.memmap)
        assert arr.dtype == np.dtype("<f4")
        assert arr.shape == (ch["number_of_samples"],) == want.shape
        assert arr.tobytes() == f32, f"{ch['npy_file']}: data differs from {ch['file']}"

        # a valid NPY v1.0 header, data 64-byte aligned, and exactly header + data
        with open(path, "rb") as f:
            assert np.lib.format.read_magic(f) == (1, 0)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
        assert (shape, fortran, dtype) == ((ch["number_of_samples"],), False, np.dtype("<f4"))
        assert offset % 64 == 0
        assert path.stat().st_size == offset + len(f32)
        assert arr.offset == offset

        # a plain load agrees too (not only the memmap)
        assert np.load(path).tobytes() == f32


def test_npy_slices_through_memmap(session):
    """Slices of the memmap (page faults served by the mount) equal the reference."""
    folder, on_disk, info = session
    rng = np.random.default_rng(5)
    for ch in info["channels"]:
        arr = np.load(folder / ch["npy_file"], mmap_mode="r")
        want = reference(on_disk, ch["name"])
        n = len(want)
        for _ in range(20):
            a = int(rng.integers(0, n))
            b = int(rng.integers(a, min(n, a + 5000) + 1))
            assert arr[a:b].tobytes() == want[a:b].tobytes(), (ch["name"], a, b)
        assert arr[-1:].tobytes() == want[-1:].tobytes()


# ---------------------------------------------------------------------------
# per-rate 2-D .npy
# ---------------------------------------------------------------------------

def test_rate_matrices(session):
    folder, on_disk, info = session
    by_name = {c["name"]: c for c in info["channels"]}
    rates_in_order = []
    for c in info["channels"]:
        if c["sampling_frequency"] not in rates_in_order:
            rates_in_order.append(c["sampling_frequency"])

    grids = info["grids"]
    assert sorted(g["sampling_frequency"] for g in grids) == sorted(rates_in_order), \
        "info.json's grids must have one entry per sampling rate"
    listed = sorted(g["npy_file"] for g in grids)
    assert listed == sorted("rates/" + p for p in os.listdir(folder / "rates")), \
        "rates/ must hold exactly the files info.json lists"

    for g in grids:
        fs = g["sampling_frequency"]
        expected_rows = [c["name"] for c in info["channels"] if c["sampling_frequency"] == fs]
        assert g["channels"] == expected_rows, \
            f"{fs} Hz: rows must be the channels of that rate in info.json's order"
        path = folder / g["npy_file"]
        mat = np.load(path, mmap_mode="r")
        n = by_name[expected_rows[0]]["number_of_samples"]
        assert mat.dtype == np.dtype("<f4")
        assert mat.shape == (len(expected_rows), n) and g["number_of_samples"] == n
        assert mat.flags["C_CONTIGUOUS"]
        for r, name in enumerate(expected_rows):
            f32 = (folder / by_name[name]["file"]).read_bytes()
            assert mat[r].tobytes() == f32, f"{g['npy_file']} row {r} ({name}) differs"
            assert mat[r].tobytes() == reference(on_disk, name).tobytes()
        # a column: one instant, every channel of the rate
        k = n // 2
        col = np.array([reference(on_disk, name)[k] for name in expected_rows], dtype="<f4")
        assert mat[:, k].tobytes() == col.tobytes()


def test_rate_file_names_round_trip(mounted):
    """255.99966850667516 Hz and 499.907 Hz name their files without losing digits."""
    root, _ = mounted
    info = strict_json(root / "rates.mefd" / "info.json")
    rates = {g["sampling_frequency"] for g in info["grids"]}
    assert 255.99966850667516 in rates and 499.907 in rates and 32768.0 in rates, rates
    for g in info["grids"]:
        label = g["npy_file"][len("rates/"):-len("Hz.npy")]
        assert float(label) == g["sampling_frequency"]


# ---------------------------------------------------------------------------
# records.json
# ---------------------------------------------------------------------------

def _key(rec):
    return (rec.get("type"), rec.get("time"), rec.get("text"), rec.get("channel"))


def _mef3io_records(on_disk):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = mef3io.Reader(str(on_disk))
        try:
            return r.records(level="all")
        finally:
            r.close()


def test_records_json_equals_mef3io(session):
    folder, on_disk, info = session
    assert info.get("records_file", "records.json") == "records.json"
    got = strict_json(folder / "records.json")
    want = _mef3io_records(on_disk)
    assert isinstance(got, list), f"records.json should be a list of records, got {got!r:.200}"
    assert [_key(r) for r in got] == [_key(r) for r in want]
    # and every other field mef3io gives (level, segment, body fields) as JSON
    as_json = json.loads(json.dumps(want, default=lambda v: v.decode("utf-8", "replace")
                                    if isinstance(v, bytes) else str(v)))
    assert got == as_json
    for rec in got:
        assert isinstance(rec["time"], int), "record times are integer uUTC"


def test_records_are_there(mounted):
    """The gaps session has session- and channel-level notes: not a vacuous check."""
    root, corpus = mounted
    got = strict_json(root / "gaps.mefd" / "records.json")
    keys = {(r["type"], r["text"], r["channel"]) for r in got}
    assert ("Note", "start", None) in keys
    assert ("Note", "gap ends", None) in keys
    assert ("Note", "LA1 note", "LA1") in keys
    t0 = min(r["time"] for r in got)
    assert t0 == 1_600_000_000_123_456 + 1_000_000


# ---------------------------------------------------------------------------
# extended attributes
# ---------------------------------------------------------------------------

def _expected_xattrs(ch):
    return {
        "user.mef3fs.channel": ch["name"],
        "user.mef3fs.sampling_frequency": ch["sampling_frequency"],
        "user.mef3fs.grid_start_uutc": ch["grid_start_uutc"],
        "user.mef3fs.units": ch["units"] or "",
        "user.mef3fs.number_of_samples": ch["number_of_samples"],
    }


def _parse(name, raw):
    text = raw.decode("utf-8")
    if name == "user.mef3fs.sampling_frequency":
        return float(text)
    if name in ("user.mef3fs.grid_start_uutc", "user.mef3fs.number_of_samples"):
        return int(text)
    return text


def test_xattrs_equal_info_json(session):
    folder, _, info = session
    for ch in info["channels"]:
        for fname in (ch["file"], ch["npy_file"]):
            path = folder / fname
            names = set(os.listxattr(path))
            assert set(XATTRS) <= names, f"{fname}: {sorted(names)}"
            for key, want in _expected_xattrs(ch).items():
                got = _parse(key, os.getxattr(path, key))
                assert got == want, f"{fname} {key}: {got!r} != info.json {want!r}"
        with pytest.raises(OSError):
            os.getxattr(folder / ch["file"], "user.mef3fs.no_such_attribute")


@pytest.mark.skipif(shutil.which("getfattr") is None, reason="getfattr (Debian: attr) not installed")
def test_getfattr_shows_them(mounted):
    root, _ = mounted
    path = root / "gaps.mefd" / "HF.f32"
    res = subprocess.run(["getfattr", "-d", "--absolute-names", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert 'user.mef3fs.sampling_frequency="1000' in res.stdout, res.stdout
    assert 'user.mef3fs.units="uV"' in res.stdout, res.stdout
    assert 'user.mef3fs.channel="HF"' in res.stdout, res.stdout
