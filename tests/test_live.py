"""Recordings that change while mounted (issue 14, items 1 and 2), through real mounts.

A session written to while mounted (mef3io's Writer appending to the current
segment, a new segment, a new channel, new records) shows the new data within
the refresh delay: sizes, info.json, records and samples, through a handle
held open, a new open and a memmap whose pages were cached; NaN samples of a
channel that lagged turn into data; bytes that were data never change. A
session written anew in place is a new session: an old handle gets ESTALE,
and no page, tile or reader of the old one is served again.

Every wait is bounded (a refresh that never comes fails the test, it does
not hang it).
"""
from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import time

import numpy as np
import pytest

import mef3io

from mef3fs.growth import SETTLE, STUCK, settled
from mef3fs.refresh import signature as take_signature
from mef3fs.session import Session
from tests.conftest import read_info, read_stats
from tests.test_trust import NO_DAC
from tests.sessions import T0, _reader, _rng, _signal

REFRESH = "0.2"
WAIT = 15.0           # seconds a change may take to show (the refresh is 0.2 s; CI is slow)


def ref_of(session, channel):
    """DESIGN.md's reference, read now (no cache: the session changes)."""
    r = _reader(session)
    try:
        infos = [r.info(c) for c in r.channels]
        t0 = min(i["start_time"] for i in infos)
        t1 = max(i["end_time"] for i in infos)
        return np.ascontiguousarray(r.read(channel, t0, t1, dtype="float32"), dtype="<f4")
    finally:
        r.close()


