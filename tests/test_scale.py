"""Listing costs metadata, not blocks: block indexes are read per segment on first read.

Through real mounts of sessions from both writers: walking every folder,
stat-ing every file, reading info.json, records.json and the xattrs reads no
block index and makes no worker open a session (the stats and the workers'
own /proc counters say so); a read loads only the pieces (segments) of the
channel it touches; an index dropped under a tiny --index-size is read again
and the bytes stay exact; gaps.json states every gap, checked against
mef3io's block table (toc), and every sample inside a gap reads NaN. Beyond
MAX_SESSIONS, opened sessions are let go and opened again when used, and
what is let go is freed at once (no reference cycle is left to Python's
collector).
"""
from __future__ import annotations

import json
import os
import time

from pathlib import Path

import numpy as np
import pytest

import mef3io

from mef3fs import dirflags
from mef3fs.fuselib import fuse
from mef3fs.fuseops import OPEN_DIRS
from mef3fs.namespace import MAX_SESSIONS, STATS_FILE
from tests.conftest import channel_files, drop_page_cache, read_info, read_stats, reference
from tests.sessions import T0, _reader, _rng, _signal, build_small_session

SESSIONS = ("gaps.mefd", "rates.mefd", "names.mefd", "mt.mefd", "factors.mefd", "arch.mefd.tar",
            "sub-01/ses-1/night1.mefd")


def walk(root):
    """What `ls -lR` and a file browser do: every folder listed, every entry stat-ed,
    every info.json, records.json and xattr read. Returns the number of files."""
    files = 0
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            os.lstat(path)
            try:
                os.listxattr(path)
            except OSError:
                pass
        for name in names:
            files += 1
            path = os.path.join(folder, name)
            if name in ("info.json", "records.json"):
                with open(path, "rb") as f:
                    json.loads(f.read())
            elif name.endswith(".f32"):
                os.getxattr(path, "user.mef3fs.number_of_samples")
    return files


def workers_io(stats):
    """Bytes each decoder worker has read (its pipe included), from /proc."""
    out = {}
    for pid in stats["worker_pids"]:
        with open(f"/proc/{pid}/io") as f:
            out[pid] = int(next(line for line in f if line.startswith("rchar")).split()[1])
    return out


def settled_workers_io(mount, timeout=15.0):
    """Workers' read counters once they have finished starting up (imports)."""
    deadline = time.monotonic() + timeout
    last = workers_io(read_stats(mount))
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = workers_io(read_stats(mount))
        if now == last and len(now) == read_stats(mount)["workers"]:
            return now
        last = now
    raise AssertionError(f"decoder workers never went idle: {last}")


def test_listing_reads_no_block_index_and_opens_nothing_in_workers(corpus, mount_fs):
    m = mount_fs(corpus.source, "--workers", "2")
    before = settled_workers_io(m)
    files = walk(m.root)
    assert files > 50
    stats = read_stats(m)
    assert stats["indexes_loaded"] == 0, stats
    assert stats["misses"] == 0 and stats["decodes_foreground"] == 0, stats
    assert stats["sessions_open"] >= len(SESSIONS), stats
    assert workers_io(stats) == before, "listing made decoder workers read something"
    # the first read of one channel loads its index, and only then do workers open the session
    f32 = channel_files(m.root / "gaps.mefd")["LA2"]
    got = np.fromfile(f32, dtype="<f4")
    np.testing.assert_array_equal(got.view(np.uint32),
                                  reference(corpus.sessions["gaps.mefd"], "LA2").view(np.uint32))
    stats = read_stats(m)
    assert stats["indexes_loaded"] == 1, stats          # LA2: one segment, one piece
    deadline = time.monotonic() + 10
    while workers_io(read_stats(m)) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(workers_io(read_stats(m))[p] > before[p] for p in before), \
        "the workers did not open the session on its first read"


def tree(root):
    """Every entry under root with what `ls -l` shows of it (but the stats file, which
    changes as we look); and how many folders are SOURCE's own (root included) and how
    many a session's."""
    entries, own, inside = {}, 0, 0
    for folder, dirs, names in os.walk(root):
        rel = os.path.relpath(folder, root)
        if any(p.lower().endswith((".mefd", ".mefd.tar")) for p in Path(rel).parts):
            inside += 1
        else:
            own += 1
        for name in dirs + names:
            if name == STATS_FILE:
                continue
            st = os.lstat(os.path.join(folder, name))
            entries[os.path.join(rel, name)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid)
    return entries, own, inside


@pytest.mark.skipif(fuse.fuse_version_major != 3 or fuse._libfuse.fuse_version() < dirflags.FIRST,
                    reason="libfuse before 3.12: the kernel is not asked to keep listings")
