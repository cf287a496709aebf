"""Hostile input (issue 6, part 4), through one real mount of a hostile SOURCE.

Symbolic links leading out of SOURCE (at every level), names with spaces,
unicode, leading dots, 200+ bytes and bytes that are not UTF-8, sessions that
are empty, garbage, or tars that are not tars, reads at huge offsets and of
size zero, and paths with `..`. Each case has one expected outcome, stated in
its test.
"""
from __future__ import annotations

import errno
import json
import os
import tarfile
import unicodedata
from pathlib import Path

import mef3io
import pytest

from tests.conftest import STATS_FILE, channel_files, errno_of, read_info, read_stats
from tests.sessions import (T0, _rng, _signal, build_archive, build_garbage_session,
                            build_names_session, build_small_session, reference)

NFC = unicodedata.normalize("NFC", "caf\u00e9")
NFD = unicodedata.normalize("NFD", "caf\u00e9")
LONG_CHANNEL = "ch-" + "\u00fc" * 100                     # 203 bytes in UTF-8
LONG_SESSION = "L" * 100 + "\u00e9" * 60 + ".mefd"        # 225 bytes
NON_UTF8 = b"caf\xe9 latin1.mefd"                          # not valid UTF-8

# name in the mount -> how it is built
GOOD = ["with space.mefd", "\u00fcn\u00efc\u00f8d\u00e9 \u03a9 \u00b5V.mefd", ".dotted.mefd",
        "...mefd", LONG_SESSION, "names.mefd", "unicode-channels.mefd", "mixed.mefd",
        "sub dir/ses 1/deep.mefd", "inside-link.mefd", "arch.mefd.tar"]
BROKEN = ["empty.mefd", "garbage.mefd", "emptychannel.mefd", "notatar.mefd.tar",
          "zero.mefd.tar", "textonly.mefd.tar", "cut.mefd.tar"]
