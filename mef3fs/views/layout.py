"""A session folder being laid out: the files each view registers, and the info.json keys that name them.

Views never see each other: each adds its files under paths relative to the
session folder, and the keys that point at them to the session, a grid or a
channel entry of info.json. Folders follow from the paths.
"""

from __future__ import annotations

from ..meta import SessionMeta


class Layout:
    def __init__(self, meta: SessionMeta, reader, readers, index):
        self.meta = meta
        self.reader = reader            # the open mef3io reader (metadata only: records, ...)
        self.readers = readers          # index.MetaReaders: a reader later, when a file is made
        self.index = index              # index.IndexCache, for views made from block indexes
        self.files: dict = {}           # relative path -> file
        self.session_keys: dict = {}    # extra top-level info.json keys
        self.grid_keys = {g.label: {} for g in meta.grids}
        self.channel_keys = {c.name: {} for c in meta.channels}

    def add(self, rel: str, file) -> str:
        if rel in self.files:
            raise ValueError(f"two views claim {rel}")
        self.files[rel] = file
        return rel

    def dirs(self) -> dict:
        """Folder (relative path, '' for the session folder) -> sorted entry names."""
        out: dict = {"": set()}
        for rel in self.files:
            while True:                 # up to the first folder already known
                folder, _, name = rel.rpartition("/")
                known = folder in out
                out.setdefault(folder, set()).add(name)
                if known or not folder:
                    break
                rel = folder
        return {folder: sorted(names) for folder, names in out.items()}


def reader_of(readers, meta):
    """The metadata reader of the session as its channels are read (a readable view, if any)."""
    if not meta.channels:
        return readers.get(meta.path, meta.identity)
    tiles = meta.channels[0].tiles
    return readers.get(tiles.session_path, tiles.identity)
