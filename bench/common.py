"""Shared helpers of the bench: page cache, processes and memory, bounded waits, the machine's load, numbers.

Every workload module (w_*.py) uses these; nothing here measures anything by itself.
"""
from __future__ import annotations

import contextlib
import os
import platform
import signal
import sys
import threading
import time

import numpy as np

MiB = 1024 * 1024

def now() -> float:
    return time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# page cache, processes, memory

_DROP_OK: bool | None = None


def drop_caches() -> bool:
    """Empty the kernel page cache (root only). False if it could not."""
    global _DROP_OK
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        _DROP_OK = True if _DROP_OK is None else _DROP_OK
        return True
    except OSError:
        _DROP_OK = False
        return False


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()     # fields from "state" (field 3) on


def ppid_map() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat_fields(int(d))
            if f:
                out[int(d)] = int(f[1])
    return out


def descendants(root: int, pm: dict[int, int] | None = None) -> list[int]:
    pm = ppid_map() if pm is None else pm
    kids: dict[int, list[int]] = {}
    for p, pp in pm.items():
        kids.setdefault(pp, []).append(p)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in kids.get(p, ()):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] not in ("Z", "X")


def proc_status_kb(pid: int, keys=("VmRSS", "VmHWM")) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def proc_pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_s(pid: int) -> float:
    f = _stat_fields(pid)
    if not f:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


class TreeCpu:
    """CPU-s of a process and its descendants over a block, read at its start and end
    only. A TreeSampler sampling /proc every 0.1 s while a cold scan ran (PSS walks
    the daemon's page tables) used 0.35 CPU-s of its 5 s, and the scan took 2-17%
    longer (two pairs of runs here): the scan rows measured the sampler too."""

    def __init__(self, root: int):
        self.root = root
        self.cpu_s_root = self.cpu_s_children = 0.0

    def _read(self) -> dict:
        return {p: proc_cpu_s(p) for p in [self.root] + descendants(self.root)}

    def __enter__(self):
        self._c0 = self._read()
        return self

    def __exit__(self, *exc):
        c1 = self._read()
        used = {p: c - self._c0.get(p, 0.0) for p, c in c1.items()}
        self.cpu_s_root = round(used.pop(self.root, 0.0), 2)
        self.cpu_s_children = round(sum(used.values()), 2)

    def result(self) -> dict:
        return {"cpu_s_root": self.cpu_s_root, "cpu_s_children": self.cpu_s_children}


class TreeSampler:
    """Samples memory and CPU of a process and all its descendants every `interval` s.

    peak_rss: the largest sum of VmRSS seen in one sample (what the brief calls
    "sum of VmRSS"); hwm: the sum of each process's own VmHWM (kernel-tracked peak,
    an upper bound of the simultaneous peak); peak_pss: the same for PSS (shared
    pages counted once, the fairest sum).
    """

    def __init__(self, root: int, interval: float = 0.1):
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = 0
        self.hwm: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.cpu0: dict[int, float] = {}
        self.nproc = 0
        self.peak_each: dict[int, int] = {}
        self.base_each: dict[int, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self, first=False):
        pids = [self.root] + descendants(self.root)
        pids = [p for p in pids if alive(p)]
        rss = 0
        pss = 0
        for p in pids:
            st = proc_status_kb(p)
            rss += st.get("VmRSS", 0)
            self.peak_each[p] = max(self.peak_each.get(p, 0), st.get("VmRSS", 0))
            if first:
                self.base_each[p] = st.get("VmRSS", 0)
            self.hwm[p] = max(self.hwm.get(p, 0), st.get("VmHWM", 0))
            pss += proc_pss_kb(p)
            c = proc_cpu_s(p)
            if first or p not in self.cpu0:
                self.cpu0.setdefault(p, c if first else 0.0)
            self.cpu[p] = c
        self.nproc = max(self.nproc, len(pids))
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample(first=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)
        with contextlib.suppress(Exception):
            self._sample()

    def result(self) -> dict:
        cpu = {p: round(self.cpu[p] - self.cpu0.get(p, 0.0), 2) for p in self.cpu}
        def role(p):
            if p == self.root:
                return "main"
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    c = f.read()
            except OSError:
                c = b""
            return "resource_tracker" if b"resource_tracker" in c else "worker"
        each = {}
        for p, v in self.peak_each.items():
            r = role(p)
            each.setdefault(r, []).append(round(v / 1024))
        return {"baseline_rss_mb": round(sum(self.base_each.values()) / 1024),
                "peak_rss_each_mb": each,
                "peak_rss_mb": self.peak_rss / 1024, "sum_hwm_mb": sum(self.hwm.values()) / 1024,
                "peak_pss_mb": self.peak_pss / 1024, "processes": self.nproc,
                "cpu_s_root": cpu.get(self.root, 0.0),
                "cpu_s_children": round(sum(v for p, v in cpu.items() if p != self.root), 2)}


