#!/usr/bin/env python3
"""Overviews bench (issue 12): block envelopes and min-max levels through the mount vs direct mef3io.

    .venv/bin/python bench/overviews.py [--quick] [--cache DIR] [--out DIR]

Rows, each the mount side by side with mef3io in the same run:

  envelope   64 ch x 6 h x 256 Hz (quick: 1 h): a fresh mount, page cache dropped,
             info.json then every overview/blocks/<ch>.npy, vs mef3io.Reader(path)
             .block_envelope(all channels); counters say it decoded nothing
  floor      the same number of np.load of files of the same size through
             bench/floorfs.py (a minimal Python FUSE filesystem, files in memory):
             the least any mount pays for the files, whatever it serves
  preview    the same recording's preview.png through a fresh mount
  cold level 16 ch x 1 h x 1 kHz (set A of make_data.py; quick: 10 min): the coarsest
             min-max level through a fresh mount with the page cache dropped, vs
             mef3io.Reader(n_threads=0).read of every channel + numpy's reduction
  scanned    the same level once every .f32 file was read through a mount whose tile
             cache (64M) is smaller than the recording: served from the summaries

"Cold" drops the page cache (root only; the table says if it could not). The
recording of the first rows is written once into <cache>/overviews/ (about
a minute on 2 cores; the envelope's cost follows the block count, 2,160 10 s
blocks per channel, not the rate) and reused while its manifest matches.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import make_data  # noqa: E402
from common import drop_caches, log, machine, met, now  # noqa: E402
from mount import Mount  # noqa: E402

LONG = {"channels": 64, "hours": 6, "fs": 256.0}
QUICK_HOURS = 1
SCAN_CACHE = "64M"
DECODES = ("decodes_foreground", "decodes_background", "decodes_inprocess")   # tiles_decoded: the same tiles, landed


def decodes(stats: dict) -> int:
    return sum(int(stats.get(k, 0)) for k in DECODES)


def build_long(cache: str, quick: bool) -> str:
    """64 channels x 6 h (quick: 1 h) x 256 Hz of make_data's EEG-like signal; returns the session."""
    import mef3io

    hours = QUICK_HOURS if quick else LONG["hours"]
    src = os.path.join(cache, "overviews", "quick" if quick else "full")
    params = {"version": make_data.VERSION, **LONG, "hours": hours}
    path = os.path.join(src, f"E_{LONG['channels']}ch_{hours}h.mefd")
    if make_data._manifest_ok(src, params) and os.path.isdir(path):
        return path
    os.makedirs(src, exist_ok=True)
    t = now()
    rng = np.random.default_rng(64)
    n = int(hours * 3600 * LONG["fs"])
    with mef3io.Writer(path, overwrite=True, units="uV") as w:
        for c in range(LONG["channels"]):
            w.write(f"ch{c + 1:02d}", make_data.eeg_like(n, LONG["fs"], rng), make_data.T0_UUTC,
                    fs=LONG["fs"], precision=2)
    make_data._write_manifest(src, params)
    log(f"  built {path} in {now() - t:.0f} s")
    return path


