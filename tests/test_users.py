"""Ordinary users: a non-root user mounts through fusermount3, and another
user reads through `-o allow_other` exactly what SOURCE lets them read.

alice (an ordinary user) mounts, as most users on a shared server do; bob is
another user of the same machine. The kernel enforces the owners and modes
the mount reports (default_permissions), so every check here is a real
open/listdir/stat made as bob or alice, never a look at st_mode alone.
Setup as on a standard system: /dev/fuse 0666 (ours is 0600), and for
allow_other `user_allow_other` in /etc/fuse.conf (both put back afterwards).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.sessions import build_encrypted, build_small_session, reference_bytes
from tests.users import (
    ALICE,
    BOB,
    UserMount,
    chown_tree,
    ensure_user,
    fuse_device_for_everyone,
    fuse_mount_at,
    group_name,
    make_user_venv,
    need_root_and_tools,
    probe,
    sha256,
    shared_tmpdir,
    user_allow_other,
)

# the users' venv is a pip install (~20 s); each test then mounts in a second or two
pytestmark = pytest.mark.slow


class World:
    """SOURCE owned by alice, as she keeps it:

    shared.mefd      0755, but channel C2's folder 0700 (hers only)
    private.mefd     0700
    team/team.mefd   0750, group = bob's group
    enc.mefd         0755, encrypted (alice has the password)
    README           0644 and notes.txt 0600: SOURCE's own files, shown as they are
    """

    def __init__(self, base: Path, python: Path):
        self.base, self.python = base, python
        self.alice, self.bob = ensure_user(ALICE), ensure_user(BOB)
        self.source = base / "source"
        src = self.source
        src.mkdir()
        build_small_session(src / "shared.mefd", 7101, seconds=8, channels=("C1", "C2"))
        build_small_session(src / "private.mefd", 7102, seconds=8, channels=("P1",))
        (src / "team").mkdir()
        build_small_session(src / "team" / "team.mefd", 7103, seconds=8, channels=("T1",))
        with tempfile.TemporaryDirectory() as tmp:
            enc = build_encrypted(tmp)
            shutil.copytree(enc.session, src / "enc.mefd")
            self.password = enc.password2
        (src / "README").write_text("a study\n")
        (src / "notes.txt").write_text("alice's notes\n")
        self.password_file = base / "password.txt"
        self.password_file.write_text(self.password + "\n")
        chown_tree(src, self.alice)
        chown_tree(src / "team", self.alice, gid=self.bob.gid)
        os.chown(self.password_file, self.alice.uid, self.alice.gid)
        self.password_file.chmod(0o600)
        for path in src.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        (src / "shared.mefd" / "C2.timd").chmod(0o700)
        (src / "notes.txt").chmod(0o600)
        (src / "private.mefd").chmod(0o700)
        for path in (src / "team").rglob("*"):
            path.chmod(0o750 if path.is_dir() else 0o640)
        (src / "team").chmod(0o750)
        self.want = {
            "shared.mefd/C1.f32": sha256(reference_bytes(str(src / "shared.mefd"), "C1")),
            "shared.mefd/C2.f32": sha256(reference_bytes(str(src / "shared.mefd"), "C2")),
            "private.mefd/P1.f32": sha256(reference_bytes(str(src / "private.mefd"), "P1")),
            "team/team.mefd/T1.f32": sha256(reference_bytes(str(src / "team" / "team.mefd"), "T1")),
            "enc.mefd/E1.f32": sha256(reference_bytes(str(src / "enc.mefd"), "E1", self.password)),
            "README": sha256((src / "README").read_bytes()),
            "notes.txt": sha256((src / "notes.txt").read_bytes()),
        }
        self._n = 0
        self.mounts: list[UserMount] = []

    def mount(self, *extra) -> UserMount:
        """A mount by alice on a mountpoint she owns."""
        self._n += 1
        mp = self.base / f"mnt{self._n}"
        mp.mkdir()
        os.chown(mp, self.alice.uid, self.alice.gid)
        m = UserMount(self.alice, self.python, self.source, mp, *extra, workdir=self.base)
        self.mounts.append(m)
        return m

    def close(self) -> None:
        for m in self.mounts:
            m.kill()


@pytest.fixture(scope="module")
def world():
    need_root_and_tools()
    base = shared_tmpdir("mef3fs-users-")
    try:
        python = make_user_venv(base)
        with fuse_device_for_everyone():
            w = World(base, python)
            try:
                yield w
            finally:
                w.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_ordinary_user_mounts_through_fusermount3(world):
    """alice mounts (the setuid fusermount3 does the mount(2)), reads byte-exact,
    unmounts with fusermount3 -u; nobody else may even look in."""
    with user_allow_other(False):
        m = world.mount()
        opts = m.wait_mounted()
        assert f"user_id={world.alice.uid}" in opts, opts
        got = probe(world.alice, "read", m.root / "shared.mefd" / "C1.f32")
        assert got == world.want["shared.mefd/C1.f32"]
        assert probe(world.alice, "list", m.root) == 'names:[".mef3fs-stats.json", "README", ' \
            '"enc.mefd", "notes.txt", "private.mefd", "shared.mefd", "team"]'
        assert probe(world.bob, "stat", m.root) == "EACCES"     # FUSE: the mounter's only
        assert m.unmount() == 0


def test_allow_other_needs_user_allow_other(world):
    """Without the line in /etc/fuse.conf the mount is refused and fusermount3 says
    why; with it, bob can look in."""
    with user_allow_other(False):
        m = world.mount("-o", "allow_other")
        rc = m.proc.wait(timeout=60)
        out = m.output()
        assert rc != 0 and fuse_mount_at(m.root) is None
        assert "user_allow_other" in out, out
    with user_allow_other(True):
        m = world.mount("-o", "allow_other")
        m.wait_mounted()
        assert probe(world.bob, "list", m.root).startswith("names:")
        assert m.unmount() == 0


def test_two_users_see_what_the_source_lets_them(world):
    """Through alice's allow_other mount, bob reads exactly what he may read in SOURCE."""
    alice, bob = world.alice, world.bob
    with user_allow_other(True):
        m = world.mount("-o", "allow_other")
        m.wait_mounted()
        root = m.root
        # alice (the daemon reads as her) reads all of it
        for rel, want in world.want.items():
            if not rel.startswith("enc"):
                assert probe(alice, "read", root / rel) == want, rel
        # bob: the shared session, except the channel whose folder is alice's only
        assert probe(bob, "read", root / "shared.mefd/C1.f32") == world.want["shared.mefd/C1.f32"]
        assert probe(bob, "read", root / "shared.mefd/C2.f32") == "EACCES"
        assert probe(bob, "read", root / "shared.mefd/C2.npy") == "EACCES"
        assert probe(bob, "read", root / "shared.mefd/rates/256Hz.npy") == "EACCES"  # has C2
        assert probe(bob, "read", root / "shared.mefd/info.json").startswith("sha256:")
        # not the private session: not even its listing
        assert probe(bob, "list", root / "private.mefd") == "EACCES"
        assert probe(bob, "read", root / "private.mefd/P1.f32") == "EACCES"
        # SOURCE's own files: his to read where the source's modes say so
        assert probe(bob, "read", root / "README") == world.want["README"]
        assert probe(bob, "read", root / "notes.txt") == "EACCES"
        assert probe(bob, "stat", root / "notes.txt") == f"stat:100400:{alice.uid}:{alice.gid}"
        # the team folder, through his group
        assert probe(bob, "read", root / "team/team.mefd/T1.f32") == world.want["team/team.mefd/T1.f32"]
        # owners and modes as in SOURCE, write bits dropped
        assert probe(bob, "stat", root / "shared.mefd") == f"stat:40555:{alice.uid}:{alice.gid}"
        assert probe(bob, "stat", root / "shared.mefd/C1.f32") == f"stat:100444:{alice.uid}:{alice.gid}"
        assert probe(bob, "stat", root / "shared.mefd/C2.f32") == f"stat:100400:{alice.uid}:{alice.gid}"
        assert probe(bob, "stat", root / "team") == f"stat:40550:{alice.uid}:{bob.gid}"
        assert probe(bob, "stat", root / "team/team.mefd/T1.f32") == f"stat:100440:{alice.uid}:{bob.gid}"
        assert group_name(bob.gid) == BOB
        assert m.unmount() == 0


