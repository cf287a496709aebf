"""Owners, modes and times through the mount are the source's (mef3fs/attrs.py).

Seen here as root, with stat: what each node reports. That the kernel then
keeps other users out is shown with real users in test_users.py.
"""
from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from tests.conftest import mef3fs_cmd, mounted_paths, subprocess_env
from tests.sessions import build_archive, build_encrypted, build_small_session

T_SUB = 1_500_000_000_123_456_789          # ns: fixed, old times set on the source
T_SESSION = 1_550_000_000_000_000_001
T_C1 = 1_560_000_000_000_000_002
T_C1_NEWEST = T_C1 + 7_000_000_000
T_C2 = 1_570_000_000_000_000_003
T_TAR = 1_580_000_000_000_000_004
ODD_UID, ODD_GID = 4242, 4343           # need not exist


def set_time(path, ns):
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def tree(path):
    out = [str(path)]
    for root, dirs, files in os.walk(path):
        out += [os.path.join(root, n) for n in dirs + files]
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """sub/ (old), sub/s.mefd (its own time, owner and mode; C1's newest file is its
    .tdat, C2's folder is the owner's only), sub/a.mefd.tar (0640), a sidecar file."""
    src = tmp_path_factory.mktemp("attrs") / "source"
    sub = src / "sub"
    sub.mkdir(parents=True)
    session = build_small_session(sub / "s.mefd", 5150, seconds=6, channels=("C1", "C2"))
    build_archive(tmp_path_factory.mktemp("stage"), sub / "a.mefd.tar")
    for path in tree(session):
        os.chown(path, ODD_UID, ODD_GID)
        os.chmod(path, 0o2775 if os.path.isdir(path) else 0o664)    # setgid, group-writable
    os.chmod(session / "C2.timd", 0o700)
    for path in tree(session / "C1.timd"):     # a writer appending rewrites the .tmet
        set_time(path, T_C1_NEWEST if path.endswith(".tmet") else T_C1)
    for path in tree(session / "C2.timd"):
        set_time(path, T_C2)
    set_time(session, T_SESSION)
    os.chmod(sub / "a.mefd.tar", 0o640)
    set_time(sub / "a.mefd.tar", T_TAR)
    sidecar = sub / "sub-01_channels.tsv"            # one of SOURCE's own files, shown as it is
    sidecar.write_text("name\ttype\nC1\tSEEG\n")
    os.chown(sidecar, ODD_UID, ODD_GID)
    os.chmod(sidecar, 0o4751)                        # setuid and w go, x stays
    set_time(sidecar, T_TAR)
    set_time(sub, T_SUB)
    return src


@pytest.fixture(scope="module")
def mounted(module_mount_fs, source):
    return module_mount_fs(source).root


def st(path):
    return os.stat(path)


def test_folders_keep_owner_mode_and_times(mounted, source):
    for rel in ("", "sub", "sub/s.mefd"):
        want, got = st(source / rel), st(mounted / rel)
        assert stat.S_ISDIR(got.st_mode), rel
        assert stat.S_IMODE(got.st_mode) == stat.S_IMODE(want.st_mode) & 0o555, rel
        assert (got.st_uid, got.st_gid) == (want.st_uid, want.st_gid), rel
        assert got.st_mtime_ns == want.st_mtime_ns, rel
    assert st(mounted / "sub").st_mtime_ns == T_SUB
    assert stat.S_IMODE(st(mounted / "sub/s.mefd").st_mode) == 0o555   # 2775: w and setgid go


def test_decoded_files_follow_their_sources(mounted, source):
    s = mounted / "sub" / "s.mefd"
    c1, c2 = st(s / "C1.f32"), st(s / "C2.f32")
    assert (c1.st_uid, c1.st_gid) == (ODD_UID, ODD_GID)
    assert stat.S_IMODE(c1.st_mode) == 0o444
    assert stat.S_IMODE(c2.st_mode) == 0o400              # C2.timd is 0700
    assert stat.S_IMODE(st(s / "C2.npy").st_mode) == 0o400
    assert stat.S_IMODE(st(s / "rates" / "256Hz.npy").st_mode) == 0o400   # holds C2
    assert stat.S_IMODE(st(s / "info.json").st_mode) == 0o444
    # views that summarise channels: as the channels they are made from
    assert stat.S_IMODE(st(s / "overview/blocks/C1.npy").st_mode) == 0o444
    assert stat.S_IMODE(st(s / "overview/blocks/C2.npy").st_mode) == 0o400
    assert stat.S_IMODE(st(s / "preview.png").st_mode) == 0o400
    assert stat.S_IMODE(st(s / "rates").st_mode) == 0o555
    # times: the newest of the channel's own files; session metadata: of all
    assert c1.st_mtime_ns == T_C1_NEWEST
    assert c2.st_mtime_ns == T_C2
    assert st(s / "info.json").st_mtime_ns == max(T_SESSION, T_C1_NEWEST, T_C2)
    assert st(s / "rates" / "256Hz.npy").st_mtime_ns == max(T_C1_NEWEST, T_C2)
    # (data and index files are not looked at: their inodes cost a disk read each, cold)
    ctimes = [os.stat(p).st_ctime_ns for p in tree(source / "sub/s.mefd/C1.timd")
              if not p.endswith((".tdat", ".tidx"))]
    assert c1.st_ctime_ns == max(ctimes)


