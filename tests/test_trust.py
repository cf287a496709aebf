"""Trust (issue 14): broken channels, hostile setups, BIDS trees, saying what is wrong.

Through real mounts and the real command line: a session with a damaged
channel, a channel locked with other passwords and an unreadable channel
folder still serves its healthy channels byte-exact and says in info.json
what it left out and why; a MOUNTPOINT inside SOURCE is refused before
mounting; SOURCE's own files (a BIDS dataset's sidecars) are shown
byte-identical beside the sessions unless --sessions-only; warnings at mount
for an empty SOURCE, a broken or locked single session and an empty
password file; option errors that name the option. Items 1-2 (recordings
that change) are in test_live.py, the truncated .tdat (item 8) in
test_reliability.py.
"""
from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

import mef3io

from tests.conftest import (
    STATS_FILE, errno_of, is_mounted, mef3fs_cmd, read_info, read_stats, reference, subprocess_env,
)
from tests.sessions import (
    ENC_PASSWORD1, ENC_PASSWORD2, T0, _rng, _signal, build_small_session,
)

NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def run_cli(*args, timeout=60):
    return subprocess.run(mef3fs_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=subprocess_env())


def one_error_line(res):
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("mef3fs: error: "), res
    return lines[0]


def same_bits(a, b):
    return np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


# ---------------------------------------------------------------------------
# item 3: one broken channel does not hide the session
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def broken_channels(tmp_path_factory):
    """Encrypted session: A, B healthy; C's metadata damaged; D locked with other
    passwords; E in a folder the daemon may not read (mode 000)."""
    base = tmp_path_factory.mktemp("broken")
    src = base / "src"
    path = src / "p.mefd"
    rng = _rng(77)
    with mef3io.Writer(str(path), overwrite=True, units="uV", password1=ENC_PASSWORD1,
                       password2=ENC_PASSWORD2) as w:
        for ch in ("A", "B", "C", "E"):
            w.write(ch, _signal(rng, 256 * 30), T0, fs=256.0, precision=3)
    pristine = base / "pristine.mefd"
    shutil.copytree(path, pristine)
    with mef3io.Writer(str(base / "other.mefd"), overwrite=True, units="uV", password1="other1",
                       password2="other2") as w:
        w.write("D", _signal(rng, 256 * 30), T0, fs=256.0, precision=3)
    shutil.copytree(base / "other.mefd" / "D.timd", path / "D.timd")
    (tmet,) = glob.glob(str(path / "C.timd" / "*.segd" / "*.tmet"))
    data = bytearray(open(tmet, "rb").read())
    data[2000:2100] = _rng(5).bytes(100)
    open(tmet, "wb").write(bytes(data))
    os.chmod(path / "E.timd", 0)
    yield src, path, pristine
    os.chmod(path / "E.timd", 0o755)


def test_healthy_channels_of_a_session_with_broken_ones(broken_channels, wrapped_mount):
    src, path, pristine = broken_channels
    # root reads everything: the daemon runs without the capabilities that bypass permissions
    m = wrapped_mount(src, "--password", ENC_PASSWORD2, "--workers", "1", prefix=NO_DAC)
    sdir = m.root / "p.mefd"
    info = read_info(sdir)
    assert info["status"] == "partial", info
    assert [c["name"] for c in info["channels"]] == ["A", "B"]
    why = {item["name"]: item["reason"] for item in info["left_out"]}
    assert set(why) == {"C", "D", "E"}, info["left_out"]
    assert "CRC" in why["C"] or "corrupt" in why["C"], why
    assert why["D"] == "it is encrypted with a password other than the one given", why
    assert "ermission" in why["E"] or "denied" in why["E"].lower(), why
    assert sorted(n for n in os.listdir(sdir) if n.endswith(".f32")) == ["A.f32", "B.f32"]
    for ch in ("A", "B"):
        got = np.fromfile(sdir / f"{ch}.f32", dtype="<f4")
        assert same_bits(got, reference(pristine, ch, ENC_PASSWORD2)), ch
    assert "Jane" not in json.dumps(info)            # not in the builder: nothing invented
    log = m.log_text()
    for ch in ("C", "D", "E"):
        assert sum(f"channel {ch} not shown" in line for line in log.splitlines()) == 1, log


def test_a_session_all_locked_still_says_so(broken_channels, mount_fs):
    src, path, _ = broken_channels
    m = mount_fs(src, "--workers", "0")                  # no password at all
    info = read_info(m.root / "p.mefd")
    assert info["status"] == "error" and "no password was given" in info["error"], info


