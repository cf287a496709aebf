"""The engine (issue 3) shown through real mounts: tiles, cache, decoder pool,
read-ahead, page cache. Every claim is read off `.mef3fs-stats.json` at the
mount root, and every byte is compared with DESIGN.md's reference
(`mef3io.Reader(session).read(channel, t0, t_end)` over the whole grid).

No timing assertions. Waits are bounded and only where something happens
asynchronously (idle expiry, read-ahead landing or being cancelled, a worker
being replaced, processes ending); they poll the stats file or /proc.

Reads through the kernel page cache reach the daemon page-aligned, so to
make a second read of the same samples reach the daemon again we read
another view of the channel (the `.npy` file shares the `.f32` file's tiles)
or drop the file's cached pages with posix_fadvise(DONTNEED).
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import mef3io

from tests.conftest import (drop_page_cache, fuse_unmount, is_mounted, pread_full, proc_table,
                            random_reads, read_stats)
from tests.sessions import T0, _rng, _signal, reference

KIB, MIB = 1 << 10, 1 << 20
NPY_HEADER = 128               # mef3fs pads the NPY v1 header to 128 bytes for these shapes
WAIT = 10.0                    # seconds: bound for anything asynchronous to land


# ---------------------------------------------------------------------------
# sessions (built here with the real writer; small and seeded)
# ---------------------------------------------------------------------------

def build_matrix_session(path):
    """23 s, two rates, gaps, several segments, a late and an early-ending
    channel. 'H' at 8 kHz has tiles big enough for the pool from 1 s up;
    the 256 Hz channels are always decoded in-process."""
    rng = _rng(3301)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        a = _signal(rng, 256 * 12)
        a[1000:1300] = np.nan
        a[2000] = np.nan
        w.write("A", a, T0, fs=256.0, precision=3)
        w.write("A", _signal(rng, 256 * 8), T0 + 15_000_000, fs=256.0, precision=3,
                new_segment=True)
        w.write("B", _signal(rng, 256 * 6), T0 + 1_300_000, fs=256.0, precision=3)
        w.write("B", _signal(rng, 256 * 5), T0 + 10_300_000, fs=256.0, precision=3)
        h = _signal(rng, 8000 * 9, scale=300.0)
        h[30_000:34_000] = np.nan
        w.write("H", h, T0 + 63, fs=8000.0, precision=3)
        w.write("H", _signal(rng, 8000 * 10, scale=300.0), T0 + 12_000_063, fs=8000.0,
                precision=3, new_segment=True)
    return path


LONG_CHANNELS = ("k1", "k2", "k3", "k4")
LONG_FS = 32000.0
LONG_SECONDS = 60


def build_long_session(path):
    """4 channels x 60 s x 32 kHz (7.68 MB per .f32 file), 1 s MEF blocks."""
    rng = _rng(3302)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        for ch in LONG_CHANNELS:
            w.write(ch, _signal(rng, int(LONG_FS * LONG_SECONDS), scale=500.0), T0,
                    fs=LONG_FS, precision=3)
    return path


@pytest.fixture(scope="module")
def matrix_source(tmp_path_factory):
    src = tmp_path_factory.mktemp("engine-matrix")
    build_matrix_session(src / "m.mefd")
    return src


@pytest.fixture(scope="module")
def long_source(tmp_path_factory):
    src = tmp_path_factory.mktemp("engine-long")
    build_long_session(src / "long.mefd")
    return src


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def read_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return pread_full(fd, os.fstat(fd).st_size + 1, 0)
    finally:
        os.close(fd)


def assert_same_bytes(got: bytes, want: bytes, what: str):
    if got == want:
        return
    n = min(len(got), len(want))
    diff = np.flatnonzero(np.frombuffer(got[:n], np.uint8) != np.frombuffer(want[:n], np.uint8))
    first = int(diff[0]) if diff.size else n
    pytest.fail(f"{what}: {len(got)} bytes read, {len(want)} expected; first differing byte "
                f"{first} (sample {first // 4}); {diff.size} differing bytes in the common part",
                pytrace=False)


def wait_stats(mount, pred, what, timeout=WAIT):
    """Poll the stats file until pred(stats) holds; fail with the last stats."""
    deadline = time.monotonic() + timeout
    while True:
        s = read_stats(mount)
        if pred(s):
            return s
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {timeout} s; last stats: {counters(s)}",
                        pytrace=False)
        time.sleep(0.05)


def settled(mount):
    """Read-ahead landed: no tile in flight, and no job queued or running (a job stopped
    for nobody still decodes after its tiles were let go, and is counted when it lands)."""
    return wait_stats(mount, lambda s: s["tiles_in_flight"] == 0 and s["jobs_pending"] == 0,
                      "read-ahead settled")


def counters(s):
    return {k: v for k, v in s.items() if k not in ("decoder",)}


def delta(after, before, *keys):
    return {k: after[k] - before[k] for k in keys}


def proc_state(pid):
    """'R', 'S', 'Z', ... or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()[0]


