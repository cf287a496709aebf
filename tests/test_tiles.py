"""The tile math of mef3fs/tiles.py, tested without a mount.

Only pure tile arithmetic lives here: where `tile_edges` puts the edges,
which tiles `ChannelTiles.tiles_for` picks for a sample range, which grid
window `ChannelTiles.spec` asks a decoder for, and how `TileCache.samples`
slices tiles into a range (with a fake in-process decoder that returns each
sample's own grid index, so any off-by-one shows as a wrong number). Caching,
the worker pool and read-ahead are shown through real mounts in
tests/test_engine.py.

The last test checks the same arithmetic against real MEF block tables: the
tiles of real sessions, decoded one by one with the real decoder, put back
together, equal DESIGN.md's reference (so no tile marked "no data" hides a
sample, and no tile window is shifted by rounding).
"""
from __future__ import annotations

import contextlib
import signal
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import mef3io

from mef3fs.decoders import DecodeSpec, make_decoder
from mef3fs.index import IndexCache, MetaReaders
from mef3fs.session import Opener
from mef3fs.stats import Stats
from mef3fs.tilecache import TileCache
from mef3fs.tiles import ChannelTiles, grid_time, tile_edges
from tests.sessions import T0, _rng, _signal, reference, session_grid

RATES = (256.0, 1000.0, 32768.0, 499.907, 255.99966850667516)


TILE_EDGES_TIMEOUT = 1.0   # seconds; tile_edges takes microseconds on these tables


class Hang(AssertionError):
    pass


@contextlib.contextmanager
def no_hang(what, seconds=TILE_EDGES_TIMEOUT):
    """Fail (instead of hanging the suite) if the body does not return in time.
    tile_edges is pure Python in this thread, so SIGALRM interrupts it."""
    def on_alarm(signum, frame):
        raise Hang(f"{what} did not return within {seconds} s (an endless loop)")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def edges_of(n, blocks, target, fs=1000.0, t0=T0, jitter=0.0):
    """tile_edges for blocks given as (first grid index, length) pairs."""
    starts = [t0 + (s + jitter) * 1e6 / fs for s, _ in blocks]
    lengths = [ln for _, ln in blocks]
    with no_hang(f"tile_edges(n={n}, blocks={blocks[:6]}{'...' if len(blocks) > 6 else ''}, "
                 f"target={target})"):
        return tile_edges(n, t0, fs, starts, lengths, target)


def check_invariants(n, blocks, target, edges, has_data):
    """What every tiling must satisfy, whatever the block table."""
    target = max(1, int(target))
    assert edges.dtype == np.int64 and has_data.dtype == bool
    assert len(has_data) == len(edges) - 1
    assert edges[0] == 0
    if n > 0:
        assert edges[-1] == n, f"last edge {edges[-1]} != n {n}"
        assert np.all(np.diff(edges) > 0), f"edges not strictly increasing: {edges.tolist()}"
    else:
        assert edges.tolist() == [0] and len(has_data) == 0

    tile_of = np.repeat(np.arange(len(has_data)), np.diff(edges)) if n else np.zeros(0, int)
    for s, ln in blocks:
        # every sample of a block, and one sample either side (mef3io and
        # pymef round half-sample edges differently), is in a tile that is
        # decoded: an empty tile never hides data
        lo, hi = max(0, s - 1), min(n, s + ln + 1)
        if hi > lo:
            bad = np.flatnonzero(~has_data[tile_of[lo:hi]])
            assert bad.size == 0, (f"block [{s}, {s + ln}) has samples {(lo + bad[:5]).tolist()} "
                                   f"in a no-data tile; edges {edges.tolist()}")
        # a block no longer than the target is never decoded for two tiles
        if ln <= target and 0 <= s and s + ln <= n:
            inside = edges[(edges > s) & (edges < s + ln)]
            assert inside.size == 0, (f"block [{s}, {s + ln}) (target {target}) is cut at "
                                      f"{inside.tolist()}")
    # data tiles stay near the target: at most twice it, plus the one sample
    # of clearance after a run of blocks
    lengths = np.diff(edges)[has_data]
    if lengths.size:
        assert lengths.max() <= 2 * target + 1, (
            f"a data tile of {lengths.max()} samples for target {target}: {edges.tolist()}")


