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
The worker processes are procpool.py's.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future

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


class Pool:
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

    def pending(self) -> int:
        """Jobs queued or running: a job stopped for nobody may still be decoding (and
        land, and be counted) after its tiles were let go."""
        with self._cond:
            queued = sum(1 for prio, lane in enumerate(self._lanes) for t in lane
                         if t.state == PENDING and t.prio == prio)
            return self._busy + queued

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
        # counted before the job stops counting as pending (jobs_pending: 0 means the
        # counters are final)
        if cancelled:
            if t.stopping:
                self._stats.add("readahead_cancelled", t.job.tiles)
        else:
            kind = "decodes_inprocess" if (self.inprocess or t.here) else \
                "decodes_foreground" if t.prio == FOREGROUND else "decodes_background"
            self._stats.add_many({kind: t.job.tiles, "jobs": 1})
        with self._cond:
            t.state = CANCELLED if cancelled else DONE
            if busy:
                self._busy -= 1
                self._cond.notify()
        t.t_landed = time.monotonic()
        if cancelled:
            t.future.cancel()
            return
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


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:          # the real read will report it
        pass


class ThreadPool(Pool):
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
