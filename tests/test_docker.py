"""The Docker side, checked without a Docker engine (there is none on our machines).

1. Dockerfile and compose.yaml parsed and checked for the pieces issue 4 asks
   for, and for consistency with each other, with mef3fs/hostroot.py and with
   the real command line (`python -m mef3fs --help` and its parser).
2. The image's entry point run outside Docker with the image's environment:
   MEF3FS_HOST_ROOT points at a tmp folder standing in for /host_root, SOURCE
   is given as the host path, MOUNTPOINT is itself a mount (as the bind mount
   is in the container), libfuse3 is selected as in the image. It mounts for
   real; bytes are compared with mef3io's reference read; info.json shows the
   host path; SIGTERM (docker stop) unmounts and ends every process.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is a test dependency (pyproject [test])")

from mef3fs.hostroot import HOST_ROOT_ENV  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"
DOCKER_DOC = REPO / "docs" / "docker.md"
PYPROJECT = REPO / "pyproject.toml"

CONTAINER_HOST_ROOT = "/host_root"
FOREGROUND_FLAGS = {"-f", "--foreground", "-d", "--debug"}


# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------

def parse_dockerfile(path=DOCKERFILE):
    """[(INSTRUCTION, argument text)] with comments dropped and continuations joined."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue                     # comment line inside a continuation
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, arg = buf.strip().partition(" ")
        out.append((instr.upper(), arg.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def dockerfile_env(instrs):
    """ENV key=value pairs (the modern form; quoted values allowed)."""
    env = {}
    for instr, arg in instrs:
        if instr != "ENV":
            continue
        tokens = shlex.split(arg)
        assert all("=" in t for t in tokens), f"use ENV key=value: {arg!r}"
        for t in tokens:
            k, _, v = t.partition("=")
            env[k] = v
    return env


def exec_form(instrs, name):
    """The last ENTRYPOINT/CMD, which must be in exec (JSON) form."""
    args = [a for i, a in instrs if i == name]
    if not args:
        return None
    value = json.loads(args[-1])
    assert isinstance(value, list) and all(isinstance(x, str) for x in value), args[-1]
    return value


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env):
    """Compose's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?err}, ${VAR?err}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        if op is None:
            return env.get(name, "")
        unset = name not in env or (op.startswith(":") and env[name] == "")
        if op.endswith("-"):
            return arg if unset else env[name]
        if unset:
            raise KeyError(f"${{{name}}}: {arg}")
        return env[name]

    return _VAR.sub(sub, value)


def compose_raw():
    return yaml.safe_load(COMPOSE.read_text())


def compose_service(env):
    doc = interpolate(compose_raw(), env)
    services = doc["services"]
    assert len(services) == 1, "one service expected"
    return next(iter(services.values()))


ENV_EXAMPLE = {"MEF3FS_SOURCE": "/data/study", "MEF3FS_MOUNTPOINT": "/mnt/eeg"}


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile()


@pytest.fixture(scope="module")
def service():
    return compose_service(ENV_EXAMPLE)


def volumes(service):
    """Compose volumes as dicts (long syntax; short 'a:b:ro' converted)."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            opts = set(parts[2].split(",")) if len(parts) > 2 else set()
            d = {"type": "bind", "source": parts[0], "target": parts[1],
                 "read_only": "ro" in opts}
            prop = opts & {"shared", "rshared", "slave", "rslave", "private", "rprivate"}
            if prop:
                d["bind"] = {"propagation": prop.pop()}
            out.append(d)
        else:
            out.append(v)
    return out


def propagation(vol):
    return (vol.get("bind") or {}).get("propagation", "rprivate")


def mountpoint_volume(service):
    mp = service["command"][-1]
    matches = [v for v in volumes(service) if v["target"] == mp]
    assert len(matches) == 1, f"MOUNTPOINT {mp} must be the target of one bind mount"
    return matches[0]


# ---------------------------------------------------------------------------
# the CLI the files talk to
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_help():
    out = subprocess.run([sys.executable, "-m", "mef3fs", "--help"], capture_output=True,
                         text=True, cwd=str(REPO), timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def help_options(text):
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def options_in(args):
    """Option tokens of a mef3fs argument list (SOURCE and MOUNTPOINT excluded)."""
    return [a.split("=", 1)[0] for a in args if a.startswith("-") and a != "-"]


def docker_run_lines(text):
    """`docker run ...` commands in a Markdown/Dockerfile text (continuations joined)."""
    lines, buf = [], None
    for raw in text.splitlines():
        line = raw.strip().lstrip("#").strip()
        if buf is not None:
            buf += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                lines.append(buf)
                buf = None
            continue
        if line.startswith("docker run "):
            if line.endswith("\\"):
                buf = line.rstrip("\\").strip()
            else:
                lines.append(line)
    return lines


def split_docker_run(line):
    """(docker options tokens, image, mef3fs args) of a `docker run` line."""
    tokens = shlex.split(line)[2:]
    with_value = {"--name", "--device", "--cap-add", "--security-opt", "--network", "-v",
                  "--volume", "--mount", "-e", "--env", "--user", "-u", "--stop-timeout",
                  "--stop-signal"}
    i, opts = 0, []
    while i < len(tokens) and tokens[i].startswith("-"):
        t = tokens[i]
        opts.append(t)
        if t in with_value:
            opts.append(tokens[i + 1])
            i += 1
        i += 1
    return opts, tokens[i], tokens[i + 1:]


# ---------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------

def test_dockerfile_base_is_debian_python_311_slim(dockerfile):
    froms = [a for i, a in dockerfile if i == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"python:3\.11-slim(-bookworm)?", froms[0].split()[0]), froms


def test_dockerfile_installs_fuse3(dockerfile):
    runs = " ".join(a for i, a in dockerfile if i == "RUN")
    m = re.search(r"apt-get install ([^&;|]*)", runs)
    assert m, "apt-get install step missing"
    pkgs = set(m.group(1).split())
    assert {"fuse3", "libfuse3-3"} <= pkgs
    assert "apt-get update" in runs
    assert "rm -rf /var/lib/apt/lists" in runs


def test_dockerfile_enables_user_allow_other(dockerfile, tmp_path):
    """Run the image's own fuse.conf edit on Debian's stock file."""
    runs = [a for i, a in dockerfile if i == "RUN" and "/etc/fuse.conf" in a]
    assert runs, "no step edits /etc/fuse.conf"
    # The commands that touch fuse.conf, pointed at a copy.
    steps = [s.strip() for s in re.split(r"&&", runs[0]) if "fuse.conf" in s]
    conf = tmp_path / "fuse.conf"
    conf.write_text("# comment\n#user_allow_other\n\n#mount_max = 1000\n")
    script = " && ".join(steps).replace("/etc/fuse.conf", shlex.quote(str(conf)))
    subprocess.run(["sh", "-ec", script], check=True, timeout=30)
    lines = conf.read_text().splitlines()
    assert lines.count("user_allow_other") == 1, lines
    # idempotent
    subprocess.run(["sh", "-ec", script], check=True, timeout=30)
    assert conf.read_text().splitlines().count("user_allow_other") == 1


def test_dockerfile_installs_the_repo_package(dockerfile):
    copies = [a for i, a in dockerfile if i in ("COPY", "ADD")]
    assert any(a.split()[0] == "." for a in copies), "the build context (.) is copied in"
    runs = " ".join(a for i, a in dockerfile if i == "RUN")
    assert re.search(r"pip install [^&]*(/src|\s\.)", runs), "pip install of the repo"


def test_dockerignore_keeps_what_pip_install_needs():
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore
    meta = tomllib.loads(PYPROJECT.read_text())["project"]
    needed = ["pyproject.toml", "mef3fs"]
    if isinstance(meta.get("readme"), str):
        needed.append(meta["readme"])
    for name in needed:
        assert name not in ignore, f".dockerignore drops {name}, which pip install needs"


def test_dockerfile_sets_host_root_env(dockerfile):
    env = dockerfile_env(dockerfile)
    assert HOST_ROOT_ENV == "MEF3FS_HOST_ROOT"
    assert env.get(HOST_ROOT_ENV) == CONTAINER_HOST_ROOT
    # libfuse3 (1 MiB requests), not libfuse2, which mfusepy prefers when both exist
    assert env.get("FUSE_LIBRARY_NAME") == "fuse3"


def test_dockerfile_entrypoint_runs_cli_in_foreground(dockerfile):
    entry = exec_form(dockerfile, "ENTRYPOINT")
    assert entry is not None, "ENTRYPOINT in exec form"
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert entry[0] in scripts, f"{entry[0]} is not a console script of the package"
    assert scripts[entry[0]] == "mef3fs.cli:main"
    assert FOREGROUND_FLAGS & set(entry[1:]), "the container's life is the mount's: -f"


def test_dockerfile_stop_signal(dockerfile):
    assert [a for i, a in dockerfile if i == "STOPSIGNAL"] == ["SIGTERM"]


# ---------------------------------------------------------------------------
# compose.yaml
# ---------------------------------------------------------------------------

def test_compose_device_capability_apparmor(service):
    devices = [d.split(":")[0] if isinstance(d, str) else d.get("source")
               for d in service["devices"]]
    assert "/dev/fuse" in devices
    assert "SYS_ADMIN" in service["cap_add"]
    apparmor = [s for s in service["security_opt"] if s.startswith("apparmor")]
    assert apparmor, "an AppArmor profile that permits mount"
    assert re.fullmatch(r"apparmor[=:](unconfined|[\w.-]+)", apparmor[0])
    assert "privileged" not in service, "SYS_ADMIN + /dev/fuse, not --privileged"


def test_compose_host_root_bind_read_only(service):
    roots = [v for v in volumes(service) if v["target"] == CONTAINER_HOST_ROOT]
    assert len(roots) == 1
    v = roots[0]
    assert v["type"] == "bind" and v["source"] == "/"
    assert v.get("read_only") is True
    # not rslave/rshared: the daemon must not see mounts made later, its own included
    assert propagation(v) in ("private", "rprivate")


def test_compose_environment_matches_image_and_module(service, dockerfile):
    env = service["environment"]
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    assert env[HOST_ROOT_ENV] == CONTAINER_HOST_ROOT
    assert dockerfile_env(dockerfile)[HOST_ROOT_ENV] == env[HOST_ROOT_ENV]


def test_compose_mountpoint_bind_is_rshared_same_path(service):
    v = mountpoint_volume(service)
    assert v["type"] == "bind"
    assert propagation(v) == "rshared"
    assert v["source"] == v["target"] == ENV_EXAMPLE["MEF3FS_MOUNTPOINT"]
    assert not v.get("read_only")


def test_compose_command_is_host_paths_from_env(service):
    cmd = service["command"]
    assert isinstance(cmd, list), "command in list form (no shell word splitting)"
    assert cmd[-2:] == [ENV_EXAMPLE["MEF3FS_SOURCE"], ENV_EXAMPLE["MEF3FS_MOUNTPOINT"]]
    assert "entrypoint" not in service, "the image's ENTRYPOINT (mef3fs -f) is used"


def test_compose_source_required_mountpoint_defaulted():
    with pytest.raises(KeyError):
        compose_service({})
    s = compose_service({"MEF3FS_SOURCE": "/d"})
    assert s["command"][-2] == "/d"
    assert s["command"][-1].startswith("/")
    assert mountpoint_volume(s)["target"] == s["command"][-1]


def test_compose_init_and_stop(service):
    assert service["init"] is True, "tini as PID 1 forwards SIGTERM and reaps"
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    m = re.fullmatch(r"(\d+)s", str(service["stop_grace_period"]))
    assert m and 10 <= int(m.group(1)) <= 120


def test_compose_builds_this_repo(service):
    build = service["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (REPO / context / "Dockerfile").is_file()


def test_compose_passes_docker_compose_config(tmp_path):
    """Compose's own schema check and substitution, where docker-compose is installed."""
    exe = shutil.which("docker-compose")
    if exe is None:
        out = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if out.returncode != 0:
            pytest.skip("neither docker-compose nor the docker compose plugin is installed")
        cmd = ["docker", "compose"]
    else:
        cmd = [exe]
    env = dict(os.environ, **ENV_EXAMPLE)
    out = subprocess.run(cmd + ["-f", str(COMPOSE), "config"], capture_output=True,
                         text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    svc = next(iter(cfg["services"].values()))
    assert svc["command"][-2:] == [ENV_EXAMPLE["MEF3FS_SOURCE"], ENV_EXAMPLE["MEF3FS_MOUNTPOINT"]]


# ---------------------------------------------------------------------------
# consistency with the real CLI
# ---------------------------------------------------------------------------

def all_cli_arg_lists(dockerfile):
    """Every mef3fs argument list the Docker files and docs hand to the CLI."""
    entry = exec_form(dockerfile, "ENTRYPOINT")
    cmd = exec_form(dockerfile, "CMD") or []
    lists = {"ENTRYPOINT+CMD": entry[1:] + cmd,
             "compose command": entry[1:] + compose_service(ENV_EXAMPLE)["command"]}
    for where, text in (("docs/docker.md", DOCKER_DOC.read_text()),
                        ("Dockerfile comment", DOCKERFILE.read_text())):
        for k, line in enumerate(docker_run_lines(text)):
            _, _, args = split_docker_run(line)
            lists[f"{where} docker run #{k + 1}"] = entry[1:] + args
    return lists


def test_every_option_used_is_in_cli_help(dockerfile, cli_help):
    known = help_options(cli_help)
    for where, args in all_cli_arg_lists(dockerfile).items():
        for opt in options_in(args):
            assert opt in known, f"{where}: {opt} is not an option of mef3fs --help"


def test_every_command_line_parses_with_the_real_parser(dockerfile):
    from mef3fs import cli
    parser = cli.build_parser()
    for where, args in all_cli_arg_lists(dockerfile).items():
        if "--help" in args or "-h" in args:
            continue
        ns = parser.parse_args(args)          # cli._Parser raises UsageError on a bad line
        assert ns.foreground or ns.debug, f"{where}: not in the foreground"
        assert ns.source.startswith("/"), f"{where}: SOURCE must be a host (absolute) path"
        assert "allow_other" in ",".join(ns.options), f"{where}: -o allow_other expected"


def test_docs_docker_run_has_the_pieces(dockerfile):
    lines = docker_run_lines(DOCKER_DOC.read_text())
    assert lines, "docs/docker.md has a docker run line"
    for line in lines:
        opts, image, args = split_docker_run(line)
        text = " ".join(opts)
        assert "--device /dev/fuse" in text
        assert "--cap-add SYS_ADMIN" in text
        assert re.search(r"--security-opt apparmor[=:]\S+", text)
        assert "--init" in opts
        assert re.search(r"-v /:/host_root:ro\b", text)
        mp = args[-1]
        assert f"-v {mp}:{mp}:rshared" in text
    assert "docker compose up" in DOCKER_DOC.read_text()
    assert "fusermount3 -u" in DOCKER_DOC.read_text()


# ---------------------------------------------------------------------------
# the entry point, for real, outside Docker
# ---------------------------------------------------------------------------

HOST_SOURCE = "/data/study"          # what the user types
SESSION_REL = "sub-01/night1.mefd"


@pytest.fixture
def fake_host(tmp_path):
    """tmp/host_root stands in for the container's /host_root (the host's /).

    The data lives at /mnt/disk1/data/study on the "host", reached through the
    host's absolute symlink /data -> /mnt/disk1/data, as on real servers.
    """
    from tests.sessions import build_small_session
    root = tmp_path / "host_root"
    study = root / "mnt" / "disk1" / "data" / "study"
    (study / "sub-01").mkdir(parents=True)
    session = build_small_session(study / SESSION_REL, seed=4711, seconds=20,
                                  channels=("C1", "C2", "C3"))
    os.symlink("/mnt/disk1/data", root / "data")
    return root, Path(session)


def _require_fuse():
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    if shutil.which("fusermount3") is None:
        pytest.skip("fusermount3 not installed")


@pytest.fixture(params=["plain-folder", "mount-point"])
def container_mountpoint(request, tmp_path):
    """MOUNTPOINT as a plain empty folder, and as it is inside the container:
    an empty folder that is itself a mount point (the bind mount of the host
    folder onto the image's filesystem; a tmpfs stands in for it here, as
    os.path.ismount is true for a bind across filesystems too)."""
    _require_fuse()
    mp = tmp_path / "mnt"
    mp.mkdir()
    if request.param == "plain-folder":
        yield mp
        return
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mp)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot make the mountpoint a mount (needs root): {out.stderr.strip()}")
    assert os.path.ismount(mp)
    yield mp
    for _ in range(3):
        if not os.path.ismount(mp):
            break
        subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)
        subprocess.run(["umount", "-l", str(mp)], capture_output=True)


def image_environment(fake_root):
    """The process environment the image gives mef3fs, host root replaced."""
    env = dict(os.environ)
    env.update(dockerfile_env(parse_dockerfile()))
    env[HOST_ROOT_ENV] = str(fake_root)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    return env


def entrypoint_argv(service):
    """ENTRYPOINT + compose command, with the console script found like PATH would,
    else `python -m mef3fs` (the same program) when the package is not installed."""
    entry = exec_form(parse_dockerfile(), "ENTRYPOINT")
    script = Path(sys.executable).parent / entry[0]
    head = [str(script)] if script.exists() else [sys.executable, "-m", "mef3fs"]
    return head + entry[1:] + list(service["command"])


def check_mounted_session(mount_root, session):
    from tests.sessions import reference_bytes
    sdir = Path(mount_root) / SESSION_REL
    raw = (sdir / "info.json").read_bytes()
    info = json.loads(raw)
    # host paths, never the stand-in for /host_root
    assert info["session"] == f"{HOST_SOURCE}/{SESSION_REL}", info["session"]
    assert "host_root" not in raw.decode("utf-8")
    names = [c["name"] for c in info["channels"]]
    assert names == ["C1", "C2", "C3"]
    for ch in info["channels"]:
        got = (sdir / ch["file"]).read_bytes()
        want = reference_bytes(str(session), ch["name"])
        assert len(got) == len(want) and got == want, ch["name"]


def test_entrypoint_via_mount_fs_with_image_environment(fake_host, tmp_path, mount_fs,
                                                        monkeypatch):
    """The conftest mounter, given what the image gives: env, -o allow_other, host path.
    (A plain-folder mountpoint: the mounter detects readiness with os.path.ismount,
    which a pre-mounted mountpoint would fool; test_entrypoint_command_then_docker_stop
    covers that case.)"""
    _require_fuse()
    root, session = fake_host
    for k, v in image_environment(root).items():
        monkeypatch.setenv(k, v)
    m = mount_fs(HOST_SOURCE, "-o", "allow_other")
    check_mounted_session(m.root, session)
    assert str(root) not in m.log_text(), "logs show host paths, not the host root folder"
    m.unmount()


def test_entrypoint_command_then_docker_stop(fake_host, container_mountpoint, tmp_path):
    """Literally ENTRYPOINT + compose's command, then SIGTERM as `docker stop` sends it:
    the mount goes, every process ends, exit 0, within compose's grace period."""
    from tests.conftest import descendants, is_mounted, proc_table, wait_gone
    root, session = fake_host
    mp = str(container_mountpoint)
    service = compose_service({"MEF3FS_SOURCE": HOST_SOURCE, "MEF3FS_MOUNTPOINT": mp})
    grace = int(str(service["stop_grace_period"]).rstrip("s"))
    argv = entrypoint_argv(service)
    was_mount = is_mounted(mp)
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, env=image_environment(root), stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err, cwd="/", start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _fuse_mounted(mp):
            assert proc.poll() is None, (f"{argv} exited {proc.returncode}:\n"
                                         + err_path.read_text(errors="replace"))
            time.sleep(0.05)
        assert _fuse_mounted(mp), "no FUSE mount within 30 s:\n" + err_path.read_text()
        check_mounted_session(mp, session)

        table = proc_table()
        family = {p: table[p]["start"] for p in {proc.pid} | descendants(proc.pid, table)
                  if p in table}
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=grace)
        took = time.monotonic() - t0
        stderr = err_path.read_text(errors="replace")
        assert rc == 0, f"exit {rc} after SIGTERM:\n{stderr}"
        assert not _fuse_mounted(mp), "FUSE mount left behind after SIGTERM"
        assert is_mounted(mp) == was_mount, "the (bind) mountpoint itself stays as it was"
        left = wait_gone(family, timeout=5)
        assert not left, f"processes left after SIGTERM: {left}"
        assert took < grace
        assert str(root) not in stderr, "logs show host paths, not the host root folder"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if _fuse_mounted(mp):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True)


