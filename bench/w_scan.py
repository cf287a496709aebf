"""Sequential scans: every .f32 file start to end, all channels at once through rates/<fs>Hz.npy, and re-reads.

Mount: a fresh mount and a dropped page cache, then every `.f32` of a
recording read start to end one file after the other with 8 MiB readinto()
calls; then (same mount) the page cache dropped again and everything read
again, which is served by the tile cache ("warm re-read from the tile
cache"); then once more with the page cache warm. On another fresh mount,
rates/<fs>Hz.npy of each recording, the (channels, samples) matrix, read the
same way. On a third fresh mount, every `.f32` read start to end through
np.memmap (a page fault a page, what a script computing over a mapped
channel does), cold and then from the tile cache. A full run makes ROUNDS
pairs of direct and mount scans and takes the median of their ratios (the
re-reads run once, after the last).
Direct: `mef3io.Reader(path, n_threads=0).read(ch, dtype="float32")` per
channel (the `.f32` scan's counterpart) and one `read(all channels)` call
(the matrix's), Reader open included; mef_tools `get_data` per channel.
mef3io-server: get_signal_range(all channels, 60 s windows), start to end.
"""
from __future__ import annotations

import explain
import server
import numpy as np

from common import MiB, Watchdog, drop_caches, f1, log, memmap_scan, msps, now, scan_files, stats_delta, TreeCpu

STEP_S = 60          # mef3io-server scan window
ROUNDS = 2           # pairs of cold scans (direct, then mount) in a full run


def _direct_scan(path: str, multi: bool = False):
    import mef3io
    t = now()
    r = mef3io.Reader(path, n_threads=0)
    chs = list(r.channels)
    n = r.read(chs, dtype="float32").size if multi else sum(r.read(c, dtype="float32").size for c in chs)
    r.close()
    return n, now() - t


def _meftools_scan(path: str):
    import warnings

    import numpy as np
    from mef_tools.io import MefReader
    t = now()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MefReader(path)
        n = sum(np.size(m.get_data(c)) for c in m.channels)
    return n, now() - t


def _server_scan(srv, meta: dict):
    t = now()
    srv.client.open_file(meta["path"])
    n, ta = 0, meta["t0"]
    while ta < meta["t1"]:
        tb = min(meta["t1"], ta + STEP_S * 1_000_000)
        n += srv.read(meta["path"], meta["channels"], ta, tb).size
        ta = tb
    return n, now() - t


def _rounds(b) -> int:
    """Cold scans are paired, direct then mount, and the ratio is the median of the
    pairs: the machine's speed drifts 2-3x within an hour, and one pair of single
    scans moved 0.58-0.89x where the sweep's pairs in the same runs gave 0.74-1.03x."""
    return 1 if b.quick else ROUNDS


def _direct_round(b, D: dict, labels) -> None:
    for key, meta in b.meta.items():
        d = D.setdefault(key, {})
        for label in labels:
            drop_caches()
            n, s = {"mef3io": lambda: _direct_scan(meta["path"]),
                    "mef3io_multi": lambda: _direct_scan(meta["path"], multi=True),
                    "mef_tools": lambda: _meftools_scan(meta["path"])}[label]()
            r = d.setdefault(label, {"rounds": []})
            r["rounds"].append(msps(n, s))
            r.update(samples=n, s=s, msps=float(np.median(r["rounds"])))
            log(f"    direct {label} {key} cold: {msps(n, s):.1f} Msamp/s")


def _mount_scan(b, m, M: dict, kind: str, paths_of, cpu: bool = False) -> None:
    """One cold scan of every recording on a fresh mount; records this round's figures."""
    s0 = m.stats()
    drop_caches()
    with Watchdog(600, m.kill, f"cold {kind} scan through the mount"):
        with TreeCpu(m.pid) as ts:
            for key, meta in b.meta.items():
                by, s = scan_files(paths_of(m.mnt, meta))
                s1 = m.stats()
                r = M.setdefault(f"{key}_{kind}", {"rounds": []})
                r["rounds"].append(msps(by / 4, s))
                r.update(bytes=by, s=s, msps=float(np.median(r["rounds"])), stats=stats_delta(s0, s1),
                         trace=explain.summarize(m.trace_lines()))
                s0 = s1
                log(f"    mount cold {kind} scan {key}: {msps(by / 4, s):.1f} Msamp/s")
        if cpu:
            M["cold_cpu"] = ts.result()


