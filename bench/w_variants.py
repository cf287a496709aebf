"""Variants (`--variant NAME=OPTS`): other mount options measured side by side with the defaults.

For each variant and for the defaults, on fresh mounts: a cold scan of every
.f32 of recording A (with the CPU time of the daemon and its workers), two
rounds of cold random windows of A, and one forward paging run (0.05 s
pause). E.g. `--variant 'procs=--workers 2'` asks whether worker processes
pay off against the default, decoding threads in the daemon.
"""
from __future__ import annotations

from common import TreeCpu, Watchdog, drop_caches, f1, log, msps, scan_files
from w_paging import _pages, runs_of
from w_windows import cold_rounds, WIN_S
from common import mm_close, mm_open, mm_window


def _one(b, name: str, extra: list) -> dict:
    d = {"opts": " ".join(extra)}
    with b.mount(b.seq_src, f"var-{name}", extra) as m:
        m.wait_workers()
        drop_caches()
        with Watchdog(600, m.kill, "variant scan"):
            with TreeCpu(m.pid) as ts:
                by, s = scan_files(b.f32_paths(m.mnt, b.meta["A"]))
        mem = ts.result()
        d["scan"] = {"msps": msps(by / 4, s),
                     "cpu_per_msamp": (mem["cpu_s_root"] + mem["cpu_s_children"]) / (by / 4 / 1e6)}
    w = cold_rounds(b, f"var-{name}", extra, rounds=2, keys=("A",))["A"]
    d["windows"] = {"cold": w["cold"], "stats": w["stats"]}
    meta = b.meta["A"]
    n = int(WIN_S * meta["fs"])
    with b.mount(b.seq_src, f"var-{name}-paging", extra) as m:
        m.wait_workers()
        mms = mm_open(b.f32_paths(m.mnt, meta))
        try:
            drop_caches()
            res = _pages(lambda s: mm_window(mms, int(round(s * meta["fs"])), n), meta,
                         runs_of(b, "A")[:1], 0.05)
        finally:
            mm_close(mms)
    d["paging"] = res
    log(f"    variant {name}: scan {d['scan']['msps']:.1f} Msamp/s, windows p50 {w['cold']['p50']:.1f} ms, "
        f"paging p50 {res['later']['p50']:.2f} ms")
    return d


def run(b) -> None:
    R = b.R.setdefault("variants", {})
    if not b.a.variant:
        return
    R["default"] = _one(b, "default", [])
    for spec in b.a.variant:
        name, _, opts = spec.partition("=")
        R[name] = _one(b, name, opts.split())


def rows(b) -> list:
    return []


def tables(b) -> str:
    R = b.R.get("variants")
    if not R:
        return ""
    out = ["", "Variants (`--variant`), recording A, cold, each on fresh mounts:", "",
           "| variant | options | cold .f32 scan Msamp/s (CPU-s per Msamp, daemon + workers) | "
           "cold 10 s windows p50 / p95 ms | tiles decoded / used (windows) | paging, pages after the first, "
           "p50 / p95 ms |", "|---|---|---|---|---|---|"]
    for name, d in R.items():
        w, st, pg = d["windows"]["cold"], d["windows"]["stats"], d["paging"]["later"]
        out.append(f"| {name} | `{d['opts']}` | {f1(d['scan']['msps'])} ({d['scan']['cpu_per_msamp']:.3f}) | "
                   f"{f1(w.get('p50'))} / {f1(w.get('p95'))} | {st.get('tiles_decoded', 0)} / "
                   f"{st.get('tiles_used', 0)} | {f1(pg.get('p50'), 2)} / {f1(pg.get('p95'), 2)} |")
    return "\n".join(out)
