"""Overviews through a real mount: block envelopes, min-max levels, preview.png (issue 12).

* ``overview/blocks/<ch>.npy`` equals ``mef3io.Reader.block_envelope(ch)`` on
  sessions from both writers, with gaps, segments, several rates, and on a
  session whose data blocks are damaged; reading it decodes nothing, and
  listing reads no block index (its size comes from segment metadata). When
  the index holds another number of blocks than the metadata says, the
  index wins and the log says so.
* ``overview/<fs>Hz/minmax_x<k>.npy`` equals numpy's nanmin/nanmax of the
  ``.f32`` files, last partial bin and all-NaN bins included; over cached
  tiles it costs no decode; k >= 100 is still free after the tiles were
  evicted (summaries), and still equal to a fresh reduction.
* ``preview.png`` is a PNG of the size listing states, of the geometry
  info.json states, whose strips follow the channel list: a flat channel
  draws a flat line, a gap draws nothing.
"""
from __future__ import annotations

import errno
import glob
import io
import json
import os
import time
import warnings
from pathlib import Path

import mef3io
import numpy as np
import pytest
from PIL import Image

from tests.conftest import drop_page_cache, pread_full, read_stats
from tests.sessions import T0, _rng, _signal, build_gaps_session, build_small_session

ENV_COLUMNS = ("start_uutc", "end_uutc", "min", "max")
DECODE_COUNTERS = ("decodes_foreground", "decodes_background", "decodes_inprocess", "tiles_decoded")
CORPUS = ("gaps.mefd", "rates.mefd", "names.mefd", "mt.mefd", "factors.mefd", "arch.mefd.tar",
          "sub-01/ses-1/night1.mefd")
NUMBER_OF_BLOCKS_AT = 8928     # offset of section 2's number_of_blocks in a .tmet file (MEF 3.0)


def decodes(stats) -> int:
    return sum(int(stats.get(k, 0)) for k in DECODE_COUNTERS)