def _fuse_mounted(path):
    """Is a FUSE filesystem mounted at path (on top of whatever else is there)?"""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == str(path) and fields[sep + 1].startswith("fuse"):
                return True
    return False


def test_entrypoint_refuses_escaping_source(fake_host, tmp_path):
    """A SOURCE that leaves the host root: exit 2, one line naming the typed path."""
    root, _ = fake_host
    os.symlink("../../../..", root / "mnt" / "disk1" / "data" / "up")
    mp = tmp_path / "mp"
    mp.mkdir()
    for typed in ("/data/up/etc", "/../etc", "data/study"):
        out = subprocess.run([sys.executable, "-m", "mef3fs", "-f", typed, str(mp)],
                             env=image_environment(root), capture_output=True, text=True,
                             timeout=60, cwd="/")
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mef3fs: error:"), out.stderr
        assert typed in lines[0]
        assert not os.path.ismount(mp)


def test_cli_host_root_option_overrides_env(fake_host, tmp_path):
    """--host-root beats MEF3FS_HOST_ROOT: env points nowhere useful, the option fixes it."""
    root, _ = fake_host
    mp = tmp_path / "mp"
    mp.mkdir()
    env = image_environment(tmp_path / "nowhere")
    (tmp_path / "nowhere").mkdir()
    out = subprocess.run([sys.executable, "-m", "mef3fs", "-f", "/data/study", str(mp)],
                         env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 2 and "/data/study" in out.stderr
    assert str(tmp_path) not in out.stderr, "errors show host paths"
    # With the option SOURCE resolves; a missing MOUNTPOINT stops it before mounting.
    out = subprocess.run([sys.executable, "-m", "mef3fs", "-f", "--host-root", str(root),
                          "/data/study", str(tmp_path / "no-such-mp")],
                         env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 2
    assert "MOUNTPOINT" in out.stderr and "SOURCE" not in out.stderr, out.stderr