def run(b) -> None:
    R = b.R.setdefault("scan", {})
    D = R.setdefault("direct", {})
    M = R.setdefault("mount", {})
    _direct_round(b, D, ("mef_tools",))
    for k in range(_rounds(b)):
        last = k == _rounds(b) - 1
        _direct_round(b, D, ("mef3io",))
        with b.mount(b.seq_src, "scan") as m:
            m.wait_workers()
            M["read_ahead_kb"] = m.read_ahead_kb
            _mount_scan(b, m, M, "f32", b.f32_paths, cpu=last)
            if last:
                _rereads(b, m, M)
        _direct_round(b, D, ("mef3io_multi",))
        with b.mount(b.seq_src, "scan-npy") as m:
            m.wait_workers()
            _mount_scan(b, m, M, "npy", lambda mnt, meta: [b.npy_path(mnt, meta)])
    with b.mount(b.seq_src, "scan-memmap") as m:
        m.wait_workers()
        _memmap_scans(b, m, M)
    _server(b, R)


def _rereads(b, m, M: dict) -> None:
    with Watchdog(300, m.kill, "re-reads through the mount"):
        drop_caches()
        _each_recording(b, m, M, "tilecache", scan_files, "re-read from the tile cache")
        for key, meta in b.meta.items():
            by, s = scan_files(b.f32_paths(m.mnt, meta))
            M[f"{key}_pagecache"] = {"bytes": by, "s": s, "msps": msps(by / 4, s)}


def _memmap_scans(b, m, M: dict) -> None:
    """Cold, then (page cache dropped) from the tile cache: the memmap rows."""
    for phase in ("cold", "tilecache"):
        drop_caches()
        with Watchdog(600, m.kill, f"{phase} memmap read-through"):
            _each_recording(b, m, M, f"memmap_{phase}", memmap_scan, f"{phase} memmap read-through")


def _each_recording(b, m, M: dict, tag: str, read, what: str) -> None:
    """Every .f32 of each recording through `read`: M[<key>_<tag>] gets its figures,
    counters and trace."""
    s0 = m.stats()
    for key, meta in b.meta.items():
        by, s = read(b.f32_paths(m.mnt, meta))
        s1 = m.stats()
        M[f"{key}_{tag}"] = {"bytes": by, "s": s, "msps": msps(by / 4, s), "stats": stats_delta(s0, s1),
                             "trace": explain.summarize(m.trace_lines())}
        s0 = s1
        log(f"    mount {what} {key}: {msps(by / 4, s):.1f} Msamp/s")


def _server(b, R: dict) -> None:
    if b.server and not server.available():
        S = R.setdefault("server", {})
        with server.GrpcServer(b.work, b.logdir, 512 * MiB) as srv:
            drop_caches()
            with Watchdog(900, srv.kill, "mef3io-server scan"):
                for key, meta in b.meta.items():
                    n, s = _server_scan(srv, meta)
                    S[key] = {"samples": n, "s": s, "msps": msps(n, s)}
                for key, meta in b.meta.items():
                    n, s = _server_scan(srv, meta)
                    S[key + "_warm"] = {"samples": n, "s": s, "msps": msps(n, s)}
                    log(f"    server scan {key}: cold {S[key]['msps']:.1f}, warm {msps(n, s):.1f} Msamp/s")