# ---------------------------------------------------------------------------
# tile_edges: hand-computed cases
# ---------------------------------------------------------------------------

def test_no_blocks_is_one_empty_tile():
    edges, has = edges_of(1000, [], 100)
    assert edges.tolist() == [0, 1000] and has.tolist() == [False]


def test_empty_grid_has_no_tiles():
    edges, has = edges_of(0, [], 100)
    assert edges.tolist() == [0] and has.tolist() == []
    edges, has = edges_of(0, [(0, 10)], 100)
    assert edges.tolist() == [0] and has.tolist() == []


def test_contiguous_blocks_cut_on_block_starts():
    blocks = [(100 * k, 100) for k in range(10)]
    edges, has = edges_of(1000, blocks, 300)
    assert edges.tolist() == [0, 300, 600, 900, 1000]
    assert has.all()
    # a target that is not a multiple of the block length: next block start
    edges, has = edges_of(1000, blocks, 250)
    assert edges.tolist() == [0, 300, 600, 900, 1000]
    check_invariants(1000, blocks, 250, edges, has)


def test_channel_ending_early_gets_an_empty_tail_one_sample_clear():
    blocks = [(100 * k, 100) for k in range(10)]
    edges, has = edges_of(1200, blocks, 300)
    assert edges.tolist() == [0, 300, 600, 900, 1001, 1200]
    assert has.tolist() == [True, True, True, True, False]


def test_late_start_and_gap_are_empty_tiles_one_sample_clear():
    blocks = [(50, 100), (150, 100), (600, 100)]
    edges, has = edges_of(1000, blocks, 1000)
    assert edges.tolist() == [0, 49, 251, 599, 701, 1000]
    assert has.tolist() == [False, True, False, True, False]
    check_invariants(1000, blocks, 1000, edges, has)


def test_small_holes_make_no_empty_tile_that_touches_data():
    # a one-sample hole stays inside the run; a two-sample hole ends the run
    # but both of its samples are clearance; a three-sample hole leaves one
    # empty sample in the middle
    blocks = [(0, 100), (101, 100), (203, 100)]
    edges, has = edges_of(303, blocks, 1000)
    assert edges.tolist() == [0, 202, 303] and has.tolist() == [True, True]
    check_invariants(303, blocks, 1000, edges, has)
    blocks = [(0, 100), (103, 100)]
    edges, has = edges_of(203, blocks, 1000)
    assert edges.tolist() == [0, 101, 102, 203] and has.tolist() == [True, False, True]
    check_invariants(203, blocks, 1000, edges, has)


def test_oversized_block_is_cut_inside():
    edges, has = edges_of(1000, [(0, 1000)], 100)
    assert has.all()
    assert np.diff(edges).max() <= 201
    check_invariants(1000, [(0, 1000)], 100, edges, has)


def test_unsorted_block_table_gives_the_same_tiles():
    blocks = [(100 * k, 100) for k in range(10)]
    shuffled = [blocks[i] for i in np.random.default_rng(1).permutation(len(blocks))]
    a = edges_of(1000, blocks, 300)
    b = edges_of(1000, shuffled, 300)
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()


def test_blocks_outside_the_grid_are_clamped():
    # before t0 (a channel of another rate may define t0) and after the end
    blocks = [(-300, 100), (-200, 400), (200, 100), (900, 300)]
    edges, has = edges_of(1000, blocks, 150)
    check_invariants(1000, blocks, 150, edges, has)
    assert edges[-1] == 1000