def test_the_kernel_keeps_a_session_folders_listing_while_it_trusts_it(corpus, mount_fs):
    """dirflags.py: a session's folders are listed by the daemon once, then by the kernel,
    for as long as it trusts the attributes the listing carried; SOURCE's own folders,
    which may change at any time, are listed by the daemon every time."""
    m = mount_fs(corpus.source, "--workers", "0", "-o", "attr_timeout=10,entry_timeout=10")
    first, own, inside = tree(m.root)
    assert inside > own > 1, (own, inside)
    listed = read_stats(m)["listings"]
    assert listed == own + inside
    assert tree(m.root)[0] == first
    assert read_stats(m)["listings"] - listed == own
    # told to trust nothing for long, the kernel gets every listing anew, attributes and all
    short = mount_fs(corpus.source, "--workers", "0", "-o", "attr_timeout=0.5,entry_timeout=0.5")
    assert tree(short.root)[0] == first
    listed = read_stats(short)["listings"]
    assert tree(short.root)[0] == first
    assert read_stats(short)["listings"] == 2 * listed == 2 * (own + inside)


def test_a_folder_opened_before_hundreds_of_others_still_lists_in_full(corpus, mount_fs):
    """releasedir is left to libfuse (fuseops.readdir_entries): the daemon keeps the
    state of the newest OPEN_DIRS open folders, and one opened before them is listed
    again from its path, in full."""
    m = mount_fs(corpus.source, "--workers", "0")
    want = sorted(os.listdir(m.root))
    first = os.open(m.root, os.O_RDONLY | os.O_DIRECTORY)   # SOURCE's: listed by the daemon
    try:
        for _ in range(OPEN_DIRS + 10):
            os.close(os.open(m.root / "sub-01", os.O_RDONLY | os.O_DIRECTORY))
        assert sorted(os.listdir(first)) == want
    finally:
        os.close(first)


def test_a_read_loads_only_the_segments_it_touches(corpus, mount_fs):
    m = mount_fs(corpus.source, "--workers", "0")
    session = corpus.sessions["gaps.mefd"]
    info = read_info(m.root / "gaps.mefd")
    la1 = next(c for c in info["channels"] if c["name"] == "LA1")
    assert len(la1["segments"]) == 2, la1["segments"]
    ref = reference(session, "LA1")
    path = m.root / "gaps.mefd" / la1["file"]
    first, second = la1["segments"]
    with open(path, "rb") as f:
        a = first["start_index"] + 100
        f.seek(4 * a)
        assert f.read(4 * 256) == ref[a:a + 256].tobytes()
        assert read_stats(m)["indexes_loaded"] == 1, "a read in segment 0 loaded more than its piece"
        b = second["start_index"] + 10
        f.seek(4 * b)
        assert f.read(4 * 256) == ref[b:b + 256].tobytes()
        assert read_stats(m)["indexes_loaded"] == 2
        f.seek(0)
        assert f.read() == ref.tobytes()
    assert read_stats(m)["indexes_loaded"] == 2


def test_an_index_dropped_under_pressure_is_read_again(corpus, mount_fs):
    # 1 byte of index memory: every load drops the one before
    m = mount_fs(corpus.source, "--workers", "0", "--index-size", "1", "--cache-size", "64K")
    session = corpus.sessions["gaps.mefd"]
    files = channel_files(m.root / "gaps.mefd")
    for rnd in range(2):
        for name in ("LA1", "LA2", "HF"):
            got = np.fromfile(files[name], dtype="<f4")
            np.testing.assert_array_equal(got.view(np.uint32), reference(session, name).view(np.uint32),
                                          err_msg=f"{name}, round {rnd}")
            drop_page_cache(files[name])
    stats = read_stats(m)
    assert stats["indexes_dropped"] >= 4, stats
    assert stats["indexes_loaded"] >= 8, stats          # 4 pieces (LA1 has two), twice
    assert stats["index_tables"] == 1 and stats["index_budget"] == 1, stats


def toc_gaps(session, channel, t0, fs):
    """Holes between blocks longer than half a sample, from mef3io's block table."""
    r = _reader(session)
    try:
        toc = r.toc(channel)
    finally:
        r.close()
    step = 1e6 / fs
    out = []
    for prev, nxt in zip(toc, toc[1:]):
        end = prev["start_uutc"] + prev["number_of_samples"] * step
        if nxt["start_uutc"] - end > step / 2:
            out.append((int(round(end)), int(nxt["start_uutc"])))
    return out


@pytest.fixture(scope="module")
def corpus_mount(corpus, module_mount_fs):
    return module_mount_fs(corpus.source, "--workers", "0")