def test_archive_session_is_a_folder_whoever_may_read_it_may_enter(mounted, source):
    tar, shown = st(source / "sub/a.mefd.tar"), st(mounted / "sub/a.mefd.tar")
    assert stat.S_ISDIR(shown.st_mode)
    assert stat.S_IMODE(shown.st_mode) == 0o550
    assert shown.st_mtime_ns == tar.st_mtime_ns == T_TAR
    for name in ("T1.f32", "info.json"):
        f = st(mounted / "sub/a.mefd.tar" / name)
        assert stat.S_IMODE(f.st_mode) == 0o440, name
        assert f.st_mtime_ns == T_TAR, name
        assert (f.st_uid, f.st_gid) == (tar.st_uid, tar.st_gid)


def test_sources_own_files_keep_owner_mode_and_times(mounted, source):
    want, got = st(source / "sub/sub-01_channels.tsv"), st(mounted / "sub/sub-01_channels.tsv")
    assert stat.S_ISREG(got.st_mode)
    assert stat.S_IMODE(got.st_mode) == 0o551
    assert (got.st_uid, got.st_gid, got.st_size) == (ODD_UID, ODD_GID, want.st_size)
    assert got.st_mtime_ns == want.st_mtime_ns == T_TAR


def test_the_mounts_own_stats_file(mounted):
    f = st(mounted / ".mef3fs-stats.json")
    assert stat.S_IMODE(f.st_mode) == 0o444
    assert (f.st_uid, f.st_gid) == (os.getuid(), os.getgid())


@pytest.fixture(scope="module")
def encrypted_source(tmp_path_factory):
    """An encrypted session and a plain one, both owned by someone else, 0755."""
    base = tmp_path_factory.mktemp("attrs-enc")
    enc = build_encrypted(base)
    build_small_session(enc.source / "plain.mefd", 5151, seconds=4, channels=("A",))
    for path in tree(enc.source):
        os.chown(path, ODD_UID, ODD_GID)
    return enc


@pytest.mark.parametrize("umask, mode", [(None, 0o400), ("027", 0o440), ("0", 0o444)])
def test_encrypted_session_decodes_for_the_mounter(mount_fs, encrypted_source, umask, mode):
    enc = encrypted_source
    extra = ["--password", enc.password2] + (["-o", f"umask={umask}"] if umask else [])
    root = mount_fs(enc.source, *extra).root
    folder = st(root / "enc.mefd")                         # SOURCE's folder: the source's
    assert (folder.st_uid, stat.S_IMODE(folder.st_mode)) == (ODD_UID, 0o555)
    for name in ("E1.f32", "info.json", "rates/256Hz.npy"):
        f = st(root / "enc.mefd" / name)
        assert (f.st_uid, f.st_gid) == (os.getuid(), os.getgid()), name
        assert stat.S_IMODE(f.st_mode) == mode, name
    assert stat.S_IMODE(st(root / "enc.mefd/rates").st_mode) == mode | mode >> 2
    plain = st(root / "plain.mefd" / "A.f32")               # not encrypted: as its source
    assert (plain.st_uid, stat.S_IMODE(plain.st_mode)) == (ODD_UID, 0o444)


@pytest.mark.parametrize("value", ["999", "abc", "", "-22"])
def test_bad_umask_is_refused_before_mounting(tmp_path, source, value):
    mp = tmp_path / "mp"
    mp.mkdir()
    out = subprocess.run(mef3fs_cmd("-f", "-o", f"allow_other,umask={value}", source, mp),
                         capture_output=True, text=True, timeout=60, env=subprocess_env(),
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mef3fs: error: -o umask="), out.stderr
    assert str(mp) not in mounted_paths()


@pytest.mark.slow
def test_changes_in_source_show_after_the_kernels_timeout(mount_fs, tmp_path):
    """chmod and new data in SOURCE while mounted: the mount says so once the kernel
    asks again (attr_timeout), also after a listing (readdirplus carries attributes)."""
    from mef3fs.attrs import SOURCE_TTL
    from mef3fs.cli import ATTR_TIMEOUT
    src = tmp_path / "src"
    session = build_small_session(src / "s.mefd", 5152, seconds=4, channels=("C1", "C2"))
    root = mount_fs(src).root
    s = root / "s.mefd"
    for entry in os.scandir(s):              # a listing with attributes, as ls -l does
        entry.stat()
    assert stat.S_IMODE(st(s / "C2.f32").st_mode) == 0o444
    os.chmod(session / "C2.timd", 0o700)
    later = time.time_ns() + 3600 * 10**9      # newer than anything there: new data
    set_time(next((session / "C1.timd").rglob("*.tmet")), later)
    time.sleep(ATTR_TIMEOUT + SOURCE_TTL + 0.5)
    for entry in os.scandir(s):
        entry.stat()
    assert stat.S_IMODE(st(s / "C2.f32").st_mode) == 0o400
    assert stat.S_IMODE(st(s / "rates" / "256Hz.npy").st_mode) == 0o400
    assert st(s / "C1.f32").st_mtime_ns == later
