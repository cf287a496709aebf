"""Read-ahead by windows and streams, and the trace, shown through real mounts (issue 10).

What is claimed, and read off `.mef3fs-stats.json` or the `--trace` file
(never off a clock):

* a trace line per FUSE read says which tiles it needed and how each was
  served, for a known sequence of reads;
* random windows of every channel decode what the windows read and nothing
  ahead (tiles decoded <= 1.5x tiles used, no window read ahead);
* a scan uses at least 90% of what was read ahead for it;
* paging: after page k of every channel, page k+1 of every channel is
  decoded or in flight (reading it through another view finds no miss), and
  a jump back cancels what was read ahead for the other direction.

Every byte read is compared with the reference. Waits are bounded polls of
the stats file.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from mef3fs.windows import AHEAD_WINDOWS
from tests.conftest import read_stats
from tests.sessions import reference
from tests.test_engine import (LONG_CHANNELS, LONG_FS, LONG_SECONDS, NPY_HEADER, assert_same_bytes,
                               build_long_session, counters, delta, session_dir, wait_stats)

TILE = int(LONG_FS)            # --tile-seconds 1 on 1 s MEF blocks: tile k = samples [k*TILE, (k+1)*TILE)
KEYS = ("tiles_decoded", "tiles_used", "tiles_pushed", "readahead_scheduled", "readahead_hits",
        "readahead_cancelled", "readahead_unused", "misses", "hits", "windows", "windows_ahead")


@pytest.fixture(scope="module")
def long_source(tmp_path_factory):
    src = tmp_path_factory.mktemp("readahead-long")
    build_long_session(src / "long.mefd")
    return src


def mount_ready(mount_fs, source, *args):
    m = mount_fs(source, *args)
    wait_stats(m, lambda s: s["workers_ready"] >= s["workers"], "decoder workers ready")
    return m


def settle(m):
    """Read-ahead decided (the planner may wait for a pause in the reads), landed and
    stored into the page cache."""
    return wait_stats(m, lambda s: s["tiles_in_flight"] == 0 and s["readahead_pending"] == 0
                      and s["pushes_pending"] == 0 and s["jobs_pending"] == 0, "read-ahead settled")


def memmaps(d) -> dict:
    """A viewer's view of the session folder d: one np.memmap per channel file."""
    return {ch: np.memmap(d / f"{ch}.f32", dtype="<f4", mode="r") for ch in LONG_CHANNELS}


def tiles_under(a: int, n: int) -> int:
    """Tiles under the 4 KiB pages that hold samples [a, a + n) (what a read of them decodes)."""
    lo, hi = a // 1024 * 1024, -(-(a + n) // 1024) * 1024
    return (hi - 1) // TILE - lo // TILE + 1


def window(maps, session, ch, a, n):
    got = np.asarray(maps[ch][a:a + n])
    np.testing.assert_array_equal(got.view(np.uint32), reference(session, ch)[a:a + n].view(np.uint32),
                                  err_msg=f"{ch} [{a}, {a + n})")


# ---------------------------------------------------------------------------
# the trace
# ---------------------------------------------------------------------------

