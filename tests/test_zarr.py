"""The Zarr view (`zarr/`) through a real mount, read by the real zarr, xarray and dask.

* info.json names the store (`zarr_store`) and each rate's array
  (`grids[].zarr_array`); `xarray.open_zarr(store)` with no other argument
  opens it, and so does `dask.array.from_zarr(store, component=name)`.
* Every row equals its channel's `.f32` file (and so mef3io's reference);
  the channel coordinate is the grid's channel order; the time coordinate
  decodes to datetime64 equal to the grid formula, and opening the dataset
  reads none of the samples.
* Listing the store, or opening it, loads no block index; a slice decodes
  exactly the tiles under the chunks it touches (counted in the stats);
  names zarr probes for answer ENOENT, quietly.
* The raw bytes of a shard: the samples, NaN padding, an index computed from
  the chunk length alone.
* The scale-out recipe (examples/dask/channel_stats.py) on a LocalCluster of
  process workers equals numpy on the `.f32` files; the DaemonSet manifest
  has what a FUSE mount in a pod needs.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mef3io
import numpy as np
import pytest

from tests.conftest import REPO, read_stats, subprocess_env
from tests.sessions import ENC_PASSWORD1, ENC_PASSWORD2, T0, reference

xr = pytest.importorskip("xarray")
zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

SESSIONS = ["gaps.mefd", "rates.mefd", "names.mefd", "mt.mefd", "factors.mefd", "arch.mefd.tar",
            "sub-01/ses-1/night1.mefd"]
# what zarr and xarray look for before (or instead of) zarr.json
PROBES = [".zgroup", ".zattrs", ".zmetadata", "256Hz/.zarray", "256Hz/.zattrs", "256Hz/c/0/0",
          "256Hz/c.0.99999", "nope/zarr.json", "c/0/0"]


def load_info(folder):
    with open(Path(folder) / "info.json", "rb") as f:
        return json.loads(f.read())


def grid_ns(t0, fs, idx):
    """The time coordinate's definition: grid_start_uutc * 1000 + round(i * 1e9 / fs)."""
    return np.int64(t0) * 1000 + np.rint(np.asarray(idx, dtype=np.float64) * 1e9 / fs).astype(np.int64)


@pytest.fixture(scope="module")
def mounted(module_mount_fs, corpus):
    # small tiles and a small cache, as test_views: right whatever the tiling
    m = module_mount_fs(corpus.source, "--workers", "2", "--tile-seconds", "3", "--cache-size", "8M")
    return m, corpus


@pytest.fixture(params=SESSIONS)
def session(request, mounted):
    m, corpus = mounted
    folder = m.root / request.param
    info = load_info(folder)
    assert info["status"] == "ok", info
    return folder, corpus.sessions[request.param], info


# ---------------------------------------------------------------------------
# values and coordinates
# ---------------------------------------------------------------------------