def proc_start(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[19])


def running(pid, start=None):
    """Alive and not a zombie (and, if given, the same process: same start time)."""
    st = proc_state(pid)
    if st is None or st == "Z":
        return False
    return start is None or proc_start(pid) == start


def session_dir(mount, name):
    return Path(mount.root) / name


class Poller:
    """Reads the stats file in a loop in a thread, keeping every snapshot."""

    def __init__(self, mount, period=0.02):
        self.mount, self.period = mount, period
        self.snapshots, self.errors = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.snapshots.append(read_stats(self.mount))
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(exc))
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(WAIT)


# ---------------------------------------------------------------------------
# 1. byte-exactness with every cache / tile / worker / read-ahead setting
# ---------------------------------------------------------------------------

TILE_SECONDS = ("0.3", "1", "10", "100")
WORKERS = ("0", "1", "2")
CACHE_SIZES = ("64K", "512M")
READAHEADS = ("0", "64M")
MATRIX = list(itertools.product(TILE_SECONDS, WORKERS, CACHE_SIZES, READAHEADS))
N_PREADS = 30


@pytest.mark.parametrize("tile,workers,cache,readahead", MATRIX,
                         ids=[f"tile{t}-w{w}-cache{c}-ra{r}" for t, w, c, r in MATRIX])
def test_bytes_exact_with_every_setting(mount_fs, matrix_source, tile, workers, cache, readahead):
    m = mount_fs(matrix_source, "--tile-seconds", tile, "--workers", workers,
                 "--cache-size", cache, "--readahead", readahead)
    # reads that come while workers start are decoded in the daemon: wait, so the pool is used
    wait_stats(m, lambda s: s["workers_ready"] >= int(workers), "workers ready")
    session = matrix_source / "m.mefd"
    d = session_dir(m, "m.mefd")
    rng = np.random.default_rng(zlib.crc32(f"{tile}/{workers}/{cache}/{readahead}".encode()))
    for ch in ("A", "B", "H"):
        want = reference(session, ch).tobytes()
        f32, npy = d / f"{ch}.f32", d / f"{ch}.npy"
        assert os.stat(f32).st_size == len(want)
        # cold random unaligned preads first (so they reach the daemon) ...
        fd = os.open(f32, os.O_RDONLY)
        try:
            for off, ln in random_reads(rng, len(want), N_PREADS):
                assert_same_bytes(pread_full(fd, ln, off), want[off:off + ln],
                                  f"{ch}.f32 pread({ln}, {off})")
        finally:
            os.close(fd)
        # ... then the whole file, and the whole .npy view (cold in the kernel)
        assert_same_bytes(read_file(f32), want, f"{ch}.f32 whole file")
        got = read_file(npy)
        assert got[:6] == b"\x93NUMPY" and len(got) == NPY_HEADER + len(want)
        assert_same_bytes(got[NPY_HEADER:], want, f"{ch}.npy whole file (after the header)")

    s = read_stats(m)
    assert s["cache_budget"] == {"64K": 64 * KIB, "512M": 512 * MIB}[cache]
    assert s["cache_bytes"] <= s["cache_budget"], counters(s)
    assert s["decode_errors"] == 0, counters(s)
    assert s["misses"] > 0, counters(s)
    if workers == "0":
        assert s["worker_pids"] == [] and s["decodes_foreground"] == 0 \
            and s["decodes_background"] == 0, counters(s)
    else:
        assert len(s["worker_pids"]) == int(workers), counters(s)
        if float(tile) >= 1:   # H's tiles (8000+ samples) go to the pool
            assert s["decodes_foreground"] + s["decodes_background"] > 0, counters(s)
    if readahead == "0":
        assert s["readahead_scheduled"] == 0 and s["decodes_background"] == 0, counters(s)
    if workers == "0":   # decoded by threads of the daemon, read-ahead too
        assert s["decodes_background"] == 0 and s["decodes_inprocess"] > 0, counters(s)