def test_trace_says_how_each_tile_of_each_read_was_served(mount_fs, long_source, tmp_path):
    trace = tmp_path / "trace.jsonl"
    m = mount_ready(mount_fs, long_source, "--workers", "1", "--readahead", "0", "--tile-seconds", "1",
                    "--trace", trace)
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    want = reference(session, "k2").tobytes()
    # page-aligned reads of at most 128 KiB: each is one FUSE request, in this order
    reads = [("k2.f32", 0, 4096), ("k2.f32", 8192, 4096), ("k2.f32", 126976, 8192),
             ("k2.f32", 40 * 4096, 4096), ("k2.npy", 4096 * 3, 4096), ("k2.f32", 4096 * 218, 65536)]
    for name, off, ln in reads:
        fd = os.open(d / name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            got = os.pread(fd, ln, off)
        finally:
            os.close(fd)
        skip = NPY_HEADER if name.endswith(".npy") else 0
        assert_same_bytes(got, want[off - skip:off - skip + ln], f"{name} pread({ln}, {off})")
    read_stats(m)                     # the daemon flushes the trace for whoever reads the counters
    lines = [json.loads(x) for x in Path(trace).read_text().splitlines()]
    data = [r for r in lines if "event" not in r and r["path"].endswith(("k2.f32", "k2.npy"))]
    assert [(Path(r["path"]).name, r["offset"], r["size"]) for r in data] == reads, data
    seen = set()
    for r, (name, off, ln) in zip(data, reads):
        skip = NPY_HEADER if name.endswith(".npy") else 0
        s0, s1 = max(0, off - skip) // 4, -(-(off - skip + ln) // 4)
        want_tiles = list(range(s0 // TILE, (s1 - 1) // TILE + 1))
        assert r["returned"] == ln and r["pid"] == os.getpid(), r
        assert [(t[0], t[2], t[3]) for t in r["tiles"]] == [("k2", k * TILE, (k + 1) * TILE) for k in want_tiles], r
        for t, k in zip(r["tiles"], want_tiles):
            assert t[4] == ("hit" if k in seen else "decoded"), (r, k, seen)
        seen.update(want_tiles)
        assert 0 <= r["wait_ms"] <= r["ms"] + 0.01, r
        assert min(r["queued_ms"], r["decode_ms"], r["ipc_ms"], r["copy_ms"]) >= 0, r
        if any(t[4] == "decoded" for t in r["tiles"]):
            assert r["wait_ms"] > 0 and r["decode_ms"] > 0, r
        else:
            assert r["wait_ms"] == 0, r


# ---------------------------------------------------------------------------
# random windows and scans: what read-ahead decodes is used
# ---------------------------------------------------------------------------

# 1.5 s windows 0.3 s into second k span 48 pages, or 47 where k % 4 == 3 (32000
# samples are 31.25 pages): "narrow first", the width learned from the first window is a
# page less than the later windows span
WINDOW_SECONDS = {"random": np.random.default_rng(5).permutation(np.arange(2, LONG_SECONDS - 4, 8))[:6],
                  "narrow first": np.array([35, 2, 26, 10, 50, 18])}


@pytest.mark.parametrize("places", WINDOW_SECONDS)
def test_random_windows_decode_what_they_read_and_nothing_ahead(mount_fs, long_source, places):
    """np.memmap of every channel, 1.5 s windows at random places 8 s or more apart,
    read back to back (a script): they decode what they read. Once the reader pauses
    on a window (someone looks at it), its neighbours are read ahead."""
    m = mount_ready(mount_fs, long_source, "--workers", "2", "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    maps = memmaps(d)
    refs = {ch: reference(session, ch) for ch in LONG_CHANNELS}
    starts = WINDOW_SECONDS[places] * TILE + int(TILE * 0.3)
    n = int(1.5 * TILE)
    try:
        before = read_stats(m)
        got = [(int(a), ch, np.array(maps[ch][int(a):int(a) + n])) for a in starts for ch in LONG_CHANNELS]
        mid = read_stats(m)                  # at once: no pause yet
        for a, ch, x in got:
            np.testing.assert_array_equal(x.view(np.uint32), refs[ch][a:a + n].view(np.uint32),
                                          err_msg=f"{ch} [{a}, {a + n})")
        looked = wait_stats(m, lambda s: s["windows_ahead"] >= mid["windows_ahead"] + 2 and
                            s["tiles_in_flight"] == 0 and s["readahead_pending"] == 0,
                            "the neighbours of the window looked at")
    finally:
        maps.clear()
    dd = delta(mid, before, *KEYS)
    assert dd["tiles_used"] > 0 and dd["windows"] > 0, dd
    # Back to back, the windows cost what they read: the tiles under their pages. (A
    # guess needs 10 ms without a read: a loaded machine may pause the reader that long,
    # so a guess or two may start, two windows of every channel; the next window
    # cancels it, and it must not cost decodes nobody uses.)
    per_window = [tiles_under(int(a), n) for a in starts]
    touched = sum(per_window) * len(LONG_CHANNELS)
    guess = 2 * max(per_window) * len(LONG_CHANNELS)
    assert dd["tiles_decoded"] <= touched + guess, (touched, dd)
    assert dd["tiles_decoded"] <= 1.5 * dd["tiles_used"], dd
    assert dd["windows_ahead"] <= 2 and dd["readahead_unused"] == 0, dd
    # the last window, looked at: one window read ahead on each side, and nothing else
    assert delta(looked, mid, *KEYS)["windows_ahead"] == 2, delta(looked, mid, *KEYS)


def close_maps(maps: dict) -> None:
    """Unmap now (the kernel then releases the opens), not when the collector gets to it."""
    for mm in maps.values():
        mm._mmap.close()
    maps.clear()


def test_a_window_goes_into_the_page_cache_of_memmaps_opened_anew(mount_fs, long_source):
    """A script that opens its memmaps anew for every window and closes the last
    ones: the window the lead opens is stored into the page cache of the
    followers' new opens, so their reads of it never reach the daemon, but for
    the pages at its ends that it fills only in part. (Stores went to the
    followers' last opens, closed, and were dropped: every page of every
    follower came as a FUSE read.)"""
    m = mount_ready(mount_fs, long_source, "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    lead, *followers = LONG_CHANNELS
    n = 2 * TILE + 300                      # 63 pages a channel
    maps = memmaps(d)
    try:
        for ch in LONG_CHANNELS:            # the first window: learned, then decoded for all
            window(maps, session, ch, 5 * TILE, n)
    finally:
        close_maps(maps)
    settle(m)
    maps = memmaps(d)
    try:
        a = 40 * TILE + 123
        window(maps, session, lead, a, n)   # a jump: the window is decoded for every channel
        before = settle(m)
        for ch in followers:
            window(maps, session, ch, a, n)
        after = read_stats(m)
    finally:
        close_maps(maps)
    dd = delta(after, before, "hits", "misses", "tiles_used")
    assert after["tiles_pushed"] > 0, counters(after)
    # each end page holds a tile or two: 4 tiles a follower at most reach us
    assert dd["hits"] + dd["misses"] <= 4 * len(followers), dd


def test_the_first_window_goes_into_the_page_cache_of_channels_opened_with_it(mount_fs, long_source):
    """A mount's first window: once a second channel reads it, it is decoded for
    every channel of the group and stored into the page cache of those opened
    but not read yet, all but their first page. Each of them then sends that
    one read, which makes it one of the group: the next window is stored for
    it whole."""
    m = mount_ready(mount_fs, long_source, "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    lead, second, *rest = LONG_CHANNELS
    n = 2 * TILE + 300                          # 63 pages a channel
    maps = memmaps(d)
    try:
        settle(m)
        for a in (5 * TILE, 40 * TILE + 123):   # the first window, then a jump
            window(maps, session, lead, a, n)
            if a == 5 * TILE:
                window(maps, session, second, a, n)     # decoded for every channel now
            before = settle(m)
            for ch in (rest if a == 5 * TILE else (second, *rest)):
                window(maps, session, ch, a, n)
            reached = delta(read_stats(m), before, "hits", "misses")
            # the first window: each one's first page (a tile or two); the jump: nothing
            # but the pages at its ends the window fills only in part
            assert reached["hits"] + reached["misses"] <= 4 * len(rest) + 4, (a, reached)
    finally:
        close_maps(maps)


def test_a_channel_opened_and_never_read_is_left_out_of_later_windows(mount_fs, long_source):
    """The first window is decoded for every channel of the group; a channel
    whose file is open but that never reads (a viewer opens every channel and
    draws a few) is not decoded for the windows after it, nor for the
    neighbours read ahead while the first one is looked at."""
    m = mount_ready(mount_fs, long_source, "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    n = 2 * TILE + 300
    maps = memmaps(d)                           # all four open; two read
    try:
        settle(m)
        a = 5 * TILE
        for ch in LONG_CHANNELS[:2]:
            window(maps, session, ch, a, n)
        read = read_stats(m)
        # a pause: both neighbours are read ahead
        looked = wait_stats(m, lambda s: s["windows_ahead"] >= read["windows_ahead"] + 2 and
                            s["tiles_in_flight"] == 0 and s["readahead_pending"] == 0
                            and s["jobs_pending"] == 0, "the neighbours of the window looked at")
        guessed = delta(looked, read, "tiles_decoded", "windows_ahead")
        b = 40 * TILE + 123
        window(maps, session, LONG_CHANNELS[0], b, n)       # a jump, looked at too
        jumped = delta(settle(m), looked, "tiles_decoded", "windows", "windows_ahead")
    finally:
        close_maps(maps)
    # neighbours a page wider each, for the two channels read only
    assert guessed["windows_ahead"] == 2, guessed
    assert guessed["tiles_decoded"] <= 2 * 2 * tiles_under(a - 2 * 1024, n + 4 * 1024), guessed
    per_window = tiles_under(b - 2 * 1024, n + 4 * 1024)
    assert jumped["windows"] == 1 and jumped["tiles_decoded"] <= 3 * 2 * per_window, (per_window, jumped)


def test_scan_uses_what_was_read_ahead(mount_fs, long_source):
    m = mount_ready(mount_fs, long_source, "--workers", "2", "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    before = read_stats(m)
    for ch in LONG_CHANNELS:
        with open(d / f"{ch}.f32", "rb", buffering=0) as f:
            got = b""
            while True:
                chunk = f.read(8 << 20)
                if not chunk:
                    break
                got += chunk
        assert_same_bytes(got, reference(session, ch).tobytes(), f"{ch}.f32 scan")
    after = settle(m)
    dd = delta(after, before, *KEYS)
    done = dd["readahead_scheduled"] - dd["readahead_cancelled"]
    assert done > 0, dd
    assert dd["readahead_hits"] >= 0.9 * done, f"read ahead {done}, used {dd['readahead_hits']}: {dd}"


def test_a_run_reads_ahead_no_more_than_twice_what_it_read(mount_fs, long_source):
    """One 4 s window of one channel through np.memmap: 512 KiB of page faults, one
    FUSE read each. A stream reads ahead once the run passes 256 KiB, doubling its
    window, but never ahead by more than twice what the run has read: a window
    doubled at every fault went to the end of the file (here 56 s of tiles)."""
    m = mount_ready(mount_fs, long_source, "--workers", "2", "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    a, n = 20 * TILE, 4 * TILE
    mm = np.memmap(d / "k1.f32", dtype="<f4", mode="r")
    try:
        before = read_stats(m)
        got = np.array(mm[a:a + n])
        after = settle(m)
    finally:
        del mm
    np.testing.assert_array_equal(got.view(np.uint32), reference(session, "k1")[a:a + n].view(np.uint32))
    dd = delta(after, before, *KEYS)
    ahead = dd["readahead_scheduled"]
    # read ahead: the tiles of the run it went on to read (4 at most), twice the run
    # past its end (8), and the tile the last page fault was in
    assert 0 < ahead <= 4 + 2 * 4 + 1, dd


def test_a_memmap_read_through_gets_its_pages_pushed(mount_fs, long_source):
    """np.memmap of each channel read start to end, one channel after the other: page
    faults of 4 KiB, each a FUSE read unless what the stream reads ahead is stored
    into the page cache ahead of the reader. The tiles are decoded first (a read()
    scan) and the files' pages dropped, so only the pushes decide how many faults
    reach us. Two bugs made every fault a FUSE read: the push was never reached
    (the stream passed the file's size where the request's was meant); and a
    channel of 60 s read through became the group's first window, so the second
    channel's read fanned it out and the channels after it read window by window,
    with no stream."""
    m = mount_ready(mount_fs, long_source, "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    for ch in LONG_CHANNELS:
        with open(d / f"{ch}.f32", "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass
    settle(m)
    for ch in LONG_CHANNELS:
        with open(d / f"{ch}.f32", "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    for ch in LONG_CHANNELS:
        path = d / f"{ch}.f32"
        pages = -(-os.path.getsize(path) // 4096)
        before = read_stats(m)
        mm = np.memmap(path, dtype="<f4", mode="r")
        try:
            got = np.array(mm)                  # start to end, a fault a page
            after = settle(m)
        finally:
            mm._mmap.close()
        assert_same_bytes(got.tobytes(), reference(session, ch).tobytes(), f"{ch}.f32 through np.memmap")
        dd = delta(after, before, "hits", "misses", "push_bytes", "tiles_decoded", "windows")
        assert dd["tiles_decoded"] == 0, (ch, dd)
        # a FUSE read looks up a tile or two: before the fixes, every page reached us.
        # Pushed ahead, a quarter of them or fewer on a quiet machine; a busy one holds
        # the stores back while the faults go on (up to 600 of 1,875 beside a bench)
        assert dd["hits"] + dd["misses"] <= pages // 2, (ch, pages, dd)
        assert dd["push_bytes"] >= os.path.getsize(path) // 2 and dd["windows"] == 0, (ch, dd)


class _InstantPushes:
    """A ReadAhead's file and open, where what it pushes is in the page cache at once (as
    if stores never lagged) and every tile is cached: its push policy alone."""

    def __init__(self, size: int):
        self.size, self.label, self.streaming = size, "k1", False
        self.cached: set = set()            # pages in the page cache

    def stream_wanted(self, offset, run, min_run):
        return run >= min_run

    def tile_bytes(self, offset):
        return 4 * TILE

    def prefetch_range(self, file, lo, hi):
        return []

    def stream_reached_end(self):
        self.streaming = True

    def cancel(self, tokens):
        pass

    def push_stream(self, lo, hi, since):
        last = -(-hi // 4096) if hi >= self.size else hi // 4096
        self.cached.update(range(-(-lo // 4096), last))
        return True


def test_a_read_through_faults_a_page_a_pushed_batch():
    """A memmap read through a channel, its stream's read-ahead pushed into the page
    cache. A batch pushed whole was next heard of when the reader faulted past it: the
    17 pages from there (PUSH_MARGIN and one) then faulted one by one, even with stores
    that land at once (133 faults for a 1 h 1 kHz channel, 51 after its first run). One
    page halfway is left out of each batch: the reader's fault there carries the stream
    on while half the batch is still ahead of it, and it faults that page alone (88
    faults, 6 after the first run)."""
    from mef3fs.readahead import ReadAhead
    size = 3_600_000 * 4
    io = _InstantPushes(size)
    ra = ReadAhead(io, io, 64 << 20)
    faults = []
    for page in range(-(-size // 4096)):
        if page not in io.cached:
            faults.append(page)
            ra.after_read(4096 * page, min(4096, size - 4096 * page))
    later = [p for p in faults if p > faults[0] and p - 1 in io.cached]   # faults past a push
    first_run = faults.index(later[0]) if later else len(faults)
    assert first_run <= (256 + 64) // 4 + 4, faults          # MIN_RUN, then PUSH_MARGIN
    assert later and all(b - a > 1 for a, b in zip(later, later[1:])), faults
    assert len(faults) - first_run == len(later) <= 16, faults


def test_the_first_and_last_pages_of_each_channel_decode_no_channel_whole(mount_fs, long_source):
    """A tool looking where each channel's samples start and end reads the first and
    the last of them, one channel after the other. The first channel's two pages made
    the group's first window the whole file, and the second channel's first page read
    inside it, so it was fanned out: every tile of every channel decoded (240 here)
    for 8 pages. A first window from a channel's first page to its last is the
    channel read whole, not a window."""
    m = mount_ready(mount_fs, long_source, "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    before = read_stats(m)
    for ch in LONG_CHANNELS:
        mm = np.memmap(d / f"{ch}.f32", dtype="<f4", mode="r")
        try:
            got = np.array([mm[0], mm[-1]])
        finally:
            mm._mmap.close()
        ref = reference(session, ch)
        np.testing.assert_array_equal(got.view(np.uint32), ref[[0, -1]].view(np.uint32), ch)
    after = settle(m)
    dd = delta(after, before, "tiles_decoded", "windows", "windows_ahead")
    # a channel's first and last tiles, and a tile of read-ahead next to each at most
    assert dd["windows"] == 0 and dd["windows_ahead"] == 0, dd
    assert dd["tiles_decoded"] <= 4 * len(LONG_CHANNELS), dd


# ---------------------------------------------------------------------------
# paging: the next window of every channel, and a jump back
# ---------------------------------------------------------------------------

def page_through(m, maps, refs, start: int, step: int, n: int, pages: int) -> tuple[list, dict]:
    """A viewer paging: n samples of every channel at start, start + step, ... Page 0 is a
    jump; every later page, the first step included (it finds what was read while page 0
    was looked at), must find all its tiles decoded or in flight: not one miss. -> (each
    page's counters, those of the whole run, read-ahead after the last page included)."""
    seen = []
    first = settle(m)
    for k in range(pages):
        if k == 1:
            time.sleep(0.1)         # the viewer looks at its first page: both neighbours are read
        before = settle(m)
        a = start + k * step
        page = {ch: np.array(maps[ch][a:a + n]) for ch in LONG_CHANNELS}     # a viewer's page
        dd = delta(read_stats(m), before, *KEYS)
        seen.append(dd)
        for ch, x in page.items():
            np.testing.assert_array_equal(x.view(np.uint32), refs[ch][a:a + n].view(np.uint32),
                                          err_msg=f"{ch} [{a}, {a + n})")
        if k >= 1:
            assert dd["misses"] == 0, f"page {k} was not all read ahead after page {k - 1}: {seen}"
    total = delta(settle(m), first, *KEYS)      # read-ahead runs between the pages, after their reads
    assert total["windows_ahead"] > 0 and total["tiles_pushed"] > 0, total
    return seen, total


@pytest.mark.parametrize("seconds", (2, 8), ids=("2s", "8s"))
@pytest.mark.parametrize("direction", (+1, -1), ids=("forward", "backward"))
def test_paging_reads_the_next_window_of_every_channel_ahead(mount_fs, long_source, direction, seconds):
    """A viewer: 2 s of every channel (np.memmap), stepping by a window. After
    page k is read (and read-ahead has settled), reading page k+1 of every
    channel finds every tile decoded or in flight: not one miss. Pages of 8 s
    (1 MiB a channel) make the lead's first page a stream: what it reads ahead
    must not be pushed into the lead's page cache, or its step to the next page
    never reaches the window tracker."""
    m = mount_ready(mount_fs, long_source, "--workers", "2", "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    n = seconds * TILE
    pages = 16 if seconds == 2 else 5   # long enough for a prediction off by a page to drift out
    maps = memmaps(d)
    refs = {ch: reference(session, ch) for ch in LONG_CHANNELS}
    start = (10 if seconds == 2 else 2) * TILE if direction > 0 else 50 * TILE
    try:
        seen, _ = page_through(m, maps, refs, start, direction * n, n, pages)
    finally:
        maps.clear()
    # Whole windows ahead are in the page cache: once the steps are known, a page's
    # reads reach the daemon only where the farthest window read ahead begins, one
    # page in AHEAD_WINDOWS (page 1 found what was read while page 0 was looked at).
    reached = [k for k, dd in enumerate(seen) if k >= 2 and dd["hits"] + dd["misses"] > 0]
    assert len(reached) <= (len(seen) - 2) // AHEAD_WINDOWS + 1, (reached, seen)


@pytest.mark.parametrize("direction", (+1, -1), ids=("forward", "backward"))
def test_paging_after_looking_where_each_channel_ends_reads_ahead(mount_fs, long_source, direction):
    """A viewer that first reads each channel's first and last sample through the
    memmaps it then pages with. Those two reads make each open a scan (the channel
    read whole, as in the test of a tool looking where samples start and end), and a
    scan's reads are no window's: paging backward,
    every page was decoded on demand (4-12 tiles, every page's 248 reads reaching the
    daemon); forward, only the channels' streams read ahead, and the first step waited
    for 4 tiles. A read that continues none of the open's runs (a jump) ends that: the
    viewer's pages are windows again, read ahead."""
    m = mount_ready(mount_fs, long_source, "--workers", "2", "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    n = 2 * TILE
    maps = memmaps(d)
    refs = {ch: reference(session, ch) for ch in LONG_CHANNELS}
    try:
        for ch in LONG_CHANNELS:
            ends = np.array([maps[ch][0], maps[ch][-1]])
            np.testing.assert_array_equal(ends.view(np.uint32), refs[ch][[0, -1]].view(np.uint32), ch)
        page_through(m, maps, refs, (10 if direction > 0 else 50) * TILE, direction * n, n, 8)
    finally:
        maps.clear()


def test_a_jump_back_cancels_read_ahead_no_longer_wanted(mount_fs, long_source):
    """Paging forward with one worker and large pages keeps read-ahead queued;
    jumping back to the start makes it unwanted: it is cancelled."""
    m = mount_ready(mount_fs, long_source, "--workers", "1", "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    n = 3 * TILE
    maps = memmaps(d)
    tried = []
    try:
        for attempt in range(4):
            base = (5 + attempt * 12) * TILE
            for k in range(3):
                for ch in LONG_CHANNELS:
                    window(maps, session, ch, base + k * n, n)
            mid = read_stats(m)
            for ch in LONG_CHANNELS:                  # the jump: far back, not a step
                window(maps, session, ch, base - 4 * TILE + attempt * 100, TILE // 2)
            after = settle(m)
            dd = delta(after, mid, *KEYS)
            tried.append((delta(mid, read_stats(m), "windows_ahead"), dd))
            assert mid["windows_ahead"] > 0, counters(mid)
            if dd["readahead_cancelled"] > 0:
                return
    finally:
        maps.clear()
    pytest.fail(f"jumping back never cancelled read-ahead of the forward run: {tried}")
