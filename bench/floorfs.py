"""A FUSE file served from memory with mef3fs's own read path and nothing else: the floor.

    python bench/floorfs.py MOUNTPOINT SIZE_MB

One file, /f, of SIZE_MB float32 samples held in memory; reads are copied
straight into the kernel's buffer as mef3fs does (fuselib.FUSE), with the
same kernel readahead. What this reaches is the most any FUSE read path in
Python reaches on this machine: the ceiling of re-reads from the tile cache.
"""
import errno
import os
import stat
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from mef3fs.fuselib import FUSE, fuse  # noqa: E402


class Floor(fuse.Operations):
    use_ns = True

    def __init__(self, size: int):
        self.data = np.arange(size // 4, dtype=np.float32).view(np.uint8)
        self.size = size

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
        if path == "/f":
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": self.size}
        raise fuse.FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "f"]

    def open(self, path, fi):
        fi.keep_cache = 1
        fi.fh = 1
        return 0

    def read_into(self, path, dest, offset, fi):
        n = max(0, min(len(dest), self.size - offset))
        dest[:n] = self.data[offset:offset + n]
        return n

    def read(self, path, size, offset, fi):
        raise fuse.FuseOSError(errno.EIO)

    def init_with_config(self, conn, config):
        from mef3fs.fuseops import KERNEL_READAHEAD
        if conn is not None:
            conn.max_readahead = min(conn.max_readahead, KERNEL_READAHEAD)


if __name__ == "__main__":
    FUSE(Floor(int(sys.argv[2]) << 20), sys.argv[1], foreground=True, nothreads=False, raw_fi=True, ro=True,
         **({"max_idle_threads": 10} if fuse.fuse_version_major == 3 else {}))