def level_of(x: np.ndarray, k: int) -> np.ndarray:
    """numpy's nanmin/nanmax per k samples (NaN for a bin without data)."""
    m = -(-len(x) // k)
    pad = np.full(m * k, np.nan, dtype=np.float32)
    pad[:len(x)] = x
    pad = pad.reshape(m, k)
    return np.stack([np.fmin.reduce(pad, axis=1), np.fmax.reduce(pad, axis=1)], axis=1)


def settle(m: Mount, timeout: float = 30.0) -> dict:
    t = now()
    while True:
        s = m.stats()
        if not s.get("tiles_in_flight") or now() - t > timeout:
            return s
        time.sleep(0.05)


class Overviews:
    def __init__(self, a):
        self.a = a
        self.out = a.out or os.path.join(a.cache, "out-overviews")
        self.logdir = os.path.join(self.out, "logs")
        self.work = os.path.join(a.cache, "work")
        os.makedirs(self.logdir, exist_ok=True)
        os.makedirs(self.work, exist_ok=True)
        self.rows: list = []
        self.R: dict = {"quick": a.quick, "rows": self.rows}
        self.cold_ok = True

    def mount(self, source: str, tag: str, extra=()) -> Mount:
        return Mount(source, self.work, self.logdir, tag, list(extra), trace=False)

    def cold(self) -> None:
        self.cold_ok = drop_caches() and self.cold_ok

    def other_cpu(self, fn, daemon: int | None = None):
        """fn() and the CPU seconds other processes used meanwhile (the machine's noise).
        The CPU seconds that fn's work itself took (this process, plus the daemon's
        when given) go to self.cpu: on a busy machine a steadier figure than seconds."""
        common.FOREIGN.mark("x")
        c0, d0 = time.process_time(), common.proc_cpu_s(daemon) if daemon else 0.0
        t = now()
        res = fn()
        dt = now() - t
        self.cpu = time.process_time() - c0 + ((common.proc_cpu_s(daemon) - d0) if daemon else 0.0)
        return res, dt, common.FOREIGN.since("x")

    # -- rows -----------------------------------------------------------------

    def envelope(self, path: str) -> None:
        import mef3io
        r = mef3io.Reader(path)
        names = list(r.channels)
        r.close()

        def direct():
            rd = mef3io.Reader(path)
            got = rd.block_envelope(names)
            rd.close()
            return sum(len(v["min"]) for v in got.values())

        times_d, times_m, times_l, other, dec = [], [], [], 0.0, []
        cpu = {"direct": [], "fresh": [], "listed": []}
        for _ in range(self.a.repeats):
            self.cold()
            blocks, dt, o = self.other_cpu(direct)
            times_d.append(dt)
            cpu["direct"].append(self.cpu)
            other += o
            for listed in (False, True):
                with self.mount(os.path.dirname(path), "envelope") as m:
                    folder = os.path.join(m.mnt, os.path.basename(path))
                    m.wait_workers()          # decoder processes start at mount: not this row's work
                    if listed:                # a file browser or `ls -lR` went through it before
                        for top, _, files in os.walk(folder):
                            for f in files:
                                os.stat(os.path.join(top, f))
                    self.cold()

                    def through():
                        with open(os.path.join(folder, "info.json"), "rb") as f:
                            info = json.load(f)
                        return sum(len(np.load(os.path.join(folder, c["envelope_file"])))
                                   for c in info["channels"])
                    rows, dt, o = self.other_cpu(through, m.pid)
                    assert rows == blocks, (rows, blocks)
                    (times_l if listed else times_m).append(dt)
                    cpu["listed" if listed else "fresh"].append(self.cpu)
                    other += o
                    dec.append(decodes(settle(m)))
                    if not listed:
                        _, dt, _ = self.other_cpu(
                            lambda: open(os.path.join(folder, "preview.png"), "rb").read())
                        self.R.setdefault("preview_s", []).append(dt)
        d, mt, ml = min(times_d), min(times_m), min(times_l)
        self.R["envelope_cpu_s"] = cpu
        cd, cf, cl = (min(cpu[k]) for k in ("direct", "fresh", "listed"))
        what = f"envelope, {len(names)} ch x {self.hours_long} h ({blocks} blocks), cold"
        self.add(what + ", fresh mount (opens the session)", f"{mt * 1e3:.0f} ms", f"{d * 1e3:.0f} ms",
                 mt / d, max(dec), "<= 2x, 0 decodes", mt <= 2 * d and max(dec) == 0, other)
        self.add(what + ", session listed before", f"{ml * 1e3:.0f} ms", f"{d * 1e3:.0f} ms",
                 ml / d, max(dec), "<= 2x, 0 decodes", ml <= 2 * d and max(dec) == 0, 0.0)
        self.add("the same, CPU time (reader + daemon) instead of wall time: fresh / listed",
                 f"{cf * 1e3:.0f} / {cl * 1e3:.0f} ms", f"{cd * 1e3:.0f} ms", cl / cd if cd else None,
                 max(dec), "", None, 0.0)
        floor = self.floor_files(len(names), blocks // len(names))
        self.R["envelope_floor_s"] = floor
        self.add(f"floor: the same {len(names)} np.load through a minimal Python FUSE filesystem serving "
                 f"files of the same size from memory (bench/floorfs.py); direct + floor",
                 f"{floor * 1e3:.0f} ms; {(d + floor) * 1e3:.0f} ms", f"{d * 1e3:.0f} ms",
                 (d + floor) / d, 0, "(the least a mount can take)", None, 0.0)
        p = min(self.R["preview_s"])
        self.add(f"preview.png, same recording, {len(names)} ch, fresh mount", f"{p * 1e3:.0f} ms", "",
                 None, 0, "instant", None, 0.0)

    def floor_files(self, n: int, rows: int) -> float:
        """Seconds for np.load of n NPY files of rows x 4 float64 through floorfs, best of the repeats."""
        import floorfs
        best = None
        with floorfs.mounted(self.work, "--npy", f"{n}:{rows}") as mnt:
            files = [f"f{k:03d}.npy" for k in range(n)]     # floorfs's names (it answers no listing)
            for _ in range(self.a.repeats):
                self.cold()
                t = now()
                got = sum(len(np.load(os.path.join(mnt, f))) for f in files)
                dt = now() - t
                assert got == n * rows, (got, n, rows)
                best = dt if best is None else min(best, dt)
        return best

    def cold_level(self, path: str) -> None:
        import mef3io
        meta = common.session_meta(path)
        n = meta["n"]
        k = 10
        while -(-n // k) > 4096:
            k *= 10

        def direct():
            rd = mef3io.Reader(path, n_threads=0)
            x = rd.read(meta["channels"], dtype="float32")
            rd.close()
            return np.stack([level_of(row, k) for row in x])

        self.cold()
        want, d, o1 = self.other_cpu(direct)
        with self.mount(os.path.dirname(path), "level-cold") as m:
            folder = os.path.join(m.mnt, os.path.basename(path))
            with open(os.path.join(folder, "info.json"), "rb") as f:
                info = json.load(f)
            (grid,) = [g for g in info["grids"]]
            rel = grid["overview_files"][-1]["file"]
            assert grid["overview_files"][-1]["decimation"] == k
            m.wait_workers()
            self.cold()
            got, mt, o2 = self.other_cpu(lambda: np.load(os.path.join(folder, rel)))
            st = settle(m)
        assert np.array_equal(got, want, equal_nan=True), "the level differs from numpy's"
        tag = f"{len(meta['channels'])} ch x {(meta['t1'] - meta['t0']) / 3.6e9:.2g} h x {meta['fs']:g} Hz"
        self.add(f"coarsest level (k = {k}) of a cold {tag}", f"{mt:.2f} s", f"{d:.2f} s", mt / d,
                 decodes(st), "none stated (side by side)", None, o1 + o2)
        self.level_k, self.level_rel, self.want = k, rel, want

        with self.mount(os.path.dirname(path), "level-scanned", ["--cache-size", SCAN_CACHE]) as m:
            folder = os.path.join(m.mnt, os.path.basename(path))
            with open(os.path.join(folder, "info.json"), "rb") as f:
                info = json.load(f)
            m.wait_workers()
            self.cold()
            nbytes, scan_s = common.scan_files([os.path.join(folder, c["file"]) for c in info["channels"]])
            before = settle(m)
            got, mt, o = self.other_cpu(lambda: np.load(os.path.join(folder, rel)))
            after = settle(m)
        assert np.array_equal(got, want, equal_nan=True)
        new = decodes(after) - decodes(before)
        self.add(f"the same level after a scan ({nbytes / 2**20:.0f} MB through a {SCAN_CACHE} cache: "
                 f"{after['evictions']} evictions)", f"{mt * 1e3:.0f} ms", f"{d:.2f} s", mt / d, new,
                 "no decode", new == 0, o)
        self.R["scan_msps"] = nbytes / 4 / scan_s / 1e6
        self.R["summary"] = {k_: after.get(k_) for k_ in ("summary_bytes", "summary_budget", "summary_tiles",
                                                          "summary_hits")}

    # -- report ---------------------------------------------------------------

    def add(self, what, mount, direct, ratio, dec, target, ok, other) -> None:
        self.rows.append({"workload": what, "mef3fs": mount, "direct": direct, "ratio": ratio,
                          "decodes": dec, "target": target, "met": ok, "other_cpu_s": round(other, 1)})
        log(f"{what}: {mount} vs {direct} ({'' if ratio is None else f'{ratio:.2f}x'}), decodes {dec}")

    def table(self) -> str:
        lines = ["| workload | mef3fs | direct mef3io | mount / direct | decodes | target | |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            lines.append(f"| {r['workload']} | {r['mef3fs']} | {r['direct']} | {ratio} | {r['decodes']} | "
                         f"{r['target']} | {met(r['met']) if r['met'] is not None else ''} |")
        noise = ", ".join(f"{r['other_cpu_s']}" for r in self.rows)
        lines += ["", f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end; "
                      f"CPU-s used by other processes during each row: {noise}; "
                      f"page cache {'dropped' if self.cold_ok else 'NOT dropped (not root): cold rows are warm'}; "
                      f"best of {self.a.repeats} for the envelope."]
        return "\n".join(lines)

    def run(self) -> None:
        common.FOREIGN = common.ForeignCpu()
        try:
            self.hours_long = QUICK_HOURS if self.a.quick else LONG["hours"]
            long_path = build_long(self.a.cache, self.a.quick) if "envelope" in self.a.rows else None
            seq = make_data.build_seq(self.a.cache, self.a.quick, log=log) if "level" in self.a.rows else None
            if "envelope" in self.a.rows:
                self.envelope(long_path)
            if "level" in self.a.rows:
                self.cold_level(seq["A_16ch_1kHz"])
        finally:
            common.FOREIGN.stop()
        text = self.table()
        print(text)
        with open(os.path.join(self.out, "table.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.R, f, indent=1, default=str)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 h instead of 6 h, 10 min instead of 1 h")
    ap.add_argument("--cache", default="/tmp/mef3fs-bench", help="where the recordings are built")
    ap.add_argument("--out", help="table.md, results.json, logs (default <cache>/out-overviews)")
    ap.add_argument("--repeats", type=int, default=3, help="envelope rounds (the best is shown)")
    ap.add_argument("--rows", default="envelope,level", help="which rows: envelope, level (default both)")
    Overviews(ap.parse_args(argv)).run()


if __name__ == "__main__":
    main()
