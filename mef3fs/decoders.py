"""Decoding: two MEF backends behind one call, and the worker-process pool.

A decode is always "the grid samples [ts, te) of one channel, exactly n of
them, as float32". Workers are spawned (the daemon is multi-threaded, fork
would copy held locks), each keeps its own bounded set of open readers, and
tiles come back as raw bytes over a pipe (`send_bytes`: one kernel copy each
way, no pickling of the array).

This module must not import the FUSE layer: spawned workers import it.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import math
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .readers import ReaderCache, SessionChanged

log = logging.getLogger("mef3fs.decoders")

DECODERS = ("mef3io", "mef_tools")
MAX_ATTEMPTS = 3               # a tile whose worker died is decoded again, this often


class DecodeError(Exception):
    """A window that cannot be decoded (damaged block, locked data): EIO for the reader.

    `channel` and `span` (uUTC start, end), when set, say where: the session
    lists the range as damaged in info.json."""
    channel: str | None = None
    span: tuple | None = None
    reason: str = ""


@dataclass(frozen=True)
class DecodeSpec:
    """One tile: grid samples [first, first + n) of `channel`, i.e. uUTC [ts, te).

    The grid (origin t0, rate fs) travels along for decoders that cannot take
    fractional window edges and must anchor on it themselves.
    """
    session_path: str
    channel: str
    ts: float
    te: float
    n: int
    t0: int = 0
    fs: float = 0.0
    first: int = 0
    identity: tuple = ()      # (device, inode, mtime) of the session when it was opened

    @property
    def nbytes(self) -> int:
        return 4 * self.n


def _fit(arr: np.ndarray, n: int) -> np.ndarray:
    """Exactly n float32 samples: the grid length is ours, not the decoder's."""
    arr = np.asarray(arr, dtype=np.float32).reshape(-1)
    if len(arr) == n:
        return arr
    out = np.full(n, np.nan, dtype=np.float32)
    m = min(n, len(arr))
    out[:m] = arr[:m]
    return out


