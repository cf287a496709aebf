#!/usr/bin/env python3
"""The scale-out recipe on one machine: per-channel statistics through the Zarr view, 1 vs 2 dask workers.

    .venv/bin/python bench/zarr_dask.py [--quick] [--cache DIR] [--out DIR] [--rounds N]

One table, side by side in the same run, on set A of bench/make_data.py
(16 ch x 1 h x 1 kHz; --quick: 10 min). Each cell computes count, NaN count,
mean, std, min and max of every channel, in float64:

  dask, N workers   examples/dask/channel_stats.py on a LocalCluster of N worker
                    processes (one thread each), reading the session's Zarr view
                    through the mount: a task is one channel's whole row
  numpy on .f32     np.fromfile of every channel file through the mount, then numpy
  direct mef3io     mef3io.Reader(n_threads=0).read of every channel in this process,
                    then numpy (no mount)

"Cold": a fresh mount (empty tile cache) and the page cache dropped (root
only; the table says when it could not be). "Warm": the same again on the
same mount. The cluster is started once per size, outside the timings. The
mount's counters per run (tiles decoded, cache hits) and the CPU time other
processes used meanwhile go to --out, with the daemon logs.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import common  # noqa: E402
import make_data  # noqa: E402
from common import drop_caches, log, msps, stats_delta  # noqa: E402
from mount import Mount  # noqa: E402


def _recipe():
    spec = importlib.util.spec_from_file_location("channel_stats",
                                                  os.path.join(REPO, "examples", "dask", "channel_stats.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _warm_up() -> None:
    import xarray  # noqa: F401
    import zarr  # noqa: F401


def numpy_stats(x: np.ndarray) -> dict:
    x = x.astype(np.float64)
    ok = x[~np.isnan(x)]
    return {"count": ok.size, "nan": x.size - ok.size, "mean": ok.mean(), "std": ok.std(),
            "min": ok.min(), "max": ok.max()}


def on_f32(folder: str) -> tuple[int, dict]:
    with open(os.path.join(folder, "info.json")) as f:
        info = json.load(f)
    out, n = {}, 0
    for c in info["channels"]:
        x = np.fromfile(os.path.join(folder, c["file"]), dtype="<f4")
        out[c["name"]] = numpy_stats(x)
        n += x.size
    return n, out


def on_mef3io(path: str) -> tuple[int, dict]:
    import mef3io
    r = mef3io.Reader(path, n_threads=0)
    try:
        infos = {c: r.info(c) for c in r.channels}
        t0 = min(i["start_time"] for i in infos.values())
        t1 = max(i["end_time"] for i in infos.values())
        out, n = {}, 0
        for c in r.channels:
            x = r.read(c, t0, t1, dtype="float32")
            out[c] = numpy_stats(x)
            n += x.size
    finally:
        r.close()
    return n, out


def agree(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(
        a[k]["count"] == b[k]["count"] and a[k]["min"] == b[k]["min"] and a[k]["max"] == b[k]["max"]
        and abs(a[k]["mean"] - b[k]["mean"]) <= 1e-9 * max(1.0, abs(b[k]["mean"]))
        and abs(a[k]["std"] - b[k]["std"]) <= 1e-9 * b[k]["std"] for k in b)


class Run:
    def __init__(self, a):
        self.a = a
        self.out = a.out or os.path.join(a.cache, "out-zarr-dask")
        self.logdir = os.path.join(self.out, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.work = os.path.join(a.cache, "work")
        os.makedirs(self.work, exist_ok=True)
        self.R: dict = {"argv": sys.argv, "quick": a.quick, "cells": {}, "cold": True}
        self.foreign = common.FOREIGN = common.ForeignCpu()

    def timed(self, name: str, fn, *args):
        self.foreign.mark(name)
        t = time.perf_counter()
        n, result = fn(*args)
        dt = time.perf_counter() - t
        cell = self.R["cells"].setdefault(name, {"s": [], "other_cpu_s": [], "samples": n})
        cell["s"].append(round(dt, 3))
        cell["other_cpu_s"].append(round(self.foreign.since(name), 1))
        log(f"    {name}: {dt:.2f} s ({msps(n, dt):.1f} Msamp/s)")
        return result

    def cold(self) -> None:
        if not drop_caches():
            self.R["cold"] = False

    def run(self):
        from dask.distributed import Client, LocalCluster
        recipe = _recipe()
        paths = make_data.build_seq(self.a.cache, self.a.quick, log=log)
        path = paths["A_16ch_1kHz"]
        source, name = os.path.dirname(path), os.path.basename(path)
        for rnd in range(self.a.rounds):
            log(f"--- round {rnd + 1}: direct mef3io")
            self.cold()
            want = self.timed("direct mef3io", on_mef3io, path)
            log("--- numpy on .f32 through the mount")
            self.cold()
            with Mount(source, self.work, self.logdir, "f32", [], trace=False) as m:
                m.wait_workers()
                got = self.timed("numpy on .f32, cold", on_f32, os.path.join(m.mnt, name))
                self.R["cells"]["numpy on .f32, cold"]["agrees"] = agree(got, want)
                self.timed("numpy on .f32, warm", on_f32, os.path.join(m.mnt, name))
            for workers in (1, 2):
                log(f"--- dask, {workers} worker(s)")
                t = time.perf_counter()
                with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, Client(cluster) as client:
                    client.run(_warm_up)          # worker processes import what tasks unpickle
                    self.R.setdefault("cluster_start_s", {})[workers] = round(time.perf_counter() - t, 1)
                    self.cold()
                    with Mount(source, self.work, self.logdir, f"dask{workers}", [], trace=False) as m:
                        m.wait_workers()
                        folder = os.path.join(m.mnt, name)

                        def stats_of(folder=folder):
                            rows = recipe.channel_stats([folder])
                            return sum(r["count"] + r["nan"] for r in rows), \
                                {r["channel"]: r for r in rows}
                        for phase in ("cold", "warm"):
                            key = f"dask, {workers} worker{'s' * (workers > 1)}, {phase}"
                            before = m.stats()
                            got = self.timed(key, stats_of)
                            cell = self.R["cells"][key]
                            cell["agrees"] = agree(got, want)
                            cell.setdefault("counters", []).append(stats_delta(before, m.stats()))
        self.foreign.stop()
        return self.table(name)

    def table(self, name: str) -> str:
        cells = self.R["cells"]

        def cell(key):
            c = cells.get(key)
            if not c:
                return "—"
            s = statistics.median(c["s"])
            ok = "" if c.get("agrees", True) else " (DIFFERS)"
            return f"{msps(c['samples'], s):.1f} Msamp/s ({s:.1f} s){ok}"
        nch, secs, fs = make_data.seq_sets(self.a.quick)["A_16ch_1kHz"]
        what = f"per-channel stats, {nch} ch x {secs // 60} min x {fs / 1000:g} kHz"
        head = ("| workload | dask, 1 worker | dask, 2 workers | numpy on .f32 (mount) | direct mef3io |\n"
                "|---|---|---|---|---|\n")
        rows = [f"| {what}, cold | {cell('dask, 1 worker, cold')} | {cell('dask, 2 workers, cold')} | "
                f"{cell('numpy on .f32, cold')} | {cell('direct mef3io')} |",
                f"| {what}, warm | {cell('dask, 1 worker, warm')} | {cell('dask, 2 workers, warm')} | "
                f"{cell('numpy on .f32, warm')} | |"]
        notes = [f"median of {self.a.rounds} round(s); cluster start (not timed): "
                 f"{self.R.get('cluster_start_s')} s; CPU used by other processes per cell: "
                 + ", ".join(f"{k}: {v['other_cpu_s']}" for k, v in cells.items())]
        if not self.R["cold"]:
            notes.append("the page cache could not be dropped (not root): 'cold' means a fresh mount only")
        return head + "\n".join(rows) + "\n\n" + "\n".join(f"* {n}" for n in notes) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 minutes of set A instead of an hour")
    ap.add_argument("--cache", default="/tmp/mef3fs-bench", help="where the recordings are built")
    ap.add_argument("--out", help="results.json, table.md and logs (default <cache>/out-zarr-dask)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    run = Run(a)
    table = run.run()
    with open(os.path.join(run.out, "results.json"), "w") as f:
        json.dump(run.R, f, indent=1, default=str)
    with open(os.path.join(run.out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":      # LocalCluster's worker processes re-import this module
    sys.exit(main())
