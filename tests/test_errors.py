"""Error behaviour through a real mount: EROFS, EIO on a damaged block,
encrypted sessions, ENOENT, symlinks out of SOURCE, unopenable sessions."""
from __future__ import annotations

import errno
import json
import os
import re

import numpy as np
import pytest

from tests.conftest import channel_files, errno_of, STATS_FILE
from tests.sessions import reference


@pytest.fixture(scope="module")
def corpus_mnt(module_mount_fs, corpus):
    # sessions only: what is hidden below is SOURCE's own stray files (test_trust.py shows them)
    return module_mount_fs(corpus.source, "--sessions-only")


# ---------------------------------------------------------------------------
# read-only
# ---------------------------------------------------------------------------

def _write_ops(root):
    sdir = root / "gaps.mefd"
    f32 = sdir / "LA1.f32"
    info = sdir / "info.json"
    return {
        "open-write": lambda: os.close(os.open(f32, os.O_WRONLY)),
        "open-rdwr": lambda: os.close(os.open(f32, os.O_RDWR)),
        "open-append": lambda: os.close(os.open(info, os.O_WRONLY | os.O_APPEND)),
        "open-trunc": lambda: os.close(os.open(f32, os.O_WRONLY | os.O_TRUNC)),
        "create-in-session": lambda: os.close(os.open(sdir / "new.f32", os.O_CREAT | os.O_WRONLY, 0o644)),
        "create-in-root": lambda: os.close(os.open(root / "new.txt", os.O_CREAT | os.O_WRONLY, 0o644)),
        "create-excl": lambda: os.close(os.open(root / "x", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)),
        "mkdir-root": lambda: os.mkdir(root / "newdir"),
        "mkdir-session": lambda: os.mkdir(sdir / "newdir"),
        "unlink": lambda: os.unlink(f32),
        "unlink-info": lambda: os.unlink(info),
        "rmdir": lambda: os.rmdir(root / "sub-01" / "ses-1" / "night1.mefd"),
        "rename-file": lambda: os.rename(f32, sdir / "renamed.f32"),
        "rename-dir": lambda: os.rename(sdir, root / "renamed.mefd"),
        "chmod": lambda: os.chmod(f32, 0o666),
        "chmod-dir": lambda: os.chmod(sdir, 0o777),
        "chown": lambda: os.chown(f32, 1234, 1234),
        "truncate": lambda: os.truncate(f32, 0),
        "truncate-grow": lambda: os.truncate(info, 10_000_000),
        "setxattr": lambda: os.setxattr(f32, "user.test", b"x"),
        "setxattr-existing": lambda: os.setxattr(f32, "user.mef3fs.units", b"mV"),
        "removexattr": lambda: os.removexattr(f32, "user.mef3fs.units"),
        "symlink": lambda: os.symlink("gaps.mefd", root / "lnk"),
        "link": lambda: os.link(f32, root / "hard.f32"),
        "utime": lambda: os.utime(f32, (1, 1)),
    }


OPS = list(_write_ops(__import__("pathlib").Path("/")).keys())


@pytest.mark.parametrize("op", OPS)
def test_every_change_is_erofs(corpus_mnt, op):
    root = corpus_mnt.root
    before = sorted(os.listdir(root / "gaps.mefd"))
    code = errno_of(_write_ops(root)[op])
    assert code == errno.EROFS, (
        f"{op}: expected EROFS, got {errno.errorcode.get(code, code) if code else 'success'}")
    assert sorted(os.listdir(root / "gaps.mefd")) == before
    assert os.path.ismount(root)


def test_writes_through_open_readonly_fd_fail(corpus_mnt):
    f32 = corpus_mnt.root / "gaps.mefd" / "LA1.f32"
    size = os.stat(f32).st_size
    fd = os.open(f32, os.O_RDONLY)
    try:
        assert errno_of(os.write, fd, b"x") == errno.EBADF
        assert errno_of(os.ftruncate, fd, 0) in (errno.EBADF, errno.EINVAL, errno.EROFS)
    finally:
        os.close(fd)
    assert os.stat(f32).st_size == size


# ---------------------------------------------------------------------------
# ENOENT, hidden entries, symlinks out of SOURCE
# ---------------------------------------------------------------------------

MISSING = ["nope", "nope.mefd", "gaps.mefd/nope.f32", "gaps.mefd/LA1", "gaps.mefd/la1.f32",
           "sub-01/nope", "sub-01/ses-1/nope.mefd", "gaps.mefd/rates/nope.npy",
           "unrelated/data/readme.txt"]