# ---------------------------------------------------------------------------
# item 4: MOUNTPOINT inside SOURCE
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["child", "grandchild", "symlink", "same"])
def test_mountpoint_inside_source_is_refused(tmp_path, how):
    src = tmp_path / "src"
    build_small_session(src / "a.mefd", 1, seconds=2)
    if how == "child":
        mp = src / "mnt"
    elif how == "grandchild":
        mp = src / "deep" / "er"
    elif how == "symlink":
        (src / "inside").mkdir()
        os.symlink(src / "inside", tmp_path / "looks-outside")
        mp = tmp_path / "looks-outside"
    else:
        mp = tmp_path / "empty-src"
        src = mp
    os.makedirs(mp, exist_ok=True)
    if how == "same":
        res = run_cli("-f", str(src), str(mp))
    else:
        res = run_cli(str(src), str(mp))
    line = one_error_line(res)
    assert "inside SOURCE" in line, line
    assert not is_mounted(mp)


# ---------------------------------------------------------------------------
# item 7: SOURCE's own files (BIDS)
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    base = tmp_path_factory.mktemp("bids")
    root = base / "ds"
    ieeg = root / "sub-01" / "ses-1" / "ieeg"
    stem = "sub-01_ses-1_task-rest_run-1"
    build_small_session(ieeg / f"{stem}_ieeg.mefd", 88, seconds=4)
    files = {
        "dataset_description.json": json.dumps({"Name": "demo", "BIDSVersion": "1.9.0"}),
        "participants.tsv": "participant_id\tage\nsub-01\t34\n",
        "README": "A demo dataset.\n",
        f"sub-01/ses-1/ieeg/{stem}_channels.tsv": "name\ttype\tunits\nC1\tSEEG\tuV\nC2\tSEEG\tuV\n",
        f"sub-01/ses-1/ieeg/{stem}_ieeg.json": json.dumps({"SamplingFrequency": 256}),
        f"sub-01/ses-1/ieeg/{stem}_events.tsv": "onset\tduration\ttrial_type\n1.0\t0\tstim\n",
        "code/README.md": "analysis code lives here\n",
        "derivatives/notes.txt": "x" * 200_000,           # bigger than one FUSE read
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(text.encode())
    outside = base / "secret.txt"
    outside.write_text("outside SOURCE\n")
    os.symlink(outside, root / "escape.txt")
    os.symlink("README", root / "README.link")         # stays inside: followed
    os.mkfifo(root / "fifo")
    return root, files


def test_bids_files_are_shown_byte_identical(bids, mount_fs):
    root, files = bids
    m = mount_fs(root, "--workers", "0")
    shown = {}
    for folder, dirs, names in os.walk(m.root):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), m.root)
            if ".mefd/" not in rel and rel != STATS_FILE:
                shown[rel] = open(os.path.join(folder, name), "rb").read()
    expect = {rel: text.encode() for rel, text in files.items()}
    expect["README.link"] = files["README"].encode()
    assert shown == expect
    st = os.stat(m.root / "participants.tsv")
    assert st.st_size == len(files["participants.tsv"]) and not st.st_mode & 0o222
    assert errno_of(open, m.root / "participants.tsv", "w") == errno.EROFS
    assert errno_of(os.lstat, m.root / "escape.txt") == errno.ENOENT
    assert errno_of(os.lstat, m.root / "fifo") == errno.ENOENT
    # the session beside them is a decoded folder as ever
    sdir = m.root / "sub-01" / "ses-1" / "ieeg" / "sub-01_ses-1_task-rest_run-1_ieeg.mefd"
    assert read_info(sdir)["status"] == "ok"
    # SOURCE's files change: the mount shows what is there now
    (root / "README").write_text("A demo dataset, second edition.\n")
    deadline = time.monotonic() + 15
    while open(m.root / "README", "rb").read() != b"A demo dataset, second edition.\n":
        assert time.monotonic() < deadline, "README never showed its new content"
        time.sleep(0.2)


def test_sessions_only_hides_sources_own_files(bids, mount_fs):
    root, _ = bids
    m = mount_fs(root, "--workers", "0", "--sessions-only")
    assert sorted(os.listdir(m.root)) == [STATS_FILE, "sub-01"]
    assert os.listdir(m.root / "sub-01" / "ses-1" / "ieeg") == ["sub-01_ses-1_task-rest_run-1_ieeg.mefd"]
    assert errno_of(os.stat, m.root / "README") == errno.ENOENT


# ---------------------------------------------------------------------------
# item 8: say what is wrong
# ---------------------------------------------------------------------------

