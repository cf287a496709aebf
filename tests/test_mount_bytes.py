"""Byte-exactness through a real mount, against DESIGN.md's reference.

For every readable kind of session (gaps, several segments, late channel,
mixed rates, 499.907 Hz, 255.99966850667516 Hz, 32768 Hz, odd names, a
mef_tools-written session, a .mefd.tar, a nested session) and for several
engine settings, every byte read through the mount -- whole files,
np.memmap slices, hundreds of random unaligned os.pread calls, reads that
cross or start past EOF -- must equal

    mef3io.Reader(session).read(channel, t0, t_end, dtype="float32")

with t0 / t_end the earliest start / latest end over all channels.
"""
from __future__ import annotations

import errno
import json
import os
import re
import unicodedata
import zlib

import numpy as np
import pytest

from tests.conftest import (channel_files, drop_page_cache, pread_full, random_reads,
                            read_f32, read_info)
from tests.sessions import (
    ODD_NAMES,
    SAFE_ODD_NAMES,
    channels_of,
    reference,
    session_grid,
)

# Engine settings the mount is exercised with. The first three must be
# byte-exact; "mef_tools" is compared with the tolerance below.
# The default decodes in threads of the daemon (mef3io); "processes" in worker
# processes; mef_tools by default in worker processes too.
CONFIGS = {
    "default": (),
    "small-tiles": ("--tile-seconds", "0.5", "--cache-size", "1M", "--workers", "1"),
    "processes": ("--workers", "2"),
    "mef_tools": ("--decoder", "mef_tools"),
}
EXACT_CONFIGS = ("default", "small-tiles", "processes")

# Sessions of the corpus (mount-relative paths), see tests/sessions.py.
SESSIONS = ("gaps.mefd", "rates.mefd", "names.mefd", "mt.mefd", "factors.mefd",
            "arch.mefd.tar", "sub-01/ses-1/night1.mefd")

# --decoder mef_tools tolerance, and why.
#
# Values: the decoder reads pymef's stored int32 counts and multiplies them
# in float64 by the factor of each sample's own segment (pymef alone would
# apply one factor per channel, 0 when segments differ), then rounds to
# float32. mef3io computes the same float64 product and rounds it the same way. On channels
# whose segments share one factor the float64 products can only differ in
# their last bits, so the float32 results may differ by at most one float32
# rounding step: we allow |mount - reference| <= 1 ulp of the reference value
# (np.spacing of the float32). Measured here, with pymef vs mef3io directly
# and through the mount, on every channel where the decoder lines up with the
# grid: 0 differing samples (0 ulp). The 1 ulp is headroom for other
# platforms/compilers, not something we have seen.
#
# Edges: measured directly (no mount) on gaps.mefd/HF, which starts 500 us
# = exactly half a sample (1 kHz) after t0: mef3io puts its first value at
# grid sample 0 (rounds down), pymef's get_data(t0, t_end) at sample 1
# (rounds up), and the same one-sample shift at every block that starts on a
# half sample. The grid is mef3io's (DESIGN.md), so the decoder has to map
# pymef onto it: we allow NO sample shift -- NaN positions must match
# exactly and every value must be within 1 ulp.
#
# Channels whose segments store different conversion factors (factors.mefd):
# pymef alone scales everything by the first segment's factor, which is
# wrong by orders of magnitude for the other segments; DESIGN.md still
# requires agreement within float32 rounding, so the same tolerance applies
# (test_mef_tools_per_segment_factor).
MEF_TOOLS_ULPS = 1

N_PREADS = 250  # random preads per channel file


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus_mount(module_mount_fs, corpus):
    """config name -> Mount of the whole corpus with that engine setting
    (one mount per setting for the whole module, created on first use)."""
    mounts = {}

    def get(config):
        if config not in mounts:
            mounts[config] = module_mount_fs(corpus.source, *CONFIGS[config])
        return mounts[config]

    return get


def _ids(params):
    return [re.sub(r"[^A-Za-z0-9.]+", "_", "-".join(p)) for p in params]


