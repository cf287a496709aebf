"""Per-channel statistics of MEF sessions with dask.distributed, through mef3fs's Zarr view.

    python channel_stats.py --local-workers 2 /mnt/mef3fs/sub-01/ses-1/night1.mefd      # one machine
    python channel_stats.py --scheduler tcp://dask-scheduler:8786 /mnt/mef3fs/*/*/*.mefd  # a cluster

Every node mounts the archive at the same path (docs/scale-out.md), so a task
reads whatever session it is given through its own node's mount; nothing but
the task graph and the results crosses the network. Each session's info.json
names its Zarr store and, per rate, the array; no MEF library is needed here.

Prints one JSON object per channel: session, rate, channel, count (samples
with data), nan (samples without), mean, std, min, max.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def rate_arrays(session: str, samples_per_task: int | None = None):
    """(info.json, [(grid, DataArray)]) of a session, lazily: nothing but metadata is read.

    A task is one channel and up to `samples_per_task` samples (default:
    dask's "auto", about 128 MiB, in whole Zarr chunks)."""
    import xarray as xr

    with open(os.path.join(session, "info.json")) as f:
        info = json.load(f)
    store = os.path.join(session, info["zarr_store"])
    names = [grid["zarr_array"] for grid in info["grids"]]
    plain = xr.open_zarr(store, chunks=None)              # only to learn each array's dimensions
    chunks = {}
    for name in names:
        channel, sample = plain[name].dims
        k = plain[name].encoding["chunks"][1]            # whole Zarr chunks per task
        chunks.update({channel: 1, sample: -(-samples_per_task // k) * k if samples_per_task else "auto"})
    ds = xr.open_zarr(store, chunks=chunks)               # zarr reads whole tasks' worth at once
    return info, [(grid, ds[name]) for grid, name in zip(info["grids"], names)]


def channel_stats(sessions, samples_per_task: int | None = None) -> list[dict]:
    """Statistics of every channel of every session, in one dask computation
    (on the distributed client if one is active, else dask's default scheduler)."""
    import dask

    lazy, keys = [], []
    for session in sessions:
        _, rates = rate_arrays(session, samples_per_task)
        for grid, x in rates:
            sample = x.dims[1]              # float32 samples, sums in float64
            lazy.append((x.count(sample), x.mean(sample, dtype="float64"), x.std(sample, dtype="float64"),
                         x.min(sample), x.max(sample)))
            keys.append((session, grid))
    computed = dask.compute(*lazy)
    rows = []
    for (session, grid), values in zip(keys, computed):
        count, mean, std, lo, hi = (v.values for v in values)
        for r, name in enumerate(grid["channels"]):
            rows.append({"session": session, "sampling_frequency": grid["sampling_frequency"],
                         "channel": name, "count": int(count[r]),
                         "nan": grid["number_of_samples"] - int(count[r]),
                         "mean": _num(mean[r]), "std": _num(std[r]), "min": _num(lo[r]),
                         "max": _num(hi[r])})
    return rows


def _num(v):
    v = float(v)
    return v if v == v else None          # NaN (a channel without data) as JSON null


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sessions", nargs="+", help="session folders under a mef3fs mount")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--scheduler", help="address of a running dask scheduler")
    where.add_argument("--local-workers", type=int, help="start a LocalCluster of N worker processes")
    ap.add_argument("--threads-per-worker", type=int, default=1)
    ap.add_argument("--samples-per-task", type=int, default=None)
    ap.add_argument("--out", help="write the JSON list here instead of printing lines")
    a = ap.parse_args(argv)

    from dask.distributed import Client, LocalCluster

    if a.scheduler:
        client = Client(a.scheduler)
        cluster = None
    else:
        cluster = LocalCluster(n_workers=a.local_workers, threads_per_worker=a.threads_per_worker,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        rows = channel_stats(a.sessions, a.samples_per_task)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    else:
        for row in rows:
            print(json.dumps(row))
    return 0


if __name__ == "__main__":        # LocalCluster's worker processes re-import this module
    sys.exit(main())
