"""Why a row of the table is what it is: the mount's trace (`--trace`) and counters of a phase, in a sentence.

A phase's trace lines (one per FUSE read, plus read-ahead events) say how many
reads reached the daemon, how long they took there, how much of that was
waiting for decodes (and whether the job waited for sat queued, decoded, or
travelled back), and how each tile was served. The counters say what
happened to every tile (decoded, used, pushed into the page cache, read
ahead and dropped unused).
"""
from __future__ import annotations

from collections import Counter

import numpy as np


def summarize(lines: list, stats: dict | None = None) -> dict:
    reads = [r for r in lines if "event" not in r and r.get("path", "").endswith((".f32", ".npy"))]
    events = [r for r in lines if "event" in r]
    out = {"reads": len(reads), "events": len(events)}
    if reads:
        ms = np.array([r["ms"] for r in reads])
        out.update({
            "bytes": int(sum(max(0, r["returned"]) for r in reads)),
            "read_ms_total": float(ms.sum()), "read_ms_p50": float(np.median(ms)),
            "read_ms_p95": float(np.percentile(ms, 95)),
            "wait_ms": float(sum(r["wait_ms"] for r in reads)),
            "queued_ms": float(sum(r["queued_ms"] for r in reads)),
            "decode_ms": float(sum(r["decode_ms"] for r in reads)),
            "ipc_ms": float(sum(r["ipc_ms"] for r in reads)),
            "copy_ms": float(sum(r["copy_ms"] for r in reads)),
            "waiting_reads": sum(1 for r in reads if r["wait_ms"] > 0),
            "tiles": dict(Counter(t[4] for r in reads for t in r["tiles"])),
            "sizes": dict(Counter(r["size"] for r in reads).most_common(3)),
        })
    out["windows"] = dict(Counter(e.get("lane") for e in events if e.get("event") == "window"))
    if stats:
        out["stats"] = {k: stats.get(k, 0) for k in (
            "tiles_decoded", "tiles_used", "tiles_pushed", "readahead_scheduled", "readahead_hits",
            "readahead_unused", "readahead_cancelled", "misses", "jobs", "decodes_inprocess")}
    return out


def readahead_used(stats: dict) -> float | None:
    """Share of the tiles read ahead (and not cancelled) that a reader used."""
    done = stats.get("readahead_scheduled", 0) - stats.get("readahead_cancelled", 0)
    return stats.get("readahead_hits", 0) / done if done > 0 else None


def sentence(s: dict) -> str:
    """The summary as one line for the notes under the table."""
    parts = []
    n = s.get("reads", 0)
    if n:
        wait = s["wait_ms"]
        parts.append(f"{n} FUSE reads reached the daemon (p50 {s['read_ms_p50']:.2f} ms, "
                     f"p95 {s['read_ms_p95']:.1f} ms, {s['read_ms_total']:.0f} ms in all)")
        if wait > 0:
            stages = s["queued_ms"] + s["decode_ms"] + s["ipc_ms"]
            share = (lambda x: f"{100 * x / stages:.0f}%") if stages else (lambda x: "-")
            parts.append(f"{s['waiting_reads']} of them waited for decodes, {wait:.0f} ms in all "
                         f"(jobs waited for: queued {share(s['queued_ms'])}, decoding "
                         f"{share(s['decode_ms'])}, coming back {share(s['ipc_ms'])})")
        parts.append(f"copying {s['copy_ms']:.0f} ms")
        tiles = s.get("tiles", {})
        if tiles:
            parts.append("tiles served: " + ", ".join(f"{v} {k}" for k, v in sorted(tiles.items())))
    else:
        parts.append("no FUSE read reached the daemon")
    win = s.get("windows") or {}
    if win:
        parts.append("window read-ahead: " + ", ".join(f"{v} {k}" for k, v in sorted(win.items())))
    st = s.get("stats")
    if st:
        used = st["tiles_used"]
        ratio = f" ({st['tiles_decoded'] / used:.2f} per tile used)" if used else ""
        parts.append(f"tiles decoded {st['tiles_decoded']}{ratio}, used {used} "
                     f"({st['tiles_pushed']} of them pushed into the page cache)")
        ra = readahead_used(st)
        if ra is not None:
            parts.append(f"read ahead {st['readahead_scheduled'] - st['readahead_cancelled']}, used "
                         f"{100 * ra:.0f}% ({st['readahead_unused']} evicted unused)")
    return "; ".join(parts)