HIDDEN = ["escape-abs", "escape-rel", "escape.mefd", "escape-tar.mefd.tar", "root-link",
          "loop", "dangling.mefd", "file.mefd", "dir.mefd.tar", "nosession", "stray.txt"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    src, out, staging = base / "source", base / "outside", base / "staging"
    for d in (src, out, staging):
        d.mkdir()
    real = {}   # name in the mount -> session on disk (the reference)

    # --- outside SOURCE: a session folder, a session tar, a channel ----------
    outside_session = build_small_session(out / "o.mefd", 901, seconds=20,
                                          channels=("X1", "X2"), fs=1000.0)
    outside_tar = build_archive(staging, out / "o.mefd.tar")

    # --- good sessions with hostile names -----------------------------------
    for k, name in enumerate(GOOD[:5]):
        real[name] = build_small_session(src / name, 910 + k, seconds=20,
                                         channels=("C 1", "C2"), fs=1000.0)
    real["names.mefd"] = build_names_session(src / "names.mefd")
    with mef3io.Writer(str(src / "unicode-channels.mefd"), overwrite=True, units="uV") as w:
        rng = _rng(920)
        for k, name in enumerate([NFC, NFD, LONG_CHANNEL, "\u6f22\u5b57 ch"]):
            w.write(name, _signal(rng, 1000 * 12), T0 + k * 1000, fs=1000.0, precision=3)
    real["unicode-channels.mefd"] = src / "unicode-channels.mefd"
    # a session one of whose channel folders is a symlink leading out of SOURCE
    real["mixed.mefd"] = build_small_session(src / "mixed.mefd", 921, seconds=20,
                                             channels=("M1",), fs=1000.0)
    os.symlink(outside_session / "X1.timd", src / "mixed.mefd" / "X1.timd")
    (src / "sub dir" / "ses 1").mkdir(parents=True)
    real["sub dir/ses 1/deep.mefd"] = build_small_session(src / "sub dir" / "ses 1" / "deep.mefd",
                                                          922, seconds=20, fs=1000.0)
    os.symlink("with space.mefd", src / "inside-link.mefd")   # stays inside: followed
    real["inside-link.mefd"] = src / "with space.mefd"
    real["arch.mefd.tar"] = build_archive(staging, src / "arch.mefd.tar")
    # a session whose folder name is not UTF-8
    build_small_session(staging / "nonutf8.mefd", 923, seconds=20, fs=1000.0)
    os.rename(bytes(staging / "nonutf8.mefd"), bytes(src) + b"/" + NON_UTF8)

    # --- sessions that cannot be opened ------------------------------------
    (src / "empty.mefd").mkdir()
    build_garbage_session(src / "garbage.mefd")
    (src / "emptychannel.mefd" / "E.timd").mkdir(parents=True)
    (src / "notatar.mefd.tar").write_bytes(_rng(930).bytes(10_000))
    (src / "zero.mefd.tar").write_bytes(b"")
    (staging / "readme.txt").write_text("not a session\n")
    with tarfile.open(src / "textonly.mefd.tar", "w") as t:
        t.add(staging / "readme.txt", arcname="readme.txt")
    whole = build_archive(staging / "cut", staging / "whole.mefd.tar").read_bytes()
    (src / "cut.mefd.tar").write_bytes(whole[:3000])

    # --- things that must not be shown --------------------------------------
    os.symlink(out, src / "escape-abs")
    os.symlink(os.path.relpath(out, src), src / "escape-rel")
    os.symlink(outside_session, src / "escape.mefd")
    os.symlink(outside_tar, src / "escape-tar.mefd.tar")
    os.symlink("/", src / "root-link")
    os.symlink("loop", src / "loop")
    os.symlink(src / "does-not-exist.mefd", src / "dangling.mefd")
    (src / "file.mefd").write_text("a file named like a session\n")
    (src / "dir.mefd.tar").mkdir()
    (src / "nosession" / "deeper").mkdir(parents=True)
    (src / "stray.txt").write_text("stray\n")
    # inside a shown folder too
    os.symlink(outside_session, src / "sub dir" / "ses 1" / "up.mefd")
    os.symlink("../../../outside", src / "sub dir" / "ses 1" / "up")
    return {"source": src, "outside": out, "outside_session": outside_session, "real": real}


@pytest.fixture(scope="module")
def hmount(module_mount_fs, hostile):
    return module_mount_fs(hostile["source"], "--workers", "2", "--sessions-only")


def _log_mark(m):
    return len(m.log_text())


def _new_log(m, mark):
    return m.log_text()[mark:]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _check_session_exact(sdir, session):
    info = read_info(sdir)
    assert info["status"] == "ok", info
    for ch in info["channels"]:
        assert _read(Path(sdir) / ch["file"]) == reference(session, ch["name"]).tobytes(), ch["name"]
    return info


# ---------------------------------------------------------------------------
# symbolic links
# ---------------------------------------------------------------------------

def test_links_leading_out_are_not_shown_nor_reachable(hmount, hostile):
    names = os.listdir(hmount.root)
    for name in HIDDEN:
        assert name not in names, (name, names)
        assert errno_of(os.stat, hmount.root / name) == errno.ENOENT, name
    for path in ["escape-abs/o.mefd", "escape-abs/o.mefd/X1.f32", "escape-rel/o.mefd/info.json",
                 "escape.mefd/info.json", "escape-tar.mefd.tar/T1.f32", "root-link/etc/passwd",
                 "root-link/tmp", "sub dir/ses 1/up.mefd/X1.f32", "sub dir/ses 1/up/o.mefd"]:
        assert errno_of(os.stat, hmount.root / path) == errno.ENOENT, path
    assert sorted(os.listdir(hmount.root / "sub dir" / "ses 1")) == ["deep.mefd"]


def test_link_inside_source_is_followed(hmount, hostile):
    _check_session_exact(hmount.root / "inside-link.mefd", hostile["real"]["inside-link.mefd"])


def test_channel_folder_linking_out_is_not_exposed(hmount, hostile):
    """mixed.mefd/X1.timd is a symlink to a channel of a session outside SOURCE.
    DESIGN.md: nothing outside SOURCE is ever exposed -- so X1 is not a channel
    of mixed.mefd (not listed, not in info.json, ENOENT), and M1 is exact."""
    sdir = hmount.root / "mixed.mefd"
    listing = os.listdir(sdir)
    info = read_info(sdir)
    shown = [ch["name"] for ch in info["channels"]]
    assert "X1" not in shown and "X1.f32" not in listing, (
        f"a channel outside SOURCE is exposed: listing {listing}, info.json channels {shown}")
    assert errno_of(os.stat, sdir / "X1.f32") == errno.ENOENT
    assert _read(sdir / "M1.f32") == reference(hostile["real"]["mixed.mefd"], "M1").tobytes()


# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in GOOD if n not in ("mixed.mefd", "inside-link.mefd")])
def test_odd_session_names_are_mirrored_and_exact(hmount, hostile, name):
    parent = (hmount.root / name).parent
    assert Path(name).name in os.listdir(parent)
    info = _check_session_exact(hmount.root / name, hostile["real"][name])
    assert len(info["channels"]) >= 1


def test_long_names_fit(hmount, hostile):
    assert len(LONG_SESSION.encode()) > 200
    sdir = hmount.root / "unicode-channels.mefd"
    files = channel_files(sdir)
    assert set(files) == {NFC, NFD, LONG_CHANNEL, "\u6f22\u5b57 ch"}
    # NFC and NFD spellings are different channels and different files
    assert files[NFC] != files[NFD] and len({str(p) for p in files.values()}) == 4
    for name, path in files.items():
        assert len(path.name.encode()) <= 255
        assert os.getxattr(path, "user.mef3fs.channel").decode() == name
    assert files[LONG_CHANNEL].name == LONG_CHANNEL + ".f32"    # 203 bytes: a legal name, kept


def test_names_that_are_not_file_names(hmount, hostile):
    """Channels named '..', '.hidden', 'hidden', 'tab\\tname': safe, distinct
    file names, none hidden by a leading dot, info.json maps both ways."""
    sdir = hmount.root / "names.mefd"
    info = read_info(sdir)
    files = [ch["file"] for ch in info["channels"]]
    assert len(set(files)) == len(files)
    for f in files:
        assert not f.startswith(".") and "/" not in f and "\t" not in f and f not in (".", ".."), f
        assert f in os.listdir(sdir)
    for ch in info["channels"]:
        assert info["file_names"][ch["name"]] == ch["file"]


def test_session_name_that_is_not_utf8(hmount, hostile):
    """A session folder whose name is not valid UTF-8 is listed under its exact
    bytes and can be entered (no EINVAL). DESIGN.md: a session that cannot be
    opened still appears with an info.json that says why -- so either its
    channels read exactly, or it holds exactly an info.json with an error."""
    root = bytes(hmount.root)
    mark = _log_mark(hmount)
    assert NON_UTF8 in os.listdir(root)
    sdir = root + b"/" + NON_UTF8
    try:
        listing = os.listdir(sdir)
    except OSError as exc:
        pytest.fail(f"listdir of the non-UTF-8 session failed with "
                    f"{errno.errorcode.get(exc.errno, exc.errno)}; log:\n{_new_log(hmount, mark)[-2500:]}")
    with open(sdir + b"/info.json", "rb") as f:
        info = json.loads(f.read().decode("utf-8"))
    if info["status"] == "ok":
        ref_session = bytes(hostile["source"]) + b"/" + NON_UTF8
        for ch in info["channels"]:
            with open(sdir + b"/" + ch["file"].encode(), "rb") as f:
                assert f.read() == reference(os.fsdecode(ref_session), ch["name"]).tobytes()
    else:
        assert listing == [b"info.json"] and info["error"], (listing, info)
    assert "Traceback" not in _new_log(hmount, mark)


# ---------------------------------------------------------------------------
# sessions that cannot be opened
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", BROKEN)
def test_broken_session_shows_only_an_info_json_that_says_why(hmount, name):
    sdir = hmount.root / name
    assert name in os.listdir(hmount.root)
    assert os.listdir(sdir) == ["info.json"]
    raw = _read(sdir / "info.json")
    info = json.loads(raw.decode("utf-8"))
    assert info["status"] == "error" and isinstance(info["error"], str) and info["error"].strip()
    assert info["channels"] == []
    assert _read(sdir / "info.json") == raw                   # stable
    assert errno_of(os.stat, sdir / "C1.f32") == errno.ENOENT
    warned = [ln for ln in hmount.log_text().splitlines() if name in ln and "WARNING" in ln]
    assert len(warned) == 1, warned                           # one log line, however often it is read


def test_mount_still_whole_after_all_of_it(hmount, hostile):
    _check_session_exact(hmount.root / "with space.mefd", hostile["real"]["with space.mefd"])
    stats = read_stats(hmount)
    assert stats["worker_restarts"] == 0 and stats["decode_errors"] == 0, stats
    assert os.path.ismount(hmount.root)


# ---------------------------------------------------------------------------
# offsets, sizes and `..`
# ---------------------------------------------------------------------------

BIG = 2 ** 63 - 1   # LLONG_MAX, the largest file offset


@pytest.mark.parametrize("kind", ["f32", "f32-direct", "info", "stats"])
def test_huge_offsets_and_zero_size_reads(hmount, hostile, kind):
    """What the kernel decided, observed on Linux 6.x: a read whose end
    (offset + size) passes 2**63 - 1 fails with EINVAL before reaching the
    daemon (rw_verify_area); any other read at or past EOF returns b"". Zero-size
    reads return b"" anywhere. The same for page-cache, O_DIRECT and direct_io
    (stats) files; the daemon logs nothing and keeps serving."""
    sdir = hmount.root / "with space.mefd"
    path = {"f32": sdir / "C2.f32", "f32-direct": sdir / "C2.f32", "info": sdir / "info.json",
            "stats": hmount.root / STATS_FILE}[kind]
    flags = os.O_RDONLY | (os.O_DIRECT if kind == "f32-direct" else 0)
    mark = _log_mark(hmount)
    fd = os.open(path, flags)
    try:
        size = os.fstat(fd).st_size
        for off in (0, 1, size // 2, size - 1, size, size + 1):
            assert os.pread(fd, 0, off) == b"", off
        for off, n in [(size, 4096), (size + 12345, 1), (2 ** 40, 4096), (2 ** 62, 1 << 20),
                       (BIG - 4096, 4096), (BIG - 1, 1), (BIG, 0), (2 ** 63 - 8192, 1)]:
            assert off + n <= BIG
            assert os.pread(fd, n, off) == b"", (off, n)
        for off, n in [(BIG, 1), (BIG - 10, 4096), (2 ** 63 - 4096, 4096), (BIG - 1, 2)]:
            assert off + n > BIG
            got = errno_of(os.pread, fd, n, off)
            assert got == errno.EINVAL, (off, n, errno.errorcode.get(got, got))
        # nothing broke: the file still reads exactly
        if kind.startswith("f32"):
            ref = reference(hostile["real"]["with space.mefd"], "C2").tobytes()
            assert os.pread(fd, 1000, 4001) == ref[4001:5001]
    finally:
        os.close(fd)
    assert "Traceback" not in _new_log(hmount, mark)


def test_dotdot_in_paths(hmount, hostile):
    """`..` is resolved by the kernel before the daemon sees a path: going up
    inside the mount stays inside it, going up from the root leaves the mount
    (the mountpoint's parent, not SOURCE's); names made of dots are ordinary."""
    root = hmount.root
    a = _read(root / "with space.mefd" / ".." / "with space.mefd" / "C2.f32")
    assert a == _read(root / "with space.mefd" / "C2.f32")
    assert sorted(os.listdir(root / "sub dir" / "ses 1" / ".." / "..")) == sorted(os.listdir(root))
    up = os.stat(root / "..")
    assert up.st_dev != os.stat(root).st_dev and up.st_ino == os.stat(root.parent).st_ino
    assert "source" not in os.listdir(root / "..")          # SOURCE's parent is not what '..' shows
    for rel in ["sub dir/../escape-rel", "with space.mefd/../../" + hostile["outside"].name]:
        assert errno_of(os.stat, root / rel) == errno.ENOENT, rel
    _check_session_exact(root / "...mefd", hostile["real"]["...mefd"])
