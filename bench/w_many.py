"""Many sessions: mount-ready time and `ls -lR` over 100 sessions x 64 channels.

Mount-ready: from starting the command to its daemon-mode return (the mount
is usable then), median of a few mounts with a dropped page cache. `ls -lR`
just after mounting (cold: sessions are opened as they are listed) and again
(warm). Direct: what a listing needs from MEF, in-process: open every
session with mef3io and call info() on every channel. mef3io-server:
open_file + get_file_info of every session (it has no listing).
"""
from __future__ import annotations

import glob
import os
import subprocess

import numpy as np

import server
from common import MiB, Watchdog, drop_caches, f1, log, now


def run(b) -> None:
    import mef3io
    R = b.R.setdefault("many", {})
    sessions = sorted(glob.glob(os.path.join(b.many_src, "*", "*.mefd")))
    drop_caches()
    t = now()
    for p in sessions:
        r = mef3io.Reader(p)
        for c in r.channels:
            r.info(c)
        r.close()
    R["direct_s"] = now() - t
    runs = []
    for _ in range(3 if not b.quick else 2):
        drop_caches()
        with b.mount(b.many_src, "many") as m:
            with Watchdog(300, m.kill, "ls -lR over the mount"):
                t = now()
                p = subprocess.run(["ls", "-lR", m.mnt], capture_output=True, timeout=300)
                cold = now() - t
                t = now()
                subprocess.run(["ls", "-lR", m.mnt], capture_output=True, timeout=300)
                warm = now() - t
            runs.append({"ready_s": m.ready_s, "ls_cold_s": cold, "ls_warm_s": warm,
                         "f32_files": p.stdout.count(b".f32\n")})
        log(f"    many: ready {m.ready_s:.2f} s, ls -lR cold {cold:.2f} s, warm {warm:.2f} s")
    R["runs"] = runs
    for k in ("ready_s", "ls_cold_s", "ls_warm_s"):
        R[k] = float(np.median([r[k] for r in runs]))
    if b.server and not server.available():
        drop_caches()
        with server.GrpcServer(b.work, b.logdir, 512 * MiB) as srv:
            R["server_ready_s"] = srv.ready_s
            with Watchdog(300, srv.kill, "mef3io-server open 100 sessions"):
                t = now()
                for p in sessions:
                    srv.client.open_file(p)
                    srv.client.get_file_info(p)
                R["server_s"] = now() - t


def rows(b) -> list:
    R = b.R.get("many", {})
    c = b.R["data"]["C_many"]
    why = server.available() or ("skipped" if not b.server else "—")
    return [{"workload": f"Mount-ready time, {c['sessions']} sessions x {c['channels']} ch",
             "mount": f"{f1(R.get('ready_s'), 2)} s", "direct": "—", "mef_tools": "—",
             "server": f"{f1(R.get('server_ready_s'), 2)} s (process up and answering)"
                       if "server_ready_s" in R else why,
             "target": "(information)", "met": None},
            {"workload": f"`ls -lR` over the mount, {c['sessions']} sessions x {c['channels']} ch",
             "mount": f"cold {f1(R.get('ls_cold_s'), 2)} s, warm {f1(R.get('ls_warm_s'), 2)} s"
                      + (f" ({R['runs'][0]['f32_files']} .f32 files)" if R.get("runs") else ""),
             "direct": f"{f1(R.get('direct_s'), 2)} s (Reader + info() of every channel, cold)",
             "mef_tools": "—",
             "server": f"{f1(R.get('server_s'), 2)} s (open_file + get_file_info; no listing)"
                       if "server_s" in R else why,
             "target": "(information)", "met": None}]
