"""Where decodes run: worker processes (`--workers N`) or threads in the daemon (`--workers 0`).

Both take `Job`s in three lanes, most urgent first: FOREGROUND (a reader
waits), WINDOW (the rest of a window being read: wanted within
milliseconds), AHEAD (read-ahead). A waiting read never queues behind
read-ahead: a free worker always takes foreground work first, and when every
worker is busy one foreground job at a time is decoded in the caller's
thread (mef3io releases the GIL), since read-ahead may occupy every worker
(reserving one would halve a scan on a small machine). A queued job that a
reader comes to wait on is promoted to the foreground; a job nobody wants
is dropped from its lane, or stopped while it runs (mef3io's CancelToken).

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
from concurrent.futures import Future

import numpy as np

from .decoders import Cancelled, DecodeError, Job, read_job

log = logging.getLogger("mef3fs.pool")

FOREGROUND, WINDOW, AHEAD = 0, 1, 2
PENDING, RUNNING, DONE, CANCELLED = range(4)
MAX_ATTEMPTS = 3               # a job whose worker died is decoded again, this often
STOP_GRACE = 1.0               # seconds workers get to leave on their own at close


class Ticket:
    """A job in a pool: its future gives the job's tiles (list of arrays, channel-major)."""

    __slots__ = ("job", "prio", "state", "future", "attempts", "here", "token", "worker",
                 "t_submit", "t_start", "t_done", "t_landed", "jid", "stopping")

    def __init__(self, job: Job, prio: int, jid: int):
        self.job, self.prio, self.jid = job, prio, jid
        self.state = PENDING
        self.future: Future = Future()
        self.attempts = 0
        self.here = False           # the submitter decodes it in its own thread (run_here)
        self.token = None           # cancels it while it runs (thread pool)
        self.worker = None          # the process running it (process pool)
        self.stopping = False       # asked to stop while running: it may still deliver
        self.t_submit = time.monotonic()
        self.t_start = self.t_done = self.t_landed = 0.0


