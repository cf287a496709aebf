"""SOURCE's own files, shown as they are beside the decoded sessions (a BIDS dataset's
dataset_description.json, participants.tsv, *_channels.tsv, README, ...), so tools that
index a dataset find them. Read-only and byte-identical: every read is a pread of the
real file, nothing is cached by us, and the kernel drops its pages at each open.
"""

from __future__ import annotations

import os

import numpy as np

from .views.files import File


class PassthroughFile(File):
    keep_cache = False          # it may change: the kernel drops its pages at every open

    def __init__(self, real: str, label: str = ""):
        self.real = real
        self.label = label

    @property
    def size(self) -> int:
        return os.stat(self.real).st_size

    def opened(self, cached: bool = False) -> "_OpenFile":
        """One descriptor of the real file for as long as the mount's file is open."""
        return _OpenFile(os.open(self.real, os.O_RDONLY | os.O_CLOEXEC), self.label)


class _OpenFile(File):
    keep_cache = False

    def __init__(self, fd: int, label: str):
        self.fd = fd
        self.label = label

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read_into(self, cache, offset: int, dest: np.ndarray) -> int:
        return os.preadv(self.fd, [dest], offset)

    def close(self) -> None:
        os.close(self.fd)
