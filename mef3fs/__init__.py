"""mef3fs: MEF 3.0 recordings as folders of raw float32 files, through FUSE.

Importing the package stays light (no FUSE, no MEF reader): decoder worker
processes import `mef3fs.decoders` and must not pay for the rest.
"""

__version__ = "0.1.0"

__all__ = ["mount", "MountError", "__version__"]


def __getattr__(name):
    if name in ("mount", "MountError"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'mef3fs' has no attribute {name!r}")