def warnings_of(res):
    return [line for line in res.stderr.splitlines() if line.startswith("mef3fs: warning: ")]


def mount_and_warnings(mount_fs, source, *extra):
    m = mount_fs(source, *extra, foreground=False)
    return m, [line for line in m.stderr_path.read_text().splitlines()
               if line.startswith("mef3fs: warning: ")]


def test_empty_source_warns(tmp_path, mount_fs):
    (tmp_path / "empty").mkdir()
    _, said = mount_and_warnings(mount_fs, tmp_path / "empty")
    assert len(said) == 1 and "is empty" in said[0], said


def test_a_single_broken_or_locked_session_warns(tmp_path, mount_fs, encrypted):
    (tmp_path / "broken.mefd").mkdir()
    _, said = mount_and_warnings(mount_fs, tmp_path / "broken.mefd")
    assert len(said) == 1 and "cannot be opened" in said[0], said
    _, said = mount_and_warnings(mount_fs, encrypted.session)
    assert len(said) == 1 and "no password was given" in said[0], said


def test_an_empty_password_file_warns_and_is_not_called_missing(tmp_path, mount_fs, encrypted):
    empty = tmp_path / "pw"
    empty.write_text("")
    m, said = mount_and_warnings(mount_fs, encrypted.source, "--password-file", empty)
    assert len(said) == 1 and "is empty" in said[0] and "--password-file" in said[0], said
    info = read_info(m.root / encrypted.rel)
    assert info["status"] == "error", info
    assert "no password was given" not in info["error"] and "is empty" in info["error"], info


def test_a_healthy_mount_says_nothing(tmp_path, mount_fs):
    build_small_session(tmp_path / "src" / "a.mefd", 3, seconds=2)
    _, said = mount_and_warnings(mount_fs, tmp_path / "src")
    assert said == []


@pytest.mark.parametrize("args, option, says", [
    (["--workers", "abc"], "--workers", "not a whole number"),
    (["--cache-size", "-5M"], "--cache-size", "not a size"),
    (["--cache-ttl", "soon"], "--cache-ttl", "not a number"),
    (["--refresh", "-1"], "--refresh", "must be >= 0"),
    (["-o", "bogus"], "-o bogus", "not a mount option"),
    (["-o", "allow_other,rw"], "-o rw", "not a mount option"),
])
def test_option_errors_name_the_option(tmp_path, args, option, says):
    build_small_session(tmp_path / "src" / "a.mefd", 4, seconds=2)
    (tmp_path / "mnt").mkdir()
    line = one_error_line(run_cli(*args, str(tmp_path / "src"), str(tmp_path / "mnt")))
    assert option in line and says in line, line
    assert "_count" not in line and "expected one argument" not in line, line
    assert not is_mounted(tmp_path / "mnt")


def test_cache_ttl_zero_keeps_tiles(tmp_path, mount_fs):
    src = tmp_path / "src"
    build_small_session(src / "a.mefd", 5, seconds=60, channels=("C1",))
    m = mount_fs(src, "--workers", "0", "--cache-ttl", "0")
    f32 = m.root / "a.mefd" / "C1.f32"
    ref = reference(src / "a.mefd", "C1")
    assert same_bits(np.fromfile(f32, dtype="<f4"), ref)
    misses = read_stats(m)["misses"]
    time.sleep(1.5)                     # an expiry of 0 s would have dropped every tile by now
    fd = os.open(f32, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 4096, 0) == ref[:1024].tobytes()
    finally:
        os.close(fd)
    stats = read_stats(m)
    assert stats["expired"] == 0 and stats["misses"] == misses and stats["hits"] > 0, stats


def test_a_block_index_cut_short_is_eio_not_nan(tmp_path, mount_fs):
    """A .tidx cut short: mef3io's lenient reader would skip the segment and answer
    with no blocks (all NaN, status ok); the mount says EIO and reads the rest."""
    src = tmp_path / "src"
    session = build_small_session(src / "t.mefd", 6, seconds=120, channels=("C1", "C2"))
    (tidx,) = (session / "C2.timd").glob("*.segd/*.tidx")
    os.truncate(tidx, 1024 + 56 * 3 + 20)               # three whole entries and part of one
    m = mount_fs(src, "--workers", "1")
    files = {c["name"]: m.root / "t.mefd" / c["file"] for c in read_info(m.root / "t.mefd")["channels"]}
    with open(files["C2"], "rb") as f:
        assert errno_of(f.read) == errno.EIO
    assert same_bits(np.fromfile(files["C1"], dtype="<f4"), reference(session, "C1"))
    assert "C2" in m.log_text() and "cannot be read" in m.log_text()
