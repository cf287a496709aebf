"""The host-root mapping (mef3fs/hostroot.py) as code.

A tmp folder stands in for /host_root, the container's view of the host's /.
No FUSE, no MEF: the module must import and work on its own.
"""

import os
import subprocess
import sys

import pytest

from mef3fs import hostroot
from mef3fs.hostroot import HOST_ROOT_ENV, HostRoot, display, host_root_from, resolve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def root(tmp_path):
    """A fake host root with the shapes real hosts have.

    /data            -> /mnt/disk1/data   (absolute host symlink)
    /mnt/disk1/data/study/sub-01/night1.mefd/
    /mnt/disk1/data/rel -> study/sub-01  (relative symlink, stays inside)
    /mnt/disk1/data/up  -> ../../../..    (relative symlink leading out of the root)
    /mnt/disk1/data/abs-up -> /../../etc (absolute symlink climbing above /)
    /loop1 -> /loop2, /loop2 -> /loop1
    """
    r = tmp_path / "host_root"
    sess = r / "mnt" / "disk1" / "data" / "study" / "sub-01" / "night1.mefd"
    sess.mkdir(parents=True)
    (r / "etc").mkdir()
    (r / "etc" / "passwd").write_text("host passwd\n")
    os.symlink("/mnt/disk1/data", r / "data")
    os.symlink("study/sub-01", r / "mnt" / "disk1" / "data" / "rel")
    os.symlink("../../../..", r / "mnt" / "disk1" / "data" / "up")
    os.symlink("/../../etc", r / "mnt" / "disk1" / "data" / "abs-up")
    os.symlink("/loop2", r / "loop1")
    os.symlink("/loop1", r / "loop2")
    # Something outside the root that an escape would reach.
    (tmp_path / "secret").mkdir()
    return str(r)


def real(root, *parts):
    return os.path.join(os.path.realpath(root), *parts)


# --- host_root_from: where DIR comes from -----------------------------------

def test_cli_value_wins_over_env():
    assert host_root_from("/cli", {HOST_ROOT_ENV: "/env"}) == "/cli"


def test_env_used_when_no_cli_value():
    assert host_root_from(None, {HOST_ROOT_ENV: "/host_root"}) == "/host_root"


def test_nothing_set_means_no_mapping():
    assert host_root_from(None, {}) is None


def test_empty_cli_value_turns_mapping_off_even_with_env():
    assert host_root_from("", {HOST_ROOT_ENV: "/host_root"}) is None


def test_empty_env_counts_as_unset():
    assert host_root_from(None, {HOST_ROOT_ENV: ""}) is None


def test_default_environ_is_os_environ(monkeypatch):
    monkeypatch.setenv(HOST_ROOT_ENV, "/from-os-environ")
    assert host_root_from(None) == "/from-os-environ"
    monkeypatch.delenv(HOST_ROOT_ENV)
    assert host_root_from(None) is None


def test_env_var_name():
    assert HOST_ROOT_ENV == "MEF3FS_HOST_ROOT"


def test_dockerenv_is_never_consulted(monkeypatch):
    """/.dockerenv exists on ordinary machines too: it must not switch mapping on."""
    opened = []
    real_exists, real_isfile, real_open = os.path.exists, os.path.isfile, open

    def spy(fn):
        def wrapper(path, *a, **k):
            if "dockerenv" in str(path):
                opened.append(path)
            return fn(path, *a, **k)
        return wrapper

    monkeypatch.setattr(os.path, "exists", spy(real_exists))
    monkeypatch.setattr(os.path, "isfile", spy(real_isfile))
    monkeypatch.setattr("builtins.open", spy(real_open))
    monkeypatch.delenv(HOST_ROOT_ENV, raising=False)
    assert host_root_from(None) is None
    assert host_root_from(None, {}) is None
    assert HostRoot.from_cli(None, {}).root is None
    assert opened == []


# --- resolve without a host root ------------------------------------------