@pytest.mark.parametrize("fs", RATES)
def test_half_sample_block_start_rounds_to_the_grid(fs):
    # block starts up to just under half a sample off the grid: same tiles
    blocks = [(0, 64), (64, 64), (200, 64), (264, 64)]
    plain = edges_of(400, blocks, 100, fs=fs)
    for jitter in (0.49, -0.49, 0.25):
        moved = edges_of(400, blocks, 100, fs=fs, jitter=jitter)
        assert moved[0].tolist() == plain[0].tolist(), f"jitter {jitter}"
        assert moved[1].tolist() == plain[1].tolist()


def test_block_running_far_past_the_grid_end():
    # The last block of a channel may extend past n (its samples at the
    # nominal rate outlast the session's end time, or the metadata is
    # inconsistent). Such a block still has to be tiled, not loop forever.
    check_invariants(5, [(0, 600)], 1, *edges_of(5, [(0, 600)], 1))
    check_invariants(1000, [(0, 990), (990, 100)], 10,
                     *edges_of(1000, [(0, 990), (990, 100)], 10))


def test_target_below_one_sample_is_one_sample():
    edges, has = edges_of(10, [(0, 10)], 0)
    assert edges.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10] and has.all()
    check_invariants(10, [(0, 10)], 1, edges, has)


# ---------------------------------------------------------------------------
# tile_edges: properties over random block tables
# ---------------------------------------------------------------------------

@st.composite
def block_tables(draw, past_end=True):
    """(n, blocks, target): non-overlapping blocks with holes of 0, 1, 2 or
    many samples, possibly starting before the grid and (past_end) running
    past its end."""
    target = draw(st.integers(1, 400))
    pos = draw(st.integers(-200, 300))
    blocks = []
    for _ in range(draw(st.integers(0, 25))):
        ln = draw(st.integers(1, 600))
        blocks.append((pos, ln))
        pos += ln + draw(st.sampled_from([0, 0, 0, 1, 2, 3, 50, 700]))
    if past_end:
        n = draw(st.integers(0, max(1, pos + draw(st.integers(-300, 300)))))
    else:
        n = max(0, pos) + draw(st.integers(0, 300))
    return n, blocks, target


# No shrinking: a failing table is reported as found (each shrink step that
# hits an endless loop costs the whole timeout); the minimal cases are
# pinned by the explicit tests above.
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]


@settings(max_examples=300, deadline=None, phases=NO_SHRINK,
          suppress_health_check=[HealthCheck.too_slow])
@given(block_tables(), st.sampled_from(RATES), st.randoms(use_true_random=False))
def test_tile_edges_invariants(table, fs, rnd):
    n, blocks, target = table
    order = list(blocks)
    rnd.shuffle(order)                      # the table's order must not matter
    edges, has = edges_of(n, order, target, fs=fs)
    check_invariants(n, blocks, target, edges, has)


# ---------------------------------------------------------------------------
# ChannelTiles.tiles_for and spec
# ---------------------------------------------------------------------------

def make_tiles(n, blocks, target, fs=1000.0, t0=T0):
    edges, has = edges_of(n, blocks, target, fs=fs, t0=t0)
    return ChannelTiles.fixed(("s", "c"), "/nowhere", "c", "s/c", t0, fs, n, edges, has)


def check_tiles_for(tiles, s0, s1):
    r = tiles.tiles_for(s0, s1)
    everything = tiles.all_tiles()
    lo, hi = max(0, s0), min(tiles.n, s1)
    if hi <= lo:
        assert len(r) == 0, f"[{s0}, {s1}) of n={tiles.n}: {r}"
        return
    k = everything.index(r[0])
    assert r == everything[k:k + len(r)], f"tiles of [{s0}, {s1}) are not consecutive: {r}"
    assert tiles.bounds(r[0])[0] <= lo < tiles.bounds(r[0])[1], f"first tile {r[0]} does not hold {lo}"
    assert tiles.bounds(r[-1])[0] < hi <= tiles.bounds(r[-1])[1], f"last tile {r[-1]} does not hold {hi - 1}"