# ---------------------------------------------------------------------------
# 2. eviction under a tiny budget
# ---------------------------------------------------------------------------

def daemon_pid(mount):
    """The process serving the mount (foreground: the one we started)."""
    if mount.foreground:
        return mount.proc.pid
    table = proc_table()
    mp = str(mount.root)
    cands = [p for p, row in table.items() if mp in row["cmdline"] and "mef3fs" in row["cmdline"]
             and row["state"] != "Z" and p != mount.proc.pid]
    assert len(cands) == 1, f"daemon of {mp}: {cands}"
    return cands[0]


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_eviction_keeps_cache_within_a_tiny_budget(mount_fs, long_source):
    budget = 256 * KIB
    m = mount_fs(long_source, "--cache-size", "256K", "--tile-seconds", "0.5", "--workers", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    pid = daemon_pid(m)
    read_file(d / "info.json")
    rss0 = rss_bytes(pid)
    scanned = 0
    with Poller(m) as poller:
        for ch in LONG_CHANNELS:
            want = reference(session, ch).tobytes()
            for view, skip in ((f"{ch}.f32", 0), (f"{ch}.npy", NPY_HEADER)):
                fd = os.open(d / view, os.O_RDONLY)
                parts = []
                try:
                    off = 0
                    while True:
                        b = os.pread(fd, MIB, off)
                        if not b:
                            break
                        parts.append(b)
                        off += len(b)
                        s = read_stats(m)           # and one poll per chunk, in step
                        poller.snapshots.append(s)
                finally:
                    os.close(fd)
                assert_same_bytes(b"".join(parts)[skip:], want, view)
                scanned += len(want)
    rss1 = rss_bytes(pid)
    assert not poller.errors, poller.errors[:3]
    snaps = poller.snapshots
    assert len(snaps) > 50, f"only {len(snaps)} stats polls during the scan"
    over = [(s["cache_bytes"], s["cache_tiles"]) for s in snaps if s["cache_bytes"] > budget]
    assert not over, f"cache over its {budget}-byte budget at {len(over)} polls: {over[:5]}"
    assert all(s["cache_budget"] == budget for s in snaps)
    final = read_stats(m)
    assert final["evictions"] > 0, counters(final)
    assert final["decode_errors"] == 0, counters(final)
    # Memory: the daemon scanned 8 x 7.68 MB through a 256 KiB cache; if
    # tiles were kept anyway its RSS would grow by tens of MB.
    assert rss1 - rss0 < scanned // 2, (
        f"daemon RSS grew from {rss0 >> 20} MiB to {rss1 >> 20} MiB while scanning "
        f"{scanned >> 20} MiB through a 256 KiB cache")