class Mef3ioDecoder:
    """The reference decoder: its read over the whole grid defines every byte."""

    name = "mef3io"

    def __init__(self, password: str = ""):
        import mef3io
        import warnings
        self._mef3io = mef3io
        self._password = password
        warnings.filterwarnings("ignore", module="mef3io")
        self._readers = ReaderCache(self._open)

    def _open(self, path: str, strict: bool = True):
        """A strict reader, which raises where it cannot read. A session with a
        broken or locked channel does not open strictly: then a lenient one,
        whose problems say what it skipped (see read)."""
        try:
            return self._mef3io.Reader(path, password=self._password, n_threads=1, strict=strict)
        except (self._mef3io.CrcError, self._mef3io.FormatError, self._mef3io.PasswordError,
                self._mef3io.IoError, OSError):
            if not strict:
                raise
            reader = self._open(path, strict=False)
            if not reader.problems:
                raise
            return reader

    def open(self, path: str, identity: tuple = ()) -> None:
        self._readers.get(path, identity)

    def read(self, spec: DecodeSpec) -> np.ndarray:
        try:
            reader = self._readers.get(spec.session_path, spec.identity)
        except SessionChanged as exc:
            raise DecodeError(str(exc)) from None
        lenient = bool(reader.problems)     # a strict reader never has any
        if lenient and any(p["channel"] == spec.channel for p in reader.problems):
            # A lenient reader skips a segment for good once it failed and reads NaN
            # there: this channel failed before, so a reader that has not failed yet.
            reader = self._open(spec.session_path, strict=False)
        before = len(reader.problems)
        try:
            arr = reader.read(spec.channel, spec.ts, spec.te, dtype="float32")
        except (self._mef3io.CrcError, self._mef3io.FormatError, self._mef3io.IoError,
                self._mef3io.PasswordError) as exc:
            raise DecodeError(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise DecodeError(f"OSError: {exc}") from None
        if lenient:
            failed = [p for p in reader.problems[before:] if p["channel"] == spec.channel]
            if failed:                      # a lenient reader returns NaN where a strict one raises
                raise DecodeError(f"{failed[0]['reason']}")
        self._readers.loaded(reader, spec.channel, spec.ts, spec.te)
        return _fit(arr, spec.n)

    def close(self) -> None:
        self._readers.clear()


def _whole_us_step(fs: float) -> int:
    """Smallest k such that k samples last a whole number of microseconds."""
    return (Fraction(10**6) / Fraction(fs)).denominator


def _halves_possible(fs: float) -> bool:
    """Can an integer uUTC time fall exactly half a sample between grid points?"""
    return (Fraction(fs) / 10**6).denominator % 2 == 0


class MefToolsDecoder:
    """pymef through mef_tools, mapped onto mef3io's grid.

    pymef takes whole-microsecond windows and places each block at
    round-half-up((start - window) * fs / 1e6) where mef3io rounds half
    down. So the window starts on the nearest earlier grid point that falls
    on a whole microsecond (when one is within a tile), one microsecond late
    where exact halves can occur, which turns pymef's rounding into
    mef3io's; the samples before the tile are dropped. Rates with no such
    grid point near (499.907 Hz) fall back to the floored start and may place
    a block one sample off. pymef scales by one factor per channel (0 when
    its segments differ), so samples are read as counts and each segment's
    own factor from pymef's metadata is applied, as mef3io does. pymef
    cannot read tar archives nor list channels whose names start with '.':
    those reads fail (EIO) and say so.
    """

    name = "mef_tools"

    def __init__(self, password: str = ""):
        from mef_tools.io import MefReader
        self._readers = ReaderCache(lambda path: MefReader(path, password2=password or None))

    def open(self, path: str, identity: tuple = ()) -> None:
        if not path.lower().endswith(".tar"):
            self._readers.get(path, identity)

    def _window(self, spec: DecodeSpec) -> tuple[int, int]:
        """(first pymef uUTC, grid index of pymef's sample 0)."""
        if spec.fs > 0:
            step = _whole_us_step(spec.fs)
            anchor = spec.first - spec.first % step
            if spec.first - anchor <= max(spec.n, 1):
                start = spec.t0 + int(anchor * (Fraction(10**6) / Fraction(spec.fs)))
                return start + (1 if _halves_possible(spec.fs) else 0), anchor
        return int(math.floor(spec.ts)), spec.first

    def read(self, spec: DecodeSpec) -> np.ndarray:
        if spec.session_path.lower().endswith(".tar"):
            raise DecodeError("pymef (--decoder mef_tools) cannot read .mefd.tar archives in "
                              "place; use --decoder mef3io")
        start, anchor = self._window(spec)
        try:
            reader = self._readers.get(spec.session_path, spec.identity)
            if spec.channel not in reader.channels:
                raise DecodeError("pymef does not list this channel (it drops channels whose "
                                  "names start with '.'); use --decoder mef3io")
            end = spec.t0 + (spec.first + spec.n) * 1e6 / spec.fs if spec.fs > 0 else spec.te
            counts = reader.get_raw_data(spec.channel, start, int(math.ceil(end)) + 1)[0]
            arr = np.asarray(counts, dtype=np.float64) * self._factors(reader, spec, start, len(counts))
        except DecodeError:
            raise
        except Exception as exc:  # pymef raises plain RuntimeError/ValueError/TypeError
            raise DecodeError(f"mef_tools: {type(exc).__name__}: {exc}") from None
        if arr is None or np.size(arr) == 0:
            raise DecodeError("mef_tools returned no samples (a level-1 password does not "
                              "unlock data for pymef; use the level-2 password or --decoder mef3io)")
        skip = spec.first - anchor
        return _fit(arr[skip:skip + spec.n], spec.n)

    @staticmethod
    def _factors(reader, spec: DecodeSpec, start: int, n: int) -> np.ndarray:
        """Each output sample's conversion factor: that of the segment it falls in."""
        scale = np.ones(n)
        step = 1e6 / spec.fs if spec.fs > 0 else None
        segments = reader.session.session_md["time_series_channels"][spec.channel]["segments"]
        for seg in segments.values():
            factor = float(seg["section_2"]["units_conversion_factor"][0]) or 1.0   # 0: not set
            header = seg["universal_headers"]["metadata"]
            s0, s1 = int(header["start_time"][0]), int(header["end_time"][0])
            if step is None:
                scale[:] = factor
                break
            lo = max(0, math.floor((s0 - start) / step + 0.5))
            hi = min(n, math.floor((s1 - start) / step + 0.5))
            if hi > lo:
                scale[lo:hi] = factor
        return scale

    def close(self) -> None:
        self._readers.clear()


def make_decoder(name: str, password: str = ""):
    if name == "mef3io":
        return Mef3ioDecoder(password)
    if name == "mef_tools":
        return MefToolsDecoder(password)
    raise ValueError(f"unknown decoder {name!r} (choose from {', '.join(DECODERS)})")


# --------------------------------------------------------------------------
# Worker processes

def return_big_buffers_to_the_os() -> None:
    """Tiles are 0.04-5 MB buffers made and freed all the time. glibc's
    dynamic mmap threshold soon serves them from the heap, which it rarely
    gives back: fix the threshold so they are mmapped and unmapped on free
    (measured: daemon peak over an 8 MiB cache +48 -> +32 MB)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 256 << 10)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed daemon must not leave decoders behind."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _worker_main(conn, decoder_name: str, password: str, parent_pid: int) -> None:
    _die_with_parent()
    if os.getppid() != parent_pid:  # parent already gone before prctl took effect
        return
    # Ctrl-C goes to the whole process group; the daemon decides when we
    # stop. SIGINT arrived blocked (see _Worker), so one sent while we were
    # starting up is dropped here instead of killing us mid-import.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return_big_buffers_to_the_os()
    decoder = make_decoder(decoder_name, password)
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            break
        if spec is None:
            break
        if isinstance(spec, tuple):          # ("open", path, identity): warm up, no reply
            try:
                decoder.open(spec[1], spec[2])
            except Exception:                # the real read will report it
                pass
            continue
        try:
            arr = decoder.read(spec)
        except DecodeError as exc:
            conn.send(("error", str(exc)))
            continue
        except Exception as exc:  # a decoder bug must not kill the worker silently
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", None))
        conn.send_bytes(arr)
    decoder.close()


FOREGROUND, BACKGROUND = 0, 1
PENDING, RUNNING, DONE, CANCELLED = range(4)


class Task:
    """A tile decode in the pool; its future is what the cache waits on."""

    __slots__ = ("spec", "lane", "state", "future", "attempts")

    def __init__(self, spec: DecodeSpec, lane: int):
        self.spec = spec
        self.lane = lane
        self.state = PENDING
        self.future: Future = Future()
        self.attempts = 0


class _Worker:
    def __init__(self, ctx, decoder_name: str, password: str):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, name="mef3fs-decoder",
                                   args=(child, decoder_name, password, os.getpid()), daemon=True)
        # The signal mask survives exec: the worker starts with SIGINT blocked
        # until it has chosen to ignore it (multiprocessing's resource
        # tracker is started the same way).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        child.close()

    def decode(self, spec: DecodeSpec) -> np.ndarray:
        """Raises DecodeError for a bad window, EOFError/OSError if the worker died."""
        self.conn.send(spec)
        status, message = self.conn.recv()
        if status != "ok":
            raise DecodeError(message)
        return np.frombuffer(self.conn.recv_bytes(), dtype=np.float32)

    def warm(self, path: str, identity: tuple) -> None:
        """Open a session ahead of its first decode (opening costs more than a tile)."""
        self.conn.send(("open", path, identity))

    def stop(self, timeout: float = 2.0) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.conn.close()


class DecoderPool:
    """Worker processes fed from two lanes.

    A free worker always takes foreground work first. Read-ahead may occupy
    every worker (on a small machine, reserving one would halve a scan), so
    the cache decodes a foreground tile in the caller's thread when no worker
    is idle (`idle()`): a waiting read never queues behind read-ahead.
    Each worker has one thread in the daemon that talks to it; a worker that
    dies is replaced and its task is put back at the head of its lane.
    """

    def __init__(self, decoder_name: str, password: str, workers: int, stats):
        self._ctx = multiprocessing.get_context("spawn")
        self._decoder_name = decoder_name
        self._password = password
        self._stats = stats
        self._n = workers
        self._max_background = workers
        self._busy = 0
        self._cond = threading.Condition()
        self._lanes = (collections.deque(), collections.deque())
        self._running_background = 0
        self._closed = False
        self._workers: list[_Worker | None] = [None] * workers
        self._threads: list[threading.Thread] = []
        self._warm = [collections.deque() for _ in range(workers)]   # sessions to open, per worker

    def start(self) -> None:
        for i in range(self._n):
            self._workers[i] = _Worker(self._ctx, self._decoder_name, self._password)
            t = threading.Thread(target=self._serve, args=(i,), name=f"mef3fs-lane-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def idle(self) -> bool:
        """A worker would start a new foreground task at once."""
        with self._cond:
            return self._busy < self._n and not self._lanes[FOREGROUND]

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None and w.process.is_alive()]

    def submit(self, spec: DecodeSpec, lane: int) -> Task:
        task = Task(spec, lane)
        with self._cond:
            if self._closed:
                raise DecodeError("decoder pool is shut down")
            self._lanes[lane].append(task)
            self._cond.notify()
        return task

    def warm(self, path: str, identity: tuple) -> None:
        """Have every worker open a session now, before reads need it."""
        with self._cond:
            for q in self._warm:
                q.append((path, identity))
            self._cond.notify_all()

    def promote(self, task: Task) -> None:
        """A reader now waits on a read-ahead tile: move it to the foreground lane."""
        with self._cond:
            if task.state == PENDING and task.lane == BACKGROUND:
                task.lane = FOREGROUND
                self._lanes[FOREGROUND].append(task)  # stale copy in the background lane is skipped
                self._cond.notify()

    def cancel(self, task: Task) -> bool:
        """Cancel a task nobody has started; True if it will not run."""
        with self._cond:
            if task.state != PENDING:
                return False
            task.state = CANCELLED
        task.future.cancel()
        return True

    def _next_task(self, index: int):
        with self._cond:
            while not self._closed:
                fg, bg = self._lanes
                task = None
                if self._warm[index]:
                    return self._warm[index].popleft()
                if fg:
                    task = fg.popleft()
                elif bg and self._running_background < self._max_background:
                    task = bg.popleft()
                else:
                    self._cond.wait()
                    continue
                if task.state != PENDING:
                    continue
                task.state = RUNNING
                self._busy += 1
                if task.lane == BACKGROUND:
                    self._running_background += 1
                return task
            return None

    def _serve(self, index: int) -> None:
        while True:
            task = self._next_task(index)
            if task is None:
                return
            if isinstance(task, tuple):
                try:
                    self._workers[index].warm(*task)
                except (OSError, ValueError):
                    pass                     # a dead worker is found on its next decode
                continue
            lane = task.lane
            try:
                arr = self._workers[index].decode(task.spec)
            except DecodeError as exc:
                self._finish(task, lane, error=exc)
            except (EOFError, OSError, ValueError) as exc:
                self._replace_worker(index, exc)
                self._retry(task, lane)
            else:
                self._finish(task, lane, result=arr)

    def _finish(self, task: Task, lane: int, result=None, error=None) -> None:
        with self._cond:
            task.state = DONE
            self._busy -= 1
            if lane == BACKGROUND:
                self._running_background -= 1
            self._cond.notify()
        self._stats.add("decodes_background" if lane == BACKGROUND else "decodes_foreground")
        if error is not None:
            task.future.set_exception(error)
        else:
            task.future.set_result(result)

    def _retry(self, task: Task, lane: int) -> None:
        task.attempts += 1
        with self._cond:
            self._busy -= 1
            if lane == BACKGROUND:
                self._running_background -= 1
            if task.attempts < MAX_ATTEMPTS and not self._closed:
                task.state = PENDING
                self._lanes[task.lane].appendleft(task)
                self._cond.notify()
                self._stats.add("task_retries")
                return
            task.state = DONE
        task.future.set_exception(DecodeError(f"decoder worker died {task.attempts} times on this window"))

    def _replace_worker(self, index: int, exc: BaseException) -> None:
        old = self._workers[index]
        old.process.join(1.0)
        log.warning("decoder worker pid %s died (exit code %s, %s); starting a new one",
                    old.process.pid, old.process.exitcode, type(exc).__name__)
        old.conn.close()
        self._stats.add("worker_restarts")
        if not self._closed:
            self._workers[index] = _Worker(self._ctx, self._decoder_name, self._password)

    def close(self) -> None:
        """Stop every worker; pending tasks fail so no reader waits forever."""
        with self._cond:
            self._closed = True
            pending = [t for lane in self._lanes for t in lane if t.state == PENDING]
            for lane in self._lanes:
                lane.clear()
            self._cond.notify_all()
        for task in pending:
            task.state = CANCELLED
            task.future.set_exception(DecodeError("unmounting"))
        for t in self._threads:
            t.join(5.0)
        for w in self._workers:
            if w is not None:
                w.stop()