def test_tiles_for_at_and_around_edges():
    t = make_tiles(1000, [(100 * k, 100) for k in range(10)], 300)   # edges 0 300 600 900 1000
    assert list(t.tiles_for(0, 1000)) == [0, 1, 2, 3]
    assert list(t.tiles_for(0, 300)) == [0]            # end exclusive: not tile 1
    assert list(t.tiles_for(300, 301)) == [1]          # start on an edge: that tile only
    assert list(t.tiles_for(299, 301)) == [0, 1]
    assert list(t.tiles_for(299, 300)) == [0]
    assert list(t.tiles_for(999, 1000)) == [3]
    assert list(t.tiles_for(5, 5)) == []               # empty range
    assert list(t.tiles_for(7, 3)) == []               # reversed range
    assert list(t.tiles_for(1000, 1010)) == []         # past EOF
    assert list(t.tiles_for(950, 5000)) == [3]         # across EOF: clamped
    for s0 in range(0, 1001, 7):
        for s1 in (s0, s0 + 1, s0 + 299, s0 + 300, s0 + 301, 1000, 1003):
            check_tiles_for(t, s0, s1)


@settings(max_examples=200, deadline=None, phases=NO_SHRINK)
@given(block_tables(past_end=False), st.data())
def test_tiles_for_covers_exactly_the_range(table, data):
    n, blocks, target = table
    t = make_tiles(n, blocks, target)
    for _ in range(10):
        s0 = data.draw(st.integers(0, n + 5))
        s1 = data.draw(st.integers(s0, n + 10))
        check_tiles_for(t, s0, s1)


@pytest.mark.parametrize("fs", RATES)
def test_spec_window_maps_back_to_the_tile(fs):
    # the uUTC window of a tile, at a real t0, rounds back to its own samples
    n = int(fs * 3600)
    blocks = [(k * int(fs), int(fs)) for k in range(0, 3600, 1)]
    t = make_tiles(n, blocks[:50] + blocks[60:], int(fs * 10), fs=fs)
    for i in t.all_tiles():
        a, b = t.bounds(i)
        spec = t.spec(i)
        assert spec.n == b - a and spec.nbytes == 4 * (b - a)
        assert spec.ts == grid_time(T0, fs, a) and spec.te == grid_time(T0, fs, b)
        assert round((spec.ts - T0) * fs / 1e6) == a
        assert round((spec.te - T0) * fs / 1e6) == b


# ---------------------------------------------------------------------------
# TileCache.samples: slicing tiles into a range (fake decoder, no pool)
# ---------------------------------------------------------------------------

class IndexDecoder:
    """Returns each sample's own grid index; records what it was asked."""

    def __init__(self, t0, fs):
        self.t0, self.fs = t0, fs
        self.calls = []
        self.lock = threading.Lock()

    def read(self, spec: DecodeSpec) -> np.ndarray:
        with self.lock:
            self.calls.append(spec)
        first = round((spec.ts - self.t0) * self.fs / 1e6)
        return np.arange(first, first + spec.n, dtype=np.float32)


@pytest.mark.parametrize("fs", (1000.0, 255.99966850667516))
def test_samples_are_sliced_from_the_right_tiles(fs):
    blocks = [(50, 100), (150, 100), (250, 100), (600, 333), (933, 5)]
    n = 1100
    t = make_tiles(n, blocks, 120, fs=fs)
    dec = IndexDecoder(T0, fs)
    cache = TileCache(1 << 20, 300, None, dec, 4096, Stats())
    expect = np.arange(n, dtype=np.float32)
    for i in t.all_tiles():
        a, b = t.bounds(i)
        if not t.has_data(i):
            expect[a:b] = np.nan
    rng = np.random.default_rng(3)
    ranges = [(0, n), (0, 1), (n - 1, n), (49, 51), (150, 151)]
    ranges += [(int(a), int(a) + int(rng.integers(0, 300))) for a in rng.integers(0, n, 200)]
    for s0, s1 in ranges:
        s1 = min(s1, n)
        out = np.full(s1 - s0, 7.5, dtype=np.float32)      # a value no path writes
        cache.samples(t, s0, s1, out)
        np.testing.assert_array_equal(out, expect[s0:s1], err_msg=f"samples [{s0}, {s1})")
    # empty tiles are never decoded; each data tile was decoded for its own window
    for spec in dec.calls:
        a = round((spec.ts - T0) * fs / 1e6)
        i = t.tiles_for(a, a + 1)[0]
        assert t.has_data(i) and t.bounds(i) == (a, a + spec.n)


