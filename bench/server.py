"""mef3io-server 3.1, started by the bench on 127.0.0.1 (an ephemeral port), with its own log.

The package's own `python -m mef3io_server.server` binds 0.0.0.0, and because
this machine has a `/.dockerenv` it would look for every file under
`/host_root`: the launcher builds the same FileManager + gRPC server with that
check off. Its defaults otherwise (60 s tiles, 512 MB cache, one window of
look-ahead and look-behind).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from common import alive, descendants, kill_tree, now


def available() -> str | None:
    """None if mef3io-server can be used, else why not."""
    try:
        import grpc  # noqa: F401
        import mef3io_server  # noqa: F401 F811
    except ImportError as exc:
        return f"mef3io-server not installed ({exc}); pip install -e '.[bench]'"
    return None


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