@pytest.mark.parametrize("rel", ["gaps.mefd", "mt.mefd", "rates.mefd", "factors.mefd", "arch.mefd.tar"])
def test_gaps_json_states_every_gap(corpus, corpus_mount, rel):
    sdir = corpus_mount.root / rel
    info = read_info(sdir)
    assert info["gaps_file"] == "gaps.json"
    # made on first open: until then its size is unknown, stated as 0 (as /proc does)
    assert os.stat(sdir / "gaps.json").st_size == 0
    with open(sdir / info["gaps_file"], "rb") as f:
        gaps = json.loads(f.read())
    assert gaps["grid_start_uutc"] == info["start_uutc"]
    by_name = {c["name"]: c for c in gaps["channels"]}
    assert list(by_name) == [c["name"] for c in info["channels"]]
    total = 0
    for ch in info["channels"]:
        g = by_name[ch["name"]]
        assert g["file"] == ch["file"] and g["sampling_frequency"] == ch["sampling_frequency"]
        expect = toc_gaps(corpus.sessions[rel], ch["name"], info["start_uutc"], ch["sampling_frequency"])
        assert [(x["start_uutc"], x["end_uutc"]) for x in g["gaps"]] == expect, ch["name"]
        ref = reference(corpus.sessions[rel], ch["name"])
        for x in g["gaps"]:
            # the grid indices are exactly the NaN run of the file: data on both sides
            a, b = x["start_index"], x["end_index"]
            assert 0 < a < b <= len(ref), (ch["name"], x)
            assert np.isnan(ref[a:b]).all(), (ch["name"], x)
            assert not np.isnan(ref[a - 1]) and (b == len(ref) or not np.isnan(ref[b])), (ch["name"], x)
        total += len(g["gaps"])
    if rel == "gaps.mefd":
        assert total == 5, "the builder puts five gaps here (NaN runs, a segment gap, a late append)"


def test_info_json_is_the_same_for_any_recording_length(tmp_path, mount_fs):
    """info.json and the listing come from metadata: a session with 60x more
    blocks lists the same files with sizes 60x larger, reading no index."""
    src = tmp_path / "src"
    for name, seconds in (("short.mefd", 60), ("long.mefd", 3600)):
        rng = _rng(77)
        with mef3io.Writer(str(src / name), overwrite=True, units="uV", block_length=256) as w:
            for ch in ("A", "B"):
                w.write(ch, _signal(rng, 256 * seconds), T0, fs=256.0, precision=2)
    m = mount_fs(src, "--workers", "0")
    short, long = (read_info(m.root / n) for n in ("short.mefd", "long.mefd"))
    assert sorted(os.listdir(m.root / "short.mefd")) == sorted(os.listdir(m.root / "long.mefd"))
    assert [c["number_of_samples"] for c in long["channels"]] == [256 * 3600] * 2
    assert [s["number_of_blocks"] for c in long["channels"] for s in c["segments"]] == [3600] * 2
    assert [c["number_of_samples"] for c in short["channels"]] == [256 * 60] * 2
    assert os.stat(m.root / "long.mefd" / "A.f32").st_size == 4 * 256 * 3600
    assert read_stats(m)["indexes_loaded"] == 0


def test_sessions_beyond_the_limit_are_let_go_and_opened_again(tmp_path, mount_fs):
    src = tmp_path / "many"
    count = MAX_SESSIONS + 20
    for k in range(count):
        build_small_session(src / f"s{k:03d}.mefd", 5000 + k, seconds=1, channels=("C1",))
    m = mount_fs(src, "--workers", "0")
    for k in range(count):
        assert read_info(m.root / f"s{k:03d}.mefd")["status"] == "ok"
    stats = read_stats(m)
    assert stats["sessions_open"] == MAX_SESSIONS, stats
    # the first ones were let go; reading them opens them again, exactly
    for k in (0, 1, count - 1):
        got = np.fromfile(m.root / f"s{k:03d}.mefd" / "C1.f32", dtype="<f4")
        np.testing.assert_array_equal(got.view(np.uint32),
                                      reference(src / f"s{k:03d}.mefd", "C1").view(np.uint32))
    assert read_stats(m)["sessions_open"] == MAX_SESSIONS


def test_sessions_let_go_are_freed_without_the_cycle_collector(tmp_path):
    """A session the namespace lets go holds no reference cycle, so it is freed at once:
    the daemon's collector runs seldom (cli.GC_THRESHOLDS), and sessions left to it
    doubled the memory of a walk over 1,000 sessions."""
    import gc

    from mef3fs.index import IndexCache, MetaReaders
    from mef3fs.namespace import Namespace
    from mef3fs.session import Opener
    from mef3fs.stats import Stats

    src = tmp_path / "src"
    for k in range(12):
        build_small_session(src / f"s{k:02d}.mefd", 900 + k, seconds=1, channels=("C1", "C2"))
    readers = MetaReaders("")
    ns = Namespace(str(src), lambda p: p, Opener("", 10.0, readers, IndexCache(readers, 1 << 24, Stats())),
                   None, max_sessions=2)
    gc.collect()
    gc.disable()
    try:
        for k in range(12):
            assert ns.session(os.path.join(ns.source, f"s{k:02d}.mefd")).ok
        assert ns.sessions_open == 2
        assert gc.collect() == 0, "sessions let go were left to the cycle collector"
    finally:
        gc.enable()