@pytest.mark.parametrize("rel", MISSING)
def test_missing_paths_enoent(corpus_mnt, rel):
    p = corpus_mnt.root / rel
    assert errno_of(os.lstat, p) == errno.ENOENT
    assert errno_of(os.stat, p) == errno.ENOENT
    assert errno_of(os.open, p, os.O_RDONLY) == errno.ENOENT
    assert errno_of(os.listdir, p) == errno.ENOENT


def test_namespace_shows_only_sessions(corpus_mnt, corpus):
    root = corpus_mnt.root
    top = set(os.listdir(root)) - {STATS_FILE}
    expected = {rel.split("/")[0] for rel in list(corpus.sessions) + list(corpus.broken)}
    assert top == expected
    assert set(os.listdir(root / "sub-01")) == {"ses-1"}
    assert set(os.listdir(root / "sub-01" / "ses-1")) == {"night1.mefd"}
    assert (root / "arch.mefd.tar").is_dir()
    for rel in corpus.hidden:
        p = root / rel
        assert errno_of(os.lstat, p) == errno.ENOENT, f"{rel} is shown"
        assert p.name not in os.listdir(p.parent), f"{rel} is listed"


def test_symlink_out_of_source_not_reachable(corpus_mnt, corpus):
    root = corpus_mnt.root
    for rel in ("escape", "escape.mefd", "sub-01/ses-1/up.mefd"):
        assert errno_of(os.lstat, root / rel) == errno.ENOENT
    for rel in ("escape/outside.mefd/info.json", "escape.mefd/info.json",
                "escape.mefd/C1.f32", "sub-01/ses-1/up.mefd/info.json"):
        assert errno_of(os.open, root / rel, os.O_RDONLY) == errno.ENOENT, rel
    # nothing anywhere in the mount is a symlink or leads to the outside session
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            assert not os.path.islink(p), p
            assert "outside" not in p and "escape" not in p, p


@pytest.mark.parametrize("rel", ["empty.mefd", "garbage.mefd"])
def test_unopenable_session_shows_only_info_json(corpus_mnt, rel):
    sdir = corpus_mnt.root / rel
    assert sorted(os.listdir(sdir)) == ["info.json"]
    with open(sdir / "info.json", "rb") as f:
        info = json.load(f)
    assert isinstance(info, dict)
    errors = {k: v for k, v in info.items() if "error" in k.lower() and isinstance(v, str) and v.strip()}
    assert errors, f"info.json does not say why the session cannot be opened: {info}"
    assert not info.get("channels"), info.get("channels")
    assert errno_of(os.stat, sdir / "x.f32") == errno.ENOENT
    # the rest of the mount is unaffected
    assert (corpus_mnt.root / "gaps.mefd" / "info.json").is_file()


# ---------------------------------------------------------------------------
# damaged block: EIO there, everything else works, one log line
# ---------------------------------------------------------------------------

UUTC = re.compile(r"(?<!\d)1\d{15}(?!\d)")