def check_dataset(folder, on_disk, info, password=""):
    assert info["zarr_store"] == "zarr/"
    store = folder / info["zarr_store"]
    ds = xr.open_zarr(store)                  # no other argument
    by_name = {c["name"]: c for c in info["channels"]}
    for g in info["grids"]:
        name = g["zarr_array"]
        a = ds[name]
        channel, sample = a.dims
        assert a.dtype == np.float32 and a.shape == (len(g["channels"]), g["number_of_samples"])
        assert list(ds[channel].values) == g["channels"]
        assert a.attrs["sampling_frequency"] == g["sampling_frequency"]
        assert a.attrs["grid_start_uutc"] == g["grid_start_uutc"]
        values = a.values
        for r, ch in enumerate(g["channels"]):
            f32 = (folder / by_name[ch]["file"]).read_bytes()
            assert values[r].tobytes() == f32, f"{name} row {r} ({ch}) differs from its .f32"
            assert f32 == reference(on_disk, ch, password).tobytes()
        # time: a coordinate on the sample dimension, decoded to datetimes
        time = a.coords[f"time_{name}"]
        assert time.dims == (sample,) and time.dtype == np.dtype("datetime64[ns]")
        n = g["number_of_samples"]
        idx = np.unique(np.r_[0, 1, n // 3, n // 2, n - 2, n - 1])
        got = time.isel({sample: idx}).values.astype(np.int64)
        assert np.array_equal(got, grid_ns(g["grid_start_uutc"], g["sampling_frequency"], idx))
        exact = g["grid_start_uutc"] * 1000.0 + idx * 1e9 / g["sampling_frequency"]
        assert np.all(np.abs(got - exact) <= 1.0), "time off the grid by more than 1 ns"
        # dask straight from zarr
        x = da.from_zarr(str(store), component=name)
        assert x.compute().tobytes() == values.tobytes()
    assert ds.attrs["session"] == info["session"]
    return ds


def test_xarray_and_dask_equal_the_channel_files(session):
    folder, on_disk, info = session
    check_dataset(folder, on_disk, info)


def test_rates_are_named_exactly(mounted):
    m, _ = mounted
    info = load_info(m.root / "rates.mefd")
    names = {g["zarr_array"] for g in info["grids"]}
    assert {"499.907Hz", "255.99966850667516Hz", "32768Hz"} <= names, names
    group = zarr.open_group(str(m.root / "rates.mefd" / "zarr"), mode="r")
    assert set(group.array_keys()) >= names


def test_odd_channel_names_in_the_coordinate(mounted):
    m, _ = mounted
    folder = m.root / "names.mefd"
    info = load_info(folder)
    ds = xr.open_zarr(folder / "zarr")
    got = [n for g in info["grids"] for n in ds[f"channel_{g['zarr_array']}"].values]
    assert got == [n for g in info["grids"] for n in g["channels"]]
    assert ".hidden" in got and "Fp1\u2013Ref \u00b5V" in got


@pytest.mark.parametrize("password,level", [(ENC_PASSWORD2, 2), (ENC_PASSWORD1, 1)])
def test_encrypted_session(mount_fs, encrypted, password, level):
    m = mount_fs(encrypted.source, "--password", password)
    folder = m.root / encrypted.rel
    info = load_info(folder)
    assert info["password_level"] == level
    ds = check_dataset(folder, encrypted.session, info, password)
    assert ds.attrs["time_reference"] == ("uUTC" if level == 2 else
                                          "relative to the recording-time offset (level-1 password)")


# ---------------------------------------------------------------------------
# listing and opening read no samples; probes fail fast and quietly
# ---------------------------------------------------------------------------

def test_listing_and_opening_read_no_block_index(mount_fs, corpus):
    m = mount_fs(corpus.source, "--tile-seconds", "3")
    for rel in SESSIONS:
        folder = m.root / rel
        info = load_info(folder)
        store = folder / info["zarr_store"]
        sizes = {os.path.relpath(os.path.join(d, f), store): os.stat(os.path.join(d, f)).st_size
                 for d, _, files in os.walk(store) for f in files}
        for g in info["grids"]:
            z = zarr.open_array(str(store), path=g["zarr_array"], mode="r")
            k = z.chunks[1]
            assert z.shards == (1, -(-g["number_of_samples"] // k) * k)
            count = -(-g["number_of_samples"] // k)
            for r in range(len(g["channels"])):
                assert sizes[f"{g['zarr_array']}/c.{r}.0"] == count * (4 * k + 16)
        xr.open_zarr(store)
    s = read_stats(m)
    assert s["indexes_loaded"] == 0, s
    assert s["misses"] == 0 and s["hits"] == 0, s


def test_probes_answer_enoent_quietly(mount_fs, corpus):
    m = mount_fs(corpus.source, "--statahead", "0")      # only what the probes open is counted
    store = m.root / "gaps.mefd" / "zarr"
    for _ in range(3):
        for rel in PROBES:
            with pytest.raises(FileNotFoundError):
                os.stat(store / rel)
            with pytest.raises(FileNotFoundError):
                open(store / rel, "rb")
    s = read_stats(m)
    assert s["sessions_open"] == 1 and s["indexes_loaded"] == 0, s
    log = m.log_text()
    assert "Traceback" not in log and " ERROR " not in log and " WARNING " not in log, log[-3000:]


# ---------------------------------------------------------------------------
# a slice decodes the tiles under its chunks, nothing else
# ---------------------------------------------------------------------------

FS = 1024.0
BLOCK = 2048                   # samples: one tile at --tile-seconds 2, one Zarr chunk
SECONDS = 120
CHANNELS = ("A", "B", "C")


@pytest.fixture(scope="module")
def regular_source(tmp_path_factory):
    """Blocks of 2048 samples from t0 on: with --tile-seconds 2, tiles are the
    blocks and the Zarr chunks are the tiles, so the tiles a slice needs are known."""
    source = tmp_path_factory.mktemp("regular") / "source"
    rng = np.random.default_rng(1313)
    with mef3io.Writer(str(source / "reg.mefd"), overwrite=True, units="uV",
                       block_length=BLOCK) as w:
        for ch in CHANNELS:
            w.write(ch, rng.standard_normal(int(FS * SECONDS)) * 30, T0, fs=FS, precision=3)
    return source


def decoded(after, before):
    d = {k: after[k] - before[k] for k in ("misses", "hits", "decodes_foreground", "decodes_inprocess",
                                           "decodes_background", "readahead_scheduled", "indexes_loaded")}
    d["decodes"] = d["decodes_foreground"] + d["decodes_inprocess"] + d["decodes_background"]
    return d


def test_a_slice_decodes_only_its_chunks(mount_fs, regular_source):
    m = mount_fs(regular_source, "--tile-seconds", "2", "--workers", "2")
    folder = m.root / "reg.mefd"
    store = folder / "zarr"
    ds = xr.open_zarr(store)
    a = ds["1024Hz"]
    assert a.encoding["chunks"] == (1, BLOCK), "chunks are expected to be the tiles here"
    s = read_stats(m)
    assert s["misses"] == 0 and s["indexes_loaded"] == 0, s

    def slice_costs(rows, lo, hi):
        before = read_stats(m)
        got = np.atleast_2d(a[rows, lo:hi].values)
        d = decoded(read_stats(m), before)
        for k, r in enumerate(np.atleast_1d(np.arange(len(CHANNELS))[rows])):
            want = reference(regular_source / "reg.mefd", CHANNELS[r])[lo:hi]
            assert got[k].tobytes() == want.tobytes()
        return d

    chunks = lambda lo, hi: hi // BLOCK - lo // BLOCK + (hi % BLOCK > 0)  # noqa: E731
    # one channel, across three chunks
    d = slice_costs(1, 5000, 9000)
    assert d["misses"] == d["decodes"] == chunks(5000, 9000) == 3, d
    assert d["decodes_background"] == 0 and d["readahead_scheduled"] == 0, d
    assert d["indexes_loaded"] == 1, f"only channel B's block index is needed: {d}"
    # two channels, inside one chunk
    d = slice_costs(slice(0, 2), 20_000, 20_100)
    assert d["misses"] == d["decodes"] == 2, d
    # again: nothing decoded twice (served by the kernel's page cache or the tile cache)
    d = slice_costs(1, 5000, 9000)
    assert d["misses"] == d["decodes"] == 0, d
    # a whole channel (zarr reads the whole shard): every tile once, read ahead as a scan is
    d = slice_costs(2, 0, int(FS * SECONDS))
    assert d["decodes"] == int(FS * SECONDS) // BLOCK, d
    assert d["indexes_loaded"] == 1, d


# ---------------------------------------------------------------------------
# a recording that grows while mounted
# ---------------------------------------------------------------------------

def wait_for(what, condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_a_growing_recording(tmp_path, mount_fs):
    """Samples that turn from NaN into data show in the store, through a held
    shard handle too; one more chunk (the index moves) gives that handle ESTALE
    and a new open sees the new shape."""
    src = tmp_path / "src"
    path = src / "live.mefd"
    rng = np.random.default_rng(77)
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        w.write("A", rng.standard_normal(256 * 20) * 30, T0, fs=256.0, precision=3)
        w.write("B", rng.standard_normal(256 * 10) * 30, T0, fs=256.0, precision=3)
    m = mount_fs(src, "--refresh", "0.2", "--workers", "1")
    folder = m.root / "live.mefd"
    store = folder / "zarr"
    a = xr.open_zarr(store)["256Hz"]
    k = a.encoding["chunks"][1]
    assert a.shape == (2, 256 * 20) and np.isnan(a[1, 256 * 10:].values).all()
    held = os.open(store / "256Hz" / "c.1.0", os.O_RDONLY)
    try:
        with mef3io.Writer(str(path), units="uV") as w:        # B catches up: the grid does not grow
            w.write("B", rng.standard_normal(256 * 10) * 30, T0 + 10_000_000, fs=256.0, precision=3)
        wait_for("B's new samples", lambda: not np.isnan(
            np.frombuffer((folder / "B.f32").read_bytes(), dtype="<f4")[-1]))
        b = (folder / "B.f32").read_bytes()
        assert xr.open_zarr(store)["256Hz"][1].values.tobytes() == b
        assert os.pread(held, len(b), 0) == b, "a held shard handle follows the session"
        grown = 256 * 20 + 2 * k                                # A grows by two chunks
        with mef3io.Writer(str(path), units="uV") as w:
            w.write("A", rng.standard_normal(2 * k) * 30, T0 + 20_000_000, fs=256.0, precision=3)
        wait_for("the new length", lambda: os.stat(folder / "A.f32").st_size == 4 * grown)
        with pytest.raises(OSError) as exc:
            os.pread(held, 16, 0)
        assert exc.value.errno == errno.ESTALE, "the index moved: the old handle must not read on"
    finally:
        os.close(held)
    ds = xr.open_zarr(store)
    a = ds["256Hz"]
    assert a.shape == (2, grown)
    for r, ch in enumerate(("A", "B")):
        assert a[r].values.tobytes() == (folder / f"{ch}.f32").read_bytes()
    info = load_info(folder)
    last = ds["time_256Hz"][-1].values.astype(np.int64)
    assert last == grid_ns(info["grids"][0]["grid_start_uutc"], 256.0, [grown - 1])[0]


# ---------------------------------------------------------------------------
# shard bytes, without zarr
# ---------------------------------------------------------------------------

def test_shard_bytes(mounted):
    m, corpus = mounted
    folder = m.root / "gaps.mefd"
    info = load_info(folder)
    by_name = {c["name"]: c for c in info["channels"]}
    for g in info["grids"]:
        meta = json.loads((folder / "zarr" / g["zarr_array"] / "zarr.json").read_bytes())
        inner = meta["codecs"][0]["configuration"]
        assert meta["fill_value"] == "NaN" and meta["data_type"] == "float32"
        assert inner["index_location"] == "end" and inner["index_codecs"][0]["name"] == "bytes"
        k = inner["chunk_shape"][1]
        n = g["number_of_samples"]
        count = -(-n // k)
        for r, ch in enumerate(g["channels"]):
            raw = (folder / "zarr" / g["zarr_array"] / f"c.{r}.0").read_bytes()
            assert len(raw) == count * (4 * k + 16)
            samples = np.frombuffer(raw[:4 * count * k], dtype="<f4")
            assert samples[:n].tobytes() == (folder / by_name[ch]["file"]).read_bytes()
            assert np.isnan(samples[n:]).all(), "the last chunk is padded with NaN"
            index = np.frombuffer(raw[4 * count * k:], dtype="<u8").reshape(count, 2)
            assert np.array_equal(index[:, 0], np.arange(count) * 4 * k)
            assert (index[:, 1] == 4 * k).all()
        # the time coordinate's shard: int64 ns, the same index layout
        raw = (folder / "zarr" / f"time_{g['zarr_array']}" / "c.0").read_bytes()
        ns = np.frombuffer(raw[:8 * count * k], dtype="<i8")
        assert np.array_equal(ns[:n], grid_ns(g["grid_start_uutc"], g["sampling_frequency"], np.arange(n)))
        # unaligned reads of a shard agree with the whole
        shard = folder / "zarr" / g["zarr_array"] / "c.0.0"
        whole = shard.read_bytes()
        fd = os.open(shard, os.O_RDONLY)
        try:
            for off, ln in ((1, 7), (4 * n - 3, 11), (4 * count * k - 5, 30), (len(whole) - 3, 10)):
                assert os.pread(fd, ln, off) == whole[off:off + ln], (off, ln)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------
# the scale-out recipe, on one machine
# ---------------------------------------------------------------------------

RECIPE = REPO / "examples" / "dask" / "channel_stats.py"
MANIFEST = REPO / "deploy" / "kubernetes" / "mef3fs-daemonset.yaml"


def numpy_stats(folder, info):
    out = {}
    for c in info["channels"]:
        x = np.fromfile(folder / c["file"], dtype="<f4").astype(np.float64)
        ok = x[~np.isnan(x)]
        out[c["name"]] = {"count": ok.size, "nan": x.size - ok.size, "mean": ok.mean(),
                          "std": ok.std(), "min": ok.min(), "max": ok.max()}
    return out


@pytest.mark.slow
def test_local_cluster_channel_stats_equal_numpy(mounted, tmp_path):
    """LocalCluster(processes=True), two workers, reading through the mount."""
    m, _ = mounted
    folders = [m.root / "gaps.mefd", m.root / "rates.mefd"]
    out = tmp_path / "stats.json"
    res = subprocess.run([sys.executable, str(RECIPE), "--local-workers", "2",
                          "--samples-per-task", "20000", "--out", str(out), *map(str, folders)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=subprocess_env())
    assert res.returncode == 0, res.stderr[-4000:]
    rows = json.loads(out.read_text())
    for folder in folders:
        info = load_info(folder)
        want = numpy_stats(folder, info)
        got = {r["channel"]: r for r in rows if r["session"] == str(folder)}
        assert set(got) == set(want)
        for name, w in want.items():
            g = got[name]
            assert (g["count"], g["nan"]) == (w["count"], w["nan"]), name
            assert (g["min"], g["max"]) == (w["min"], w["max"]), name
            assert g["mean"] == pytest.approx(w["mean"], rel=1e-9, abs=1e-9), name
            assert g["std"] == pytest.approx(w["std"], rel=1e-9), name


def test_daemonset_manifest_mounts_fuse_in_a_pod():
    yaml = pytest.importorskip("yaml")
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "mef3fs"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {v["mountPath"]: v for v in c["volumeMounts"]}
    # /dev/fuse, SYS_ADMIN, and the mount propagated to the node
    assert volumes[mounts["/dev/fuse"]["name"]]["hostPath"]["path"] == "/dev/fuse"
    assert "SYS_ADMIN" in c["securityContext"]["capabilities"]["add"]
    assert c["securityContext"]["privileged"] is True, "Kubernetes allows Bidirectional only when privileged"
    args = c["args"]
    mountpoint = args[-1]
    assert mounts[mountpoint]["mountPropagation"] == "Bidirectional"
    assert volumes[mounts[mountpoint]["name"]]["hostPath"]["path"] == mountpoint, "same path on the node"
    # SOURCE is a host path, read through the image's host root
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    root = env.get("MEF3FS_HOST_ROOT", "/host_root")
    source = args[-2]
    (src_mount,) = [p for p in mounts if p.startswith(root)]
    assert mounts[src_mount].get("readOnly") is True
    assert source.startswith("/") and (root + source).startswith(src_mount)
    # the command line is one the real CLI takes, in the foreground (the image's entry point)
    from mef3fs import cli
    ns = cli.build_parser().parse_args(["-f", *args])
    assert ns.foreground and "allow_other" in ",".join(ns.options)
    # a dead mount left by a killed pod is cleared before the next one mounts
    (init,) = pod["initContainers"]
    script = " ".join(init["command"])
    (parent,) = init["volumeMounts"]
    assert parent["mountPropagation"] == "Bidirectional"
    assert volumes[parent["name"]]["hostPath"]["path"] == os.path.dirname(mountpoint)
    inside = parent["mountPath"] + "/" + os.path.basename(mountpoint)
    assert f"fusermount3 -u -z {inside}" in script and f"mkdir -p {inside}" in script
    assert pod["terminationGracePeriodSeconds"] >= 30