def rows(b) -> list:
    R = b.R.get("scan", {})
    D, M, S = R.get("direct", {}), R.get("mount", {}), R.get("server", {})
    why_no_server = server.available() or ("skipped" if not b.server else "—")
    out = []

    def get(d, *path):
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return None
            d = d[p]
        return d

    for key in b.meta:
        for kind, label, direct_key in (("f32", "every .f32", "mef3io"), ("npy", "rates/*.npy", "mef3io_multi")):
            mm = get(M, f"{key}_{kind}", "msps")
            d3 = get(D, key, direct_key, "msps")
            dt = get(D, key, "mef_tools", "msps")
            pairs = [a / d for a, d in zip(get(M, f"{key}_{kind}", "rounds") or [],
                                           get(D, key, direct_key, "rounds") or []) if a and d]
            ratio = float(np.median(pairs)) if pairs else None
            each = f", pairs {', '.join(f'{x:.2f}x' for x in pairs)}" if len(pairs) > 1 else ""
            st = get(M, f"{key}_{kind}", "stats") or {}
            used = explain.readahead_used(st)
            ok = None if ratio is None else (ratio >= 1.0 and (used is None or used >= 0.9))
            name = f"Cold scan of {label}, {b.name(key)}"
            out.append({"workload": name + " (Msamp/s)",
                        "mount": f"{f1(mm)} (**{f1(ratio, 2)}x**{each}; read-ahead used "
                                 f"{'—' if used is None else f'{100 * used:.0f}%'})" if mm else "error",
                        "direct": f"{f1(d3)}" + (" (one multi-channel read)" if kind == "npy" else
                                                 f" (per channel; one multi-channel read: "
                                                 f"{f1(get(D, key, 'mef3io_multi', 'msps'))})"),
                        "mef_tools": f1(dt),
                        "server": f1(get(S, key, "msps")) if S else why_no_server,
                        "target": ">= 1.0x direct mef3io; >= 90% of read-ahead used", "met": ok})
            tr = get(M, f"{key}_{kind}", "trace")
            if tr:
                b.note(name, explain.sentence({**tr, "stats": explain.summarize([], st)["stats"]}))
    for key in b.meta:
        cold, warm = get(M, f"{key}_memmap_cold"), get(M, f"{key}_memmap_tilecache")
        d3 = get(D, key, "mef3io", "msps")
        name = f"Read-through of every .f32 with np.memmap, cold / from the tile cache, {b.name(key)}"
        out.append({"workload": name + " (Msamp/s)",
                    "mount": f"{f1(cold['msps'])} ({f1(cold['msps'] / d3, 2) if d3 else '—'}x) / "
                             f"{f1(warm['msps'])}" if cold and warm else "error",
                    "direct": f"{f1(d3)} (per channel, as the .f32 scan)", "mef_tools": "—", "server": "—",
                    "target": "(information: the scan targets are read()'s)", "met": None})
        for phase, w in (("cold", cold), ("from the tile cache", warm)):
            if w and w.get("trace"):
                b.note(f"{name}, {phase}", explain.sentence({**w["trace"],
                                                            "stats": explain.summarize([], w["stats"])["stats"]}))
    for key in b.meta:
        w = get(M, f"{key}_tilecache")
        pc = get(M, f"{key}_pagecache", "msps")
        name = f"Re-read from the tile cache (page cache dropped), {b.name(key)}"
        out.append({"workload": name, "mount": f"{f1(w['msps'])} Msamp/s, {w['bytes'] / w['s'] / 1e6:.0f} MB/s "
                                                f"(page cache warm: {f1(pc, 0)} Msamp/s)" if w else "error",
                    "direct": "—", "mef_tools": "—",
                    "server": f"{f1(get(S, key + '_warm', 'msps'))} (warm)" if S else why_no_server,
                    "target": ">= 250 Msamp/s", "met": None if not w else w["msps"] >= 250})
        if w and w.get("trace"):
            floor = b.R.get("floor", {}).get("msps")
            b.note(name, explain.sentence({**w["trace"], "stats": explain.summarize([], w["stats"])["stats"]})
                   + (f"; a FUSE file served from memory with no decoding reaches {floor:.0f} Msamp/s "
                      "on this machine (the floor row)" if floor else ""))
    return out
