#!/usr/bin/env python3
"""Scale (issue 11): listing cost follows channels and segments, not blocks; memory stays bounded.

    sudo .venv/bin/python bench/scale.py [--cache DIR] [--out DIR] [--rounds N]

Rows, each side by side with direct mef3io in the same run:
  * `ls -lR` of 100 sessions x 64 channels, cold (fresh mount, page cache
    dropped) and warm, against opening every session with mef3io and calling
    info() of every channel, and (warm) against `ls -lR` of a replica of the
    mounted tree on the local disk: what `ls` itself costs here;
  * the first `ls -l` + info.json of one 64 ch recording of 6 min, 6 h and 24 h
    (256 Hz, 1 s blocks), against mef3io's open + info() and its full block
    index (block_envelope of every channel: what listing used to pay);
  * daemon + workers RSS (from /proc) with 1,000 sessions x 64 channels listed,
    and with 20 recordings of 8 ch x 12 h each read at three places.
Recordings are written once into --cache and reused (minutes the first time).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_data  # noqa: E402
from common import TreeSampler, drop_caches  # noqa: E402
from mount import Mount  # noqa: E402

FS = 256.0
LENGTHS = {"6min": 360, "6h": 6 * 3600, "24h": 24 * 3600}
WIDE = {"sessions": 1000, "channels": 64, "seconds": 4}
LONG = {"recordings": 20, "channels": 8, "seconds": 12 * 3600}


# -- data ------------------------------------------------------------------

def _write(path: str, channels: int, seconds: int, seed: int, t0: int = make_data.T0_UUTC) -> None:
    import mef3io
    rng = np.random.default_rng(seed)
    with mef3io.Writer(path, overwrite=True, units="uV", block_length=int(FS)) as w:
        for c in range(channels):
            w.write(f"ch{c + 1:02d}", make_data.eeg_like(int(seconds * FS), FS, rng), t0, fs=FS, precision=2)


def build_lengths(cache: str) -> dict:
    """One folder per length, each holding one 64 ch recording with 1 s blocks."""
    out = {}
    for label, seconds in LENGTHS.items():
        folder = os.path.join(cache, "scale", f"len-{label}")
        params = {"version": 1, "channels": 64, "seconds": seconds, "fs": FS, "block_s": 1}
        if not make_data._manifest_ok(folder, params):
            os.makedirs(folder, exist_ok=True)
            t = time.perf_counter()
            _write(os.path.join(folder, f"rec_{label}.mefd"), 64, seconds, seed=11)
            make_data._write_manifest(folder, params)
            print(f"  built 64 ch x {label} in {time.perf_counter() - t:.0f} s", flush=True)
        out[label] = folder
    return out


def build_wide(cache: str) -> str:
    folder = os.path.join(cache, "scale", "wide")
    params = {"version": 1, **WIDE, "fs": FS}
    if not make_data._manifest_ok(folder, params):
        import mef3io
        t = time.perf_counter()
        rng = np.random.default_rng(5)
        n = int(WIDE["seconds"] * FS)
        for s in range(WIDE["sessions"]):
            path = os.path.join(folder, f"sub-{s:04d}", f"s{s:04d}.mefd")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with mef3io.Writer(path, overwrite=True, units="uV") as w:
                for c in range(WIDE["channels"]):
                    w.write(f"ch{c + 1:02d}", rng.standard_normal(n) * 50.0,
                            make_data.T0_UUTC + s * 1_000_000, fs=FS, precision=2)
        make_data._write_manifest(folder, params)
        print(f"  built {WIDE['sessions']} sessions in {time.perf_counter() - t:.0f} s", flush=True)
    return folder


def build_long(cache: str) -> str:
    folder = os.path.join(cache, "scale", "long")
    params = {"version": 1, **LONG, "fs": FS, "block_s": 1}
    if not make_data._manifest_ok(folder, params):
        t = time.perf_counter()
        for r in range(LONG["recordings"]):
            _write(os.path.join(folder, f"r{r:02d}.mefd"), LONG["channels"], LONG["seconds"], seed=100 + r)
        make_data._write_manifest(folder, params)
        print(f"  built {LONG['recordings']} long recordings in {time.perf_counter() - t:.0f} s", flush=True)
    return folder


# -- direct ----------------------------------------------------------------

def direct_open_info(sessions: list[str]) -> float:
    import mef3io
    drop_caches()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in sessions:
            r = mef3io.Reader(p)
            for c in r.channels:
                r.info(c)
            r.close()
    return time.perf_counter() - t


def direct_block_index(session: str) -> float:
    import mef3io
    drop_caches()
    t = time.perf_counter()
    r = mef3io.Reader(session)
    r.block_envelope(list(r.channels))
    r.close()
    return time.perf_counter() - t


def replica_of(mnt: str, dest: str) -> None:
    """The mounted tree on the local disk: the same folders, names and sizes (sparse files)."""
    for top, _, files in os.walk(mnt):
        here = os.path.join(dest, os.path.relpath(top, mnt))
        os.makedirs(here, exist_ok=True)
        for name in files:
            with open(os.path.join(here, name), "wb") as f:
                f.truncate(os.lstat(os.path.join(top, name)).st_size)


def n_entries(tree: str) -> int:
    return sum(len(d) + len(f) for _, d, f in os.walk(tree))


# -- through the mount -------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.work = os.path.join(args.out, "mnt")
        self.logs = os.path.join(args.out, "logs")
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(self.logs, exist_ok=True)
        self.rows = []
        self.results = {}

    def mount(self, source: str, tag: str, *opts: str) -> Mount:
        return Mount(source, self.work, self.logs, tag, list(opts) + self.args.mount_opt, trace=False)

    def row(self, what, mount, direct, target, met, note=""):
        self.rows.append((what, mount, direct, target, "met" if met else "**not met**", note))

    def ls_many(self):
        src = make_data.build_many(self.args.cache)
        sessions = sorted(glob.glob(os.path.join(src, "**", "*.mefd"), recursive=True))
        cold, warm, direct, loaded, ahead, local = [], [], [], [], [], []
        replica = os.path.join(self.args.out, "replica")     # made anew: the layout may have changed
        shutil.rmtree(replica, ignore_errors=True)
        for _ in range(self.args.rounds):
            direct.append(direct_open_info(sessions))
            drop_caches()
            with self.mount(src, "ls-many") as m:
                t = time.perf_counter()
                subprocess.run(["ls", "-lR", m.mnt], capture_output=True, check=True, timeout=600)
                cold.append(time.perf_counter() - t)
                t = time.perf_counter()
                subprocess.run(["ls", "-lR", m.mnt], capture_output=True, check=True, timeout=600)
                warm.append(time.perf_counter() - t)
                stats = m.stats()
                loaded.append(stats["indexes_loaded"])
                ahead.append(stats.get("sessions_ahead", 0))
                if not os.path.isdir(replica):
                    replica_of(m.mnt, replica)
            subprocess.run(["ls", "-lR", replica], capture_output=True, check=True, timeout=600)
            t = time.perf_counter()
            subprocess.run(["ls", "-lR", replica], capture_output=True, check=True, timeout=600)
            local.append(time.perf_counter() - t)
        c, w, d, lo = (float(np.median(x)) for x in (cold, warm, direct, local))
        self.results["ls_many"] = {"cold_s": cold, "warm_s": warm, "direct_s": direct, "indexes_loaded": loaded,
                                   "sessions_ahead": ahead, "local_replica_warm_s": local}
        self.row("`ls -lR` 100 sessions x 64 ch, cold", f"{c:.2f} s", f"{d:.2f} s (open + info())",
                 "<= 1.5x direct", c <= 1.5 * d, f"{c / d:.2f}x; block indexes read: {max(loaded)}; sessions opened ahead "
                 f"(statahead): {min(ahead)}-{max(ahead)} of {len(sessions)}")
        self.row("`ls -lR` 100 sessions x 64 ch, warm", f"{w:.2f} s", "", "<= 0.3 s", w <= 0.3,
                 f"the same tree on this machine's disk (a replica: {n_entries(replica)} entries of the same "
                 f"names and sizes), warm: {lo:.2f} s, `ls` itself")

    def lengths(self):
        folders = build_lengths(self.args.cache)
        times, direct, index = {}, {}, {}
        for label, folder in folders.items():
            session = glob.glob(os.path.join(folder, "*.mefd"))[0]
            runs = []
            for _ in range(self.args.rounds):
                drop_caches()
                with self.mount(folder, f"len-{label}") as m:
                    sdir = os.path.join(m.mnt, os.path.basename(session))
                    t = time.perf_counter()
                    subprocess.run(["ls", "-l", sdir], capture_output=True, check=True, timeout=600)
                    with open(os.path.join(sdir, "info.json"), "rb") as f:
                        json.loads(f.read())
                    runs.append(time.perf_counter() - t)
                    assert m.stats()["indexes_loaded"] == 0
            times[label] = float(np.median(runs))
            direct[label] = float(np.median([direct_open_info([session]) for _ in range(self.args.rounds)]))
            index[label] = direct_block_index(session)
        self.results["lengths"] = {"mount_s": times, "direct_open_info_s": direct, "direct_block_index_s": index}
        for label in folders:
            self.row(f"first `ls -l` + info.json, 64 ch x {label}", f"{times[label] * 1e3:.0f} ms",
                     f"{direct[label] * 1e3:.0f} ms open + info(); {index[label] * 1e3:.0f} ms block index",
                     "<= 1.5x the 6 min one" if label != "6min" else "",
                     label == "6min" or times[label] <= 1.5 * times["6min"],
                     "" if label == "6min" else f"{times[label] / times['6min']:.2f}x 6 min")

    def memory_wide(self):
        src = build_wide(self.args.cache)
        drop_caches()
        with self.mount(src, "wide") as m:
            m.wait_workers()
            with TreeSampler(m.pid, 0.2) as ts:
                base = ts.peak_rss
                subprocess.run(["ls", "-lR", m.mnt], capture_output=True, check=True, timeout=1200)
            st = m.stats()
        r = ts.result()
        self.results["memory_wide"] = {**r, "base_rss_kb": base, "stats": st}
        per = (r["peak_rss_mb"] - base / 1024) / max(1, st["sessions_open"])
        self.row(f"RSS, {WIDE['sessions']} sessions x 64 ch listed", f"{r['peak_rss_mb']:.0f} MB",
                 "", "bounded", st["sessions_open"] <= 256,
                 f"{st['sessions_open']} sessions kept open (the rest let go), "
                 f"{per * 1024:.0f} KB each above the {base / 1024:.0f} MB of an idle mount")

    def memory_long(self):
        src = build_long(self.args.cache)
        sessions = sorted(glob.glob(os.path.join(src, "*.mefd")))
        rng = np.random.default_rng(3)
        n = int(LONG["seconds"] * FS)
        drop_caches()
        with self.mount(src, "long") as m:
            m.wait_workers()
            with TreeSampler(m.pid, 0.2) as ts:
                base = ts.peak_rss
                for s in sessions:
                    sdir = os.path.join(m.mnt, os.path.basename(s))
                    for start in rng.integers(0, n - 2560, 3):
                        for c in range(LONG["channels"]):
                            x = np.memmap(os.path.join(sdir, f"ch{c + 1:02d}.f32"), dtype="<f4", mode="r")
                            np.asarray(x[start:start + 2560]).sum()
                            del x
            st = m.stats()
        r = ts.result()
        self.results["memory_long"] = {**r, "base_rss_kb": base, "stats": st}
        self.row(f"RSS, {LONG['recordings']} x {LONG['channels']} ch x 12 h, 3 windows each",
                 f"{r['peak_rss_mb']:.0f} MB", "", "<= cache + index budgets + 200 MB",
                 r["peak_rss_mb"] <= base / 1024 + 512 + 64 + 200,
                 f"{st['indexes_loaded']} indexes, {st['index_bytes'] / 2**20:.1f} MiB of "
                 f"{st['index_budget'] / 2**20:.0f} MiB, {st['cache_bytes'] / 2**20:.0f} MiB of tiles")

    def table(self) -> str:
        lines = ["| workload | mef3fs | direct mef3io | target | | note |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="/tmp/mef3fs-bench")
    ap.add_argument("--out", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mount-opt", action="append", default=[], help="passed to every mount")
    ap.add_argument("--only", choices=("ls", "lengths", "wide", "long"), action="append")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join(args.cache, "out-scale")
    b = Bench(args)
    for name, fn in (("ls", b.ls_many), ("lengths", b.lengths), ("wide", b.memory_wide),
                     ("long", b.memory_long)):
        if not args.only or name in args.only:
            print(f"== {name}", flush=True)
            fn()
    table = b.table()
    print(table)
    with open(os.path.join(args.out, "scale.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "scale.json"), "w") as f:
        json.dump(b.results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
