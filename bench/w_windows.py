"""Random windows: 10 s of every channel at random whole-second starts, through np.memmap.

Cold: several rounds, each a fresh mount (its session opened by a read
elsewhere, as direct's Reader is opened first) and a dropped page cache; a round's
windows sit in separate stretches of the recording, so one window's tiles
(and the kernel's read-around) do not warm the next. Warm: on the last
round's mount, every window read once, then timed again with new memmaps.
Direct: one `mef3io.Reader(n_threads=0)` per round, `read(list of channels,
t0, t1, dtype="float32")` per window (cold: page cache dropped per round).
mef3io-server: get_signal_range of the same windows (a new server per round).
Every window read through the mount or the server is compared with mef3io's.

Decode work: the counters' tiles decoded per tile used, and per MEF block the
windows touch (what direct decodes).
"""
from __future__ import annotations

import os

import numpy as np

import explain
import server
from common import (MiB, Watchdog, blocks_touched, drop_caches, f1, log, mm_close, mm_open, mm_window,
                    now, pcts, stats_delta, warm_session)

WIN_S = 10


def make_windows(meta: dict, rounds: int, per_round: int, seed: int) -> list:
    """rounds x per_round window starts (whole seconds), spread over the recording."""
    rng = np.random.default_rng(seed)
    dur = int((meta["t1"] - meta["t0"]) // 1_000_000)
    slot = dur // per_round
    out = []
    for _ in range(rounds):
        starts = []
        for k in range(per_round):
            lo = k * slot + min(60, slot // 4)
            hi = max(lo + 1, (k + 1) * slot - WIN_S - min(60, slot // 4))
            starts.append(int(rng.integers(lo, hi)))
        rng.shuffle(starts)
        out.append(starts)
    return out


def windows_of(b) -> dict:
    if not hasattr(b, "windows"):
        per, rounds = (5, 4) if not b.quick else (2, 3)
        b.windows = {"A": make_windows(b.meta["A"], rounds, per, 11),
                     "B": make_windows(b.meta["B"], rounds, max(1, per // 2) if not b.quick else 1, 12)}
    return b.windows


def direct_window(reader, meta: dict, start_s: int) -> np.ndarray:
    ta = meta["t0"] + start_s * 1_000_000
    return reader.read(meta["channels"], ta, ta + WIN_S * 1_000_000, dtype="float32")


def mount_windows(b, m, key: str, starts: list, check: bool = True) -> list:
    meta = b.meta[key]
    n = int(WIN_S * meta["fs"])
    mms = mm_open(b.f32_paths(m.mnt, meta))
    out = []
    try:
        for s in starts:
            i0 = int(round(s * meta["fs"]))
            t = now()
            x = mm_window(mms, i0, n)
            out.append((now() - t) * 1e3)
            ref = b.ref_windows.get((key, s))
            if check and ref is not None and not np.array_equal(x, ref, equal_nan=True):
                b.R.setdefault("window_mismatch", []).append([key, s])
    finally:
        mm_close(mms)
    return out


def cold_rounds(b, tag: str, extra=None, rounds=None, keys=("A", "B")) -> dict:
    """Per round a fresh mount and a dropped page cache; -> ms, counters and trace summary per set."""
    wins = windows_of(b)
    res = {k: {"cold_ms": [], "stats": {}, "lines": []} for k in keys}
    rlist = list(range(len(wins["A"]) if rounds is None else rounds))
    for ri in rlist:
        with b.mount(b.seq_src, tag, extra) as m:
            m.wait_workers()
            for k in keys:
                warm_session(os.path.join(m.mnt, os.path.basename(b.meta[k]["path"])))
            with Watchdog(300, m.kill, "random windows through the mount"):
                for k in keys:
                    s0 = m.stats()
                    drop_caches()
                    res[k]["cold_ms"] += mount_windows(b, m, k, wins[k][ri])
                    delta = stats_delta(s0, m.stats())
                    for name, v in delta.items():
                        res[k]["stats"][name] = res[k]["stats"].get(name, 0) + v
                    res[k]["lines"] += m.trace_lines()
                if ri == rlist[-1] and tag == "windows":
                    for k in keys:
                        flat = [s for r in wins[k] for s in r]
                        mount_windows(b, m, k, flat, check=False)
                        res[k]["warm_ms"] = mount_windows(b, m, k, flat)
    for k in keys:
        meta = b.meta[k]
        res[k]["blocks"] = sum(blocks_touched(meta, meta["t0"] + s * 1e6, meta["t0"] + (s + WIN_S) * 1e6)
                               for r in wins[k][:len(rlist)] for s in r) * len(meta["channels"])
        res[k]["trace"] = explain.summarize(res[k].pop("lines"), res[k]["stats"])
        res[k]["cold"] = pcts(res[k]["cold_ms"])
        if "warm_ms" in res[k]:
            res[k]["warm"] = pcts(res[k]["warm_ms"])
    return res


def run(b) -> None:
    import mef3io
    wins = windows_of(b)
    R = b.R.setdefault("windows", {})
    D = R.setdefault("direct", {})
    for key, meta in b.meta.items():
        cold, warm = [], []
        for rnd in wins[key]:
            drop_caches()
            r = mef3io.Reader(meta["path"], n_threads=0)
            for s in rnd:
                t = now()
                x = direct_window(r, meta, s)
                cold.append((now() - t) * 1e3)
                b.ref_windows[(key, s)] = x
            r.close()
        r = mef3io.Reader(meta["path"], n_threads=0)
        flat = [s for rnd in wins[key] for s in rnd]
        for s in flat:
            direct_window(r, meta, s)
        for s in flat:
            t = now()
            direct_window(r, meta, s)
            warm.append((now() - t) * 1e3)
        r.close()
        D[key] = {"cold": pcts(cold), "warm": pcts(warm)}
        log(f"    direct windows {key}: cold p50 {D[key]['cold']['p50']:.1f} ms")
    R["mount"] = cold_rounds(b, "windows")
    for k, v in R["mount"].items():
        log(f"    mount windows {k}: cold p50 {v['cold']['p50']:.1f} / p95 {v['cold']['p95']:.1f} ms")
    if b.server and not server.available():
        S = R.setdefault("server", {k: {"cold": [], "warm": []} for k in b.meta})
        mismatch = 0
        for ri in range(len(wins["A"])):
            with server.GrpcServer(b.work, b.logdir, 512 * MiB) as srv:
                with Watchdog(600, srv.kill, "mef3io-server windows"):
                    for k, meta in b.meta.items():
                        srv.client.open_file(meta["path"])
                    for k, meta in b.meta.items():
                        drop_caches()
                        for s in wins[k][ri]:
                            ta = meta["t0"] + s * 1_000_000
                            t = now()
                            x = srv.read(meta["path"], meta["channels"], ta, ta + WIN_S * 1_000_000)
                            S[k]["cold"].append((now() - t) * 1e3)
                            ref = b.ref_windows.get((k, s))
                            if ref is not None and not np.array_equal(x, ref, equal_nan=True):
                                mismatch += 1
                    if ri == len(wins["A"]) - 1:
                        for k, meta in b.meta.items():
                            flat = [s for r in wins[k] for s in r]
                            for rep in range(2):
                                for s in flat:
                                    ta = meta["t0"] + s * 1_000_000
                                    t = now()
                                    srv.read(meta["path"], meta["channels"], ta, ta + WIN_S * 1_000_000)
                                    if rep:
                                        S[k]["warm"].append((now() - t) * 1e3)
        for k in b.meta:
            S[k] = {"cold": pcts(S[k]["cold"]), "warm": pcts(S[k]["warm"])}
        R["server_mismatch"] = mismatch


def rows(b) -> list:
    R = b.R.get("windows", {})
    D, M, S = R.get("direct", {}), R.get("mount", {}), R.get("server", {})
    why = server.available() or ("skipped" if not b.server else "—")
    out = []
    for key in b.meta:
        mw, dw, sw = M.get(key, {}), D.get(key, {}), S.get(key, {})
        c, dc = mw.get("cold"), dw.get("cold")
        name = f"Random {WIN_S} s windows x {len(b.meta[key]['channels'])} ch, {b.name(key)}, np.memmap, cold"
        r50 = c["p50"] / dc["p50"] if c and dc else None
        r95 = c["p95"] / dc["p95"] if c and dc else None
        st = mw.get("stats", {})
        dec, used = st.get("tiles_decoded", 0), st.get("tiles_used", 0)
        work = dec / used if used else None
        per_block = dec / mw["blocks"] if mw.get("blocks") else None
        primary = key == "A"
        out.append({"workload": f"{name} (n={c['n'] if c else 0})",
                    "mount": (f"p50 {f1(c['p50'])} / p95 {f1(c['p95'])} ms (**{f1(r50, 2)}x / {f1(r95, 2)}x**)"
                              if c else "error"),
                    "direct": f"p50 {f1(dc['p50'])} / p95 {f1(dc['p95'])} ms" if dc else "—",
                    "mef_tools": "—",
                    "server": f"p50 {f1(sw['cold']['p50'])} / p95 {f1(sw['cold']['p95'])} ms"
                              if sw.get("cold") else why,
                    "target": "p50 <= 1.3x, p95 <= 2x direct" if primary else "(information)",
                    "met": (r50 <= 1.3 and r95 <= 2.0) if primary and r50 is not None else None})
        out.append({"workload": f"Decode work of those windows, {b.name(key)}",
                    "mount": f"{dec} tiles decoded for {used} used (**{f1(work, 2)}x**); "
                             f"{f1(per_block, 2)}x the {mw.get('blocks', 0)} blocks the windows touch",
                    "direct": f"{mw.get('blocks', 0)} blocks", "mef_tools": "—", "server": "—",
                    "target": "tiles decoded <= 1.5x tiles used" if primary else "(information)",
                    "met": (work <= 1.5) if primary and work is not None else None})
        if mw.get("trace"):
            b.note(name, explain.sentence(mw["trace"]))
        wm, dwm = mw.get("warm"), dw.get("warm")
        if wm:
            out.append({"workload": f"Random {WIN_S} s windows, {b.name(key)}, warm (n={wm['n']})",
                        "mount": f"p50 {f1(wm['p50'])} / p95 {f1(wm['p95'])} ms",
                        "direct": f"p50 {f1(dwm['p50'])} / p95 {f1(dwm['p95'])} ms" if dwm else "—",
                        "mef_tools": "—",
                        "server": f"p50 {f1(sw['warm']['p50'])} / p95 {f1(sw['warm']['p95'])} ms"
                                  if sw.get("warm") else why,
                        "target": "(information)", "met": None})
    bad = b.R.get("window_mismatch")
    b.note("Byte-exactness of windows", f"windows through the mount that differ from mef3io: {bad}" if bad else
           "every window and page read through the mount equals mef3io's read of it (NaN = NaN)")
    return out
