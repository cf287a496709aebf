"""Tile-size sweep: --tile-seconds 1, 5, 10, 30, 60 (quick: 1, 10, 30), recording A, cold.

For each size, on fresh mounts: cold random windows (two rounds) and a cold
scan of every .f32, with the tiles each decoded. Why 10 s is the default:
shorter tiles than a MEF block decode a block several times; longer ones
make a window decode more than it needs.
"""
from __future__ import annotations

from common import Watchdog, drop_caches, f1, log, msps, scan_files, stats_delta
from w_windows import cold_rounds


def run(b) -> None:
    sizes = [1, 5, 10, 30, 60] if not b.quick else [1, 10, 30]
    R = b.R.setdefault("sweep", {})
    for ts in sizes:
        extra = ["--tile-seconds", str(ts)]
        d = R.setdefault(str(ts), {})
        w = cold_rounds(b, f"sweep{ts}", extra, rounds=1 if b.quick else 2, keys=("A",))["A"]
        d["win"] = {"cold": w["cold"], "stats": w["stats"]}
        with b.mount(b.seq_src, f"sweep{ts}", extra) as m:
            m.wait_workers()
            s0 = m.stats()
            drop_caches()
            with Watchdog(600, m.kill, "sweep scan"):
                by, s = scan_files(b.f32_paths(m.mnt, b.meta["A"]))
            d["scan"] = {"msps": msps(by / 4, s), "stats": stats_delta(s0, m.stats())}
        log(f"    tile {ts} s: scan {d['scan']['msps']:.1f} Msamp/s, window p50 {d['win']['cold'].get('p50', 0):.0f} ms")


def rows(b) -> list:
    return []


def tables(b) -> str:
    R = b.R.get("sweep")
    if not R:
        return ""
    direct = b.R.get("scan", {}).get("direct", {}).get("A", {}).get("mef3io", {}).get("msps")
    dw = b.R.get("windows", {}).get("direct", {}).get("A", {}).get("cold", {}).get("p50")
    out = ["", "Tile-size sweep (`--tile-seconds`), recording A, cold (fresh mount, dropped page cache):", "",
           "| --tile-seconds | cold scan Msamp/s (x direct) | cold 10 s window p50 / p95 ms (x direct p50) | "
           "tiles decoded / used: scan, windows |", "|---|---|---|---|"]
    for ts, d in R.items():
        sc, wc = d["scan"]["msps"], d["win"]["cold"]
        ss, ws = d["scan"]["stats"], d["win"]["stats"]
        out.append(f"| {ts} | {f1(sc)} ({f1(sc / direct if direct else None, 2)}x) | {f1(wc.get('p50'))} / "
                   f"{f1(wc.get('p95'))} ({f1(wc['p50'] / dw if dw and wc.get('p50') else None, 2)}x) | "
                   f"{ss.get('tiles_decoded', 0)} / {ss.get('tiles_used', 0)}, "
                   f"{ws.get('tiles_decoded', 0)} / {ws.get('tiles_used', 0)} |")
    return "\n".join(out)
