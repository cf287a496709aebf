"""The floor: a FUSE file served from memory by mef3fs's read path with no tiles and no decoding.

bench/floorfs.py mounts one 256 MB file held in memory; it is read like the
scans (8 MiB readinto(), page cache dropped before each of three passes).
What it reaches bounds every re-read that goes through FUSE on this machine.
"""
from __future__ import annotations

import os

import floorfs
from common import drop_caches, f1, log, msps, scan_files


def run(b) -> None:
    with floorfs.mounted(b.work, "256") as mnt:
        best = 0.0
        for _ in range(3):
            drop_caches()
            by, s = scan_files([os.path.join(mnt, "f")])
            best = max(best, msps(by / 4, s))
    b.R["floor"] = {"msps": best}
    log(f"    floor: {best:.0f} Msamp/s")


def rows(b) -> list:
    fl = b.R.get("floor", {}).get("msps")
    return [{"workload": "Floor: a 256 MB FUSE file served from memory by the same read path, no decoding",
             "mount": f"{f1(fl, 0)} Msamp/s ({f1(fl * 4 if fl else None, 0)} MB/s)", "direct": "—",
             "mef_tools": "—", "server": "—", "target": "(the ceiling of any re-read through FUSE here)",
             "met": None}]
