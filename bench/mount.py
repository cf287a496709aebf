"""One `python -m mef3fs` daemon for the bench: mounted in daemon mode, always unmounted.

"ra_kb=N" among the options is the bench's own: after mounting, set the mount's
kernel readahead (/sys/class/bdi/<dev>/read_ahead_kb) to N; "env:NAME=VALUE"
sets an environment variable of the daemon.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from common import alive, descendants, kill_tree, log, now, ppid_map, register_root

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount"


class MountError(RuntimeError):
    pass


class Mount:
    """One `python -m mef3fs` daemon; a context manager that always unmounts."""

    counter = 0

    def __init__(self, source: str, work: str, logdir: str, tag: str, opts: list[str], trace: bool = True):
        Mount.counter += 1
        self.source = source
        self.mnt = os.path.join(work, f"mnt-{os.getpid()}-{Mount.counter}")
        self.logfile = os.path.join(logdir, f"mef3fs-{Mount.counter:02d}-{tag}.log")
        # --trace: one JSON line per FUSE read, read back per phase (explain.py)
        self.tracefile = os.path.join(logdir, f"trace-{Mount.counter:02d}-{tag}.jsonl") if trace else None
        self._trace_pos = 0
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
        trace = ["--trace", self.tracefile] if self.tracefile else []
        return [sys.executable, "-m", "mef3fs", *self.opts, *trace, "--log-file", self.logfile,
                self.source, self.mnt]

    def trace_lines(self) -> list[dict]:
        """The trace lines written since the last call (reads and read-ahead events)."""
        if not self.tracefile or not os.path.exists(self.tracefile):
            return []
        time.sleep(0.05)               # the daemon writes through a 64 KiB buffer: flushed at exit
        with open(self.tracefile, "rb") as f:
            f.seek(self._trace_pos)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self._trace_pos += cut
        out = []
        for line in data[:cut].splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

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
                st = self.stats()
                if st.get("workers_ready", 0) >= st.get("workers", 0):
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

