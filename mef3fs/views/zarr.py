"""`zarr/`: a Zarr v3 group with one (channels, samples) float32 array per rate, over the same tiles.

    zarr/zarr.json                  the group, with consolidated metadata (one read opens it all)
    zarr/256Hz/zarr.json            the rate's array: float32, fill NaN, rows in grids[].channels order
    zarr/256Hz/c.<row>.0            one shard per channel (shards.SampleShard)
    zarr/channel_256Hz/...          coordinate: the channel names (vlen-utf8 strings)
    zarr/time_256Hz/...             coordinate: int64 ns since the epoch, one shard

`xarray.open_zarr(store)` and `dask.array.from_zarr(store, component=...)`
open it with no extra arguments. Why it is laid out this way:

* One shard per channel, inner chunks of about a tile (`chunk_length`):
  zarr reads a shard's index and then byte ranges, so a slice decodes only
  the tiles under the chunks it touches, and a session is a handful of files
  (plain chunk files would be one file per channel and tile: 60,000 per
  channel for a week of 10 s tiles, which every listing would pay for).
  Measured against plain chunk files in docs/scale-out.md.
* Every name is per rate (`channel_256Hz`, `sample_256Hz`): rates have
  different channels and lengths, and xarray puts all arrays of a group in
  one Dataset.
* The time coordinate is not named like its dimension: xarray would make it
  an index and read all of it at open. As a plain coordinate it stays lazy;
  decoding it to datetimes reads its first and last chunk only.
* The chunk key separator is ".", so a rate's shards sit in one folder,
  not one folder per channel (every folder costs `ls -lR` requests).

Everything here is metadata: sizes and zarr.json never need a block index.
"""

from __future__ import annotations

from .. import __version__
from ..jsontext import clean, json_bytes
from .files import StaticFile
from .layout import Layout
from .shards import SampleShard, TimeShard

STORE = "zarr"

LITTLE = {"name": "bytes", "configuration": {"endian": "little"}}
PAGE_SAMPLES = 1024                 # float32 samples in 4 KiB
KEYS = {"name": "default", "configuration": {"separator": "."}}


def _array(shape, dtype: str, fill, chunk, dims, attrs: dict, shard=None) -> dict:
    """zarr.json of an array; `shard` (outer chunk shape) makes `chunk` its inner chunk."""
    codecs = [LITTLE] if dtype != "string" else [{"name": "vlen-utf8", "configuration": {}}]
    if shard is not None:
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": list(chunk), "codecs": codecs, "index_codecs": [LITTLE],
            "index_location": "end"}}]
    return {"zarr_format": 3, "node_type": "array", "shape": list(shape), "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {
                "chunk_shape": list(shard if shard is not None else chunk)}},
            "chunk_key_encoding": KEYS, "fill_value": fill, "codecs": codecs,
            "attributes": attrs, "dimension_names": list(dims), "storage_transformers": []}


def chunk_length(tile: int) -> int:
    """Inner chunk: about one tile (a chunk costs about one decode), in whole 4 KiB.

    Python's buffered files (zarr's LocalStore reads through them) read in
    st_blksize units: a chunk that ends inside a block is read with the rest
    of that block, i.e. part of the next chunk, and often of the next tile."""
    return max(1, round(tile / PAGE_SAMPLES)) * PAGE_SAMPLES


def vlen_utf8(texts) -> bytes:
    """A vlen-utf8 chunk: uint32 count, then uint32 length + UTF-8 bytes of each item."""
    out = [len(texts).to_bytes(4, "little")]
    for text in texts:
        raw = text.encode("utf-8")
        out += [len(raw).to_bytes(4, "little"), raw]
    return b"".join(out)


def add(layout: Layout) -> None:
    meta = layout.meta
    shown = meta.shown_path
    members: dict = {}

    def put(rel: str, data: bytes) -> None:
        layout.add(f"{STORE}/{rel}", StaticFile(data, f"{shown}/{STORE}/{rel}"))

    for grid in meta.grids:
        name = f"{grid.label}Hz"
        channel, sample, time = f"channel_{name}", f"sample_{name}", f"time_{name}"
        rows, n = grid.rows, grid.n
        chunk = chunk_length(rows[0].target)
        count = -(-n // chunk)
        outer = max(1, count) * chunk
        names = [clean(c.name) for c in grid.channels]
        attrs = {"coordinates": time, "sampling_frequency": grid.fs, "grid_start_uutc": grid.t0,
                 "sample_period_us": 1e6 / grid.fs,
                 "description": (f"row r is channel {channel}[r]: float32 samples on the grid of "
                                 f"{name}, sample i at grid_start_uutc + i * 1e6 / sampling_frequency "
                                 "uUTC (the bytes of its .f32 file); NaN where there is no data")}
        units = {c.info.get("units_description") for c in grid.channels}
        if len(units) == 1 and grid.channels[0].units:      # per channel: info.json
            attrs["units"] = grid.channels[0].units
        members[name] = _array((len(rows), n), "float32", "NaN", (1, chunk), (channel, sample),
                               attrs, shard=(1, outer))
        members[channel] = _array((len(rows),), "string", "", (len(rows),), (channel,),
                                  {"long_name": "channel name"})
        members[time] = _array((n,), "int64", 0, (chunk,), (sample,), {
            "units": "nanoseconds since 1970-01-01", "calendar": "proleptic_gregorian",
            "standard_name": "time", "long_name": f"time of each {name} sample",
            "description": "grid_start_uutc * 1000 + round(i * 1e9 / sampling_frequency)"},
            shard=(outer,))
        if count:
            for r, tiles in enumerate(rows):
                rel = f"{name}/c.{r}.0"
                layout.add(f"{STORE}/{rel}", SampleShard(tiles, chunk, count, f"{shown}/{STORE}/{rel}"))
            rel = f"{time}/c.0"
            layout.add(f"{STORE}/{rel}", TimeShard(grid.t0, grid.fs, chunk, count, f"{shown}/{STORE}/{rel}"))
        put(f"{channel}/c.0", vlen_utf8(names))
        for member in (name, channel, time):
            put(f"{member}/zarr.json", json_bytes(members[member]))
        layout.grid_keys[grid.label]["zarr_array"] = name

    group = {"zarr_format": 3, "node_type": "group", "attributes": {
        "session": shown, "info_file": "../info.json", "mef3fs_version": __version__,
        "time_reference": ("relative to the recording-time offset (level-1 password)"
                           if meta.password_level == 1 else "uUTC")},
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": members}}
    put("zarr.json", json_bytes(group))
    layout.session_keys["zarr_store"] = STORE + "/"