def kill_tree(root: int, sig=signal.SIGKILL) -> None:
    """Signal `root` and its descendants, by pid (only processes this bench started)."""
    for p in [root] + descendants(root):
        with contextlib.suppress(OSError):
            os.kill(p, sig)


class Watchdog:
    """Bounded waits: after `seconds`, call `on_expire` (which kills what hangs)."""

    def __init__(self, seconds: float, on_expire, what: str):
        self.fired = False
        self.what = what

        def fire():
            self.fired = True
            log(f"TIMEOUT after {seconds:.0f} s: {what}; killing it")
            with contextlib.suppress(Exception):
                on_expire()
        self._t = threading.Timer(seconds, fire)
        self._t.daemon = True

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._t.cancel()


class ForeignCpu:
    """CPU time used by processes this bench did not start (the machine's other load).

    Every 0.5 s: the CPU time of every process that is neither this bench, nor
    one of its descendants, nor a registered root (a mount daemon, which
    daemonizing reparents away from us) or its descendants; kernel threads are
    left out (they do our I/O). `mark(name)` / `since(name)` give a phase's share.
    """

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.roots: set[int] = set()
        self.total = 0.0
        self._last: dict[int, float] = {}
        self._marks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._sample(prime=True)
        self._t.start()

    def _sample(self, prime=False):
        pm = ppid_map()
        ours = {os.getpid(), *descendants(os.getpid(), pm)}
        for r in list(self.roots):
            if r in pm:
                ours |= {r, *descendants(r, pm)}
        kthreads = {2, *descendants(2, pm)}
        cur = {}
        add = 0.0
        for p in pm:
            if p in ours or p in kthreads:
                continue
            c = proc_cpu_s(p)
            cur[p] = c
            if not prime:
                add += c - self._last.get(p, c if p in self._seen else 0.0)
        with self._lock:
            self._seen = set(pm)
            self._last = cur
            self.total += max(0.0, add)

    _seen: set = set()

    def _run(self):
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self._sample()

    def mark(self, name: str) -> None:
        with self._lock:
            self._marks[name] = self.total

    def since(self, name: str) -> float:
        with self._lock:
            return self.total - self._marks.get(name, self.total)

    def wait_quiet(self, max_wait: float, busy_frac: float = 0.1) -> float:
        """Wait (bounded) until others use < busy_frac of a core over 2 s; returns their last share."""
        t = now()
        while True:
            a = self.total
            time.sleep(2.0)
            share = (self.total - a) / 2.0
            if share < busy_frac or now() - t > max_wait:
                return share

    def stop(self):
        self._stop.set()


FOREIGN: ForeignCpu | None = None


def register_root(pid: int | None) -> None:
    if FOREIGN is not None and pid:
        FOREIGN.roots.add(pid)


# --------------------------------------------------------------------------
# the mount


