"""Load the FUSE binding, preferring libfuse3.

libfuse3 lets the kernel send reads of up to 1 MiB (libfuse2: 128 KiB):
fewer, bigger requests is the cheapest speed-up there is. mfusepy looks for
libfuse2 first unless told otherwise; FUSE_LIBRARY_PATH / FUSE_LIBRARY_NAME
set by the user still win.
"""

import os
from ctypes.util import find_library

if not (os.environ.get("FUSE_LIBRARY_PATH") or os.environ.get("FUSE_LIBRARY_NAME")) \
        and find_library("fuse3"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy as fuse  # noqa: E402

FUSE = fuse.FUSE