def wait_for(what, condition, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def same_bits(a, b):
    return np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


@pytest.fixture
def live(tmp_path):
    """A session of two channels at 256 Hz: A 20 s, B 10 s (so B's last 10 s are NaN)."""
    src = tmp_path / "src"
    path = src / "live.mefd"
    rng = _rng(2024)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        w.write("A", _signal(rng, 256 * 20), T0, fs=256.0, precision=3)
        w.write("B", _signal(rng, 256 * 10), T0, fs=256.0, precision=3)
    return src, path, rng


def test_blocks_appended_to_a_segment_show_everywhere(live, mount_fs):
    src, path, rng = live
    m = mount_fs(src, "--refresh", REFRESH, "--workers", "1")
    sdir = m.root / "live.mefd"
    held = open(sdir / "B.f32", "rb")
    before = np.frombuffer(held.read(), dtype="<f4").copy()
    assert len(before) == 256 * 20 and np.isnan(before[256 * 10:]).all()
    mapped_file = open(sdir / "A.f32", "rb")
    mapped = mmap.mmap(mapped_file.fileno(), 0, prot=mmap.PROT_READ)
    a_before = np.frombuffer(mapped, dtype="<f4").copy()
    try:
        with mef3io.Writer(str(path), units="uV") as w:        # reopens: appends to the segments
            w.write("B", _signal(rng, 256 * 10), T0 + 10_000_000, fs=256.0, precision=3)
            w.write("A", _signal(rng, 256 * 5), T0 + 20_000_000, fs=256.0, precision=3)
            w.write_annotations([{"time": T0 + 21_000_000, "type": "Note", "text": "appended"}])
        n = 256 * 25
        wait_for("the new size", lambda: os.stat(sdir / "B.f32").st_size == 4 * n)
        ref_a, ref_b = ref_of(path, "A"), ref_of(path, "B")
        assert len(ref_b) == n
        # bytes that were data never change; NaN placeholders of the lagging channel became data
        assert same_bits(ref_b[:256 * 10], before[:256 * 10])
        assert not np.isnan(ref_b[256 * 10:256 * 20]).any()
        # the handle held open re-reads its end and receives the new samples
        held.seek(0)
        assert same_bits(np.frombuffer(held.read(), dtype="<f4"), ref_b)
        # a new open, and the memmap whose pages were cached, see the same
        assert same_bits(np.fromfile(sdir / "B.f32", dtype="<f4"), ref_b)
        assert same_bits(np.frombuffer(mapped, dtype="<f4"), ref_a[:256 * 20])
        assert same_bits(a_before, ref_a[:256 * 20])
        info = read_info(sdir)
        assert [c["number_of_samples"] for c in info["channels"]] == [n, n]
        assert {c["name"]: c["end_uutc"] for c in info["channels"]} == {
            "A": T0 + 25_000_000, "B": T0 + 20_000_000}
        with open(sdir / "records.json", "rb") as f:
            assert any(r.get("text") == "appended" for r in json.loads(f.read()))
        npy = np.load(sdir / "rates" / "256Hz.npy")
        assert npy.shape == (2, n) and same_bits(npy[1], ref_b)
        assert read_stats(m)["decode_errors"] == 0
    finally:
        del a_before
        mapped.close()
        mapped_file.close()
        held.close()


def _in_place(file, data: bytes) -> None:
    """Write a file's new bytes into the same inode, as an appending writer leaves it."""
    with open(file, "r+b") as f:
        f.write(data)
        f.truncate(len(data))


def test_an_append_caught_half_way_is_not_a_new_session(live, mount_fs, tmp_path):
    """mef3io's Writer appends a block in steps (data, index entry, headers, metadata).
    A refresh between two of them must not take the session for one written anew:
    that verdict cannot be taken back, and a handle held open would get ESTALE."""
    src, path, rng = live
    m = mount_fs(src, "--refresh", REFRESH, "--workers", "1")
    sdir = m.root / "live.mefd"
    n = 256 * 25
    with open(sdir / "B.f32", "rb") as held:
        held.read()
        with mef3io.Writer(str(path), units="uV") as w:     # a whole append first: the mount
            w.write("A", _signal(rng, 256 * 5), T0 + 20_000_000, fs=256.0, precision=3)
        wait_for("the new size", lambda: os.stat(sdir / "B.f32").st_size == 4 * n)   # watches its files now
        held.seek(0)
        before = held.read()                      # B's blocks are in the index cache
        after = tmp_path / "after.mefd"           # what the next append leaves
        shutil.copytree(path, after)
        with mef3io.Writer(str(after), units="uV") as w:
            w.write("B", _signal(rng, 256 * 10), T0 + 10_000_000, fs=256.0, precision=3)
        seg = "B.timd/B-000000.segd/B-000000"
        old_data, old_index = (path / f"{seg}.tdat").read_bytes(), (path / f"{seg}.tidx").read_bytes()
        new_data, new_index = (after / f"{seg}.tdat").read_bytes(), (after / f"{seg}.tidx").read_bytes()
        _in_place(path / f"{seg}.tdat", old_data + new_data[len(old_data):])    # the block, not the header
        _in_place(path / f"{seg}.tidx", new_index[:len(old_index) + 20])        # its entry half written
        time.sleep(8 * float(REFRESH))            # refreshes see it, and see it stay
        held.seek(0)
        assert held.read() == before              # still the session as it was: no ESTALE
        assert "B.f32" in os.listdir(sdir)
        for ext in ("tidx", "tdat"):              # the writer finishes: headers, then metadata
            _in_place(path / f"{seg}.{ext}", (after / f"{seg}.{ext}").read_bytes())
        (path / f"{seg}.tmet.tmp").write_bytes((after / f"{seg}.tmet").read_bytes())
        os.replace(path / f"{seg}.tmet.tmp", path / f"{seg}.tmet")
        ref_b = ref_of(path, "B")
        assert len(ref_b) == n and not np.isnan(ref_b[256 * 10:256 * 20]).any()

        def held_reads_it():
            held.seek(0)
            return same_bits(np.frombuffer(held.read(), dtype="<f4"), ref_b)
        wait_for("the appended block through the held handle", held_reads_it)
    assert same_bits(np.fromfile(sdir / "A.f32", dtype="<f4"), ref_of(path, "A"))


def test_a_session_with_a_channel_we_may_not_read_grows_in_place(live, wrapped_mount):
    """A session opened through a readable view (a channel folder the daemon may not
    list) is compared, when it grows, through that view: read through the session's
    own path, every growth failed to open and was taken for a session written anew,
    so a handle held open got ESTALE at every append."""
    src, path, rng = live
    with mef3io.Writer(str(path), units="uV") as w:
        w.write("E", _signal(rng, 256 * 20), T0, fs=256.0, precision=3)
    os.chmod(path / "E.timd", 0)
    try:
        m = wrapped_mount(src, "--refresh", REFRESH, "--workers", "1", prefix=NO_DAC)
        sdir = m.root / "live.mefd"
        assert [c["name"] for c in read_info(sdir)["left_out"]] == ["E"]
        with open(sdir / "B.f32", "rb") as held:
            assert len(held.read()) == 4 * 256 * 20
            time.sleep(4 * float(REFRESH))          # in use: its files are watched from here
            for k in range(2):                      # each append is growth, the handle stays good
                with mef3io.Writer(str(path), units="uV") as w:
                    w.write("A", _signal(rng, 256 * 5), T0 + (20 + 5 * k) * 1_000_000, fs=256.0, precision=3)
                n = 256 * (25 + 5 * k)
                wait_for("the new size", lambda: os.stat(sdir / "A.f32").st_size == 4 * n)
                time.sleep(8 * float(REFRESH) + SETTLE)     # a verdict "written anew" would have come
                held.seek(0)
                got = np.frombuffer(held.read(), dtype="<f4")   # ESTALE if it were another session
                assert len(got) == n and same_bits(got, ref_of(path, "B"))
        assert same_bits(np.fromfile(sdir / "A.f32", dtype="<f4"), ref_of(path, "A"))
        assert read_stats(m)["decode_errors"] == 0
    finally:
        os.chmod(path / "E.timd", 0o755)


def test_a_contradicting_read_is_believed_only_once_the_files_stay_put(live):
    """growth.settled: SETTLE seconds of the same signature, STUCK with an index entry half written."""
    _, path, _ = live
    session = Session(str(path), str(path))
    sig = take_signature(str(path))
    assert not settled(session, sig, now=100.0)                 # first seen: not yet
    assert not settled(session, sig, now=100.0 + SETTLE / 2)
    assert settled(session, sig, now=100.0 + SETTLE)
    index = next(path.rglob("*.tidx"))
    with open(index, "ab") as f:
        f.write(b"\0" * 20)                                    # an entry half written
    half = take_signature(str(path))
    assert half != sig and half.half_written() and not sig.half_written()
    assert not settled(session, half, now=200.0)                # the files changed: the clock starts again
    assert not settled(session, half, now=200.0 + SETTLE)
    assert settled(session, half, now=200.0 + STUCK)


def test_new_segments_and_channels_appear(live, mount_fs):
    src, path, rng = live
    m = mount_fs(src, "--refresh", REFRESH, "--workers", "0")
    sdir = m.root / "live.mefd"
    with open(sdir / "A.f32", "rb") as held:
        held.read()
        assert sorted(os.listdir(sdir)) == sorted(set(os.listdir(sdir)) - {"C.f32", "C.npy"})
        with mef3io.Writer(str(path), units="uV") as w:
            w.write("A", _signal(rng, 256 * 5), T0 + 30_000_000, fs=256.0, precision=3, new_segment=True)
            w.write("C", _signal(rng, 512 * 4), T0 + 2_000_000, fs=512.0, precision=3)
        wait_for("the new channel", lambda: "C.f32" in os.listdir(sdir))
        info = read_info(sdir)
        assert [c["name"] for c in info["channels"]] == ["A", "B", "C"]
        assert len(info["channels"][0]["segments"]) == 2
        assert "rates" in os.listdir(sdir) and "512Hz.npy" in os.listdir(sdir / "rates")
        for ch in ("A", "B", "C"):
            assert same_bits(np.fromfile(sdir / f"{ch}.f32", dtype="<f4"), ref_of(path, ch)), ch
        held.seek(0)
        assert same_bits(np.frombuffer(held.read(), dtype="<f4"), ref_of(path, "A"))


def test_a_session_written_anew_is_a_new_session(live, mount_fs):
    src, path, rng = live
    m = mount_fs(src, "--refresh", REFRESH, "--workers", "1")
    sdir = m.root / "live.mefd"
    old_a = np.fromfile(sdir / "A.f32", dtype="<f4")          # in the page cache and the tile cache
    held = open(sdir / "A.f32", "rb")
    held.read(4096)
    try:
        with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
            w.write("A", _signal(rng, 256 * 20), T0, fs=256.0, precision=3)
            w.write("B", _signal(rng, 256 * 20), T0, fs=256.0, precision=3)
        new_a, new_b = ref_of(path, "A"), ref_of(path, "B")
        assert not same_bits(new_a, old_a)

        def stale():
            try:
                held.seek(0)
                held.read()
            except OSError as exc:
                return exc.errno
            return None
        assert wait_for("an error on the old handle", stale) in (errno.ESTALE, errno.EIO)
        # nothing of the old session is served again: not its pages, tiles or readers.
        # (A refresh may have caught the writer half way: the one after it shows the rest.)
        def new_data():
            try:
                return (same_bits(np.fromfile(sdir / "A.f32", dtype="<f4"), new_a)
                        and same_bits(np.fromfile(sdir / "B.f32", dtype="<f4"), new_b))
            except FileNotFoundError:
                return False
        wait_for("the new session's data", new_data)
        with open(sdir / "A.f32", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            assert same_bits(np.frombuffer(mm, dtype="<f4").copy(), new_a)
    finally:
        held.close()


def test_a_session_written_anew_while_nothing_is_open(live, mount_fs):
    """No handle open, no refresh: the next lookup finds the folder changed."""
    src, path, rng = live
    m = mount_fs(src, "--refresh", "0", "--workers", "0")
    sdir = m.root / "live.mefd"
    old_b = np.fromfile(sdir / "B.f32", dtype="<f4")
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        w.write("A", _signal(rng, 256 * 20), T0, fs=256.0, precision=3)
        w.write("B", _signal(rng, 256 * 20), T0, fs=256.0, precision=3)
    new_b = ref_of(path, "B")
    assert not same_bits(new_b[:len(old_b)], old_b)
    # the kernel may trust its cached lookup for the attribute timeout; the data is new at once
    wait_for("the new session", lambda: same_bits(np.fromfile(sdir / "B.f32", dtype="<f4"), new_b))