def settled(mount, timeout=20.0) -> dict:
    """The stats once no decode is in flight (read-ahead of earlier reads may still land)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = read_stats(mount)
        if not stats.get("tiles_in_flight") or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def reader(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mef3io.Reader(str(path))


def block_envelope(path, channel) -> np.ndarray:
    r = reader(path)
    try:
        env = r.block_envelope(channel)
    finally:
        r.close()
    return np.stack([np.asarray(env[c], dtype=np.float64) for c in ENV_COLUMNS], axis=1).reshape(-1, 4)


def info_of(folder) -> dict:
    return json.loads((Path(folder) / "info.json").read_bytes())


def f32(folder, ch) -> np.ndarray:
    return np.frombuffer((Path(folder) / ch["file"]).read_bytes(), dtype="<f4")


def numpy_level(x: np.ndarray, k: int) -> np.ndarray:
    """numpy's reduction of one channel: (ceil(n/k), 2), NaN where a bin has no data."""
    m = -(-len(x) // k)
    out = np.full((m, 2), np.nan, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # all-NaN bins
        for j in range(m):
            part = x[j * k:(j + 1) * k]
            out[j] = np.nanmin(part), np.nanmax(part)
    return out


def fast_level(x: np.ndarray, k: int) -> np.ndarray:
    m = -(-len(x) // k)
    pad = np.full(m * k, np.nan, dtype=np.float32)
    pad[:len(x)] = x
    pad = pad.reshape(m, k)
    return np.stack([np.fmin.reduce(pad, axis=1), np.fmax.reduce(pad, axis=1)], axis=1)


def expected_decimations(n: int) -> list:
    out, k = [], 10
    while True:
        out.append(k)
        if -(-n // k) <= 4096:
            return out
        k *= 10


# ---------------------------------------------------------------------------
# sessions of our own
# ---------------------------------------------------------------------------

def build_overview_session(path):
    """Two rates, a segment gap, a gap inside a segment, a late start and an early end,
    a NaN run, a flat channel; long enough for levels 10, 100 (256 Hz) and 1000 (1 kHz)."""
    rng = _rng(1212)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        a = _signal(rng, 256 * 360)
        a[20_000:20_700] = np.nan
        w.write("A", a, T0, fs=256.0, precision=3)
        w.write("A", _signal(rng, 256 * 180), T0 + 400_000_000, fs=256.0, precision=3, new_segment=True)
        w.write("flat", np.full(256 * 580, 12.5), T0, fs=256.0, precision=3)
        w.write("B", _signal(rng, 256 * 200), T0 + 60_000_000, fs=256.0, precision=3)
        w.write("B", _signal(rng, 256 * 200), T0 + 290_000_000, fs=256.0, precision=3)
        w.write("HF", _signal(rng, 1000 * 580, scale=200.0), T0 + 500, fs=1000.0, precision=3)
    return path


def build_skewed_session(path):
    """The gaps session, with LA2's segment metadata stating one block fewer than its index holds."""
    build_gaps_session(path)
    (tmet,) = glob.glob(str(Path(path) / "LA2.timd" / "*.segd" / "*.tmet"))
    b = bytearray(Path(tmet).read_bytes())
    at = NUMBER_OF_BLOCKS_AT
    stated = int.from_bytes(b[at:at + 8], "little")
    assert stated == len(block_envelope(path, "LA2")) == 4, stated
    b[at:at + 8] = (stated - 1).to_bytes(8, "little")
    crc32 = mef3io._mef3io.crc32
    b[4:8] = crc32(bytes(b[1024:])).to_bytes(4, "little")      # body CRC, then header CRC
    b[0:4] = crc32(bytes(b[4:1024])).to_bytes(4, "little")
    Path(tmet).write_bytes(bytes(b))
    r = reader(path)
    try:
        assert [s["number_of_blocks"] for s in r.segments("LA2")] == [3]
        assert len(r.block_envelope("LA2")["min"]) == 4
    finally:
        r.close()
    return path


def build_broken_index_session(path):
    """The gaps session with LA2's block index cut short: it opens, but LA2's index cannot be read."""
    build_gaps_session(path)
    (tidx,) = glob.glob(str(Path(path) / "LA2.timd" / "*.segd" / "*.tidx"))
    Path(tidx).write_bytes(Path(tidx).read_bytes()[:1024 + 30])
    r = reader(path)
    try:
        with pytest.raises(mef3io.MefError):
            r.block_envelope("LA2")
    finally:
        r.close()
    return path


@pytest.fixture(scope="module")
def ov_source(tmp_path_factory):
    source = tmp_path_factory.mktemp("ov") / "source"
    source.mkdir()
    build_overview_session(source / "ov.mefd")
    build_small_session(source / "many.mefd", 1313, seconds=5,
                        channels=tuple(f"c{k:02d}" for k in range(40)))
    build_skewed_session(source / "skew.mefd")
    build_broken_index_session(source / "noindex.mefd")
    return source


@pytest.fixture(scope="module")
def corpus_mount(module_mount_fs, corpus):
    return module_mount_fs(corpus.source, "--workers", "2", "--tile-seconds", "3", "--cache-size", "8M")


@pytest.fixture(scope="module")
def ov_mount(module_mount_fs, ov_source):
    return module_mount_fs(ov_source, "--workers", "2", "--cache-size", "64M")


def sessions(corpus_mount, corpus, ov_mount, ov_source):
    out = [(corpus_mount.root / rel, corpus.sessions[rel]) for rel in CORPUS]
    return out + [(ov_mount.root / "ov.mefd", ov_source / "ov.mefd")]


# ---------------------------------------------------------------------------
# listing
# ---------------------------------------------------------------------------

def test_listing_states_every_size_without_an_index(mount_fs, corpus, ov_source):
    for source in (corpus.source, ov_source):
        m = mount_fs(source, "--workers", "1")
        for folder, _, files in os.walk(m.root):
            for name in files:
                os.stat(Path(folder) / name)
        for folder in sorted({p.parent for p in m.root.rglob("info.json")}):
            info = info_of(folder)
            if info["status"] != "ok":
                continue
            for ch in info["channels"]:
                blocks = sum(s["number_of_blocks"] for s in ch["segments"])
                size = os.stat(folder / ch["envelope_file"]).st_size
                assert size == _npy_header_len((blocks, 4), "<f8") + 32 * blocks, ch["name"]
            for g in info["grids"]:
                ks = [lv["decimation"] for lv in g["overview_files"]]
                assert ks == expected_decimations(g["number_of_samples"])
                for lv in g["overview_files"]:
                    bins = -(-g["number_of_samples"] // lv["decimation"])
                    shape = (len(g["channels"]), bins, 2)
                    assert os.stat(folder / lv["file"]).st_size == _npy_header_len(shape, "<f4") + 8 * bins * shape[0]
            geo = info["preview"]
            assert info["preview_file"] == "preview.png" == geo["file"]
            assert set(info["overview_layout"]) == {"envelope_file", "overview_files", "preview_file"}
            assert os.stat(folder / "preview.png").st_size == _png_size(geo["width"], geo["height"])
        stats = read_stats(m)
        assert stats["indexes_loaded"] == 0 and decodes(stats) == 0, stats


def _npy_header_len(shape, descr) -> int:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return len(buf.getvalue())


def _png_size(width, height) -> int:
    raw = height * (1 + -(-width * 2 // 8))
    return 8 + 25 + 12 + 3 * 4 + 12 + 2 + 5 * -(-raw // 65535) + raw + 4 + 12


# ---------------------------------------------------------------------------
# block envelopes
# ---------------------------------------------------------------------------

def test_envelopes_equal_block_envelope(corpus_mount, corpus, ov_mount, ov_source):
    before = [settled(corpus_mount), settled(ov_mount)]
    checked = 0
    for folder, on_disk in sessions(corpus_mount, corpus, ov_mount, ov_source):
        info = info_of(folder)
        assert info["status"] == "ok", info
        for ch in info["channels"]:
            path = folder / ch["envelope_file"]
            want = block_envelope(on_disk, ch["name"])
            got = np.load(path)
            assert got.dtype == np.dtype("<f8") and got.shape == want.shape, (path, got.shape, want.shape)
            assert np.array_equal(got, want, equal_nan=True), path
            assert np.array_equal(np.load(path, mmap_mode="r"), want, equal_nan=True), path
            assert os.stat(path).st_size == len(path.read_bytes())
            checked += len(want)
    assert checked > 50
    after = [read_stats(corpus_mount), read_stats(ov_mount)]
    for b, a in zip(before, after):
        assert decodes(a) == decodes(b) and a["misses"] == b["misses"], (b, a)


def test_an_envelope_is_in_the_page_cache_once_opened(mount_fs, ov_source, tmp_path):
    """Its bytes, made whole for the open, are stored into the kernel's page cache
    before the open returns: np.load then sends no read to the daemon. An open the
    kernel already holds stores nothing; pages dropped are read from us again."""
    trace = tmp_path / "trace.jsonl"
    m = mount_fs(ov_source, "--workers", "1", "--trace", trace)
    folder = m.root / "many.mefd"
    info = info_of(folder)
    paths = [folder / ch["envelope_file"] for ch in info["channels"]]
    wants = [block_envelope(ov_source / "many.mefd", ch["name"]) for ch in info["channels"]]

    def envelope_reads() -> list:
        read_stats(m)                 # flushes the trace
        lines = [json.loads(x) for x in trace.read_text().splitlines()]
        return [r for r in lines if "event" not in r and "/overview/blocks/" in r["path"]]

    before = read_stats(m)
    for path, want in zip(paths, wants):
        assert np.array_equal(np.load(path), want, equal_nan=True), path
    after = read_stats(m)
    assert after["pushes"] - before["pushes"] == len(paths), (before, after)
    assert after["push_bytes"] - before["push_bytes"] == sum(os.stat(p).st_size for p in paths)
    assert envelope_reads() == []
    for path, want in zip(paths, wants):
        assert np.array_equal(np.load(path), want, equal_nan=True), path
    again = read_stats(m)
    assert again["pushes"] == after["pushes"] and envelope_reads() == [], (after, again)
    drop_page_cache(paths[3])
    assert np.array_equal(np.load(paths[3]), wants[3], equal_nan=True)
    reads = envelope_reads()
    assert reads and {r["path"] for r in reads} == {"/" + str(paths[3].relative_to(m.root))}, reads
    assert sum(r["returned"] for r in reads) == os.stat(paths[3]).st_size, reads


def test_envelopes_of_a_damaged_session_decode_nothing(mount_fs, damaged):
    m = mount_fs(damaged.source, "--workers", "1")
    folder = m.root / damaged.rel
    info = info_of(folder)
    for ch in info["channels"]:
        got = np.load(folder / ch["envelope_file"])
        assert np.array_equal(got, block_envelope(damaged.session, ch["name"]), equal_nan=True)
        assert np.array_equal(got, block_envelope(damaged.pristine, ch["name"]), equal_nan=True)
    Image.open(folder / "preview.png").load()
    stats = read_stats(m)
    assert decodes(stats) == 0 and stats["misses"] == 0 and stats["indexes_loaded"] == 0, stats
    # the levels over the damaged block fail like the channel file does; the other channel's row reads
    (g,) = info["grids"]
    lv = g["overview_files"][-1]
    path = folder / lv["file"]
    with pytest.raises(OSError) as exc:
        path.read_bytes()
    assert exc.value.errno == errno.EIO
    row = g["channels"].index(damaged.good_channel)
    bins = -(-g["number_of_samples"] // lv["decimation"])
    header = os.stat(path).st_size - 8 * bins * len(g["channels"])
    fd = os.open(path, os.O_RDONLY)
    try:
        raw = pread_full(fd, 8 * bins, header + row * 8 * bins)
    finally:
        os.close(fd)
    good = next(c for c in info["channels"] if c["name"] == damaged.good_channel)
    want = fast_level(f32(folder, good), lv["decimation"])
    assert np.array_equal(np.frombuffer(raw, dtype="<f4").reshape(-1, 2), want, equal_nan=True)


def test_the_index_wins_over_metadata(ov_mount, ov_source):
    folder = ov_mount.root / "skew.mefd"
    info = info_of(folder)
    ch = next(c for c in info["channels"] if c["name"] == "LA2")
    assert [s["number_of_blocks"] for s in ch["segments"]] == [3]
    path = folder / ch["envelope_file"]
    listed = os.stat(path).st_size
    assert listed == _npy_header_len((3, 4), "<f8") + 32 * 3
    got = np.load(path)
    want = block_envelope(ov_source / "skew.mefd", "LA2")
    assert want.shape == (4, 4) and np.array_equal(got, want, equal_nan=True)
    assert len(path.read_bytes()) == _npy_header_len((4, 4), "<f8") + 32 * 4
    assert "the block index holds 4 blocks, segment metadata says 3" in ov_mount.log_text()
    # the other channels' metadata was right: their files are what it stated
    for other in info["channels"]:
        if other["name"] != "LA2":
            p = folder / other["envelope_file"]
            assert len(p.read_bytes()) == os.stat(p).st_size


def test_an_unreadable_index_fails_its_own_file_only(ov_mount, ov_source):
    folder = ov_mount.root / "noindex.mefd"
    info = info_of(folder)
    by_name = {c["name"]: c for c in info["channels"]}
    with pytest.raises(OSError) as exc:
        np.load(folder / by_name["LA2"]["envelope_file"])
    assert exc.value.errno == errno.EIO
    assert "block index cannot be read" in ov_mount.log_text()
    for name in ("HF", "LA1"):
        assert np.array_equal(np.load(folder / by_name[name]["envelope_file"]),
                              block_envelope(ov_source / "noindex.mefd", name), equal_nan=True)
    geo = info["preview"]
    _, px = picture(folder)
    plot = slice(geo["plot_left"], geo["plot_left"] + geo["plot_width"])
    for s in geo["strips"]:
        rows = px[s["top"]:s["top"] + s["height"], plot]
        if s["channel"] == "LA2":       # says so in its strip
            assert not (rows == TRACE).any() and (rows == INK).sum() > 50
        else:
            assert (rows == TRACE).any()


def test_envelopes_and_preview_under_a_level1_password(mount_fs, encrypted):
    m = mount_fs(encrypted.source, "--workers", "1", "--password", encrypted.password1)
    folder = m.root / encrypted.rel
    info = info_of(folder)
    assert info["status"] == "ok" and info["password_level"] == 1
    r = mef3io.Reader(str(encrypted.session), password=encrypted.password1)
    try:
        for ch in info["channels"]:
            env = r.block_envelope(ch["name"])
            want = np.stack([np.asarray(env[c], dtype=np.float64) for c in ENV_COLUMNS], axis=1)
            assert np.array_equal(np.load(folder / ch["envelope_file"]), want, equal_nan=True)
    finally:
        r.close()
    im, px = picture(folder)
    assert im.size == (info["preview"]["width"], info["preview"]["height"])
    assert (px == TRACE).any()
    assert decodes(read_stats(m)) == 0


# ---------------------------------------------------------------------------
# min-max levels
# ---------------------------------------------------------------------------

def test_levels_equal_numpy(corpus_mount, corpus, ov_mount, ov_source):
    partial = all_nan = 0
    for folder, _ in sessions(corpus_mount, corpus, ov_mount, ov_source):
        info = info_of(folder)
        by_name = {c["name"]: c for c in info["channels"]}
        for g in info["grids"]:
            n = g["number_of_samples"]
            rows = [f32(folder, by_name[name]) for name in g["channels"]]
            assert [lv["decimation"] for lv in g["overview_files"]] == expected_decimations(n)
            for lv in g["overview_files"]:
                k = lv["decimation"]
                got = np.load(folder / lv["file"])
                assert got.dtype == np.dtype("<f4") and got.shape == (len(rows), -(-n // k), 2)
                for r, x in enumerate(rows):
                    want = numpy_level(x, k) if len(x) <= 200_000 else fast_level(x, k)
                    assert np.array_equal(got[r], want, equal_nan=True), (folder, lv["file"], r)
                    all_nan += int(np.isnan(want[:, 0]).sum())
                partial += n % k != 0
    assert partial and all_nan, "the sessions must have partial last bins and bins without data"


def test_level_reads_at_any_offset(ov_mount):
    path = ov_mount.root / "ov.mefd" / "overview" / "1000Hz" / "minmax_x10.npy"
    whole = path.read_bytes()
    rng = np.random.default_rng(12)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(60):
            off = int(rng.integers(0, len(whole) + 10))
            size = int(rng.integers(1, 40_000))
            drop_page_cache(path)
            assert pread_full(fd, size, off) == whole[off:off + size], (off, size)
    finally:
        os.close(fd)


def test_levels_over_cached_tiles_decode_nothing(mount_fs, ov_source):
    m = mount_fs(ov_source, "--workers", "2", "--cache-size", "64M")
    folder = m.root / "ov.mefd"
    info = info_of(folder)
    for ch in info["channels"]:
        f32(folder, ch)
    before = settled(m)
    assert before["evictions"] == 0
    for g in info["grids"]:
        for lv in g["overview_files"]:
            np.load(folder / lv["file"])
    after = read_stats(m)
    assert decodes(after) == decodes(before) and after["misses"] == before["misses"], (before, after)


def test_summaries_outlive_their_tiles(mount_fs, ov_source):
    """A cold level decodes through the pool, reading ahead; once read, k >= 100 costs no
    decode even after every tile was evicted, and still equals a fresh reduction."""
    m = mount_fs(ov_source, "--workers", "2", "--cache-size", "1M", "--tile-seconds", "10")
    folder = m.root / "ov.mefd"
    info = info_of(folder)
    levels = [(g, lv) for g in info["grids"] for lv in g["overview_files"] if lv["decimation"] >= 100]
    assert {lv["decimation"] for _, lv in levels} == {100, 1000}
    first = {lv["file"]: np.load(folder / lv["file"]) for _, lv in levels}
    cold = settled(m)
    assert decodes(cold) > 0 and cold["readahead_scheduled"] > 0, cold
    # a fresh reduction of every channel (its reads evict whatever the first pass left)
    fresh = {name: {k: fast_level(x, k) for k in (100, 1000)}
             for name, x in ((c["name"], f32(folder, c)) for c in info["channels"])}
    before = settled(m)
    assert before["evictions"] > 0 and before["cache_bytes"] <= 1 << 20, before
    for g, lv in levels:
        path = folder / lv["file"]
        drop_page_cache(path)
        again = np.load(path)
        assert np.array_equal(again, first[lv["file"]], equal_nan=True)
        for r, name in enumerate(g["channels"]):
            assert np.array_equal(again[r], fresh[name][lv["decimation"]], equal_nan=True), (lv["file"], name)
    after = settled(m)
    assert decodes(after) == decodes(before) and after["misses"] == before["misses"], (before, after)
    assert after["summary_hits"] > before["summary_hits"], after
    assert 0 < after["summary_bytes"] <= after["summary_budget"], after


def test_a_scanned_recording_has_its_levels_for_free(mount_fs, ov_source):
    m = mount_fs(ov_source, "--workers", "2", "--cache-size", "1M")
    folder = m.root / "ov.mefd"
    info = info_of(folder)
    rows = {c["name"]: f32(folder, c) for c in info["channels"]}      # the scan
    before = settled(m)
    assert before["evictions"] > 0, before
    for g in info["grids"]:
        for lv in g["overview_files"]:
            if lv["decimation"] < 100:
                continue
            got = np.load(folder / lv["file"])
            for r, name in enumerate(g["channels"]):
                assert np.array_equal(got[r], fast_level(rows[name], lv["decimation"]), equal_nan=True)
    after = read_stats(m)
    assert decodes(after) == decodes(before) and after["misses"] == before["misses"], (before, after)


# ---------------------------------------------------------------------------
# preview.png
# ---------------------------------------------------------------------------

PAPER, INK, TRACE, LIGHT = range(4)


def picture(folder):
    path = Path(folder) / "preview.png"
    data = path.read_bytes()
    assert len(data) == os.stat(path).st_size
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(data))
    im.verify()
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and im.mode == "P"
    return im, np.asarray(im)


def columns_between(geo, info, t_a, t_b):
    """Pixel columns (of the plot) that lie wholly inside uUTC [t_a, t_b)."""
    per = (info["end_uutc"] - info["start_uutc"]) / geo["plot_width"]
    lo = int(np.ceil((t_a - info["start_uutc"]) / per)) + 1
    hi = int(np.floor((t_b - info["start_uutc"]) / per)) - 1
    return np.arange(max(lo, 0), min(hi, geo["plot_width"]))


def test_preview_draws_the_envelopes(ov_mount):
    folder = ov_mount.root / "ov.mefd"
    info = info_of(folder)
    geo = info["preview"]
    im, px = picture(folder)
    assert im.size == (geo["width"], geo["height"])
    names = [c["name"] for c in info["channels"]]
    assert [s["channel"] for s in geo["strips"]] == names and geo["left_out"] == []
    plot = slice(geo["plot_left"], geo["plot_left"] + geo["plot_width"])
    strip = {s["channel"]: px[s["top"]:s["top"] + s["height"], plot] for s in geo["strips"]}
    # the flat channel: one trace pixel per column, all on one row
    flat = strip["flat"] == TRACE
    assert (flat.sum(axis=0) == 1).all()
    assert len(set(np.argmax(flat, axis=0))) == 1
    # A: nothing in its segment gap, nor where its NaN run left no block; something around them
    gap = columns_between(geo, info, T0 + 360_000_000, T0 + 400_000_000)
    assert len(gap) > 20 and (strip["A"][:, gap] == PAPER).all()
    nan_run = columns_between(geo, info, T0 + 20_000 * 1e6 / 256, T0 + 20_700 * 1e6 / 256)
    assert len(nan_run) >= 2 and (strip["A"][:, nan_run] == PAPER).all()
    for t_a, t_b in ((T0, T0 + 75_000_000), (T0 + 85_000_000, T0 + 358_000_000),
                     (T0 + 402_000_000, T0 + 578_000_000)):
        cols = columns_between(geo, info, t_a, t_b)
        assert (strip["A"][:, cols] == TRACE).any(axis=0).all(), (t_a, t_b)
    # B: nothing before its start, in the gap inside its segment, after its end
    for t_a, t_b in ((T0, T0 + 60_000_000), (T0 + 260_000_000, T0 + 290_000_000),
                     (T0 + 490_000_000, info["end_uutc"])):
        cols = columns_between(geo, info, t_a, t_b)
        assert len(cols) > 20 and (strip["B"][:, cols] == PAPER).all(), (t_a, t_b)
    inside = columns_between(geo, info, T0 + 70_000_000, T0 + 250_000_000)
    assert (strip["B"][:, inside] == TRACE).any(axis=0).all()
    # a signal channel fills more than a line; names and the time axis are drawn in ink
    assert (strip["HF"] == TRACE).sum(axis=0).max() > 5
    assert (px[:, :geo["plot_left"]] == INK).any()
    below = px[geo["strips"][-1]["top"] + geo["strips"][-1]["height"]:, plot]
    assert (below == INK).sum() > geo["plot_width"]


def test_preview_says_which_channels_were_left_out(ov_mount):
    folder = ov_mount.root / "many.mefd"
    info = info_of(folder)
    geo = info["preview"]
    names = [c["name"] for c in info["channels"]]
    assert len(names) == 40
    assert [s["channel"] for s in geo["strips"]] == names[:32] and geo["left_out"] == names[32:]
    im, px = picture(folder)
    assert im.size == (geo["width"], geo["height"])
    footer = px[geo["height"] - 14:, :]
    assert (footer == INK).sum() > 200, "the left-out channels are named under the axis"
    for s in geo["strips"]:
        assert (px[s["top"]:s["top"] + s["height"]] == TRACE).any(), s