# ---------------------------------------------------------------------------
# 3. idle expiry
# ---------------------------------------------------------------------------

def test_idle_tiles_expire(mount_fs, long_source):
    m = mount_fs(long_source, "--cache-ttl", "1", "--tile-seconds", "1", "--workers", "1",
                 "--readahead", "0")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    # a read, then at once the stats: the tiles it used are in the cache
    # (a loaded machine may take over a second in between; try other spots)
    for attempt, (ch, off) in enumerate(itertools.product(LONG_CHANNELS, (0, 3 * MIB))):
        fd = os.open(d / f"{ch}.f32", os.O_RDONLY)
        try:
            got = pread_full(fd, 256 * KIB, off)
        finally:
            os.close(fd)
        s = read_stats(m)
        assert_same_bytes(got, reference(session, ch).tobytes()[off:off + 256 * KIB], f"{ch}.f32")
        if s["cache_tiles"] > 0:
            break
    else:
        pytest.fail(f"no tile was ever seen in the cache right after a read: {counters(s)}")
    assert s["cache_bytes"] > 0, counters(s)
    # then nothing reads: every tile expires
    s = wait_stats(m, lambda s: s["cache_tiles"] == 0, "idle tiles expired (--cache-ttl 1)")
    assert s["cache_bytes"] == 0 and s["expired"] > 0, counters(s)
    # an expired tile is decoded again when read again (another view: no page cache)
    before = read_stats(m)
    fd = os.open(d / f"{ch}.npy", os.O_RDONLY)
    try:
        got = pread_full(fd, 256 * KIB, NPY_HEADER + off)
    finally:
        os.close(fd)
    after = read_stats(m)
    assert_same_bytes(got, reference(session, ch).tobytes()[off:off + 256 * KIB], f"{ch}.npy")
    assert after["misses"] > before["misses"], delta(after, before, "hits", "misses")


# ---------------------------------------------------------------------------
# 4. single-flight
# ---------------------------------------------------------------------------