class _Pool:
    """Lanes and their bookkeeping, shared by both kinds of pool."""

    inprocess = False              # True: decodes run in the daemon (counted as decodes_inprocess)

    def __init__(self, n: int, stats, here_decoder):
        self._n = n
        self._stats = stats
        self._here_decoder = here_decoder       # for run_here
        self._cond = threading.Condition()
        self._lanes = (collections.deque(), collections.deque(), collections.deque())
        self._busy = 0
        self._ready = n                # workers that can decode now (processes: once they said so)
        self._closed = False
        self._jids = 0
        self._overflow = threading.BoundedSemaphore(1)
        self._threads: list[threading.Thread] = []

    # -- what the cache calls ------------------------------------------------

    def submit(self, job: Job, prio: int, here_ok: bool = False) -> Ticket:
        with self._cond:
            if self._closed:
                raise DecodeError("decoder pool is shut down")
            self._jids += 1
            t = Ticket(job, prio, self._jids)
            if (here_ok and prio == FOREGROUND and (self._busy >= self._ready or self._lanes[FOREGROUND])
                    and self._overflow.acquire(blocking=False)):
                t.here, t.state, t.t_start = True, RUNNING, t.t_submit
                return t
            self._lanes[prio].append(t)
            self._cond.notify()
        return t

    def run_here(self, t: Ticket) -> None:
        """Decode a ticket submitted with here=True in the calling thread."""
        try:
            t.token = getattr(self._here_decoder, "new_token", lambda: None)()
            tiles = read_job(self._here_decoder, t.job, t.token)
        except Cancelled:
            self._done(t, cancelled=True)
        except DecodeError as exc:
            self._done(t, error=exc)
        except Exception as exc:       # never leave waiters hanging
            self._done(t, error=DecodeError(f"{type(exc).__name__}: {exc}"))
        else:
            t.t_done = time.monotonic()
            self._done(t, tiles=tiles)
        finally:
            self._overflow.release()

    def idle(self) -> bool:
        with self._cond:
            return self._busy < self._ready and not self._lanes[FOREGROUND]

    @property
    def ready(self) -> int:
        return self._ready

    def promote(self, t: Ticket) -> None:
        """A reader now waits on a queued job: move it to the foreground lane."""
        with self._cond:
            if t.state == PENDING and t.prio != FOREGROUND:
                t.prio = FOREGROUND
                self._lanes[FOREGROUND].append(t)   # the stale entry in its old lane is skipped
                self._cond.notify()

    def cancel(self, t: Ticket) -> bool:
        """Drop a job nobody wants: True if it will not deliver (queued), or is asked to stop
        while running (t.stopping: it may have finished already; it is counted as
        cancelled only if it stops, see _done)."""
        with self._cond:
            if t.state == PENDING:
                t.state = CANCELLED
                queued = True
            elif t.state == RUNNING and not t.here:
                queued = False
            else:
                return False
        if queued:
            t.future.cancel()
            return True
        t.stopping = self._stop_running(t)
        return t.stopping

    def close(self) -> None:
        """Stop every worker; jobs not finished fail so no reader waits forever."""
        with self._cond:
            self._closed = True
            pending = [t for lane in self._lanes for t in lane if t.state == PENDING]
            for lane in self._lanes:
                lane.clear()
            self._cond.notify_all()
        for t in pending:
            t.state = CANCELLED
            if not t.future.done():
                t.future.set_exception(DecodeError("unmounting"))

    # -- the lanes, for the threads that serve them ---------------------------

    def _take(self, index: int):
        """The next job for thread `index` (blocks); None when closing."""
        with self._cond:
            while not self._closed:
                extra = self._extra_work(index)
                if extra is not None:
                    return extra
                for prio, lane in enumerate(self._lanes):
                    while lane:
                        t = lane.popleft()
                        if t.state == PENDING and t.prio == prio:
                            t.state, t.t_start = RUNNING, time.monotonic()
                            self._busy += 1
                            return t
                self._cond.wait()
            return None

    def _extra_work(self, index: int):
        return None

    def _done(self, t: Ticket, tiles=None, error=None, cancelled=False, busy=False) -> None:
        with self._cond:
            t.state = CANCELLED if cancelled else DONE
            if busy:
                self._busy -= 1
                self._cond.notify()
        t.t_landed = time.monotonic()
        if cancelled:
            if t.stopping:
                self._stats.add("readahead_cancelled", t.job.tiles)
            t.future.cancel()
            return
        kind = "decodes_inprocess" if (self.inprocess or t.here) else \
            "decodes_foreground" if t.prio == FOREGROUND else "decodes_background"
        self._stats.add_many({kind: t.job.tiles, "jobs": 1})
        if error is not None:
            t.future.set_exception(error)
        else:
            t.future.set_result(tiles)

    def _retry(self, t: Ticket) -> bool:
        """Put a job whose worker died back at the head of its lane; False if it failed for good."""
        t.attempts += 1
        with self._cond:
            self._busy -= 1
            if t.attempts < MAX_ATTEMPTS and not self._closed:
                t.state = PENDING
                self._lanes[t.prio].appendleft(t)
                self._cond.notify()
                self._stats.add("task_retries")
                return True
            t.state = DONE
        t.future.set_exception(DecodeError(f"decoder worker died {t.attempts} times on this window"))
        return False

    def _stop_running(self, t: Ticket) -> bool:
        return False


class ThreadPool(_Pool):
    """Decodes in threads of the daemon: no IPC, no extra processes; mef3io releases the GIL."""

    inprocess = True

    def __init__(self, decoder, threads: int, stats):
        super().__init__(max(1, threads), stats, decoder)
        self._decoder = decoder

    def start(self) -> None:
        for i in range(self._n):
            t = threading.Thread(target=self._serve, args=(i,), name=f"mef3fs-decode-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def pids(self) -> list[int]:
        return []

    def warm(self, path: str, identity: tuple) -> None:
        opener = getattr(self._decoder, "open", None)
        if opener is not None:
            threading.Thread(target=lambda: _quietly(opener, path, identity), daemon=True).start()

    def _serve(self, index: int) -> None:
        new_token = getattr(self._decoder, "new_token", None)
        while True:
            t = self._take(index)
            if t is None:
                return
            t.token = new_token() if new_token is not None else None
            try:
                tiles = read_job(self._decoder, t.job, t.token)
            except Cancelled:
                self._done(t, cancelled=True, busy=True)
            except DecodeError as exc:
                self._done(t, error=exc, busy=True)
            except Exception as exc:
                self._done(t, error=DecodeError(f"{type(exc).__name__}: {exc}"), busy=True)
            else:
                t.t_done = time.monotonic()
                self._done(t, tiles=tiles, busy=True)

    def _stop_running(self, t: Ticket) -> bool:
        token = t.token
        if token is None:
            return False
        token.cancel()
        return True

    def close(self) -> None:
        super().close()
        for t in self._threads:
            t.join(5.0)


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:          # the real read will report it
        pass


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


class ProcessPool(_Pool):
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
