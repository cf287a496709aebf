"""A decoder worker process: `python -m mef3fs.worker FD PARENT_PID`.

Started by procpool.ProcessPool with one end of a socket pair as FD. It is a
plain subprocess, not multiprocessing: nothing else (no resource tracker, no
re-import of the daemon's __main__) is started, and the daemon reaps what it
started. The first message names the decoder and the password (never on the
command line, where `ps` shows it); the worker answers ("ready",) once it
can decode. Then, one at a time:

    ("open", path, identity)          open a session ahead of its first job; no reply
    ("job", jid, Job)                 -> ("ok", jid, t_start, t_done, [size or error text
                                         per tile]) + one send_bytes per decoded tile,
                                         or ("error", jid, text), or ("cancelled", jid)
    ("cancel", jid)                   stop that job if it is running (mef3io CancelToken)

A reader thread takes messages off the socket so a cancel can arrive while
the main thread decodes (mef3io releases the GIL).

This module must not import the FUSE layer.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import sys
import threading
import time


WORKER_NICE = 5          # below the daemon and the user's processes (0)


def _die_with_parent(parent_pid: int) -> bool:
    """PR_SET_PDEATHSIG: a SIGKILLed daemon must not leave decoders behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    return os.getppid() == parent_pid      # False: the parent died before prctl took effect


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fd, parent = int(argv[0]), int(argv[1])
    if not _die_with_parent(parent):
        return 0
    # Ctrl-C goes to the whole process group; the daemon decides when we stop.
    # SIGINT arrived blocked (see pool._spawn), so one sent while we were
    # starting up is dropped here instead of killing us mid-import.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # Decoding yields the CPU to the daemon's FUSE threads and to the reader itself:
    # read-ahead starts decoding the next window while a viewer reads this one, and
    # on two cores two busy workers made each page fault wait for a core.
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    from multiprocessing.connection import Connection
    conn = Connection(fd)
    try:
        hello = conn.recv()
    except (EOFError, OSError):
        return 0
    from .decoders import Cancelled, DecodeError, make_decoder, read_job, return_big_buffers_to_the_os
    return_big_buffers_to_the_os()
    decoder = make_decoder(hello["decoder"], hello.get("password", ""))
    new_token = getattr(decoder, "new_token", None)
    try:
        conn.send(("ready",))            # jobs sent before this would wait for our imports
    except (OSError, ValueError):
        return 0

    inbox: queue.SimpleQueue = queue.SimpleQueue()
    current = {"jid": None, "token": None}
    lock = threading.Lock()

    def listen() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                inbox.put(None)
                return
            if msg[0] == "cancel":
                with lock:
                    if current["jid"] == msg[1] and current["token"] is not None:
                        current["token"].cancel()
                continue
            inbox.put(msg)

    threading.Thread(target=listen, name="mef3fs-worker-inbox", daemon=True).start()
    while True:
        msg = inbox.get()
        if msg is None:
            break
        if msg[0] == "open":
            try:
                decoder.open(msg[1], msg[2])
            except Exception:            # the real read will report it
                pass
            continue
        _, jid, job = msg
        token = new_token() if new_token is not None else None
        with lock:
            current["jid"], current["token"] = jid, token
        t_start = time.monotonic()
        try:
            tiles = read_job(decoder, job, token)
        except Cancelled:
            reply = ("cancelled", jid)
        except DecodeError as exc:
            reply = ("error", jid, str(exc))
        except Exception as exc:         # a decoder bug must not kill the worker silently
            reply = ("error", jid, f"{type(exc).__name__}: {exc}")
        else:
            reply = None
        with lock:
            current["jid"] = current["token"] = None
        try:
            if reply is not None:
                conn.send(reply)
                continue
            # a tile that could not be decoded alone travels as its message
            conn.send(("ok", jid, t_start, time.monotonic(),
                       [str(t) if isinstance(t, Exception) else t.nbytes for t in tiles]))
            for t in tiles:
                if not isinstance(t, Exception):
                    conn.send_bytes(t)
        except (OSError, ValueError):
            break
    decoder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
