"""Daemon mode: fork, detach, and tell the caller when the mount is ready.

The fork happens before any thread or worker exists (they are started in
FUSE's init), and the parent exits only once init has run (exit 0) or the
child has given up (exit 1, with the child's reason).
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("mef3fs")


def daemonize(serve, log_file: str | None) -> int:
    """Run serve(ready) in a detached child; return the caller's exit code."""
    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            lines = pipe.read().decode("utf-8", "replace").strip().splitlines()
        for line in lines:
            if line.startswith("warning: "):
                print(f"mef3fs: {line}", file=sys.stderr)
        message = "\n".join(line for line in lines if not line.startswith("warning: "))
        if message == "ready":
            return 0
        os.waitpid(pid, 0)
        print(f"mef3fs: error: {message or 'the daemon ended before the mount was ready'}",
              file=sys.stderr)
        return 1

    os.close(r)
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    state = {"ready": False}

    def ready(warnings=()) -> None:
        # the caller prints the warnings on its terminal; a log file gets them too
        if log_file:
            for line in warnings:
                log.warning("%s", line)
        os.write(w, "".join(f"warning: {line}\n" for line in warnings).encode() + b"ready\n")
        os.close(w)
        state["ready"] = True
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(null, 1)
        os.dup2(null, 2)

    code = 1
    try:
        code = serve(ready)
    except BaseException as exc:  # the parent must hear about any failure
        log.exception("mef3fs daemon failed")
        if not state["ready"]:
            os.write(w, f"{type(exc).__name__}: {exc}".encode())
    if not state["ready"]:
        try:
            os.write(w, b"" if code == 0 else b"mounting failed (see the messages above)")
        except OSError:
            pass
    logging.shutdown()
    os._exit(code)
