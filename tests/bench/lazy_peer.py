"""stargz-snapshotter (the peer, /work/shared/peer) as tests/bench/lazy
drives it: a private containerd (its own root, state and sockets under the
bench's work directory, the CRI plugin off) with the peer's
containerd-stargz-grpc as its proxy snapshotter "stargz", both started
fresh for each cold run and stopped after it.

A run is what containerd does to start a container, minus the runtime:
`ctr-remote images rpull` (manifest, config; each layer prepared by the
snapshotter: TOC fetched, FUSE-mounted, prefetch started), an active
snapshot on top of the image's chain ID, and its overlayfs mount (as
`ctr snapshots mounts` prints it) on the target the workload chroots into.
The peer runs with its defaults (prefetch and background fetch on); it
decides plain HTTP for 127.0.0.1 by itself.

Stopping: containerd gets SIGTERM; the peer SIGINT, on which it unmounts
its FUSE layers and removes its state (its README); whatever is still
mounted under the run's directory is then lazily unmounted. Only pids
started here are signalled.
"""

import os
import shlex
import shutil
import signal
import subprocess
import time

NAMESPACE = "holdfast-bench"
SNAPSHOTTER = "stargz"


def usable(binary):
    """(True, "") when the peer can be run here, else (False, why)."""
    if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        return False, "%s is not an executable file" % binary
    for tool in ("containerd", "ctr", "ctr-remote"):
        if not shutil.which(tool):
            return False, "%s is not installed (Debian packages containerd, stargz-snapshotter)" % tool
    try:
        p = subprocess.run([binary, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
    except OSError as e:
        return False, "%s does not run: %s" % (binary, e)
    if b"-address" not in p.stdout:
        return False, "%s is not containerd-stargz-grpc (no --address in its --help)" % binary
    return True, ""


class PeerError(Exception):
    pass


def _wait_socket(path, proc, what, log_path, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerError("%s exited %s:\n%s" % (what, proc.returncode, _tail(log_path)))
        if os.path.exists(path):
            return
        time.sleep(0.02)
    raise PeerError("%s did not create %s in %d s:\n%s" % (what, path, timeout, _tail(log_path)))


def _tail(path, n=3000):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")[-n:]
    except OSError:
        return ""


def _mounts_under(prefix):
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            mp = line.split(b" ")[4].decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")
            if mp == prefix or mp.startswith(prefix.rstrip("/") + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


class Peer:
    def __init__(self, binary, work, name, registry_host):
        self.binary = binary
        self.dir = os.path.join(work, name)
        self.registry_host = registry_host
        self.peer_sock = os.path.join(self.dir, "stargz.sock")
        self.ctd_sock = os.path.join(self.dir, "containerd.sock")
        self.peer_log = self.dir + "-stargz.log"
        self.ctd_log = self.dir + "-containerd.log"
        self.peer_proc = None
        self.ctd_proc = None

    def _spawn(self, cmd, log_path):
        with open(log_path, "ab") as log:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def start(self):
        os.makedirs(self.dir)
        peer_cfg = os.path.join(self.dir, "stargz.toml")
        with open(peer_cfg, "w") as f:
            f.write("# stargz-snapshotter defaults (prefetch, background fetch)\n")
        ctd_cfg = os.path.join(self.dir, "containerd.toml")
        with open(ctd_cfg, "w") as f:
            f.write('version = 2\n'
                    'root = "%s"\n'
                    'state = "%s"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",\n'
                    '  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",\n'
                    '  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]\n'
                    '[grpc]\n  address = "%s"\n'
                    '[ttrpc]\n  address = "%s"\n'
                    '[debug]\n  address = ""\n'
                    '[proxy_plugins.%s]\n  type = "snapshot"\n  address = "%s"\n' % (
                        os.path.join(self.dir, "containerd-root"), os.path.join(self.dir, "containerd-state"),
                        self.ctd_sock, self.ctd_sock + ".ttrpc", SNAPSHOTTER, self.peer_sock))
        self.peer_proc = self._spawn([self.binary, "--address", self.peer_sock, "--root",
                                      os.path.join(self.dir, "stargz-root"), "--config", peer_cfg,
                                      "--log-level", "info"], self.peer_log)
        _wait_socket(self.peer_sock, self.peer_proc, "containerd-stargz-grpc", self.peer_log)
        self.ctd_proc = self._spawn(["containerd", "--config", ctd_cfg], self.ctd_log)
        _wait_socket(self.ctd_sock, self.ctd_proc, "containerd", self.ctd_log)
        deadline = time.monotonic() + 30
        while True:
            p = self._ctr("ctr", "version", check=False)
            if p.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise PeerError("containerd does not answer: %s\n%s" % (p.stderr.decode(errors="replace"),
                                                                         _tail(self.ctd_log)))
            time.sleep(0.05)
        return self

    def _ctr(self, tool, *args, check=True, timeout=300):
        cmd = [tool, "--address", self.ctd_sock, "--namespace", NAMESPACE] + list(args)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if check and p.returncode != 0:
            raise PeerError("%s: exit %d: %s%s\npeer log tail:\n%s" % (
                " ".join(cmd), p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"),
                _tail(self.peer_log)))
        return p

    def pull_and_mount(self, ref, chain_id, target):
        """rpull, then an active snapshot over the image mounted on target."""
        self._ctr("ctr-remote", "images", "rpull", "--plain-http", "--snapshotter", SNAPSHOTTER, ref)
        key = "holdfast-bench-active"
        self._ctr("ctr", "snapshots", "--snapshotter", SNAPSHOTTER, "prepare", key, chain_id)
        out = self._ctr("ctr", "snapshots", "--snapshotter", SNAPSHOTTER, "mounts", target, key).stdout.decode()
        cmd = shlex.split(out.strip().splitlines()[-1]) if out.strip() else []
        if not cmd or cmd[0] != "mount":
            raise PeerError("ctr snapshots mounts printed %r" % out)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        if p.returncode != 0:
            raise PeerError("%s: %s" % (out.strip(), p.stderr.decode(errors="replace")))

    def _stop(self, proc, sig):
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    def stop(self):
        for mp in _mounts_under(os.path.join(self.dir, "containerd-root")):
            subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        self._stop(self.ctd_proc, signal.SIGTERM)
        self._stop(self.peer_proc, signal.SIGINT)
        for mp in _mounts_under(self.dir):
            subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