def test_damaged_block_eio_only_there(mount_fs, damaged):
    m = mount_fs(damaged.source)
    sdir = m.root / damaged.rel
    files = channel_files(sdir)
    bad = files[damaged.channel]
    ref_bad = reference(damaged.pristine, damaged.channel).tobytes()
    ref_good = reference(damaged.pristine, damaged.good_channel).tobytes()
    size = len(ref_bad)
    assert os.stat(bad).st_size == size

    a = damaged.bad_first_sample * 4  # first byte of the damaged block
    b = damaged.bad_last_sample * 4  # one past its last byte
    fd = os.open(bad, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        # far from the damaged block: start and end of the file
        assert os.pread(fd, 65536, 0) == ref_bad[:65536]
        assert os.pread(fd, 65536, size - 65536) == ref_bad[size - 65536:]
        # reads touching the block fail with EIO
        touching = [(a + 1000, 100), (a, 4), (b - 4, 4), (a - 4096, 8192), (b - 100, 5000),
                    ((a + b) // 2, 1)]
        for off, ln in touching:
            # A read that starts in good data may legally return the good
            # bytes first (a short read, as for any file); continuing it
            # must then fail with EIO, and what it gave must be right.
            got, err = b"", None
            while len(got) < ln:
                try:
                    chunk = os.pread(fd, ln - len(got), off + len(got))
                except OSError as e:
                    err = e.errno
                    break
                if not chunk:
                    break
                got += chunk
            assert err == errno.EIO, (f"pread({ln}, {off}) touching the damaged block "
                                      f"[{a}, {b}) did not fail with EIO (got {len(got)} bytes)")
            assert got == ref_bad[off:off + len(got)]
            assert (off + len(got) <= a) if off < a else not got, "damaged bytes were served"
        # and again (nothing cached a wrong answer)
        assert errno_of(os.pread, fd, 64, a + 64) == errno.EIO
        # whole pages next to the block (not sharing a page with it) still work
        page_before = (a // 4096 - 1) * 4096
        page_after = ((b + 4095) // 4096 + 1) * 4096
        assert os.pread(fd, 4096, page_before) == ref_bad[page_before:page_before + 4096]
        assert os.pread(fd, 4096, page_after) == ref_bad[page_after:page_after + 4096]
        # other ranges of the channel, unaligned
        rng = np.random.default_rng(77)
        for _ in range(60):
            off = int(rng.integers(0, size))
            ln = int(rng.integers(1, 50_000))
            if off + ln > page_before and off < page_after + 4096:
                continue
            assert os.pread(fd, ln, off) == ref_bad[off:off + ln]
    finally:
        os.close(fd)

    # whole-file read fails with EIO (it touches the block) ...
    with pytest.raises(OSError) as exc:
        with open(bad, "rb") as f:
            f.read()
    assert exc.value.errno == errno.EIO
    # ... the other channel of the session reads whole and byte-exact
    with open(files[damaged.good_channel], "rb") as f:
        assert f.read() == ref_good
    assert os.path.ismount(m.root)
    assert (sdir / "info.json").is_file()

    # the log says which session, channel and time
    lines = [ln for ln in m.log_text().splitlines()
             if damaged.rel in ln and re.search(rf"\b{damaged.channel}\b", ln)]
    hits = []
    for ln in lines:
        stamps = [int(x) for x in UUTC.findall(ln)]
        if len(stamps) >= 2 and min(stamps) < damaged.bad_t1 and max(stamps) > damaged.bad_t0:
            hits.append(ln)
    assert hits, ("no log line names session, channel and a uUTC range overlapping "
                  f"[{damaged.bad_t0}, {damaged.bad_t1}):\n{m.log_text()[-4000:]}")


# ---------------------------------------------------------------------------
# encrypted sessions
# ---------------------------------------------------------------------------

def _info_only(sdir):
    assert sorted(os.listdir(sdir)) == ["info.json"]
    with open(sdir / "info.json", "rb") as f:
        raw = f.read()
    info = json.loads(raw)
    assert isinstance(info, dict)
    assert "password" in raw.decode("utf-8").lower(), f"info.json does not say why: {info}"
    assert not info.get("channels")
    return info


def test_encrypted_without_password(mount_fs, encrypted):
    m = mount_fs(encrypted.source)
    _info_only(m.root / encrypted.rel)
    for ch in ("E1", "E2"):
        assert errno_of(os.stat, m.root / encrypted.rel / f"{ch}.f32") == errno.ENOENT


def test_encrypted_wrong_password(mount_fs, encrypted):
    m = mount_fs(encrypted.source, "--password", "not-the-password")
    _info_only(m.root / encrypted.rel)


def _check_encrypted_bytes(m, encrypted, password):
    sdir = m.root / encrypted.rel
    files = channel_files(sdir)
    assert sorted(files) == ["E1", "E2"]
    for ch, path in files.items():
        ref = reference(encrypted.session, ch, password)
        with open(path, "rb") as f:
            assert f.read() == ref.tobytes(), f"{ch} differs from reference"
        rng = np.random.default_rng(5)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            size = len(ref) * 4
            for _ in range(40):
                off, ln = int(rng.integers(0, size + 100)), int(rng.integers(1, 20_000))
                assert os.pread(fd, ln, off) == ref.tobytes()[off:off + ln]
        finally:
            os.close(fd)
    return (sdir / "info.json").read_text()


def test_encrypted_password_option(mount_fs, encrypted):
    m = mount_fs(encrypted.source, "--password", encrypted.password2)
    text = _check_encrypted_bytes(m, encrypted, encrypted.password2)
    assert "Jane" in text, "level-2 password: subject fields should be in info.json"


def test_encrypted_password_file(mount_fs, encrypted, tmp_path):
    pw = tmp_path / "pw.txt"
    pw.write_text(encrypted.password2 + "\n")  # as `echo PW > file` writes it
    os.chmod(pw, 0o600)
    m = mount_fs(encrypted.source, "--password-file", pw)
    _check_encrypted_bytes(m, encrypted, encrypted.password2)


def test_encrypted_level1_password(mount_fs, encrypted):
    m = mount_fs(encrypted.source, "--password", encrypted.password1)
    text = _check_encrypted_bytes(m, encrypted, encrypted.password1)
    assert "Jane" not in text and "S-007" not in text, \
        "level-1 password must not expose subject fields"
