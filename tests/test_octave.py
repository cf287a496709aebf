"""examples/matlab/mef3fs_read.m, run in GNU Octave against a real mount.

For a set of channels and uUTC windows (inside, across gaps, before the
start, past the end, half a sample off the grid, the whole channel, odd rates,
odd names, a .mefd.tar), Octave's samples must equal numpy's read of the same
window of the same file (np.fromfile slice, float32 for float32, NaN in the
same places), its times must be the grid's, and the numpy slice must equal
mef3io's reference. Skipped only when ``octave-cli`` is not installed (Debian:
``apt-get install octave``).
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import REPO, read_info
from tests.sessions import T0, reference

OCTAVE = shutil.which("octave-cli")
pytestmark = pytest.mark.skipif(OCTAVE is None, reason="octave-cli not installed "
                                "(Debian: apt-get install octave)")
MATLAB_DIR = REPO / "examples" / "matlab"


def matlab_round(x):
    """MATLAB/Octave round(): half away from zero."""
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def expected_range(ch, t0, t1):
    n = ch["number_of_samples"]
    fs = float(ch["sampling_frequency"])
    g0 = float(ch["grid_start_uutc"])
    i0 = 0 if t0 is None else matlab_round((float(t0) - g0) * fs / 1e6)
    i1 = n if t1 is None else matlab_round((float(t1) - g0) * fs / 1e6)
    i0 = min(max(i0, 0), n)
    i1 = min(max(i1, i0), n)
    return i0, i1


def octave_str(text):
    """An Octave expression for the UTF-8 bytes of text (tabs, unicode, quotes)."""
    return "char([" + " ".join(str(b) for b in text.encode("utf-8")) + "])"


def octave_num(v):
    return "[]" if v is None else repr(float(v))


# (session, channel as the user would give it, t0 offset from T0 in us or None, t1 ...)
CASES = [
    ("gaps.mefd", "LA1", None, None),                      # whole channel, gaps and NaNs
    ("gaps.mefd", "LA1", 3_000_000, 9_000_000),            # inside, crosses a NaN run
    ("gaps.mefd", "LA1", 35_000_000, 55_000_000),          # across the 10 s segment gap
    ("gaps.mefd", "LA2", -5_000_000, 12_000_000),          # before the grid and the channel
    ("gaps.mefd", "LA2.f32", 40_000_000, 999_000_000),     # by file name; past the end
    ("gaps.mefd", "HF", 500, 3_000_250),                   # half a sample off the grid
    ("gaps.mefd", "HF", 19_999_999, 21_600_001),           # around HF's NaN run
    ("gaps.mefd", "HF", 5_000_000, 5_000_000),             # empty window
    ("rates.mefd", "r256x", 11_000_000, 14_000_000),       # 255.99966850667516 Hz
    ("rates.mefd", "r499", 1_234_567, 7_654_321),          # 499.907 Hz, late start
    ("rates.mefd", "k32", 2_300_000, 2_400_000),           # 32768 Hz, NaN run
    ("names.mefd", "tab\tname", 100_000, 2_100_000),       # a safe name replaces the tab
    ("names.mefd", ".hidden", None, None),                 # leading dot: a safe file name
    ("names.mefd", "\u03a9mega", 1_000_000, 1_500_000),    # unicode name
    ("arch.mefd.tar", "T2", 1_000_000, 9_000_000),         # a .mefd.tar session, 128 Hz
    ("mt.mefd", "A 1", 28_000_000, 45_000_000),            # mef_tools-written, segment gap
]


@pytest.fixture(scope="module")
def mounted(module_mount_fs, corpus):
    return module_mount_fs(corpus.source, "--workers", "2").root, corpus


def find_channel(info, given):
    for ch in info["channels"]:
        if given in (ch["name"], ch["file"]) or ch["file"] == given + ".f32":
            return ch
    raise KeyError(given)


def test_mef3fs_read_in_octave(mounted, tmp_path):
    root, corpus = mounted
    out = tmp_path / "out"
    out.mkdir()
    lines = [f"addpath({octave_str(str(MATLAB_DIR))});"]
    for k, (rel, channel, a, b) in enumerate(CASES):
        t0 = None if a is None else T0 + a
        t1 = None if b is None else T0 + b
        session = octave_str(str(root / rel))
        call = (f"[x, t] = mef3fs_read({session}, {octave_str(channel)});" if t0 is None else
                f"[x, t] = mef3fs_read({session}, {octave_str(channel)}, "
                f"{octave_num(t0)}, {octave_num(t1)});")
        lines += [
            call,
            "assert(isa(x, 'single') && isa(t, 'double'));",
            "assert(size(x, 2) == 1 && size(t, 2) == 1 && numel(x) == numel(t));",
            f"fid = fopen({octave_str(str(out / f'{k}.x'))}, 'w');"
            " fwrite(fid, x, 'float32', 0, 'l'); fclose(fid);",
            f"fid = fopen({octave_str(str(out / f'{k}.t'))}, 'w');"
            " fwrite(fid, t, 'float64', 0, 'l'); fclose(fid);",
        ]
    # an unknown channel is an error that names it
    lines += [
        "try",
        f"  mef3fs_read({octave_str(str(root / 'gaps.mefd'))}, 'nope', 0, 1);",
        "  error('no error for an unknown channel');",
        "catch err",
        "  assert(strcmp(err.identifier, 'mef3fs_read:channel'), err.message);",
        "end",
        "disp('octave-done');",
    ]
    script = tmp_path / "run_cases.m"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = subprocess.run([OCTAVE, "--no-gui", "--no-window-system", "--norc", "--quiet",
                          str(script)], capture_output=True, text=True, timeout=600,
                         cwd=str(tmp_path), env={**os.environ, "HOME": str(tmp_path)})
    assert res.returncode == 0 and "octave-done" in res.stdout, \
        f"octave failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"

    nonempty = 0
    for k, (rel, channel, a, b) in enumerate(CASES):
        folder = root / rel
        info = read_info(folder)
        ch = find_channel(info, channel)
        t0 = None if a is None else T0 + a
        t1 = None if b is None else T0 + b
        i0, i1 = expected_range(ch, t0, t1)
        label = f"case {k}: {rel} {channel!r} [{t0}, {t1}) -> samples [{i0}, {i1})"

        # numpy's read of the same window of the same file
        want = np.fromfile(folder / ch["file"], dtype="<f4")[i0:i1]
        got = np.fromfile(out / f"{k}.x", dtype="<f4")
        assert got.shape == want.shape, label
        assert np.array_equal(np.isnan(got), np.isnan(want)), label + ": NaNs differ"
        ok = ~np.isnan(want)
        assert got[ok].tobytes() == want[ok].tobytes(), label + ": values differ"
        # ... which is mef3io's reference
        ref = reference(corpus.sessions[rel], ch["name"])[i0:i1]
        assert np.array_equal(want, ref, equal_nan=True) and \
            want[ok].tobytes() == ref[ok].tobytes(), label + ": file differs from mef3io"

        times = np.fromfile(out / f"{k}.t", dtype="<f8")
        grid = float(ch["grid_start_uutc"]) + (i0 + np.arange(i1 - i0)) * (
            1e6 / float(ch["sampling_frequency"]))
        np.testing.assert_allclose(times, grid, rtol=0, atol=0.5, err_msg=label)
        nonempty += i1 > i0
    assert nonempty == len(CASES) - 1  # all but the empty window read something
    # the windows really hit NaNs somewhere (gaps are part of what is checked)
    assert np.isnan(np.fromfile(out / "2.x", dtype="<f4")).any()
