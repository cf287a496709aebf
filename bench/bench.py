#!/usr/bin/env python3
"""mef3fs benchmark: the mount against direct decoding, on the same data, in one run.

    .venv/bin/python bench/bench.py [--quick] [--out DIR] [--cache DIR]

Builds (or reuses) the recordings of bench/make_data.py, then measures, in this
order, and prints ONE markdown table (plus a tile-size sweep and the mount's
counters per phase):

  direct    mef3io.Reader.read (n_threads=0) per channel and as one multi-channel
            call; mef_tools MefReader.get_data per channel; the same 10 s windows
  mount     `python -m mef3fs` (daemon mode) on the recordings: cold sequential
            scan of every .f32 file (page cache dropped, fresh mount), warm re-read,
            random 10 s windows through np.memmap (cold: a fresh mount and dropped
            page cache per round; warm: the same windows again), peak RSS of the
            daemon and its workers while scanning several times the cache budget,
            mount-ready time and `ls -lR` over 100 sessions x 64 channels
  sweep     --tile-seconds 1/5/10/30/60: cold scan and cold windows
  server    mef3io-server (gRPC, started on 127.0.0.1) on the same workloads

"Cold" means: `sync; echo 3 > /proc/sys/vm/drop_caches` (needs root; the table
says when it could not be done) right before the timed part, and for the mount
a new mount, so its tile cache is empty. Every bounded wait kills what it
started if it expires; every mount is unmounted in `finally`.

Raw numbers, the counters of `.mef3fs-stats.json` per phase and the daemon logs
go to --out (default <cache>/out).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import make_data  # noqa: E402

MiB = 1024 * 1024
WIN_S = 10                      # random window length, seconds
FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount"


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

class MountError(RuntimeError):
    pass


class Mount:
    """One `python -m mef3fs` daemon; a context manager that always unmounts."""

    counter = 0

    def __init__(self, source: str, work: str, logdir: str, tag: str, opts: list[str]):
        Mount.counter += 1
        self.source = source
        self.mnt = os.path.join(work, f"mnt-{os.getpid()}-{Mount.counter}")
        self.logfile = os.path.join(logdir, f"mef3fs-{Mount.counter:02d}-{tag}.log")
        # "ra_kb=N" among the options is the bench's, not mef3fs's: after mounting,
        # set the mount's kernel readahead (/sys/class/bdi/<dev>/read_ahead_kb) to N
        # "env:NAME=VALUE" sets an environment variable of the daemon (e.g.
        # env:MALLOC_ARENA_MAX=2)
        self.ra_kb = None
        self.env: dict[str, str] = {}
        self.opts = []
        for o in opts:
            if o.startswith("ra_kb="):
                self.ra_kb = int(o.split("=", 1)[1])
            elif o.startswith("env:"):
                k, _, v = o[4:].partition("=")
                self.env[k] = v
            else:
                self.opts.append(o)
        self.read_ahead_kb = None
        self.pid: int | None = None
        self.ready_s: float | None = None
        self.known_pids: set[int] = set()

    def cmd(self) -> list[str]:
        return [sys.executable, "-m", "mef3fs", *self.opts, "--log-file", self.logfile,
                self.source, self.mnt]

    def start(self) -> "Mount":
        os.makedirs(self.mnt, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(self.env)
        # The command's output goes to a file, not a pipe: a daemon (or a worker)
        # that kept an inherited pipe open would make a pipe reader wait forever.
        outpath = self.logfile + ".cmd"
        with open(outpath, "w") as out:
            t = now()
            p = subprocess.Popen(self.cmd(), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT)
            try:
                rc = p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self._find_daemon()
                kill_tree(p.pid)
                p.wait(10)
                self.stop()
                raise MountError("mef3fs did not return within 120 s") from None
            self.ready_s = now() - t
        if rc != 0 or not os.path.ismount(self.mnt):
            with open(outpath) as f:
                err = (f.read().strip().splitlines() or ["(no output)"])[-1]
            self._find_daemon()
            self.stop()
            raise MountError(f"mount failed (exit {rc}): {err}")
        self._find_daemon()
        self._read_ra()
        return self

    def _read_ra(self) -> None:
        bdi = self._bdi()
        if bdi:
            with contextlib.suppress(OSError, ValueError):
                self.read_ahead_kb = int(open(bdi).read())

    def apply_ra(self) -> None:
        """Set read_ahead_kb (ra_kb=N). The daemon sets its own value from a thread
        after it reports ready, so: wait for that first, then write and check."""
        bdi = self._bdi()
        if not bdi or self.ra_kb is None:
            self._read_ra()
            return
        time.sleep(0.3)
        for _ in range(20):
            with open(bdi, "w") as f:
                f.write(str(self.ra_kb))
            time.sleep(0.1)
            if int(open(bdi).read()) == self.ra_kb:
                break
        self._read_ra()

    def _bdi(self) -> str | None:
        st = os.stat(self.mnt)
        p = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        return p if os.path.exists(p) else None

    def _find_daemon(self) -> None:
        """The daemon is the process whose command line has our mountpoint."""
        cands = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if self.mnt.encode() in argv and any(b"mef3fs" in a for a in argv):
                cands.append(int(d))
        pm = ppid_map()
        roots = [c for c in cands if pm.get(c) not in cands]
        if roots:
            self.pid = roots[0]
            self.known_pids = {self.pid, *descendants(self.pid, pm)}
            register_root(self.pid)

    def stats(self) -> dict:
        with open(os.path.join(self.mnt, ".mef3fs-stats.json")) as f:
            return json.load(f)

    def wait_workers(self, timeout: float = 20.0) -> None:
        """Until the stats show decoder workers (they start in init), bounded."""
        t = now()
        while now() - t < timeout:
            with contextlib.suppress(Exception):
                if self.stats().get("worker_pids"):
                    break
            time.sleep(0.05)
        if self.pid:
            self.known_pids |= set(descendants(self.pid))
        self.apply_ra()

    def kill(self) -> None:
        if self.pid:
            kill_tree(self.pid)

    def stop(self) -> None:
        if self.pid:
            self.known_pids |= set(descendants(self.pid))
        if os.path.ismount(self.mnt):
            r = subprocess.run([FUSERMOUNT, "-u", self.mnt], capture_output=True, text=True,
                               timeout=30)
            if r.returncode != 0:
                log(f"fusermount -u {self.mnt}: {r.stderr.strip()}; killing daemon, lazy unmount")
                self.kill()
                subprocess.run([FUSERMOUNT, "-u", "-z", self.mnt], capture_output=True, timeout=30)
        # bounded wait for the daemon and its workers to end
        t = now()
        while now() - t < 20 and any(alive(p) for p in self.known_pids):
            time.sleep(0.05)
        left = [p for p in self.known_pids if alive(p)]
        if left:
            log(f"processes left after unmount: {left}; killing them")
            for p in left:
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
        self.leftover = left
        with contextlib.suppress(OSError):
            os.rmdir(self.mnt)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def stats_delta(before: dict, after: dict) -> dict:
    out = {}
    for k, v in after.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            b = before.get(k, 0) if isinstance(before.get(k, 0), (int, float)) else 0
            if k in ("cache_bytes", "cache_tiles", "cache_budget", "sessions_open"):
                out[k] = v
            elif v - b:
                out[k] = v - b
    return out


# --------------------------------------------------------------------------
# workloads

def scan_files(paths: list[str], bufsize: int = 8 * MiB) -> tuple[int, float]:
    """Read every file start to end with big readinto() calls; (bytes, seconds)."""
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


def session_meta(path: str) -> dict:
    import mef3io
    r = mef3io.Reader(path)
    chs = list(r.channels)
    infos = [r.info(c) for c in chs]
    t0 = min(i["start_time"] for i in infos)
    t1 = max(i["end_time"] for i in infos)
    fs = infos[0]["sampling_frequency"]
    r.close()
    return {"channels": chs, "t0": t0, "t1": t1, "fs": fs,
            "n": int(round((t1 - t0) * fs / 1e6)), "path": path}


def direct_mef3io_scan(path: str, multi: bool = False) -> tuple[int, float]:
    import mef3io
    t = now()
    r = mef3io.Reader(path, n_threads=0)
    chs = list(r.channels)
    n = 0
    if multi:
        n = r.read(chs, dtype="float32").size
    else:
        for c in chs:
            n += r.read(c, dtype="float32").size
    r.close()
    return n, now() - t


def direct_meftools_scan(path: str) -> tuple[int, float]:
    import warnings
    from mef_tools.io import MefReader
    t = now()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MefReader(path)
        n = 0
        for c in m.channels:
            n += np.size(m.get_data(c))
    return n, now() - t


def make_windows(meta: dict, rounds: int, per_round: int, seed: int) -> list[list[int]]:
    """rounds x per_round window starts (whole seconds), spread over the recording.

    Within a round, windows sit in separate slots of the recording, so one
    window's tiles, kernel read-around and read-ahead do not warm the next.
    """
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


def mm_open(paths: list[str]) -> list[np.memmap]:
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


def direct_window(reader, meta: dict, start_s: int) -> np.ndarray:
    ta = meta["t0"] + start_s * 1_000_000
    return reader.read(meta["channels"], ta, ta + WIN_S * 1_000_000, dtype="float32")


def pcts(ms: list[float]) -> dict:
    if not ms:
        return {}
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "min": float(a.min()), "max": float(a.max()), "n": len(ms)}


# --------------------------------------------------------------------------
# mef3io-server

SERVER_LAUNCHER = r"""
import json, logging, os, signal, sys, threading
cfg = json.loads(sys.argv[1])
import mef3io_server.server.log_manager as lm
_setup = lm.setup_logging
lm.setup_logging = lambda d, lvl: _setup(cfg["logdir"], logging.WARNING)
import mef3io_server.server.file_manager as fm
# /.dockerenv exists on this machine although it is not the server's image:
# without this the server would look for every file under /host_root.
fm.is_running_in_docker = lambda: False
from concurrent import futures
import grpc
from mef3io_server.server.mef3_server import gRPCMef3Server
from mef3io_server.protobufs.gRPCMef3Server_pb2_grpc import add_gRPCMef3ServerServicer_to_server
manager = fm.FileManager(tile_cache_bytes=cfg["cache_bytes"], **cfg.get("fm", {}))
server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
add_gRPCMef3ServerServicer_to_server(gRPCMef3Server(manager), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
done = threading.Event()
def stop(*_):
    done.set()
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
with open(cfg["portfile"] + ".tmp", "w") as f:
    f.write(str(port))
os.rename(cfg["portfile"] + ".tmp", cfg["portfile"])
done.wait()
manager.shutdown()
server.stop(0.5)
"""


class GrpcServer:
    """mef3io-server on 127.0.0.1 (an ephemeral port), with its own log."""

    counter = 0

    def __init__(self, work: str, logdir: str, cache_bytes: int, fm_opts: dict | None = None):
        GrpcServer.counter += 1
        k = GrpcServer.counter
        self.cfg = {"cache_bytes": int(cache_bytes), "fm": fm_opts or {},
                    "logdir": logdir,
                    "portfile": os.path.join(work, f"grpc-{os.getpid()}-{k}.port")}
        self.logpath = os.path.join(logdir, f"mef3io-server-{k:02d}.out")
        self.proc = None
        self.client = None
        self.ready_s = None
        self.known: set[int] = set()

    def start(self) -> "GrpcServer":
        from mef3io_server.client import Mef3Client
        import grpc
        with contextlib.suppress(OSError):
            os.unlink(self.cfg["portfile"])
        t = now()
        self._out = open(self.logpath, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER_LAUNCHER, json.dumps(self.cfg)],
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=self.cfg["logdir"])
        while not os.path.exists(self.cfg["portfile"]):
            if self.proc.poll() is not None or now() - t > 60:
                self.stop()
                raise RuntimeError(f"mef3io-server did not start (see {self.logpath})")
            time.sleep(0.02)
        port = int(open(self.cfg["portfile"]).read())
        self.client = Mef3Client(f"127.0.0.1:{port}")
        grpc.channel_ready_future(self.client.channel).result(timeout=30)
        self.ready_s = now() - t
        return self

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.shutdown()
        if self.proc is not None:
            self.known |= set(descendants(self.proc.pid))
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    kill_tree(self.proc.pid)
                    self.proc.wait(10)
            t = now()
            while now() - t < 10 and any(alive(p) for p in self.known):
                time.sleep(0.05)
            for p in self.known:
                if alive(p):
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self._out.close()
        with contextlib.suppress(OSError):
            os.unlink(self.cfg["portfile"])

    def kill(self) -> None:
        if self.proc is not None:
            kill_tree(self.proc.pid)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def read(self, path, chs, ta, tb) -> np.ndarray:
        res = self.client.get_signal_range(path, chs, ta, tb)
        if res["array"] is None:
            raise RuntimeError(f"mef3io-server: {res['error_message']}")
        return res["array"]


def server_scan(srv: GrpcServer, meta: dict, step_s: int) -> tuple[int, float]:
    """All channels of a session, `step_s` windows start to end; (samples, s)."""
    t = now()
    srv.client.open_file(meta["path"])
    n = 0
    ta = meta["t0"]
    while ta < meta["t1"]:
        tb = min(meta["t1"], ta + step_s * 1_000_000)
        n += srv.read(meta["path"], meta["channels"], ta, tb).size
        ta = tb
    return n, now() - t


# --------------------------------------------------------------------------
# formatting

def msps(samples: float, secs: float) -> float:
    return samples / secs / 1e6 if secs > 0 else float("nan")


def f1(x, nd=1) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.{nd}f}"


def met(ok) -> str:
    return "—" if ok is None else ("**met**" if ok else "**NOT met**")


class Bench:
    def __init__(self, a):
        self.a = a
        self.quick = a.quick
        self.cache = a.cache
        self.out = a.out or os.path.join(a.cache, "out")
        self.logdir = os.path.join(self.out, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.work = os.path.join(a.cache, "work")
        os.makedirs(self.work, exist_ok=True)
        self.R: dict = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
                        "argv": sys.argv, "quick": self.quick, "errors": {}}
        self.base_opts: list[str] = list(a.mount_opt or [])
        if a.workers:
            self.base_opts += ["--workers", str(a.workers)]

    # helpers ---------------------------------------------------------------
    def phase(self, name: str, fn, *args, **kw):
        if name != "build data" and self.a.wait_quiet > 0:
            share = FOREIGN.wait_quiet(min(self.a.wait_quiet, 120))
            if share >= 0.1:
                log(f"other processes use {share:.2f} of a core; going on")
        log(f"--- {name}")
        t = now()
        FOREIGN.mark(name)
        try:
            res = fn(*args, **kw)
            return res
        except Exception as exc:  # noqa: BLE001 - one failed phase must not end the run
            msg = f"{type(exc).__name__}: {exc}"
            log(f"{name} FAILED: {msg}")
            self.R["errors"][name] = msg
            with open(os.path.join(self.logdir, "errors.txt"), "a") as f:
                f.write(f"== {name}\n{traceback.format_exc()}\n")
            return None
        finally:
            dt = now() - t
            other = FOREIGN.since(name)
            self.R.setdefault("phases", {})[name] = {"s": round(dt, 1), "other_cpu_s": round(other, 1),
                                                     "loadavg": os.getloadavg()[0]}
            log(f"    {name}: {dt:.1f} s (other processes used {other:.1f} CPU-s meanwhile)")

    def mount(self, source: str, tag: str, extra: list[str] | None = None) -> Mount:
        return Mount(source, self.work, self.logdir, tag, self.base_opts + (extra or []))

    def f32_paths(self, mnt: str, meta: dict) -> list[str]:
        d = os.path.join(mnt, os.path.basename(meta["path"]))
        return [os.path.join(d, c + ".f32") for c in meta["channels"]]

    # phases ----------------------------------------------------------------
    def build(self):
        self.seq_paths = make_data.build_seq(self.cache, self.quick, log=log)
        self.seq_src = os.path.dirname(next(iter(self.seq_paths.values())))
        self.many_src = make_data.build_many(self.cache, log=log)
        self.meta = {k: session_meta(p) for k, p in self.seq_paths.items()}
        self.A = self.meta["A_16ch_1kHz"]
        self.B = self.meta["B_4ch_32kHz"]
        self.R["data"] = {k: {"channels": len(m["channels"]), "fs": m["fs"], "samples_per_channel": m["n"],
                              "seconds": (m["t1"] - m["t0"]) / 1e6,
                              "mef_bytes": sum(os.path.getsize(f) for f in glob.glob(
                                  os.path.join(m["path"], "**", "*"), recursive=True) if os.path.isfile(f))}
                          for k, m in self.meta.items()}
        self.R["data"]["C_many"] = dict(make_data.MANY)
        per_round = 5 if not self.quick else 2
        rounds = 4 if not self.quick else 3
        self.winA = make_windows(self.A, rounds, per_round, seed=11)
        self.winB = make_windows(self.B, rounds, max(1, per_round // 2 if not self.quick else 1),
                                 seed=12)

    def direct(self):
        R = self.R.setdefault("direct", {})
        for key, meta in (("A", self.A), ("B", self.B)):
            d = R.setdefault(key, {})
            for label, fn in (("mef3io", lambda: direct_mef3io_scan(meta["path"])),
                              ("mef3io_multi", lambda: direct_mef3io_scan(meta["path"], multi=True)),
                              ("mef_tools", lambda: direct_meftools_scan(meta["path"]))):
                d["cold_dropped"] = drop_caches()
                n, s = fn()
                d[label + "_cold"] = {"samples": n, "s": s, "msps": msps(n, s)}
                log(f"    direct {label} {key} cold: {msps(n, s):.1f} Msamp/s ({s:.1f} s)")
            n, s = direct_mef3io_scan(meta["path"])
            d["mef3io_warm"] = {"samples": n, "s": s, "msps": msps(n, s)}
            log(f"    direct mef3io {key} warm (page cache): {msps(n, s):.1f} Msamp/s")
        # what a listing needs, done directly: open every session of C, info of every channel
        import mef3io
        sessions = sorted(glob.glob(os.path.join(self.many_src, "*", "*.mefd")))
        drop_caches()
        t = now()
        for p in sessions:
            r = mef3io.Reader(p)
            for c in r.channels:
                r.info(c)
            r.close()
        R["many_open_s"] = now() - t
        log(f"    direct mef3io: open + info of {len(sessions)} sessions, cold: {R['many_open_s']:.2f} s")

    def direct_windows(self):
        import mef3io
        R = self.R.setdefault("direct_windows", {})
        self.ref_windows = {}
        for key, meta, wins in (("A", self.A, self.winA), ("B", self.B, self.winB)):
            cold = []
            for rnd in wins:
                drop_caches()
                r = mef3io.Reader(meta["path"], n_threads=0)
                for s in rnd:
                    t = now()
                    x = direct_window(r, meta, s)
                    cold.append((now() - t) * 1e3)
                    self.ref_windows[(key, s)] = x
                r.close()
            r = mef3io.Reader(meta["path"], n_threads=0)
            flat = [s for rnd in wins for s in rnd]
            for s in flat:
                direct_window(r, meta, s)
            warm = []
            for s in flat:
                t = now()
                direct_window(r, meta, s)
                warm.append((now() - t) * 1e3)
            r.close()
            R[key] = {"cold_ms": pcts(cold), "warm_ms": pcts(warm)}
            log(f"    direct windows {key}: cold p50 {R[key]['cold_ms']['p50']:.1f} ms, "
                f"warm p50 {R[key]['warm_ms']['p50']:.1f} ms")

    def mount_scan(self):
        """Fresh mount, dropped page cache: cold scan of A then B; then warm re-read."""
        R = self.R.setdefault("mount_scan", {})
        with self.mount(self.seq_src, "scan") as m:
            R["ready_s"] = m.ready_s
            m.wait_workers()
            R["read_ahead_kb"] = m.read_ahead_kb
            pa, pb = self.f32_paths(m.mnt, self.A), self.f32_paths(m.mnt, self.B)
            sizes = {p: os.path.getsize(p) for p in pa + pb}
            bad = [p for p in pa if sizes[p] != 4 * self.A["n"]] + \
                  [p for p in pb if sizes[p] != 4 * self.B["n"]]
            if bad:
                R["size_mismatch"] = bad
            s0 = m.stats()
            R["cold_dropped"] = drop_caches()
            with Watchdog(600, m.kill, "cold scan through the mount"):
                with TreeSampler(m.pid) as ts:
                    for key, paths in (("A", pa), ("B", pb)):
                        b, s = scan_files(paths)
                        R[key + "_cold"] = {"bytes": b, "s": s, "msps": msps(b / 4, s)}
                        log(f"    mount cold scan {key}: {msps(b / 4, s):.1f} Msamp/s ({s:.1f} s)")
                        s1 = m.stats()
                        R[key + "_cold_stats"] = stats_delta(s0, s1)
                        s0 = s1
            R["cold_mem"] = ts.result()
            with Watchdog(300, m.kill, "warm re-read through the mount"):
                for key, paths in (("A", pa), ("B", pb)):
                    b, s = scan_files(paths)
                    R[key + "_warm"] = {"bytes": b, "s": s, "msps": msps(b / 4, s),
                                        "mbps": b / s / 1e6}
                    log(f"    mount warm re-read {key}: {msps(b / 4, s):.1f} Msamp/s")
                    s1 = m.stats()
                    R[key + "_warm_stats"] = stats_delta(s0, s1)
                    s0 = s1
                # warm, the kernel's part only: a second re-read of A
                b, s = scan_files(pa)
                R["A_warm2"] = {"bytes": b, "s": s, "msps": msps(b / 4, s), "mbps": b / s / 1e6}
                s1 = m.stats()
                R["A_warm2_stats"] = stats_delta(s0, s1)
        R["leftover_processes"] = m.leftover

    def _mount_windows(self, m: Mount, key: str, meta: dict, starts: list[int],
                       ref: bool = True) -> list[float]:
        paths = self.f32_paths(m.mnt, meta)
        n = int(WIN_S * meta["fs"])
        mms = mm_open(paths)
        out = []
        try:
            for s in starts:
                i0 = int(round(s * meta["fs"]))
                t = now()
                x = mm_window(mms, i0, n)
                out.append((now() - t) * 1e3)
                if ref and (key, s) in self.ref_windows:
                    if not np.array_equal(x, self.ref_windows[(key, s)], equal_nan=True):
                        self.R.setdefault("window_mismatch", []).append([key, s])
        finally:
            mm_close(mms)
        return out

    def mount_windows(self, tag="windows", extra=None, rounds=None, keys=("A", "B")):
        """Cold: per round a fresh mount + dropped caches; warm: same windows again."""
        res = {}
        wins = {"A": (self.A, self.winA), "B": (self.B, self.winB)}
        cold = {k: [] for k in keys}
        warm = {k: [] for k in keys}
        stats = {}
        rlist = range(len(self.winA)) if rounds is None else range(rounds)
        for ri in rlist:
            last = ri == rlist[-1]
            with self.mount(self.seq_src, tag, extra) as m:
                m.wait_workers()
                s0 = m.stats()
                with Watchdog(300, m.kill, "random windows through the mount"):
                    for k in keys:
                        meta, w = wins[k]
                        drop_caches()
                        cold[k] += self._mount_windows(m, k, meta, w[ri])
                    s1 = m.stats()
                    stats[f"round{ri}_cold"] = stats_delta(s0, s1)
                    if last and tag == "windows":
                        # warm: every window of every round, read once to fill, then timed
                        for k in keys:
                            meta, w = wins[k]
                            flat = [s for r in w for s in r]
                            self._mount_windows(m, k, meta, flat, ref=False)
                            s2 = m.stats()
                            warm[k] = self._mount_windows(m, k, meta, flat)
                            stats[f"warm_{k}"] = stats_delta(s2, m.stats())
        for k in keys:
            res[k] = {"cold_ms": pcts(cold[k]), "warm_ms": pcts(warm[k])}
        res["stats"] = stats
        return res

    def mount_rss(self):
        """A small --cache-size, then a cold scan of A and B: >= 4x the budget."""
        total = 4 * (self.A["n"] * len(self.A["channels"]) + self.B["n"] * len(self.B["channels"]))
        budget_mb = max(8, int(total / 4.5 / MiB))
        R = self.R.setdefault("mount_rss", {})
        R["budget_mb"] = budget_mb
        R["scanned_mb"] = total / MiB
        with self.mount(self.seq_src, "rss", ["--cache-size", f"{budget_mb}M"]) as m:
            m.wait_workers()
            s0 = m.stats()
            drop_caches()
            with Watchdog(600, m.kill, "RSS scan through the mount"):
                with TreeSampler(m.pid) as ts:
                    b = s = 0.0
                    for meta in (self.A, self.B):
                        bb, ss = scan_files(self.f32_paths(m.mnt, meta))
                        b += bb
                        s += ss
            R["scan"] = {"bytes": b, "s": s, "msps": msps(b / 4, s)}
            R["mem"] = ts.result()
            st = m.stats()
            R["stats"] = stats_delta(s0, st)
            R["cache_bytes_end"] = st.get("cache_bytes")
        log(f"    RSS: budget {budget_mb} MB, scanned {total / MiB:.0f} MB, "
            f"peak RSS sum {R['mem']['peak_rss_mb']:.0f} MB, PSS {R['mem']['peak_pss_mb']:.0f} MB")

    def mount_many(self):
        R = self.R.setdefault("mount_many", {})
        runs = []
        for i in range(3 if not self.quick else 2):
            drop_caches()
            with self.mount(self.many_src, "many") as m:
                with Watchdog(300, m.kill, "ls -lR over the mount"):
                    t = now()
                    p = subprocess.run(["ls", "-lR", m.mnt], capture_output=True, timeout=300)
                    cold = now() - t
                    t = now()
                    subprocess.run(["ls", "-lR", m.mnt], capture_output=True, timeout=300)
                    warm = now() - t
                nlines = p.stdout.count(b"\n")
                nf32 = p.stdout.count(b".f32\n")
                runs.append({"ready_s": m.ready_s, "ls_cold_s": cold, "ls_warm_s": warm,
                             "ls_rc": p.returncode, "ls_lines": nlines, "f32_files": nf32})
            log(f"    many: ready {m.ready_s:.2f} s, ls -lR cold {cold:.2f} s, warm {warm:.2f} s, "
                f"{nf32} .f32 files")
        R["runs"] = runs
        for k in ("ready_s", "ls_cold_s", "ls_warm_s"):
            R[k] = float(np.median([r[k] for r in runs]))

    def sweep(self):
        sizes = [1, 5, 10, 30, 60] if not self.quick else [1, 10, 30]
        R = self.R.setdefault("sweep", {})
        for ts in sizes:
            extra = ["--tile-seconds", str(ts)]
            d = R.setdefault(str(ts), {})
            w = self.mount_windows(tag=f"sweep{ts}", extra=extra, rounds=1 if self.quick else 2,
                                   keys=("A",))
            d["win_cold_ms"] = w["A"]["cold_ms"]
            d["win_stats"] = w["stats"]
            with self.mount(self.seq_src, f"sweep{ts}", extra) as m:
                m.wait_workers()
                s0 = m.stats()
                drop_caches()
                with Watchdog(600, m.kill, "sweep scan"):
                    b, s = scan_files(self.f32_paths(m.mnt, self.A))
                d["scan_A"] = {"bytes": b, "s": s, "msps": msps(b / 4, s)}
                d["scan_stats"] = stats_delta(s0, m.stats())
            log(f"    tile {ts} s: scan A {d['scan_A']['msps']:.1f} Msamp/s, cold window p50 "
                f"{d['win_cold_ms'].get('p50', float('nan')):.0f} ms")

    def variants(self):
        R = self.R.setdefault("variants", {})
        for spec in self.a.variant or []:
            name, _, opts = spec.partition("=")
            extra = opts.split()
            d = R.setdefault(name, {"opts": opts})
            w = self.mount_windows(tag=f"var-{name}", extra=extra, rounds=1 if self.quick else 2,
                                   keys=("A",))
            d["win_cold_ms"] = w["A"]["cold_ms"]
            d["win_stats"] = w["stats"]
            with self.mount(self.seq_src, f"var-{name}", extra) as m:
                m.wait_workers()
                d["read_ahead_kb"] = m.read_ahead_kb
                drop_caches()
                with Watchdog(600, m.kill, "variant scan"):
                    with TreeSampler(m.pid) as tsm:
                        b, s = scan_files(self.f32_paths(m.mnt, self.A) + self.f32_paths(m.mnt, self.B))
                d["scan_AB"] = {"bytes": b, "s": s, "msps": msps(b / 4, s)}
                d["mem"] = tsm.result()
                b, s = scan_files(self.f32_paths(m.mnt, self.A))
                d["warm_A"] = {"msps": msps(b / 4, s)}
            budget_mb = self.R.get("mount_rss", {}).get("budget_mb")
            if budget_mb:
                with self.mount(self.seq_src, f"var-{name}-rss", extra + ["--cache-size", f"{budget_mb}M"]) as m:
                    m.wait_workers()
                    drop_caches()
                    with Watchdog(600, m.kill, "variant RSS scan"):
                        with TreeSampler(m.pid) as tsm:
                            scan_files(self.f32_paths(m.mnt, self.A) + self.f32_paths(m.mnt, self.B))
                    d["rss_small"] = {"budget_mb": budget_mb, **tsm.result()}

    def server(self):
        R = self.R.setdefault("server", {})
        try:
            import mef3io_server  # noqa: F401
            import grpc  # noqa: F401
        except ImportError as exc:
            R["unavailable"] = f"mef3io-server not installed ({exc}); pip install '.[bench]'"
            return
        R["version"] = _pkg_version("mef3io-server")
        step = 60
        R["scan_step_s"] = step
        # sequential scan, cold then warm, default server settings
        with GrpcServer(self.work, self.logdir, 512 * MiB) as srv:
            R["ready_s"] = srv.ready_s
            drop_caches()
            with Watchdog(900, srv.kill, "mef3io-server scan"):
                with TreeSampler(srv.proc.pid) as ts:
                    for key, meta in (("A", self.A), ("B", self.B)):
                        n, s = server_scan(srv, meta, step)
                        R[key + "_cold"] = {"samples": n, "s": s, "msps": msps(n, s)}
                        log(f"    server cold scan {key}: {msps(n, s):.1f} Msamp/s")
                R["cold_mem"] = ts.result()
                for key, meta in (("A", self.A), ("B", self.B)):
                    n, s = server_scan(srv, meta, step)
                    R[key + "_warm"] = {"samples": n, "s": s, "msps": msps(n, s),
                                        "mbps": 4 * n / s / 1e6}
                    log(f"    server warm re-read {key}: {msps(n, s):.1f} Msamp/s")
        # random windows: fresh server and dropped cache per round; warm on the last
        wins = {"A": (self.A, self.winA), "B": (self.B, self.winB)}
        cold = {"A": [], "B": []}
        warm = {"A": [], "B": []}
        mismatch = 0
        for ri in range(len(self.winA)):
            with GrpcServer(self.work, self.logdir, 512 * MiB) as srv:
                with Watchdog(600, srv.kill, "mef3io-server windows"):
                    for k, (meta, w) in wins.items():
                        srv.client.open_file(meta["path"])
                    for k, (meta, w) in wins.items():
                        drop_caches()
                        for s in w[ri]:
                            ta = meta["t0"] + s * 1_000_000
                            t = now()
                            x = srv.read(meta["path"], meta["channels"], ta, ta + WIN_S * 1_000_000)
                            cold[k].append((now() - t) * 1e3)
                            ref = self.ref_windows.get((k, s))
                            if ref is not None and not np.array_equal(x, ref, equal_nan=True):
                                mismatch += 1
                    if ri == len(self.winA) - 1:
                        for k, (meta, w) in wins.items():
                            flat = [s for r in w for s in r]
                            for rep in range(2):
                                for s in flat:
                                    ta = meta["t0"] + s * 1_000_000
                                    t = now()
                                    srv.read(meta["path"], meta["channels"], ta, ta + WIN_S * 1_000_000)
                                    if rep:
                                        warm[k].append((now() - t) * 1e3)
        for k in cold:
            R["win_" + k] = {"cold_ms": pcts(cold[k]), "warm_ms": pcts(warm[k])}
        R["window_mismatch"] = mismatch
        # RSS with the same small budget as the mount
        budget_mb = self.R.get("mount_rss", {}).get("budget_mb") or 64
        with GrpcServer(self.work, self.logdir, budget_mb * MiB) as srv:
            drop_caches()
            with Watchdog(900, srv.kill, "mef3io-server RSS scan"):
                with TreeSampler(srv.proc.pid) as ts:
                    for meta in (self.A, self.B):
                        server_scan(srv, meta, step)
            R["rss"] = {"budget_mb": budget_mb, **ts.result()}
        # the closest thing to `ls -lR`: open + FileInfo of every session of C
        sessions = sorted(glob.glob(os.path.join(self.many_src, "*", "*.mefd")))
        drop_caches()
        with GrpcServer(self.work, self.logdir, 512 * MiB) as srv:
            R["many_ready_s"] = srv.ready_s
            with Watchdog(300, srv.kill, "mef3io-server open 100 sessions"):
                t = now()
                for p in sessions:
                    info = srv.client.open_file(p)
                    if not info["file_opened"]:
                        raise RuntimeError(f"open_file {p}: {info['error_message']}")
                    srv.client.get_file_info(p)
                R["open_info_many_s"] = now() - t
                R["open_info_many_n"] = len(sessions)

    # the table ---------------------------------------------------------------
    def table(self) -> str:
        R = self.R
        D = R.get("direct", {})
        MS = R.get("mount_scan", {})
        MW = R.get("mount_windows", {})
        DW = R.get("direct_windows", {})
        SV = R.get("server", {})
        err = R["errors"]
        rows = []
        nA = f"{len(self.A['channels'])} ch x {(self.A['t1'] - self.A['t0']) / 3.6e9:.2g} h x {self.A['fs'] / 1e3:g} kHz"
        nB = f"{len(self.B['channels'])} ch x {(self.B['t1'] - self.B['t0']) / 6e7:.2g} min x {self.B['fs'] / 1e3:g} kHz"

        def sv(path, fmt):
            cur = SV
            for p in path:
                if not isinstance(cur, dict) or p not in cur:
                    return SV.get("unavailable") or err.get("server") and "error (see errors)" or "—"
                cur = cur[p]
            return fmt(cur)

        def mval(d, *path):
            for p in path:
                if not isinstance(d, dict) or p not in d:
                    return None
                d = d[p]
            return d

        # cold scans
        for key, name in (("A", nA), ("B", nB)):
            mm = mval(MS, key + "_cold", "msps")
            d3 = mval(D, key, "mef3io_cold", "msps")
            d3m = mval(D, key, "mef3io_multi_cold", "msps")
            dt = mval(D, key, "mef_tools_cold", "msps")
            r3 = mm / d3 if mm and d3 else None
            rt = mm / dt if mm and dt else None
            ok = None if r3 is None or rt is None else (r3 >= 1.0 and rt >= 1.7)
            rows.append([f"Cold sequential scan, {name} (Msamp/s)",
                         f"{f1(mm)} (**{f1(r3, 2)}x** mef3io, **{f1(rt, 2)}x** mef_tools)" if mm else
                         f"error: {err.get('mount_scan', '—')}",
                         f"{f1(d3)} (one multi-channel call: {f1(d3m)})",
                         f1(dt),
                         sv((key + "_cold", "msps"), lambda v: f"{v:.1f} ({step_note(SV)})"),
                         ">= 1.0x mef3io and >= 1.7x mef_tools", met(ok)])
        # warm re-read
        for key, name in (("A", nA), ("B", nB)):
            w = mval(MS, key + "_warm")
            d3w = mval(D, key, "mef3io_warm", "msps")
            cell = f"{f1(w['msps'])} Msamp/s, {f1(w['mbps'], 0)} MB/s" if w else f"error: {err.get('mount_scan', '—')}"
            if key == "A" and mval(MS, "A_warm2"):
                cell += f" (again: {f1(MS['A_warm2']['msps'])} Msamp/s)"
            rows.append([f"Warm re-read, {name}",
                         cell, f"{f1(d3w)} Msamp/s (decode again, page cache warm)", "—",
                         sv((key + "_warm",), lambda v: f"{v['msps']:.1f} Msamp/s, {v['mbps']:.0f} MB/s"),
                         ">= 100 Msamp/s", met(None if not w else w["msps"] >= 100)])
        # random windows
        for key, label in (("A", f"{len(self.A['channels'])} ch, recording {nA}"),
                           ("B", f"{len(self.B['channels'])} ch, recording {nB}")):
            for phase in ("cold", "warm"):
                mw = mval(MW, key, phase + "_ms")
                dw = mval(DW, key, phase + "_ms")
                cell = f"p50 {f1(mw['p50'])} / p95 {f1(mw['p95'])} ms" if mw else \
                    f"error: {err.get('mount_windows', '—')}"
                ratio = mw["p50"] / dw["p50"] if mw and dw else None
                if phase == "cold" and ratio is not None:
                    cell += f" (**{ratio:.2f}x** mef3io)"
                if key == "A":
                    target = "p50 <= 1.5x direct mef3io" if phase == "cold" else "p50 <= 2 ms"
                    ok = None if not mw else (ratio <= 1.5 if phase == "cold" and ratio else
                                              mw["p50"] <= 2.0 if phase == "warm" else None)
                else:
                    target, ok = "(information)", None
                n = mw["n"] if mw else 0
                rows.append([f"Random {WIN_S} s windows x {label}, np.memmap, {phase} (n={n})",
                             cell,
                             f"p50 {f1(dw['p50'])} / p95 {f1(dw['p95'])} ms" if dw else "—",
                             "—",
                             sv(("win_" + key, phase + "_ms"),
                                lambda v: f"p50 {v['p50']:.1f} / p95 {v['p95']:.1f} ms" if v else "—"),
                             target, met(ok)])
        # RSS
        RS = R.get("mount_rss", {})
        if RS.get("mem"):
            b = RS["budget_mb"]
            mem = RS["mem"]
            each = mem.get("peak_rss_each_mb", {})
            parts = ", ".join(f"{k} {'+'.join(map(str, v))}" for k, v in each.items())
            cell = (f"{mem['peak_rss_mb']:.0f} MB (at mount, before reading: "
                    f"{mem.get('baseline_rss_mb', '?')} MB; peaks: {parts}; sum of VmHWM "
                    f"{mem['sum_hwm_mb']:.0f}, PSS {mem['peak_pss_mb']:.0f})")
            ok = mem["peak_rss_mb"] <= b + 200
        else:
            b = RS.get("budget_mb", "?")
            cell, ok = f"error: {err.get('mount_rss', '—')}", None
        rows.append([f"Peak RSS, daemon + workers, scanning {RS.get('scanned_mb', 0):.0f} MB "
                     f"with --cache-size {b}M", cell, "—", "—",
                     sv(("rss",), lambda v: f"{v['peak_rss_mb']:.0f} MB (TILE_CACHE_MB={v['budget_mb']}; "
                                            f"PSS {v['peak_pss_mb']:.0f})"),
                     f"<= budget + 200 MB = {b + 200 if isinstance(b, int) else '?'} MB", met(ok)])
        # many sessions
        MN = R.get("mount_many", {})
        c = R["data"]["C_many"]
        rows.append([f"Mount-ready time, {c['sessions']} sessions x {c['channels']} ch "
                     f"(command start to daemon-mode return)",
                     f"{f1(MN.get('ready_s'), 2)} s" if MN.get("ready_s") else f"error: {err.get('mount_many', '—')}",
                     "—", "—", sv(("many_ready_s",), lambda v: f"{v:.2f} s (server process up and answering)"),
                     "(information)", "—"])
        rows.append([f"`ls -lR` over the mount, {c['sessions']} sessions x {c['channels']} ch",
                     f"cold {f1(MN.get('ls_cold_s'), 2)} s, warm {f1(MN.get('ls_warm_s'), 2)} s "
                     f"({MN['runs'][0]['f32_files']} .f32 files)" if MN.get("runs") else "—",
                     f"{f1(D.get('many_open_s'), 2)} s (Reader + info() of every channel of every "
                     f"session, cold)" if D.get("many_open_s") else "—", "—", sv(("open_info_many_s",), lambda v: f"{v:.2f} s (OpenFile + FileInfo of every session; no listing)"),
                     "(information)", "—"])
        rows.append(["Mount-ready time, the two recordings above",
                     f"{f1(MS.get('ready_s'), 2)} s" if MS.get("ready_s") else "—", "—", "—",
                     sv(("ready_s",), lambda v: f"{v:.2f} s"), "(information)", "—"])

        head = ["Workload", "mef3fs mount", "direct mef3io (n_threads=0)", "direct mef_tools",
                "mef3io-server (gRPC)", "Target", "Met?"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
        out = "\n".join(lines)

        # the sweep
        SW = R.get("sweep", {})
        if SW:
            dA = mval(D, "A", "mef3io_cold", "msps")
            dwA = mval(DW, "A", "cold_ms", "p50")
            out += ("\n\nTile-size sweep (`--tile-seconds`), recording A, cold (fresh mount, "
                    "dropped page cache):\n\n| --tile-seconds | cold scan Msamp/s (x direct mef3io) | "
                    "cold 10 s window p50 / p95 ms (x direct mef3io p50) | tiles decoded in the scan "
                    "(fg / bg / in-process) |\n|---|---|---|---|\n")
            for ts, d in SW.items():
                sc = d.get("scan_A", {}).get("msps")
                wc = d.get("win_cold_ms", {})
                st = d.get("scan_stats", {})
                out += (f"| {ts} | {f1(sc)} ({f1(sc / dA if sc and dA else None, 2)}x) | "
                        f"{f1(wc.get('p50'))} / {f1(wc.get('p95'))} "
                        f"({f1(wc['p50'] / dwA if wc.get('p50') and dwA else None, 2)}x) | "
                        f"{st.get('decodes_foreground', 0)} / {st.get('decodes_background', 0)} / "
                        f"{st.get('decodes_inprocess', 0)} |\n")
        VR = R.get("variants", {})
        if VR:
            out += ("\nVariants (`--variant NAME=OPTS`), cold scan of A+B, cold windows of A:\n\n"
                    "| variant | options | kernel read_ahead_kb | cold scan Msamp/s | peak RSS MB (default budget) | peak RSS MB with the small budget | warm A Msamp/s | cold window p50 / p95 ms |\n"
                    "|---|---|---|---|---|---|---|---|\n")
            for name, d in VR.items():
                out += (f"| {name} | `{d.get('opts')}` | {d.get('read_ahead_kb')} | {f1(mval(d, 'scan_AB', 'msps'))} | "
                        f"{f1(mval(d, 'mem', 'peak_rss_mb'), 0)} | "
                        f"{f1(mval(d, 'rss_small', 'peak_rss_mb'), 0)} (--cache-size {mval(d, 'rss_small', 'budget_mb')}M) | "
                        f"{f1(mval(d, 'warm_A', 'msps'))} | "
                        f"{f1(mval(d, 'win_cold_ms', 'p50'))} / {f1(mval(d, 'win_cold_ms', 'p95'))} |\n")
        notes = []
        busy = {k: v for k, v in R.get("phases", {}).items()
                if v["other_cpu_s"] > max(1.0, 0.05 * v["s"])}
        if busy:
            notes.append("other processes were busy during: " + ", ".join(
                f"{k} ({v['other_cpu_s']:.1f} CPU-s in {v['s']:.0f} s)" for k, v in busy.items())
                + " — those rows are pessimistic")
        else:
            notes.append("no other process used noticeable CPU during any phase")
        if MS.get("read_ahead_kb"):
            notes.append(f"the mount's kernel readahead (/sys/class/bdi/<dev>/read_ahead_kb): "
                         f"{MS['read_ahead_kb']} KiB")
        if _DROP_OK is False:
            notes.append("the page cache could NOT be dropped (not root): 'cold' rows are page-cache warm")
        if R.get("window_mismatch"):
            notes.append(f"windows read through the mount that differ from mef3io: {R['window_mismatch']}")
        else:
            notes.append("every window read through the mount equals mef3io's read of it (NaN = NaN)")
        if SV.get("window_mismatch"):
            notes.append(f"mef3io-server windows that differ from mef3io: {SV['window_mismatch']}")
        if MS.get("size_mismatch"):
            notes.append(f"channel files whose size is not 4 x grid samples: {MS['size_mismatch']}")
        for k, v in R["errors"].items():
            notes.append(f"phase {k} failed: {v}")
        if notes:
            out += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
        return out

    def counters(self) -> str:
        """The mount's counters per phase, compact."""
        keys = ("hits", "misses", "single_flight_waits", "decodes_foreground", "decodes_background",
                "decodes_inprocess", "readahead_scheduled", "readahead_hits", "readahead_cancelled",
                "evictions", "expired", "worker_restarts", "task_retries", "cache_bytes")
        rows = []
        MS = self.R.get("mount_scan", {})
        for k in ("A_cold_stats", "B_cold_stats", "A_warm_stats", "B_warm_stats", "A_warm2_stats"):
            if k in MS:
                rows.append((k.replace("_stats", ""), MS[k]))
        RS = self.R.get("mount_rss", {})
        if "stats" in RS:
            rows.append(("rss scan A+B", RS["stats"]))
        MW = self.R.get("mount_windows", {}).get("stats", {})
        for k, v in MW.items():
            rows.append(("windows " + k, v))
        if not rows:
            return ""
        out = "| phase | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1) + "\n"
        for name, d in rows:
            out += f"| {name} | " + " | ".join(str(d.get(k, 0)) for k in keys) + " |\n"
        return out

    def run(self):
        global FOREIGN
        FOREIGN = ForeignCpu()
        share = FOREIGN.wait_quiet(self.a.wait_quiet)
        self.R["other_load_at_start"] = round(share, 2)
        if share >= 0.1:
            log(f"the machine is busy: other processes use {share:.2f} of a core; timings will suffer")
        t = now()
        self.phase("build data", self.build)
        if not hasattr(self, "A"):
            raise SystemExit("could not build the data")
        if not self.a.skip_direct:
            self.phase("direct decoders", self.direct)
        self.phase("direct windows", self.direct_windows)
        if not hasattr(self, "ref_windows"):
            self.ref_windows = {}
        if not self.a.skip_mount:
            self.phase("mount_scan", self.mount_scan)
            self.R["mount_windows"] = self.phase("mount_windows", self.mount_windows) or {}
            self.phase("mount_rss", self.mount_rss)
            self.phase("mount_many", self.mount_many)
            if not self.a.skip_sweep:
                self.phase("sweep", self.sweep)
            if self.a.variant:
                self.phase("variants", self.variants)
        if not self.a.skip_server:
            self.phase("server", self.server)
        self.R["total_s"] = now() - t
        self.R["machine"] = machine()
        tab = self.table()
        cnt = self.counters()
        head = (f"mef3fs bench, {'--quick' if self.quick else 'full'} run, "
                f"{self.R['started']}, {self.R['machine']}, total {self.R['total_s']:.0f} s\n")
        text = head + "\n" + tab + ("\nmef3fs counters per phase (deltas of .mef3fs-stats.json):\n\n" + cnt if cnt else "")
        with open(os.path.join(self.out, "table.md"), "w") as f:
            f.write(text)
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.R, f, indent=1, default=str)
        print(text)
        log(f"results: {self.out}/results.json, table: {self.out}/table.md, logs: {self.logdir}")


