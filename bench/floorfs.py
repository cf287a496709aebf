"""FUSE files served from memory with mef3fs's own read path and nothing else: the floor.

    python bench/floorfs.py MOUNTPOINT SIZE_MB
    python bench/floorfs.py MOUNTPOINT --npy N:ROWS

One file, /f, of SIZE_MB float32 samples held in memory; or N NPY files
/f000.npy ... of ROWS x 4 float64 each (what a session's block envelopes
are). Reads are copied straight into the kernel's buffer as mef3fs does
(fuselib.FUSE), with the same kernel readahead. What this reaches is the
most any FUSE read path in Python reaches on this machine: the ceiling of
re-reads from the tile cache, and the least a file opened and read costs.
"""
import contextlib
import errno
import os
import stat
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from mef3fs.fuselib import FUSE, fuse  # noqa: E402


class Floor(fuse.Operations):
    use_ns = True

    def __init__(self, files: dict):
        self.files = files            # path -> uint8 array

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
        data = self.files.get(path)
        if data is not None:
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": len(data)}
        raise fuse.FuseOSError(errno.ENOENT)

    def open(self, path, fi):
        if path not in self.files:
            raise fuse.FuseOSError(errno.ENOENT)
        fi.keep_cache = 1
        return 0

    def read_into(self, path, dest, offset, fi):
        data = self.files[path]
        n = max(0, min(len(dest), len(data) - offset))
        dest[:n] = data[offset:offset + n]
        return n

    def read(self, path, size, offset, fi):
        raise fuse.FuseOSError(errno.EIO)

    def init_with_config(self, conn, config):
        from mef3fs.fuseops import KERNEL_READAHEAD
        if conn is not None:
            conn.max_readahead = min(conn.max_readahead, KERNEL_READAHEAD)


@contextlib.contextmanager
def mounted(work: str, *args: str):
    """This filesystem mounted under `work` with these arguments; yields the mountpoint."""
    mnt = os.path.join(work, f"floor-{os.getpid()}")
    os.makedirs(mnt, exist_ok=True)
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), mnt, *args],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t = time.monotonic()
        while not os.path.ismount(mnt):
            if p.poll() is not None or time.monotonic() - t > 20:
                raise RuntimeError("floorfs did not mount")
            time.sleep(0.05)
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        os.rmdir(mnt)


def files_of(argv: list) -> dict:
    if argv[0] == "--npy":
        from mef3fs.views.files import npy_header
        n, rows = (int(x) for x in argv[1].split(":"))
        body = np.zeros((rows, 4), dtype="<f8").tobytes()
        data = np.frombuffer(npy_header((rows, 4), "<f8") + body, dtype=np.uint8)
        return {f"/f{k:03d}.npy": data for k in range(n)}
    size = int(argv[0]) << 20
    return {"/f": np.arange(size // 4, dtype=np.float32).view(np.uint8)}


if __name__ == "__main__":
    FUSE(Floor(files_of(sys.argv[2:])), sys.argv[1], foreground=True, nothreads=False, raw_fi=True, ro=True,
         **({"max_idle_threads": 10} if fuse.fuse_version_major == 3 else {}))
