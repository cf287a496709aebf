"""Property (issue 6, part 6): any sequence of (file, offset, size) reads returns
exactly the reference bytes.

One mount for the whole run (module scope), of sessions with gaps, several
segments, late channels, NaN runs, mixed and non-integer rates, different
conversion factors per segment, and a .mefd.tar. Small tiles (2.5 s), a small
cache and read-ahead make tile edges, evictions and prefetch part of what is
tested. Reads go through the page cache or O_DIRECT (every one then reaches
the daemon), at offsets drawn near the edges that matter (segments, gaps, a
channel's own start, rows of rates/*.npy, headers, EOF) or anywhere, and may
continue where the last one ended (a sequential stream for read-ahead).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import mef3io
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import pread_full, read_info, read_stats
from tests.sessions import (T0, _rng, _signal, build_archive, build_factors_session,
                            build_gaps_session, build_rates_session, reference)

MAX_EXAMPLES = 300


def build_segments_session(path):
    """Three rates, segments with gaps between them, a late channel, NaN runs."""
    rng = _rng(1301)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        w.write("S1", _signal(rng, 1000 * 15), T0, fs=1000.0, precision=3)
        w.write("S1", _signal(rng, 1000 * 10), T0 + 19_000_000, fs=1000.0, precision=3,
                new_segment=True)
        w.write("S1", _signal(rng, 1000 * 5), T0 + 31_500_000, fs=1000.0, precision=3,
                new_segment=True)
        x = _signal(rng, 2048 * 30)
        x[4000:4100] = np.nan
        w.write("S2", x, T0 + 4_000_250, fs=2048.0, precision=3)
        w.write("S3", _signal(rng, 100 * 36), T0 + 10, fs=100.0, precision=3)
    return Path(path)


def _npy_header_len(path, shape):
    with open(path, "rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        got = np.lib.format.read_array_header_1_0(f)
        assert got == (shape, False, np.dtype("<f4")), (path, got)
        return f.tell()


@pytest.fixture(scope="module")
def prop(module_mount_fs, tmp_path_factory):
    base = tmp_path_factory.mktemp("prop")
    src = base / "source"
    src.mkdir()
    sessions = {
        "gaps.mefd": build_gaps_session(src / "gaps.mefd"),
        "rates.mefd": build_rates_session(src / "rates.mefd"),
        "factors.mefd": build_factors_session(src / "factors.mefd"),
        "segs.mefd": build_segments_session(src / "segs.mefd"),
        "arch.mefd.tar": build_archive(base / "staging", src / "arch.mefd.tar"),
    }
    m = module_mount_fs(src, "--workers", "2", "--tile-seconds", "2.5", "--cache-size", "512K",
                        "--readahead", "1M")
    files = []   # (path, expected bytes, interesting offsets)
    for rel, real in sessions.items():
        sdir = m.root / rel
        info = read_info(sdir)
        assert info["status"] == "ok", info
        with open(sdir / info["gaps_file"], encoding="utf-8") as f:
            gaps = {c["name"]: c["gaps"] for c in json.load(f)["channels"]}
        refs = {}
        for ch in info["channels"]:
            ref = reference(real, ch["name"]).tobytes()
            refs[ch["name"]] = ref
            idx = {0, ch["first_index"], ch["number_of_samples"]}
            for s in ch["segments"]:
                idx |= {s["start_index"], s["start_index"] + s["number_of_samples"]}
            for g in gaps[ch["name"]]:
                idx |= {g["start_index"], g["end_index"]}
            edges = sorted(4 * i for i in idx)
            files.append((sdir / ch["file"], ref, edges))
            head = _npy_header_len(sdir / ch["npy_file"], (ch["number_of_samples"],))
            with open(sdir / ch["npy_file"], "rb") as f:
                header = f.read(head)
            files.append((sdir / ch["npy_file"], header + ref, [0, head] + [head + e for e in edges]))
        for grid in info["grids"]:
            rows = grid["channels"]
            p = sdir / grid["npy_file"]
            head = _npy_header_len(p, (len(rows), grid["number_of_samples"]))
            with open(p, "rb") as f:
                header = f.read(head)
            row = 4 * grid["number_of_samples"]
            files.append((p, header + b"".join(refs[r] for r in rows),
                          [0, head] + [head + k * row for k in range(len(rows) + 1)]))
    for path, exp, _ in files:
        assert os.stat(path).st_size == len(exp), path
    return m, files


def _reads(n_files):
    point = st.tuples(st.sampled_from(["edge", "any", "end"]), st.floats(0, 1),
                      st.integers(-9, 9))
    size = st.one_of(st.just(0), st.integers(1, 16), st.integers(1, 70_000),
                     st.sampled_from([4096, 131_072, 1 << 20, 3 << 20]))
    one = st.tuples(st.integers(0, n_files - 1), point, size,
                    st.sampled_from(["page", "direct", "continue"]))
    return st.lists(one, min_size=1, max_size=12)


def _offset(point, exp, edges):
    kind, frac, jitter = point
    if kind == "edge":
        base = edges[min(int(frac * len(edges)), len(edges) - 1)]
    elif kind == "end":
        base = len(exp)
    else:
        base = int(frac * len(exp))
    return max(0, base + jitter)


N_FILES = 40   # upper bound for the strategy; indices are taken modulo the real count


@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(reads=_reads(N_FILES), evict=st.booleans())
def test_any_read_sequence_returns_reference_bytes(prop, reads, evict):
    m, files = prop
    fds = {}
    last = {}
    try:
        for k, point, size, mode in reads:
            path, exp, edges = files[k % len(files)]
            direct = mode == "direct"
            if (path, direct) not in fds:
                fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
                if evict:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                fds[(path, direct)] = fd
            fd = fds[(path, direct)]
            off = last.get(path, 0) if mode == "continue" else _offset(point, exp, edges)
            got = pread_full(fd, size, off)
            want = exp[off:off + size]
            if got != want:
                n = min(len(got), len(want))
                diff = np.flatnonzero(np.frombuffer(got[:n], np.uint8) !=
                                      np.frombuffer(want[:n], np.uint8))
                first = int(diff[0]) if len(diff) else n
                raise AssertionError(
                    f"{path.relative_to(m.root)} [{off}, {off + size}) via {mode}: got {len(got)} "
                    f"bytes, want {len(want)}; first difference at +{first}")
            last[path] = off + len(got)
    finally:
        for fd in fds.values():
            os.close(fd)


def test_property_run_left_the_mount_healthy(prop):
    m, _ = prop
    stats = read_stats(m)
    assert stats["decode_errors"] == 0 and stats["worker_restarts"] == 0, stats
    assert stats["cache_bytes"] <= stats["cache_budget"], stats
    # the reads reached the daemon, hit and missed the cache, and read-ahead ran
    assert stats["misses"] > 0 and stats["hits"] > 0 and stats["evictions"] > 0, stats
    assert stats["readahead_scheduled"] > 0, stats
    assert os.path.ismount(m.root)
    assert "Traceback" not in m.log_text()
