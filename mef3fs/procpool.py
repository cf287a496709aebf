"""The decoder worker processes (`--workers N`): a pool whose lanes (pool.py) are
served by one daemon thread per worker.

Workers are plain subprocesses (`python -m mef3fs.worker`) talking over a
socket pair: no multiprocessing resource tracker or re-import of the
daemon's __main__, and close() reaps every one of them within a bounded
time, also while they are still starting. A worker that dies is replaced
and its job put back at the head of its lane (MAX_ATTEMPTS in all).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

from .decoders import DecodeError
from .pool import STOP_GRACE, Pool, Ticket

log = logging.getLogger("mef3fs.pool")


class _Proc:
    """One worker process and the daemon's end of its socket."""

    def __init__(self, decoder_name: str, password: str):
        from multiprocessing.connection import Connection
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # the worker imports this very package, wherever the daemon found it
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # The signal mask survives exec: the worker starts with SIGINT blocked
        # until it has chosen to ignore it.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mef3fs.worker", str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env, cwd="/")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            theirs.close()
        self.sock = ours
        self.conn = Connection(os.dup(ours.fileno()))
        self.send_lock = threading.Lock()
        self.warm: collections.deque = collections.deque()
        self.send({"decoder": decoder_name, "password": password})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, msg) -> None:
        with self.send_lock:
            self.conn.send(msg)

    def shut(self) -> None:
        """Wake everything blocked on this socket, here and in the worker (EOF)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def reap(self, deadline: float) -> None:
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for c in (self.conn, self.sock):
            try:
                c.close()
            except OSError:
                pass


class ProcessPool(Pool):
    """Worker processes, each with its own open readers: a decoder crash costs a worker, not the mount."""

    def __init__(self, decoder_name: str, password: str, workers: int, stats, here_decoder):
        super().__init__(workers, stats, here_decoder)
        self._ready = 0
        self._decoder_name = decoder_name
        self._password = password
        self._procs: list[_Proc | None] = [None] * workers

    def start(self) -> None:
        for i in range(self._n):
            with self._cond:
                if self._closed:
                    return
                self._procs[i] = _Proc(self._decoder_name, self._password)
            t = threading.Thread(target=self._serve, args=(i,), name=f"mef3fs-lane-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.alive()]

    def warm(self, path: str, identity: tuple) -> None:
        """Have every worker open a session now, before reads need it."""
        with self._cond:
            for p in self._procs:
                if p is not None:
                    p.warm.append((path, identity))
            self._cond.notify_all()

    def _extra_work(self, index: int):
        p = self._procs[index]
        if p is not None and p.warm:
            return ("open",) + p.warm.popleft()
        return None

    def _wait_ready(self, index: int) -> bool:
        """Until the worker can decode; False if it died first (it is replaced)."""
        while not self._closed:
            p = self._procs[index]
            try:
                if p.conn.recv()[0] == "ready":
                    with self._cond:
                        self._ready += 1
                        self._cond.notify()
                    return True
            except (EOFError, OSError, ValueError) as exc:
                if self._closed:
                    return False
                self._replace(index, exc)
        return False

    def _serve(self, index: int) -> None:
        if not self._wait_ready(index):
            return
        while True:
            t = self._take(index)
            if t is None:
                return
            p = self._procs[index]
            if isinstance(t, tuple):
                try:
                    p.send(t)
                except (OSError, ValueError):
                    pass                     # a dead worker is found on its next job
                continue
            t.worker = p
            try:
                p.send(("job", t.jid, t.job))
                reply = p.conn.recv()
                if reply[0] == "ok":
                    tiles = [DecodeError(x) if isinstance(x, str) else
                             np.frombuffer(p.conn.recv_bytes(), dtype=np.float32) for x in reply[4]]
            except (EOFError, OSError, ValueError) as exc:
                t.worker = None
                if self._closed:
                    self._done(t, error=DecodeError("unmounting"), busy=True)
                    return
                with self._cond:
                    self._ready -= 1
                self._replace(index, exc)
                self._retry(t)
                if not self._wait_ready(index):
                    return
                continue
            t.worker = None
            if reply[0] == "ok":
                t.t_start, t.t_done = max(t.t_start, reply[2]), reply[3]
                self._done(t, tiles=tiles, busy=True)
            elif reply[0] == "cancelled":
                self._done(t, cancelled=True, busy=True)
            else:
                self._done(t, error=DecodeError(reply[2]), busy=True)

    def _stop_running(self, t: Ticket) -> bool:
        p = t.worker
        if p is None:
            return False
        try:
            p.send(("cancel", t.jid))
        except (OSError, ValueError):
            return False
        return True

    def _replace(self, index: int, exc: BaseException) -> None:
        old = self._procs[index]
        old.shut()
        old.reap(time.monotonic() + 1.0)
        log.warning("decoder worker pid %s died (exit code %s, %s); starting a new one",
                    old.pid, old.proc.returncode, type(exc).__name__)
        self._stats.add("worker_restarts")
        with self._cond:
            if self._closed:
                return
            self._procs[index] = _Proc(self._decoder_name, self._password)

    def close(self) -> None:
        super().close()
        with self._cond:
            procs = [p for p in self._procs if p is not None]
        for p in procs:
            p.shut()                          # workers see EOF and leave; lanes wake up
        deadline = time.monotonic() + STOP_GRACE
        for p in procs:
            p.reap(deadline)                  # then SIGKILL: nothing outlives the daemon
        for t in self._threads:
            t.join(2.0)