def test_no_host_root_returns_path_absolutized(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve("data/x", None) == str(tmp_path / "data" / "x")
    assert resolve("/abs/path", None) == "/abs/path"


# --- resolve with a host root ---------------------------------------------

def test_plain_host_path_maps_under_root(root):
    p = "/mnt/disk1/data/study/sub-01/night1.mefd"
    assert resolve(p, root) == real(root, "mnt/disk1/data/study/sub-01/night1.mefd")


def test_root_itself(root):
    assert resolve("/", root) == os.path.realpath(root)


def test_normalises_slashes_and_dots(root):
    assert (resolve("//mnt/./disk1//data/study/", root)
            == real(root, "mnt/disk1/data/study"))


def test_dotdot_inside_root_is_fine(root):
    assert (resolve("/mnt/disk1/data/study/sub-01/../sub-01", root)
            == real(root, "mnt/disk1/data/study/sub-01"))


def test_missing_components_kept_for_callers_not_found(root):
    # resolve does not decide existence; the CLI's own check reports it.
    assert resolve("/no/such/dir", root) == real(root, "no/such/dir")


def test_relative_path_refused_with_host_root(root):
    with pytest.raises(ValueError) as e:
        resolve("data/study", root)
    assert "data/study" in str(e.value)
    assert "absolute" in str(e.value)


def test_dotdot_escape_refused_and_names_typed_path(root):
    typed = "/mnt/../../secret"
    with pytest.raises(ValueError) as e:
        resolve(typed, root)
    assert typed in str(e.value)
    assert "outside" in str(e.value)


def test_dotdot_above_slash_refused(root):
    with pytest.raises(ValueError):
        resolve("/..", root)


def test_relative_symlink_escape_refused(root):
    typed = "/data/up/secret"
    with pytest.raises(ValueError) as e:
        resolve(typed, root)
    msg = str(e.value)
    assert typed in msg
    assert "symbolic link" in msg and "../../../.." in msg


def test_absolute_symlink_climbing_above_slash_refused(root):
    with pytest.raises(ValueError):
        resolve("/data/abs-up/passwd", root)


def test_absolute_host_symlink_resolved_inside_root(root):
    """/data -> /mnt/disk1/data was written on the host: it means DIR/mnt/disk1/data."""
    got = resolve("/data/study/sub-01/night1.mefd", root)
    assert got == real(root, "mnt/disk1/data/study/sub-01/night1.mefd")
    assert os.path.isdir(got)
    # And never the container's own /mnt/disk1/data.
    assert got.startswith(os.path.realpath(root) + os.sep)


def test_relative_symlink_inside_root(root):
    assert resolve("/data/rel/night1.mefd", root) == real(
        root, "mnt/disk1/data/study/sub-01/night1.mefd")


def test_dotdot_after_symlink_is_physical(root):
    # /data/.. is /mnt/disk1 on the host (the link's parent), not /.
    assert resolve("/data/..", root) == real(root, "mnt/disk1")


def test_symlink_loop_refused(root):
    with pytest.raises(ValueError) as e:
        resolve("/loop1/x", root)
    assert "/loop1/x" in str(e.value)


def test_result_has_no_symlinks_left(root):
    got = resolve("/data/rel/night1.mefd", root)
    assert os.path.realpath(got) == got


def test_host_root_that_is_not_a_folder(tmp_path):
    with pytest.raises(ValueError) as e:
        resolve("/x", str(tmp_path / "nope"))
    assert "nope" in str(e.value)


def test_host_root_given_through_a_symlink(root, tmp_path):
    alias = tmp_path / "alias"
    os.symlink(root, alias)
    got = resolve("/data/study", str(alias))
    assert got == real(root, "mnt/disk1/data/study")
    assert display(got, str(alias)) == "/mnt/disk1/data/study"


# --- display: what users see ------------------------------------------------

@pytest.mark.parametrize("host_path", [
    "/",
    "/mnt/disk1/data/study",
    "/mnt/disk1/data/study/sub-01/night1.mefd",
    "/etc/passwd",
    "/no/such/dir",
])
def test_display_round_trip(root, host_path):
    assert display(resolve(host_path, root), root) == host_path


def test_display_without_host_root_is_identity():
    assert display("/a/b", None) == "/a/b"


def test_display_of_path_outside_root_unchanged(root):
    assert display("/var/log/x", root) == "/var/log/x"


def test_display_does_not_match_sibling_prefix(root):
    sibling = os.path.realpath(root) + "-other/x"
    assert display(sibling, root) == sibling


def test_display_shows_source_as_typed_through_symlinks(root):
    hr = HostRoot.from_cli(root, {})
    real_source = hr.resolve_source("/data/study")
    assert real_source == real(root, "mnt/disk1/data/study")
    session = os.path.join(real_source, "sub-01", "night1.mefd")
    assert hr.display(session) == "/data/study/sub-01/night1.mefd"
    assert hr.display(real_source) == "/data/study"
    # Paths elsewhere under the root still map to host paths.
    assert hr.display(real(root, "etc/passwd")) == "/etc/passwd"


def test_hostroot_inactive_is_identity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hr = HostRoot.from_cli(None, {})
    assert not hr.active
    assert hr.resolve_source("x") == str(tmp_path / "x")
    assert hr.display(str(tmp_path / "x" / "y")) == str(tmp_path / "x" / "y")


# --- standalone ---------------------------------------------------------------

def test_module_imports_standalone_without_fuse_or_mef():
    """Imported by file path in a fresh interpreter: no mfusepy/mef3io/numpy pulled in."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('hostroot', {hostroot.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "bad = [n for n in ('mfusepy', 'fuse', 'mef3io', 'pymef', 'mef_tools', 'numpy')"
        " if n in sys.modules]\n"
        "assert not bad, bad\n"
        "print(m.HOST_ROOT_ENV)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "MEF3FS_HOST_ROOT"



def test_source_with_dotdot_after_symlink_shown_as_resolved(root):
    hr = HostRoot.from_cli(root, {})
    real_source = hr.resolve_source("/data/../data/study")
    # /data/.. is /mnt/disk1 on the host; a lexical fold would say /data/study
    assert real_source == real(root, "mnt/disk1/data/study")
    assert hr.display(real_source) == "/mnt/disk1/data/study"


def test_realpath_follows_host_links_inside_root(root):
    hr = HostRoot.from_cli(root, {})
    # An absolute link written on the host, reached while walking SOURCE.
    os.symlink("/data/study/sub-01", os.path.join(root, "mnt/disk1/data/latest"))
    walked = real(root, "mnt/disk1/data/latest")
    assert hr.realpath(walked) == real(root, "mnt/disk1/data/study/sub-01")
    # Links leading out of the root, and paths not under it, give None.
    assert hr.realpath(real(root, "mnt/disk1/data/up")) is None
    assert hr.realpath("/somewhere/else") is None


def test_realpath_without_host_root_is_os_realpath(tmp_path):
    os.symlink(tmp_path, tmp_path / "self")
    assert HostRoot(None).realpath(str(tmp_path / "self")) == os.path.realpath(tmp_path)