# ---------------------------------------------------------------------------
# real block tables: tiles decoded one by one == the reference
# ---------------------------------------------------------------------------

def build_edge_session(path):
    """Blocks that make the tile edges work: 1-sample holes, gaps, a late
    channel, half-sample offsets, a non-integer rate, several segments."""
    rng = _rng(9001)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        x = _signal(rng, 256 * 30)
        x[777] = np.nan                          # a one-sample hole
        x[2000:2002] = np.nan                    # a two-sample hole
        x[4000:4700] = np.nan                    # a longer gap
        w.write("A", x, T0, fs=256.0, precision=3)
        w.write("A", _signal(rng, 256 * 5), T0 + 33_000_000, fs=256.0, precision=3,
                new_segment=True)
        w.write("B", _signal(rng, 1000 * 20), T0 + 2_500, fs=1000.0, precision=3)   # +2.5 samples
        w.write("B", _signal(rng, 1000 * 5), T0 + 25_000_500, fs=1000.0, precision=3)  # half-sample
        w.write("R", _signal(rng, 7000), T0 + 1_234_567, fs=255.99966850667516, precision=3)
    return path


@pytest.fixture(scope="module")
def edge_session(tmp_path_factory):
    return build_edge_session(tmp_path_factory.mktemp("tiles") / "edge.mefd")


def tile_table(tiles):
    """(edges, has_data) over the whole channel, every piece loaded."""
    ids = tiles.all_tiles()
    edges = np.array([tiles.bounds(i)[0] for i in ids] + [tiles.n], dtype=np.int64)
    return ids, edges, np.array([tiles.has_data(i) for i in ids], dtype=bool)


@pytest.mark.parametrize("tile_seconds", (0.04, 0.3, 1.0, 2.7, 10.0, 1000.0))
def test_real_tiles_decode_to_the_reference(edge_session, tile_seconds):
    stats = Stats()
    readers = MetaReaders("")
    index = IndexCache(readers, 1 << 20, stats)
    session = Opener("", tile_seconds, readers, index).open(str(edge_session), str(edge_session))
    assert session.ok, session.error
    assert stats.snapshot()["indexes_loaded"] == 0, "opening a session read a block index"
    decoder = make_decoder("mef3io")
    g = session_grid(str(edge_session))
    try:
        for ch in g.fs:
            tiles = session.files[f"{ch}.f32"].rows[0]
            ref = reference(edge_session, ch)
            assert tiles.n == len(ref)
            ids, edges, has_data = tile_table(tiles)
            check_invariants(tiles.n, [], max(1, round(tile_seconds * tiles.fs)), edges, has_data)
            got = np.empty(tiles.n, dtype=np.float32)
            for i in ids:
                a, b = tiles.bounds(i)
                if tiles.has_data(i):
                    got[a:b] = decoder.read(tiles.spec(i))
                else:
                    got[a:b] = np.nan
                    assert np.isnan(ref[a:b]).all(), (
                        f"{ch}: tile {i} [{a}, {b}) is marked empty but the reference has "
                        f"data at {(a + np.flatnonzero(~np.isnan(ref[a:b]))[:5]).tolist()}")
            bad = np.flatnonzero(got.view(np.uint32) != ref.view(np.uint32))
            assert bad.size == 0, (
                f"{ch} tile-seconds {tile_seconds}: {bad.size} samples differ, first at "
                f"{bad[:5].tolist()} (tiles {[tiles.tiles_for(int(b_), int(b_) + 1)[0] for b_ in bad[:3]]}"
                f", edges near: {edges[max(0, np.searchsorted(edges, bad[0]) - 1):][:3].tolist()})")
    finally:
        decoder.close()


