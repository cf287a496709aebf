"""Peak memory: a mount with a small --cache-size, then a cold scan of both recordings (>= 4x the budget).

Sampled every 0.1 s from /proc: the largest sum of VmRSS over the daemon and
all its descendants (worker processes); also the sum of each process's VmHWM,
and PSS (shared pages counted once). mef3io-server: the same scan with
TILE_CACHE_MB equal to the mount's budget. Target: budget + 200 MB.
"""
from __future__ import annotations

import server
from common import MiB, TreeSampler, Watchdog, drop_caches, log, msps, scan_files, stats_delta


def run(b) -> None:
    total = sum(4 * m["n"] * len(m["channels"]) for m in b.meta.values())
    budget_mb = max(8, int(total / 4.5 / MiB))
    R = b.R.setdefault("memory", {"budget_mb": budget_mb, "scanned_mb": total / MiB})
    with b.mount(b.seq_src, "memory", ["--cache-size", f"{budget_mb}M"]) as m:
        m.wait_workers()
        s0 = m.stats()
        drop_caches()
        with Watchdog(600, m.kill, "memory scan through the mount"):
            with TreeSampler(m.pid) as ts:
                by = s = 0.0
                for meta in b.meta.values():
                    bb, ss = scan_files(b.f32_paths(m.mnt, meta))
                    by, s = by + bb, s + ss
        R["scan"] = {"bytes": by, "s": s, "msps": msps(by / 4, s)}
        R["mem"] = ts.result()
        R["stats"] = stats_delta(s0, m.stats())
    log(f"    memory: budget {budget_mb} MB, peak RSS sum {R['mem']['peak_rss_mb']:.0f} MB")
    if b.server and not server.available():
        with server.GrpcServer(b.work, b.logdir, budget_mb * MiB) as srv:
            drop_caches()
            with Watchdog(900, srv.kill, "mef3io-server memory scan"):
                with TreeSampler(srv.proc.pid) as ts:
                    for meta in b.meta.values():
                        from w_scan import _server_scan
                        _server_scan(srv, meta)
            R["server"] = ts.result()


def rows(b) -> list:
    R = b.R.get("memory", {})
    mem, budget = R.get("mem"), R.get("budget_mb", "?")
    sv = R.get("server")
    why = server.available() or ("skipped" if not b.server else "—")
    if mem:
        each = ", ".join(f"{k} {'+'.join(map(str, v))}" for k, v in mem.get("peak_rss_each_mb", {}).items())
        cell = (f"{mem['peak_rss_mb']:.0f} MB (before reading: {mem.get('baseline_rss_mb', '?')} MB; "
                f"peaks: {each}; sum of VmHWM {mem['sum_hwm_mb']:.0f}, PSS {mem['peak_pss_mb']:.0f})")
        ok = mem["peak_rss_mb"] <= budget + 200
    else:
        cell, ok = "error", None
    return [{"workload": f"Peak RSS, daemon + workers, scanning {R.get('scanned_mb', 0):.0f} MB with "
                         f"--cache-size {budget}M",
             "mount": cell, "direct": "—", "mef_tools": "—",
             "server": f"{sv['peak_rss_mb']:.0f} MB (PSS {sv['peak_pss_mb']:.0f})" if sv else why,
             "target": f"<= budget + 200 MB = {budget + 200 if isinstance(budget, int) else '?'} MB",
             "met": ok}]