def test_single_flight_two_readers_one_decode(mount_fs, long_source):
    """Two threads read the same cold 30 s tile (960000 samples) through two
    views at once: the daemon decodes it once, the second reader waits."""
    m = mount_fs(long_source, "--workers", "1", "--readahead", "0", "--tile-seconds", "30")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    tile_bytes = 4 * int(30 * LONG_FS)
    attempts = []
    for ch, tile in itertools.product(LONG_CHANNELS, (0, 1)):
        off = tile * tile_bytes + tile_bytes // 2 + 1234          # mid-tile, unaligned
        want = reference(session, ch).tobytes()[off:off + 4096]
        f32 = os.open(d / f"{ch}.f32", os.O_RDONLY)
        npy = os.open(d / f"{ch}.npy", os.O_RDONLY)
        results = {}
        barrier = threading.Barrier(2)

        def reader(name, fd, at):
            barrier.wait()
            results[name] = os.pread(fd, 4096, at)

        before = read_stats(m)
        threads = [threading.Thread(target=reader, args=("f32", f32, off)),
                   threading.Thread(target=reader, args=("npy", npy, NPY_HEADER + off))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
                assert not t.is_alive(), "a read of a cold tile did not return within 60 s"
        finally:
            os.close(f32)
            os.close(npy)
        after = read_stats(m)
        assert_same_bytes(results["f32"], want, f"{ch}.f32 tile {tile}")
        assert_same_bytes(results["npy"], want, f"{ch}.npy tile {tile}")
        dd = delta(after, before, "misses", "hits", "single_flight_waits", "decodes_foreground",
                   "decodes_inprocess", "decodes_background")
        attempts.append((ch, tile, dd))
        # whatever the overlap, the tile was decoded exactly once
        assert dd["misses"] == 1, f"{ch} tile {tile}: {dd}"
        assert dd["decodes_foreground"] + dd["decodes_inprocess"] == 1, f"{ch} tile {tile}: {dd}"
        assert dd["decodes_background"] == 0, dd
        if dd["single_flight_waits"] >= 1:
            return
    pytest.fail(f"the two readers never overlapped in {len(attempts)} attempts "
                f"(each second reader was a cache hit): {attempts}")


# ---------------------------------------------------------------------------
# 5. read-ahead: scheduling, hits, backward scans, channels in step, cancels
# ---------------------------------------------------------------------------

def scan(path, chunk=128 * KIB, backward=False):
    """The whole file in `chunk` reads, forward or from the end backwards."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offsets = list(range(0, size, chunk))
        if backward:
            offsets.reverse()
        parts = {o: os.pread(fd, min(chunk, size - o), o) for o in offsets}
    finally:
        os.close(fd)
    return b"".join(parts[o] for o in sorted(parts))


RA_KEYS = ("readahead_scheduled", "readahead_hits", "readahead_cancelled",
           "decodes_background", "decodes_foreground", "hits", "misses")


def test_readahead_on_a_sequential_scan(mount_fs, long_source):
    m = mount_fs(long_source, "--workers", "2", "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    before = read_stats(m)
    assert_same_bytes(scan(d / "k1.f32"), reference(session, "k1").tobytes(), "k1.f32 forward scan")
    after = settled(m)
    dd = delta(after, before, *RA_KEYS)
    assert dd["readahead_scheduled"] > 0, dd
    assert dd["readahead_hits"] > 0, dd
    assert dd["decodes_background"] > 0, dd
    assert dd["readahead_hits"] <= dd["readahead_scheduled"], dd
    # backward: read from the end to the start
    before = after
    assert_same_bytes(scan(d / "k2.f32", backward=True), reference(session, "k2").tobytes(),
                      "k2.f32 backward scan")
    after = settled(m)
    dd = delta(after, before, *RA_KEYS)
    assert dd["readahead_scheduled"] > 0, f"backward scan: {dd}"
    assert dd["readahead_hits"] > 0, f"backward scan: {dd}"


def test_no_readahead_when_disabled(mount_fs, long_source):
    m = mount_fs(long_source, "--workers", "2", "--tile-seconds", "1", "--readahead", "0")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    assert_same_bytes(scan(d / "k1.f32"), reference(session, "k1").tobytes(), "k1.f32 forward scan")
    assert_same_bytes(scan(d / "k2.f32", backward=True), reference(session, "k2").tobytes(),
                      "k2.f32 backward scan")
    s = read_stats(m)
    assert s["misses"] > 0 and s["decodes_foreground"] > 0, counters(s)
    assert s["readahead_scheduled"] == 0 and s["readahead_hits"] == 0, counters(s)
    assert s["decodes_background"] == 0 and s["readahead_cancelled"] == 0, counters(s)


# Windows of channels read together (viewer paging, random windows): tests/test_readahead.py


def test_readahead_survives_requests_completing_out_of_order(mount_fs, long_source):
    """The kernel sends a sequential reader's 1 MiB requests several at a
    time, and they complete (and reach read-ahead) out of order: seen on
    np.memmap as [0, 1M), [2M, 3M), [1M, 2M). That is still one forward
    stream: the tiles after 3 MiB must be read ahead. Replayed exactly here
    (POSIX_FADV_RANDOM: the kernel sends each pread as it is, nothing more)."""
    m = mount_fs(long_source, "--workers", "2", "--tile-seconds", "1")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    want = reference(session, "k1").tobytes()
    fd = os.open(d / "k1.f32", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for off in (0, 2 * MIB, 1 * MIB):
            assert_same_bytes(os.pread(fd, MIB, off), want[off:off + MIB], f"k1.f32 @{off}")
        before = settled(m)
        off = 3 * MIB + 64 * KIB            # the next read of the stream
        assert_same_bytes(os.pread(fd, 4096, off), want[off:off + 4096], f"k1.f32 @{off}")
        after = read_stats(m)
    finally:
        os.close(fd)
    dd = delta(after, before, *RA_KEYS)
    assert before["readahead_scheduled"] > 0 and dd["misses"] == 0, (
        f"reads [0,1M) [2M,3M) [1M,2M) of one handle: the tile after 3 MiB was not read "
        f"ahead (stats before the next read: {counters(before)}; the next read: {dd})")


def test_readahead_cancelled_on_close(mount_fs, long_source):
    """Many small tiles (0.2 s = 25.6 KB), one worker, a window that grows
    to the whole file: closing the handle cancels what has not started."""
    m = mount_fs(long_source, "--workers", "1", "--tile-seconds", "0.2")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    seen = []
    for ch in LONG_CHANNELS:
        before = read_stats(m)
        fd = os.open(d / f"{ch}.f32", os.O_RDONLY)
        try:
            got = b"".join(os.pread(fd, 128 * KIB, k * 128 * KIB) for k in range(8))
            mid = read_stats(m)
        finally:
            os.close(fd)
        assert_same_bytes(got, reference(session, ch).tobytes()[:len(got)], f"{ch}.f32")
        after = settled(m)
        dd = delta(after, before, *RA_KEYS)
        seen.append((ch, delta(mid, before, "readahead_scheduled", "decodes_background"), dd))
        assert dd["readahead_scheduled"] > 0, dd
        # every prefetch is decoded in the background, promoted to a reader's
        # foreground decode, or cancelled: never both cancelled and decoded
        assert dd["decodes_background"] + dd["readahead_cancelled"] <= dd["readahead_scheduled"], dd
        if dd["readahead_cancelled"] > 0:
            assert dd["decodes_background"] < dd["readahead_scheduled"], dd
            return
    pytest.fail(f"closing a handle with read-ahead pending never cancelled anything: {seen}")


def test_readahead_cancelled_when_the_handle_jumps_away(mount_fs, long_source):
    """After a sequential run, reads far away (several of them: a handle may
    interleave a few streams) drop the run's stream and cancel its read-ahead
    while the file is still open."""
    m = mount_fs(long_source, "--workers", "1", "--tile-seconds", "0.2")
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    size = 4 * int(LONG_FS) * LONG_SECONDS
    seen = []
    for ch in LONG_CHANNELS:
        want = reference(session, ch).tobytes()
        before = read_stats(m)
        fd = os.open(d / f"{ch}.f32", os.O_RDONLY)
        try:
            for k in range(8):
                off = k * 128 * KIB
                assert_same_bytes(os.pread(fd, 128 * KIB, off), want[off:off + 128 * KIB], ch)
            # jump: far from the run and from each other, from the end backwards
            for j in range(1, 7):
                off = size - j * MIB - 3 * j * 4096
                assert_same_bytes(os.pread(fd, 4096, off), want[off:off + 4096], ch)
            jumped = read_stats(m)
        finally:
            os.close(fd)
        dd = delta(jumped, before, *RA_KEYS)
        seen.append((ch, dd))
        settled(m)
        if dd["readahead_cancelled"] > 0:
            return
    pytest.fail(f"jumping away from a sequential run (handle still open) never cancelled its "
                f"read-ahead: {seen}")


# ---------------------------------------------------------------------------
# 6. a worker killed with SIGKILL mid-read
# ---------------------------------------------------------------------------

KILLS = 3


@pytest.mark.parametrize("settings", [("--workers", "1", "--readahead", "0"), ("--workers", "2")],
                         ids=["1worker-noreadahead", "2workers-readahead"])
def test_worker_killed_mid_read(mount_fs, long_source, settings):
    """SIGKILL every worker while a cold whole-file read waits on them; the
    read returns the reference bytes, workers are replaced (new pids), and
    this works again and again. 5 s tiles (160000 samples: decoded in a
    worker); a 3 MiB cache so that every view of every channel starts cold."""
    m = mount_fs(long_source, "--tile-seconds", "5", "--cache-size", "3M", *settings)
    n_workers = int(settings[1])
    session = long_source / "long.mefd"
    d = session_dir(m, "long.mefd")
    history = []
    kills = 0
    for view, ch in itertools.product(("f32", "npy"), LONG_CHANNELS):
        if kills == KILLS:
            break
        want = reference(session, ch).tobytes()
        skip = NPY_HEADER if view == "npy" else 0
        before = read_stats(m)
        victims = {p: proc_start(p) for p in before["worker_pids"]}
        assert len(victims) == n_workers and all(running(p, st) for p, st in victims.items()), \
            f"workers before the kill: {before['worker_pids']} ({history})"
        result = {}

        def cold_read(path=d / f"{ch}.{view}"):
            try:
                result["data"] = read_file(path)
            except OSError as exc:
                result["error"] = exc

        t = threading.Thread(target=cold_read)
        t.start()
        deadline = time.monotonic() + 30
        while t.is_alive() and read_stats(m)["misses"] == before["misses"]:
            assert time.monotonic() < deadline, f"{ch}.{view}: no decode started in 30 s"
            time.sleep(0.01)
        killed = t.is_alive()
        if killed:
            for p in victims:
                os.kill(p, signal.SIGKILL)
        t.join(90)
        assert not t.is_alive(), f"{ch}.{view}: the read hung after its worker was killed"
        assert "error" not in result, \
            f"{ch}.{view}: the read failed after a worker kill: {result['error']!r}"
        assert_same_bytes(result["data"][skip:], want, f"{ch}.{view} read while its worker was killed")
        if not killed:
            history.append((ch, view, "read ended before the kill"))
            continue
        kills += 1
        after = wait_stats(m, lambda s: s["worker_restarts"] > before["worker_restarts"],
                           f"{ch}.{view}: a worker restart")
        new = set(after["worker_pids"]) - set(victims)
        history.append((ch, view, sorted(victims), after["worker_pids"],
                        after["worker_restarts"] - before["worker_restarts"]))
        assert new, f"{ch}.{view}: no new worker pid: {history}"
        assert all(running(p) for p in new), f"{ch}.{view}: new workers {new} not running"
        assert after["decode_errors"] == before["decode_errors"], counters(after)
        if n_workers == 1:
            # one worker: it served the read, so it was noticed and replaced
            assert len(after["worker_pids"]) == 1 and after["worker_pids"][0] not in victims, history
            assert not any(running(p, st) for p, st in victims.items()), history
    assert kills == KILLS, f"only {kills} kills landed during a read: {history}"
    # the replacements serve reads correctly too
    drop_page_cache(d / "k1.f32")
    assert_same_bytes(read_file(d / "k1.f32"), reference(session, "k1").tobytes(),
                      "k1.f32 after the kills")
    s = read_stats(m)
    assert s["worker_restarts"] >= KILLS and s["task_retries"] >= 1, (counters(s), history)


# ---------------------------------------------------------------------------
# 7. no process left after unmount
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("how,foreground", [("fusermount", True), ("fusermount", False),
                                            ("SIGTERM", False), ("SIGINT", True)],
                         ids=["fusermount-foreground", "fusermount-daemon",
                              "SIGTERM-daemon", "SIGINT-foreground"])
def test_no_process_left_after_unmount(mount_fs, long_source, how, foreground):
    m = mount_fs(long_source, "--workers", "2", "--tile-seconds", "0.2", foreground=foreground)
    d = session_dir(m, "long.mefd")
    # leave the engine busy: read-ahead queued over many small tiles
    fd = os.open(d / "k1.f32", os.O_RDONLY)
    try:
        for k in range(6):
            os.pread(fd, 128 * KIB, k * 128 * KIB)
    finally:
        os.close(fd)
    s = read_stats(m)
    daemon = daemon_pid(m)
    workers = list(s["worker_pids"])
    assert len(workers) == 2, counters(s)
    table = proc_table()
    assert all(table[w]["ppid"] == daemon for w in workers), (
        f"workers {workers} are not children of the daemon {daemon}")
    everyone = {p: table[p]["start"] for p in m.server_pids(table) | {daemon, *workers}}
    assert all(running(p, st) for p, st in everyone.items())

    if how == "fusermount":
        res = fuse_unmount(m.root)
        assert res is not None and res.returncode == 0, res
    else:
        os.kill(daemon, getattr(signal, how))

    # Bounded wait for every process to end. A foreground daemon is our
    # child: poll() reaps it. Anything else counts as gone once /proc has no
    # such process (same pid and start time) or only its zombie is left for
    # init to reap.
    deadline = time.monotonic() + 15.0
    while True:
        m.proc.poll()
        left = {p: st for p, st in everyone.items() if running(p, st)}
        if (not left and not is_mounted(m.root)) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    cmdlines = {p: table[p]["cmdline"][:120] for p in left}
    assert not left, f"{how}: processes still running 15 s after unmount: {cmdlines}"
    assert not is_mounted(m.root), f"{how}: still mounted 15 s later"
    if foreground:
        assert m.proc.returncode == 0, f"{how}: foreground mef3fs exited with {m.proc.returncode}"
        assert not os.path.exists(f"/proc/{daemon}") or proc_start(daemon) != everyone[daemon]


# ---------------------------------------------------------------------------
# 8. the kernel page cache serves re-reads
# ---------------------------------------------------------------------------

def _reads_since(trace: Path, t: float) -> list:
    """(offset, size) of the FUSE reads the trace logged after time.time() t."""
    lines = [json.loads(x) for x in trace.read_text().splitlines() if x.strip()] if trace.exists() else []
    return [(x["offset"], x["size"]) for x in lines if "offset" in x and x["t"] >= t]


def test_second_read_does_not_reach_the_daemon(mount_fs, long_source, tmp_path):
    """A file read once is read again from the kernel's page cache: nothing is decoded
    again, and all but a stray page or two never reach the daemon.

    Those strays are the kernel's: in 3 to 5 of 40 runs (this stop's code and the
    last one's alike) fincore counted 1,872-1,874 of k3.f32's 1,875 pages resident
    right after the first read, although the daemon had answered every byte of the
    requests that held them; the second read then asks for just those pages. A
    mount that did not keep its pages would send the second read whole."""
    trace = tmp_path / "trace.jsonl"      # says which reads came
    m = mount_fs(long_source, "--workers", "1", "--trace", str(trace))
    session = long_source / "long.mefd"
    f32 = session_dir(m, "long.mefd") / "k3.f32"
    want = reference(session, "k3").tobytes()
    decoding = ("misses", "single_flight_waits", "readahead_hits")
    t0 = time.time()
    assert_same_bytes(read_file(f32), want, "k3.f32 first read")
    s1 = settled(m)
    t1 = time.time()
    first = _reads_since(trace, t0)
    assert first, "the first read reached no tile"
    assert_same_bytes(read_file(f32), want, "k3.f32 second read")
    mm = np.memmap(f32, dtype="<f4", mode="r")
    assert np.asarray(mm).tobytes() == want
    del mm
    s2 = read_stats(m)
    again = _reads_since(trace, t1)
    assert delta(s2, s1, *decoding) == dict.fromkeys(decoding, 0), (
        f"reading k3.f32 again decoded: {delta(s2, s1, *decoding)}, reads {again}")
    pages = sum(size for _, size in first) // 4096
    strays = sum(size for _, size in again) // 4096
    assert len(again) <= 8 and strays <= pages // 100, (
        f"reading k3.f32 again (read(), then np.memmap) reached the daemon {len(again)} times "
        f"for {strays} of its {pages} pages: {again}")