def step_note(SV: dict) -> str:
    return f"{SV.get('scan_step_s', 60)} s windows of all channels"


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


def main(argv=None):
    ap = argparse.ArgumentParser(description="mef3fs benchmark: the mount vs direct decoding")
    ap.add_argument("--quick", action="store_true", help="smaller data and fewer repeats (~3 min)")
    ap.add_argument("--out", help="where results.json, table.md and logs go (default <cache>/out)")
    ap.add_argument("--cache", default="/tmp/mef3fs-bench", help="where the recordings are built")
    ap.add_argument("--workers", type=int, help="pass --workers N to every mount")
    ap.add_argument("--mount-opt", action="append", metavar="ARG",
                    help="extra argument for every mount (repeat; e.g. --mount-opt=--readahead=32M)")
    ap.add_argument("--variant", action="append", metavar="NAME=OPTS",
                    help="also measure a mount with these options, e.g. 'shm=--tile-transport shm'; "
                         "the pseudo-option ra_kb=N sets the mount's kernel read_ahead_kb after mounting, "
                         "env:NAME=VALUE sets an environment variable of the daemon")
    ap.add_argument("--wait-quiet", type=float, default=60, metavar="S",
                    help="wait up to S seconds for other processes to go idle before the run, "
                         "and up to min(S, 120) before each phase (default 60; 0: never)")
    ap.add_argument("--skip-direct", action="store_true")
    ap.add_argument("--skip-mount", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-server", action="store_true")
    a = ap.parse_args(argv)
    Bench(a).run()


if __name__ == "__main__":
    main()