def pcts(ms: list[float]) -> dict:
    if not ms:
        return {}
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "min": float(a.min()), "max": float(a.max()), "n": len(ms)}


def msps(samples: float, secs: float) -> float:
    return samples / secs / 1e6 if secs > 0 else float("nan")


def f1(x, nd=1) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.{nd}f}"


def met(ok) -> str:
    return "—" if ok is None else ("**met**" if ok else "**NOT met**")


def _pkg_version(name: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, mef3io {_pkg_version('mef3io')}, "
            f"mef_tools {_pkg_version('mef-tools')}, mfusepy {_pkg_version('mfusepy')}")


def scan_files(paths: list, bufsize: int = 8 * MiB) -> tuple:
    """Read every file start to end with big readinto() calls (as np.fromfile or cat
    would); -> (bytes, seconds)."""
    buf = bytearray(bufsize)
    mv = memoryview(buf)
    total = 0
    t = now()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while True:
                n = f.readinto(mv)
                if not n:
                    break
                total += n
    return total, now() - t


def memmap_scan(paths: list) -> tuple:
    """Read every file start to end through np.memmap (np.sum over it: a page fault a
    page, as a script that maps a channel and computes over it); -> (bytes, seconds)."""
    total = 0
    t = now()
    for p in paths:
        mm = np.memmap(p, dtype="<f4", mode="r")
        np.sum(mm, dtype=np.float64)
        total += mm.nbytes
        mm._mmap.close()
    return total, now() - t


def session_meta(path: str) -> dict:
    """Channels and grid of a session, as mef3io sees them."""
    import mef3io
    r = mef3io.Reader(path)
    chs = list(r.channels)
    infos = [r.info(c) for c in chs]
    t0 = min(i["start_time"] for i in infos)
    t1 = max(i["end_time"] for i in infos)
    fs = infos[0]["sampling_frequency"]
    blocks = [b["start_uutc"] for b in r.toc(chs[0])]
    r.close()
    return {"channels": chs, "t0": t0, "t1": t1, "fs": fs, "block_starts": blocks,
            "n": int(round((t1 - t0) * fs / 1e6)), "path": path}


def blocks_touched(meta: dict, ta: float, tb: float) -> int:
    """MEF blocks of one channel that uUTC [ta, tb) overlaps: what a direct read decodes."""
    starts = np.asarray(meta["block_starts"], dtype=np.float64)
    ends = np.append(starts[1:], meta["t1"])
    return int(np.count_nonzero((starts < tb) & (ends > ta)))


def mm_open(paths: list) -> list:
    return [np.memmap(p, dtype="<f4", mode="r") for p in paths]


def mm_close(mms: list) -> None:
    for m in mms:
        mm = getattr(m, "_mmap", None)
        if mm is not None:
            with contextlib.suppress(Exception):
                mm.close()
    mms.clear()


def mm_window(mms: list, i0: int, n: int) -> np.ndarray:
    out = np.empty((len(mms), n), dtype=np.float32)
    for k, m in enumerate(mms):
        out[k] = m[i0:i0 + n]
    return out


def stats_delta(before: dict, after: dict) -> dict:
    """Counters of .mef3fs-stats.json that changed (gauges as they are after)."""
    out = {}
    for k, v in after.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            b = before.get(k, 0) if isinstance(before.get(k, 0), (int, float)) else 0
            if k in ("cache_bytes", "cache_tiles", "cache_budget", "sessions_open", "tiles_in_flight",
                     "readahead_bytes", "jobs_pending"):
                out[k] = v
            elif v - b:
                out[k] = v - b
    return out


def warm_session(session_dir: str) -> None:
    """Have the mount open a session in its decoder workers before anything is timed
    (direct mef3io's Reader is opened before its timed reads too): gaps.json is made
    from the block indexes, whose first load opens the session in the workers. No
    sample is read, so read-ahead learns nothing from it."""
    with open(os.path.join(session_dir, "gaps.json"), "rb") as f:
        f.read()