@pytest.fixture(scope="module")
def block_sizes_session(tmp_path_factory):
    """35 s of 32 kHz in mef3io's 1 s blocks, and of 1 kHz in blocks of 30 s and 5 s."""
    path = tmp_path_factory.mktemp("tiles-blocks") / "blocks.mefd"
    rng = _rng(4242)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        w.write("fast", _signal(rng, 32000 * 35), T0, fs=32000.0, precision=3)
    with mef3io.Writer(str(path), units="uV", block_length=30000) as w:
        w.write("slow", _signal(rng, 1000 * 35), T0, fs=1000.0, precision=3)
    return path


@pytest.mark.parametrize("tile_seconds, fast, slow", (
    # default: cut at the first block start 10 s or 50,000 samples on, never inside a block
    (None, [64000] * 17 + [32000], [30000, 5000]),
    # asked for: as asked, a block more than twice as long cut inside
    (10.0, [320000] * 3 + [160000], [10000, 20000, 5000]),
))
def test_default_tiles_are_at_most_a_few_blocks_and_hold_whole_blocks(block_sizes_session, tile_seconds,
                                                                      fast, slow):
    """A 10 s tile at 32 kHz is 1.28 MB: a random 10 s window decoded 20 s of every
    channel. By default such a channel gets tiles of two 1 s blocks, and a channel of
    blocks longer than 10 s a block a tile (one cut inside would be decoded for every
    part). --tile-seconds is taken as it is."""
    readers = MetaReaders("")
    session = Opener("", tile_seconds, readers, IndexCache(readers, 1 << 22, Stats())).open(
        str(block_sizes_session), str(block_sizes_session))
    assert session.ok, session.error
    decoder = make_decoder("mef3io")
    try:
        for ch, size in (("fast", fast), ("slow", slow)):
            tiles = session.files[f"{ch}.f32"].rows[0]
            ids, edges, has_data = tile_table(tiles)
            assert np.diff(edges)[has_data].tolist() == size, (ch, edges)
            ref = reference(block_sizes_session, ch)
            got = np.concatenate([decoder.read(tiles.spec(i)) for i in ids])
            assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), ch
    finally:
        decoder.close()


def test_spans_agree_with_tiles_for_bounds_and_has_data():
    """The read path's one-pass lookup finds every tile overlapping a range, with its
    bounds and whether it holds data, as the per-tile calls do, across pieces, gaps
    (tiles without data) and ranges past either end."""
    from mef3fs.tiles import PIECE_SHIFT, ChannelTiles, TileTable
    rng = np.random.default_rng(7)
    starts, n = [0, 1000, 5000], 9000
    tables = []
    for a, b in zip(starts, starts[1:] + [n]):
        edges = np.unique(np.r_[a, np.sort(rng.integers(a + 1, b, 7)), b]).astype(np.int64)
        k = len(edges) - 1
        tables.append(TileTable(edges, rng.random(k) > 0.3, np.zeros(k), np.zeros(k)))
    ct = ChannelTiles(("k",), "/x", "c", "x/c", 0, 100.0, n, starts=starts, load=lambda _t, p: tables[p])
    seen_gap = False
    for _ in range(3000):
        s0 = int(rng.integers(-20, n + 20))
        s1 = s0 + int(rng.integers(0, 4000))
        lo, hi = max(s0, 0), min(s1, n)
        want = [((p << PIECE_SHIFT) + j, int(t.edges[j]), int(t.edges[j + 1]), bool(t.has_data[j]))
                for p, t in enumerate(tables) for j in range(len(t.edges) - 1)
                if lo < hi and t.edges[j] < hi and t.edges[j + 1] > lo]
        assert ct.spans(s0, s1) == want, (s0, s1)
        assert ct.tiles_for(s0, s1) == [w[0] for w in want]
        assert [ct.bounds(i) + (ct.has_data(i),) for i in ct.tiles_for(s0, s1)] == [w[1:] for w in want]
        seen_gap = seen_gap or any(not d for *_, d in want)
    assert seen_gap
