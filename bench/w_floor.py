"""The floor: a FUSE file served from memory by mef3fs's read path with no tiles and no decoding.

bench/floorfs.py mounts one 256 MB file held in memory; it is read like the
scans (8 MiB readinto(), page cache dropped before each of three passes).
What it reaches bounds every re-read that goes through FUSE on this machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from common import drop_caches, f1, log, msps, scan_files

HERE = os.path.dirname(os.path.abspath(__file__))


def run(b) -> None:
    mnt = os.path.join(b.work, f"floor-{os.getpid()}")
    os.makedirs(mnt, exist_ok=True)
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "floorfs.py"), mnt, "256"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t = time.monotonic()
        while not os.path.ismount(mnt):
            if p.poll() is not None or time.monotonic() - t > 20:
                raise RuntimeError("floorfs did not mount")
            time.sleep(0.05)
        best = 0.0
        for _ in range(3):
            drop_caches()
            by, s = scan_files([os.path.join(mnt, "f")])
            best = max(best, msps(by / 4, s))
        b.R["floor"] = {"msps": best}
        log(f"    floor: {best:.0f} Msamp/s")
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        os.rmdir(mnt)


def rows(b) -> list:
    fl = b.R.get("floor", {}).get("msps")
    return [{"workload": "Floor: a 256 MB FUSE file served from memory by the same read path, no decoding",
             "mount": f"{f1(fl, 0)} Msamp/s ({f1(fl * 4 if fl else None, 0)} MB/s)", "direct": "—",
             "mef_tools": "—", "server": "—", "target": "(the ceiling of any re-read through FUSE here)",
             "met": None}]
