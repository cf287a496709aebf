"""Build (or reuse) the recordings that bench/bench.py measures.

Written with mef3io.Writer into a cache folder (default /tmp/mef3fs-bench):

  <cache>/<mode>/seq/A_16ch_1kHz.mefd    A) 16 channels x 1 h x 1 kHz  (quick: 10 min)
  <cache>/<mode>/seq/B_4ch_32kHz.mefd    B)  4 channels x 5 min x 32 kHz (quick: 1 min)
  <cache>/many/sub-NNN/sNNN.mefd         C) 100 sessions x 64 channels x 4 s x 256 Hz

<mode> is "full" or "quick". Each set has a manifest.json with the parameters
it was built with; a set whose manifest matches is reused, otherwise rebuilt.
The signal is EEG-like (a leaky random walk, a 10 Hz rhythm and 60 Hz line
noise, in uV, stored with precision 2), so RED compresses it about as much as a
real recording (~2.6 bytes per sample), not like pure noise or a constant.

Run alone:  .venv/bin/python bench/make_data.py [--quick] [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

T0_UUTC = 1_600_000_000_000_000  # 2020-09-13, an arbitrary real-looking start

# name -> (n_channels, seconds, fs); the seconds of quick mode in QUICK_SECONDS
SEQ_SETS = {
    "A_16ch_1kHz": (16, 3600, 1000.0),
    "B_4ch_32kHz": (4, 300, 32000.0),
}
QUICK_SECONDS = {"A_16ch_1kHz": 600, "B_4ch_32kHz": 60}
MANY = {"sessions": 100, "channels": 64, "seconds": 4, "fs": 256.0}
VERSION = 1  # bump when the generator changes, so old caches are rebuilt


def eeg_like(n: int, fs: float, rng: np.random.Generator) -> np.ndarray:
    """n samples (float64, uV) of a plausible EEG-like signal."""
    e = rng.standard_normal(n)
    x = np.cumsum(e)
    # high-pass: subtract a 1 s moving average (box filter via cumsum, O(n))
    w = max(2, int(fs))
    c = np.concatenate(([0.0], np.cumsum(x)))
    lo = np.clip(np.arange(n) - w // 2, 0, n)
    hi = np.clip(np.arange(n) + w // 2, 0, n)
    hi = np.maximum(hi, lo + 1)
    x = x - (c[hi] - c[lo]) / (hi - lo)
    t = np.arange(n) / fs
    x = 3.0 * x + 20.0 * np.sin(2 * np.pi * 10.0 * t + rng.uniform(0, 6.28)) \
        + 5.0 * np.sin(2 * np.pi * 60.0 * t)
    return x


def _manifest_ok(folder: str, params: dict) -> bool:
    try:
        with open(os.path.join(folder, "manifest.json")) as f:
            return json.load(f) == params
    except (OSError, ValueError):
        return False


def _write_manifest(folder: str, params: dict) -> None:
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(params, f, indent=1)


def seq_sets(quick: bool) -> dict:
    """name -> (n_channels, seconds, fs) for this mode."""
    out = {}
    for name, (nch, secs, fs) in SEQ_SETS.items():
        out[name] = (nch, QUICK_SECONDS[name] if quick else secs, fs)
    return out


def build_seq(cache: str, quick: bool, log=print) -> dict:
    """Build sets A and B; returns {name: session_path} (the SOURCE is their parent)."""
    import mef3io

    mode = "quick" if quick else "full"
    src = os.path.join(cache, mode, "seq")
    sets = seq_sets(quick)
    params = {"version": VERSION, "sets": {k: list(v) for k, v in sets.items()}}
    paths = {name: os.path.join(src, name + ".mefd") for name in sets}
    if _manifest_ok(src, params) and all(os.path.isdir(p) for p in paths.values()):
        return paths
    if os.path.isdir(src):
        shutil.rmtree(src)
    os.makedirs(src)
    for si, (name, (nch, secs, fs)) in enumerate(sets.items()):
        t = time.perf_counter()
        rng = np.random.default_rng(1000 + si)
        n = int(round(secs * fs))
        with mef3io.Writer(paths[name], overwrite=True, units="uV") as w:
            for c in range(nch):
                w.write(f"ch{c + 1:02d}", eeg_like(n, fs, rng), T0_UUTC, fs=fs, precision=2)
        log(f"  built {paths[name]}: {nch} ch x {secs} s x {fs:g} Hz "
            f"in {time.perf_counter() - t:.1f} s")
    _write_manifest(src, params)
    return paths


def build_many(cache: str, log=print) -> str:
    """Build set C (100 sessions x 64 channels); returns its SOURCE folder."""
    import mef3io

    src = os.path.join(cache, "many")
    params = {"version": VERSION, **MANY}
    if _manifest_ok(src, params):
        return src
    if os.path.isdir(src):
        shutil.rmtree(src)
    os.makedirs(src)
    t = time.perf_counter()
    rng = np.random.default_rng(7)
    n = int(MANY["seconds"] * MANY["fs"])
    for s in range(MANY["sessions"]):
        path = os.path.join(src, f"sub-{s:03d}", f"s{s:03d}.mefd")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with mef3io.Writer(path, overwrite=True, units="uV") as w:
            for c in range(MANY["channels"]):
                w.write(f"ch{c + 1:02d}", rng.standard_normal(n) * 50.0,
                        T0_UUTC + s * 1_000_000, fs=MANY["fs"], precision=2)
    _write_manifest(src, params)
    log(f"  built {src}: {MANY['sessions']} sessions x {MANY['channels']} ch "
        f"in {time.perf_counter() - t:.1f} s")
    return src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cache", default="/tmp/mef3fs-bench")
    a = ap.parse_args()
    print(build_seq(a.cache, a.quick))
    print(build_many(a.cache))


if __name__ == "__main__":
    main()