def test_encrypted_session_is_the_mounters_unless_umask_widens(world):
    """The password opened it, so what it decodes to is alice's only (0400), whatever
    the source's modes; `-o umask=022` shares it. Unencrypted sessions are unchanged."""
    alice, bob = world.alice, world.bob
    enc = "enc.mefd/E1.f32"
    with user_allow_other(True):
        m = world.mount("-o", "allow_other", "--password-file", world.password_file)
        m.wait_mounted()
        assert probe(alice, "read", m.root / enc) == world.want[enc]
        assert probe(bob, "read", m.root / enc) == "EACCES"
        assert probe(bob, "read", m.root / "enc.mefd/info.json") == "EACCES"
        assert probe(bob, "stat", m.root / enc) == f"stat:100400:{alice.uid}:{alice.gid}"
        assert probe(bob, "list", m.root / "enc.mefd").startswith("names:")   # the folder: 0755
        assert probe(bob, "read", m.root / "shared.mefd/C1.f32") == world.want["shared.mefd/C1.f32"]
        assert m.unmount() == 0

        m = world.mount("-o", "allow_other,umask=022", "--password-file", world.password_file)
        m.wait_mounted()
        assert probe(bob, "read", m.root / enc) == world.want[enc]
        assert probe(bob, "stat", m.root / enc) == f"stat:100444:{alice.uid}:{alice.gid}"
        # umask is mef3fs's: it does not override what follows the source
        assert probe(bob, "read", m.root / "shared.mefd/C2.f32") == "EACCES"
        assert probe(bob, "stat", m.root / "team") == f"stat:40550:{alice.uid}:{bob.gid}"
        assert m.unmount() == 0