PAIRS = [(c, s) for c in CONFIGS for s in SESSIONS if not (c == "mef_tools" and s == "factors.mefd")]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def assert_close_mef_tools(got, ref, what):
    """NaN positions identical; values within MEF_TOOLS_ULPS float32 ulps."""
    got = np.asarray(got, dtype="<f4")
    ref = np.asarray(ref, dtype="<f4")
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    nan_g, nan_r = np.isnan(got), np.isnan(ref)
    bad = np.flatnonzero(nan_g != nan_r)
    assert bad.size == 0, (
        f"{what}: NaN positions differ at {bad.size} samples, first at {bad[:10].tolist()} "
        f"(mount {got[bad[:5]].tolist()} vs reference {ref[bad[:5]].tolist()})")
    ok = ~nan_r
    diff = np.abs(got[ok].astype(np.float64) - ref[ok].astype(np.float64))
    tol = MEF_TOOLS_ULPS * np.spacing(np.abs(ref[ok])).astype(np.float64)
    over = np.flatnonzero(diff > tol)
    if over.size:
        idx = np.flatnonzero(ok)[over]
        pytest.fail(f"{what}: {over.size} samples differ by more than {MEF_TOOLS_ULPS} ulp; "
                    f"first at sample {idx[:5].tolist()}: mount {got[idx[:5]].tolist()} "
                    f"vs reference {ref[idx[:5]].tolist()} (max diff {diff.max():.6g})",
                    pytrace=False)


def first_mismatch(a: bytes, b: bytes):
    n = min(len(a), len(b))
    x = np.frombuffer(a[:n], np.uint8) != np.frombuffer(b[:n], np.uint8)
    i = int(np.argmax(x)) if x.any() else n
    return i


def pymef_cannot_read(rel, channel):
    """What pymef itself cannot serve: tar archives (it needs a folder) and
    channels whose names start with '.' (its session listing drops them).
    Checked directly against pymef in test_pymef_limits_are_real."""
    return rel.endswith(".tar") or channel.startswith(".")


def assert_refused_with_reason(m, path, rel):
    """The mef_tools decoder must fail such a read with EIO and log why,
    never serve zeros or another decoder's data."""
    with pytest.raises(OSError) as info:
        read_f32(path)
    assert info.value.errno == errno.EIO
    lines = [ln for ln in m.log_text().splitlines() if "EIO" in ln and "pymef" in ln and rel in ln]
    assert lines, f"no log line names the reason for EIO on {rel}/{path.name}"


