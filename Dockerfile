# mef3fs in a container: mounts MEF 3.0 sessions from the host, mount visible on the host.
#
#   docker build -t mef3fs .
#   docker run -d --name mef3fs --init \
#     --device /dev/fuse --cap-add SYS_ADMIN --security-opt apparmor=unconfined \
#     --network none \
#     -v /:/host_root:ro -v /mnt/mef3fs:/mnt/mef3fs:rshared \
#     mef3fs -o allow_other /data/study /mnt/mef3fs
#
# SOURCE is the *host* path (mapped to /host_root/<path> by MEF3FS_HOST_ROOT);
# MOUNTPOINT is bind-mounted at the same path inside the container. See
# docs/docker.md and compose.yaml.

# bookworm pinned: it ships libfuse3-3 (libfuse3.so.3), the library mfusepy loads.
FROM python:3.11-slim-bookworm

# fuse3 brings fusermount3 and /etc/fuse.conf; libfuse3-3 is the library.
# user_allow_other lets a non-root mounter use -o allow_other (root may anyway).
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 libfuse3-3 \
 && rm -rf /var/lib/apt/lists/* \
 && sed -i 's/^#[[:space:]]*user_allow_other[[:space:]]*$/user_allow_other/' /etc/fuse.conf \
 && (grep -qx 'user_allow_other' /etc/fuse.conf || echo 'user_allow_other' >> /etc/fuse.conf)

WORKDIR /src
COPY . /src
RUN pip install --no-cache-dir /src \
 && rm -rf /src \
 && mef3fs --version

WORKDIR /
# The host's / is bind-mounted here; SOURCE is read as /host_root/<SOURCE>.
# Override with -e MEF3FS_HOST_ROOT=... or --host-root; --host-root '' turns it off.
ENV MEF3FS_HOST_ROOT=/host_root \
    FUSE_LIBRARY_NAME=fuse3 \
    PYTHONUNBUFFERED=1

# docker stop sends SIGTERM; libfuse's handler unmounts, then workers end.
# Run with --init (compose: init: true) so PID 1 is tini, which forwards
# signals and reaps, and a SIGTERM during start-up is not ignored.
STOPSIGNAL SIGTERM

# Foreground: the container lives exactly as long as the mount.
ENTRYPOINT ["mef3fs", "-f"]
CMD ["--help"]
