"""Viewer paging: all channels of a rate group over one window, stepping page by page with a pause.

A viewer (the seed's own use) shows 10 s of every channel of a rate group,
then steps forward by a window, again and again, pausing between steps (the
user looking); then, elsewhere in the recording, it steps backward. Each page
is read through one np.memmap per channel file. Per pause (0.05 s and 0.2 s)
a fresh mount (its session opened by a read elsewhere, as direct mef3io's
Reader is opened first) and a dropped page cache; the first page of each run
is cold (compared with direct mef3io's read of it), the pages after it are what
read-ahead is for. Direct mef3io reads every page with one multi-channel call
(no read-ahead); mef3io-server 3.1 with get_signal_range (its own look-ahead
of one window), a fresh server per pause. Every page is compared with mef3io.
"""
from __future__ import annotations

import os
import time

import numpy as np

import explain
import server
from common import (MiB, Watchdog, drop_caches, f1, log, mm_close, mm_open, mm_window, now, pcts, stats_delta,
                    warm_session)

WIN_S = 10
PAUSES = (0.05, 0.2)


def runs_of(b, key: str) -> list:
    """[(first page start s, direction, pages)]: a forward run, then a backward one elsewhere."""
    meta = b.meta[key]
    dur = int((meta["t1"] - meta["t0"]) // 1_000_000)
    pages = 12 if not b.quick else 6
    if key == "B":
        pages = max(4, pages // 2)
    span = pages * WIN_S
    return [(dur // 5, +1, pages), (min(dur - WIN_S, dur // 5 * 4 + span // 2), -1, pages)]


def _pages(read, meta, runs, pause, ref=None, key="", bench=None) -> dict:
    first, later = [], []
    for start, direction, pages in runs:
        for k in range(pages):
            s = start + direction * k * WIN_S
            t = now()
            x = read(s)
            (first if k == 0 else later).append((now() - t) * 1e3)
            if ref is not None:
                want = ref.get((key, s))
                if want is None:
                    ref[(key, s)] = x
                elif not np.array_equal(x, want, equal_nan=True) and bench is not None:
                    bench.R.setdefault("window_mismatch", []).append(["page", key, s])
            time.sleep(pause)
    return {"first": pcts(first), "later": pcts(later)}


def paged_span(i0: int, n: int) -> tuple[int, int]:
    """Samples [a, b) of the whole 4 KiB pages that hold samples [i0, i0 + n) of a
    float32 file: what the kernel asks a mount for when a memmap touches them."""
    per_page = 4096 // 4
    return i0 // per_page * per_page, -(-(i0 + n) // per_page) * per_page


def _first_pages_paged(meta, runs, n: int) -> dict:
    """Direct mef3io's cold read of each run's first page widened to whole pages:
    a page that starts on a block boundary also holds the end of the block
    before, the last page the start of the block after, and mef3io decodes a
    block whole for any sample of it; so any reader of those pages decodes the
    blocks the mount must (the floor under the first-page row)."""
    import mef3io
    times = []
    r = mef3io.Reader(meta["path"], n_threads=0)
    try:
        for start, _, _ in runs:
            a, b = paged_span(int(round(start * meta["fs"])), n)
            drop_caches()
            t = now()
            r.read(meta["channels"], meta["t0"] + a * 1e6 / meta["fs"], meta["t0"] + b * 1e6 / meta["fs"],
                   dtype="float32")
            times.append((now() - t) * 1e3)
    finally:
        r.close()
    return pcts(times)


def run(b) -> None:
    import mef3io
    R = b.R.setdefault("paging", {})
    pages_ref: dict = {}
    for key, meta in b.meta.items():
        runs = runs_of(b, key)
        P = R.setdefault(key, {})
        for pause in PAUSES:
            drop_caches()
            r = mef3io.Reader(meta["path"], n_threads=0)
            read = lambda s, r=r, meta=meta: r.read(meta["channels"], meta["t0"] + s * 1_000_000,  # noqa: E731
                                                   meta["t0"] + (s + WIN_S) * 1_000_000, dtype="float32")
            P[f"direct_{pause}"] = _pages(read, meta, runs, pause, pages_ref, key)
            r.close()
        n = int(WIN_S * meta["fs"])
        P["direct_first_paged"] = _first_pages_paged(meta, runs, n)
        for pause in PAUSES:
            with b.mount(b.seq_src, f"paging-{key}-{pause}") as m:
                m.wait_workers()
                warm_session(os.path.join(m.mnt, os.path.basename(meta["path"])))
                mms = mm_open(b.f32_paths(m.mnt, meta))
                try:
                    s0 = m.stats()
                    drop_caches()
                    with Watchdog(300, m.kill, "paging through the mount"):
                        res = _pages(lambda s: mm_window(mms, int(round(s * meta["fs"])), n), meta, runs,
                                     pause, pages_ref, key, b)
                    res["stats"] = stats_delta(s0, m.stats())
                    res["trace"] = explain.summarize(m.trace_lines(), res["stats"])
                    P[f"mount_{pause}"] = res
                finally:
                    mm_close(mms)
            log(f"    paging {key} pause {pause}: mount later pages p50 {P[f'mount_{pause}']['later']['p50']:.2f} ms, "
                f"first {P[f'mount_{pause}']['first']['p50']:.1f} ms; direct "
                f"{P[f'direct_{pause}']['later']['p50']:.1f} ms")
        if b.server and not server.available():
            for pause in PAUSES:
                with server.GrpcServer(b.work, b.logdir, 512 * MiB) as srv:
                    srv.client.open_file(meta["path"])
                    drop_caches()
                    read = lambda s, srv=srv, meta=meta: srv.read(  # noqa: E731
                        meta["path"], meta["channels"], meta["t0"] + s * 1_000_000,
                        meta["t0"] + (s + WIN_S) * 1_000_000)
                    with Watchdog(300, srv.kill, "mef3io-server paging"):
                        P[f"server_{pause}"] = _pages(read, meta, runs, pause, pages_ref, key, b)


def rows(b) -> list:
    R = b.R.get("paging", {})
    why = server.available() or ("skipped" if not b.server else "—")
    out = []
    for key in b.meta:
        P = R.get(key, {})
        primary = key == "A"
        for pause in PAUSES:
            m, d, s = P.get(f"mount_{pause}"), P.get(f"direct_{pause}"), P.get(f"server_{pause}")
            if not m:
                continue
            ml, dl, sl = m["later"], d["later"] if d else None, s["later"] if s else None
            better = sl is None or (ml["p50"] < sl["p50"] and ml["p95"] < sl["p95"])
            name = (f"Viewer paging, {len(b.meta[key]['channels'])} ch x {WIN_S} s pages, {b.name(key)}, "
                    f"{pause} s pause: pages after the first (n={ml['n']})")
            out.append({"workload": name,
                        "mount": f"p50 {f1(ml['p50'], 2)} / p95 {f1(ml['p95'], 2)} ms",
                        "direct": f"p50 {f1(dl['p50'])} / p95 {f1(dl['p95'])} ms" if dl else "—",
                        "mef_tools": "—",
                        "server": f"p50 {f1(sl['p50'], 2)} / p95 {f1(sl['p95'], 2)} ms" if sl else why,
                        "target": "p50 <= 1 ms, p95 <= 5 ms, better than mef3io-server" if primary
                        else "(information)",
                        "met": (ml["p50"] <= 1.0 and ml["p95"] <= 5.0 and better) if primary else None})
            mf, df = m["first"], d["first"] if d else None
            ratio = mf["p50"] / df["p50"] if df else None
            paged = P.get("direct_first_paged")
            first_name = f"Viewer paging, {b.name(key)}, {pause} s pause: first page of a run (n={mf['n']})"
            if paged:
                b.note(first_name, f"direct mef3io reading the same pages widened to whole 4 KiB pages "
                                   f"(what a memmap makes the kernel ask for, so the blocks on both sides "
                                   f"of a block-aligned page are decoded too): p50 {f1(paged['p50'])} ms; "
                                   f"the mount's first page is {f1(mf['p50'] / paged['p50'], 2)}x that")
            out.append({"workload": first_name,
                        "mount": f"p50 {f1(mf['p50'])} ms (**{f1(ratio, 2)}x**)",
                        "direct": (f"p50 {f1(df['p50'])} ms" + (f" (whole pages: {f1(paged['p50'])})"
                                                                if paged else "")) if df else "—",
                        "mef_tools": "—",
                        "server": f"p50 {f1(s['first']['p50'])} ms" if s else why,
                        "target": "<= 1.3x direct" if primary else "(information)",
                        "met": (ratio <= 1.3) if primary and ratio is not None else None})
            if m.get("trace"):
                b.note(name, explain.sentence(m["trace"]))
    return out