def check_channel(path, ref, exact, seed, n_preads=N_PREADS):
    """Random preads (cold), then memmap slices, then the whole file."""
    ref_bytes = ref.tobytes()
    size = len(ref_bytes)
    st = os.stat(path)
    assert st.st_size == size, f"{path.name}: size {st.st_size} != 4 * {len(ref)} = {size}"

    rng = np.random.default_rng(seed)
    drop_page_cache(path)
    reads = random_reads(rng, size, n_preads)
    got_reads = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for off, ln in reads:
            got_reads.append(pread_full(fd, ln, off))
    finally:
        os.close(fd)

    with open(path, "rb") as f:
        whole = f.read()
    assert len(whole) == size, f"{path.name}: read {len(whole)} bytes, file is {size}"
    # np.fromfile, as a user would (only after read() succeeded: np.fromfile
    # does not report a failing read)
    arr = np.fromfile(path, dtype="<f4")
    assert arr.tobytes() == whole, f"{path.name}: np.fromfile differs from read()"

    if exact:
        assert whole == ref_bytes, (
            f"{path.name}: whole file differs from reference from byte "
            f"{first_mismatch(whole, ref_bytes)} (sample {first_mismatch(whole, ref_bytes) // 4})")
        truth = ref_bytes
    else:
        assert_close_mef_tools(arr, ref, f"{path.name} (whole file)")
        truth = whole  # preads must agree byte for byte with the file's own bytes

    for (off, ln), got in zip(reads, got_reads):
        want = truth[off:off + ln]
        if got != want:
            pytest.fail(f"{path.name}: pread(offset={off}, size={ln}) returned {len(got)} "
                        f"bytes, expected {len(want)}; first difference at byte "
                        f"{off + first_mismatch(got, want)}", pytrace=False)

    # np.memmap slices (page faults reach the daemon as kernel read-ahead)
    drop_page_cache(path)
    mm = np.memmap(path, dtype="<f4", mode="r")
    try:
        n = len(ref)
        assert mm.shape == (n,)
        slices = [slice(0, 10), slice(n - 10, n), slice(n // 3, n // 3 + 1000),
                  slice(None, None, 7), slice(n // 2, None, 13)]
        for _ in range(30):
            a = int(rng.integers(0, n))
            b = int(rng.integers(a, min(n, a + 200_000) + 1))
            slices.append(slice(a, b))
        for sl in slices:
            got = np.array(mm[sl])
            if exact:
                if got.tobytes() != ref[sl].tobytes():
                    pytest.fail(f"{path.name}: memmap[{sl.start}:{sl.stop}:{sl.step}] differs "
                                f"from reference", pytrace=False)
            else:
                assert_close_mef_tools(got, ref[sl], f"{path.name} memmap[{sl}]")
    finally:
        del mm


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("config,rel", PAIRS, ids=_ids(PAIRS))
def test_channel_bytes(corpus_mount, corpus, config, rel):
    """Every channel file: size, random preads, memmap slices, whole file."""
    m = corpus_mount(config)
    session = corpus.sessions[rel]
    sdir = m.root / rel
    files = channel_files(sdir)
    chans = channels_of(session)
    assert sorted(files) == sorted(chans), "info.json does not list every channel"
    listing = set(os.listdir(sdir))
    assert "info.json" in listing
    grid = session_grid(str(session))
    failures = []  # check every channel, then report all that failed
    for k, ch in enumerate(sorted(chans)):
        path = files[ch]
        if config == "mef_tools" and pymef_cannot_read(rel, ch):
            assert_refused_with_reason(m, path, rel)
            continue
        try:
            assert path.name in listing, f"{path.name} not in listing {sorted(listing)}"
            ref = reference(session, ch)
            assert len(ref) == grid.n_samples(ch)
            want = 4 * round((grid.t_end - grid.t0) * grid.fs[ch] / 1e6)
            assert os.stat(path).st_size == want, f"{path.name}: size != {want}"
            check_channel(path, ref, exact=config in EXACT_CONFIGS,
                          seed=zlib.crc32(f"{config}/{rel}/{k}".encode()))
        except (AssertionError, OSError, pytest.fail.Exception) as exc:
            failures.append(f"channel {ch!r} ({path.name}): {type(exc).__name__}: {exc}")
    if failures:
        eio = [ln for ln in m.log_text().splitlines() if "EIO" in ln and f"/{rel}/" in ln]
        pytest.fail(f"{len(failures)} of {len(chans)} channels of {rel} wrong with "
                    f"{config} settings:\n" + "\n".join(failures)
                    + ("\nmount log:\n" + "\n".join(eio[-5:]) if eio else ""), pytrace=False)


def test_mef_tools_per_segment_factor(corpus_mount, corpus):
    """A channel whose segments store different conversion factors, through
    --decoder mef_tools: same tolerance as everywhere (see MEF_TOOLS_ULPS)."""
    m = corpus_mount("mef_tools")
    session = corpus.sessions["factors.mefd"]
    files = channel_files(m.root / "factors.mefd")
    for ch in ("F", "G"):
        ref = reference(session, ch)
        try:
            got = read_f32(files[ch])
        except OSError as exc:
            eio = [ln for ln in m.log_text().splitlines() if "EIO" in ln and "factors.mefd" in ln]
            pytest.fail(f"factors.mefd/{ch} via mef_tools: {exc}\nmount log:\n"
                        + "\n".join(eio[-3:]), pytrace=False)
        assert_close_mef_tools(got, ref, f"factors.mefd/{ch} via mef_tools")


def test_grid_and_nan_semantics(corpus_mount, corpus):
    """Independent of the reference: same-rate files have one length, NaN
    before a late channel's start, in a segment gap, and after its end."""
    m = corpus_mount("default")
    session = corpus.sessions["gaps.mefd"]
    g = session_grid(str(session))
    files = channel_files(m.root / "gaps.mefd")
    la1 = read_f32(files["LA1"])
    la2 = read_f32(files["LA2"])
    hf = read_f32(files["HF"])
    assert len(la1) == len(la2) == round((g.t_end - g.t0) * 256.0 / 1e6)
    assert len(hf) == round((g.t_end - g.t0) * 1000.0 / 1e6)
    # LA2 starts 7.3 s after t0 (T0 is LA1's start, the session's t0)
    k = round((g.info["LA2"]["start_time"] - g.t0) * 256.0 / 1e6)
    assert np.isnan(la2[:k - 1]).all() and not np.isnan(la2[k + 1])
    # ... and ends at 54.3 s, well before t_end (70 s)
    e = round((g.info["LA2"]["end_time"] - g.t0) * 256.0 / 1e6)
    assert np.isnan(la2[e + 1:]).all() and not np.isnan(la2[e - 2])
    # the gap inside LA2's single segment (37.3 s .. 44.3 s)
    a, b = round(37.3 * 256) + 2, round(44.3 * 256) - 2
    assert np.isnan(la2[a:b]).all()
    # LA1: NaN run written at samples 1000..1300, single NaN at 5000, segment gap 40..50 s
    assert np.isnan(la1[1000:1300]).all() and not np.isnan(la1[999]) and not np.isnan(la1[1300])
    assert np.isnan(la1[5000]) and not np.isnan(la1[4999]) and not np.isnan(la1[5001])
    assert np.isnan(la1[40 * 256 + 1:50 * 256 - 1]).all()
    assert not np.isnan(la1[50 * 256 + 1])


def test_info_json_describes_files(corpus_mount, corpus):
    """info.json states, per channel, what a reader needs: name, file, dtype,
    byte order, rate (round-tripping exactly), sample count and grid start."""
    m = corpus_mount("default")
    for rel in ("gaps.mefd", "rates.mefd"):
        session = corpus.sessions[rel]
        g = session_grid(str(session))
        info = read_info(m.root / rel)
        # json.load of the raw bytes must work too
        with open(m.root / rel / "info.json") as f:
            json.load(f)
        by_name = {c["name"]: c for c in info["channels"]}
        assert set(by_name) == set(channels_of(session))
        for ch, c in by_name.items():
            assert c["dtype"] == "float32"
            assert c["byte_order"] == "little"
            assert c["sampling_frequency"] == g.fs[ch]  # exact round trip
            assert c["number_of_samples"] == g.n_samples(ch)
            assert c["grid_start_uutc"] == g.t0
            assert os.stat(m.root / rel / c["file"]).st_size == 4 * g.n_samples(ch)


def test_odd_channel_names(corpus_mount, corpus):
    """Safe names are kept verbatim; unsafe ones (leading dot, control
    characters, '..') get distinct safe names that info.json maps."""
    m = corpus_mount("default")
    sdir = m.root / "names.mefd"
    files = channel_files(sdir)
    assert sorted(files) == sorted(ODD_NAMES)
    for name in SAFE_ODD_NAMES:
        assert files[name].name == name + ".f32", (name, files[name].name)
    names = [p.name for p in files.values()]
    assert len(set(names)) == len(names), f"file names collide: {names}"
    listing = set(os.listdir(sdir))
    for name, p in files.items():
        fn = p.name
        assert fn in listing
        assert fn.endswith(".f32")
        assert not fn.startswith("."), f"{name!r} -> hidden file {fn!r}"
        assert "/" not in fn and not any(unicodedata.category(ch) == "Cc" for ch in fn), fn
        assert os.stat(p).st_size == 4 * len(reference(corpus.sessions["names.mefd"], name))


@pytest.mark.parametrize("rel", ["gaps.mefd", "arch.mefd.tar"])
def test_single_session_source(mount_fs, corpus, rel):
    """SOURCE may be one session (folder or .mefd.tar): its files are at the
    mount's root."""
    session = corpus.sessions[rel]
    m = mount_fs(session)
    assert (m.root / "info.json").is_file()
    files = channel_files(m.root)
    assert sorted(files) == sorted(channels_of(session))
    for k, (ch, path) in enumerate(sorted(files.items())):
        check_channel(path, reference(session, ch), exact=True, seed=k, n_preads=60)


@pytest.mark.parametrize("config", ["default", "small-tiles", "processes", "mef_tools"])
def test_engine_settings_took_effect(corpus_mount, corpus, config):
    """The engine settings above are really in force (else the byte tests
    would silently test one engine three times): worker count, cache budget,
    and which path decoded. By default mef3io decodes in threads of the
    daemon and mef_tools in one worker process per CPU. Reads a large-tile
    channel first (32768 Hz: tiles above the in-process threshold), so the
    test also stands alone."""
    from mef3fs.engine import cpu_count
    from tests.conftest import read_stats

    m = corpus_mount(config)
    session = corpus.sessions["rates.mefd"]
    p = channel_files(m.root / "rates.mefd")["k32"]
    drop_page_cache(p)
    data = p.read_bytes()
    if config != "mef_tools":        # pymef's values are compared with a tolerance elsewhere
        assert data == reference(session, "k32").tobytes()
    st = read_stats(m)
    pool_decodes = st["decodes_foreground"] + st["decodes_background"]
    want_workers = {"default": 0, "small-tiles": 1, "processes": 2, "mef_tools": cpu_count()}[config]
    assert st["workers"] == want_workers and len(st["worker_pids"]) == want_workers, st
    if want_workers == 0:
        assert pool_decodes == 0, st
        assert st["decodes_inprocess"] > 0, st
    else:
        assert pool_decodes > 0, f"the worker pool decoded nothing: {st}"
    if config == "small-tiles":
        assert st["cache_budget"] == 1 << 20, st
        assert st["cache_bytes"] <= 1 << 20, st


@pytest.mark.parametrize("config", ["default", "small-tiles"])
def test_concurrent_reads(corpus_mount, corpus, config):
    """Several threads reading random ranges of several files at once (the
    FUSE loop is multithreaded; tiles are shared, decoded once, evicted under
    a small cache): every byte still equals the reference."""
    from concurrent.futures import ThreadPoolExecutor

    m = corpus_mount(config)
    targets = []
    for rel, ch in (("rates.mefd", "k32"), ("rates.mefd", "r499"), ("gaps.mefd", "HF"),
                    ("gaps.mefd", "LA1"), ("mt.mefd", "B")):
        path = channel_files(m.root / rel)[ch]
        drop_page_cache(path)
        targets.append((path, reference(corpus.sessions[rel], ch).tobytes()))

    def worker(seed):
        rng = np.random.default_rng(seed)
        fds = [os.open(p, os.O_RDONLY) for p, _ in targets]
        try:
            for _ in range(120):
                k = int(rng.integers(0, len(targets)))
                ref = targets[k][1]
                off = int(rng.integers(0, len(ref) + 1000))
                ln = int(rng.integers(1, 300_000))
                got = pread_full(fds[k], ln, off)
                if got != ref[off:off + ln]:
                    return f"{targets[k][0].name}: pread({ln}, {off}) wrong ({len(got)} bytes)"
        finally:
            for fd in fds:
                os.close(fd)
        return None

    with ThreadPoolExecutor(8) as ex:
        errors = [e for e in ex.map(worker, range(8)) if e]
    assert not errors, errors


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # MefReader.__del__ after a failed open
def test_pymef_limits_are_real(corpus):
    """The cases the mef_tools decoder refuses are pymef's own limits:
    it lists no channel whose name starts with '.', and opens no tar."""
    from mef_tools.io import MefReader
    names = corpus.sessions["names.mefd"]
    dotted = [c for c in channels_of(names) if c.startswith(".")]
    assert dotted
    listed = MefReader(str(names)).channels
    assert not set(dotted) & set(listed)
    with pytest.raises(Exception):
        MefReader(str(corpus.sessions["arch.mefd.tar"]))
