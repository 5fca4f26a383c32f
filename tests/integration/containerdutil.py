"""Debian's containerd for the tests, with everything under a private
directory, and what its tests share: processes that die with the test
(PR_SET_PDEATHSIG), unmounting what a test left, small layers.

Containerd(base, proxies) writes a config (its own root, state and
sockets; CRI and the snapshotters not tested off; one [proxy_plugins]
entry per proxies item); start() waits until `ctr version` answers;
stop() kills the tasks it started, then containerd itself (by pid).
With cri=SNAPSHOTTER the CRI plugin is on instead, pulling with that
snapshotter and passing it the layers' annotations (as a Kubernetes node
whose kubelet talks to containerd), its registries configured in
base/certs.d (hosts.toml per host), its CNI directories empty."""

import gzip
import hashlib
import io
import os
import signal
import subprocess
import tarfile
import time

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
CTR_REMOTE = "/usr/bin/ctr-remote"
BUSYBOX = "/bin/busybox"


# --- processes -----------------------------------------------------------------

def popen(cmd, log_path, **kw):
    """Starts cmd with PR_SET_PDEATHSIG (it dies with this process even if
    pytest is killed before its teardown) in its own session."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--"] + cmd, stdin=subprocess.DEVNULL,
                                stdout=kw.pop("stdout", log), stderr=log, start_new_session=True, **kw)
    finally:
        log.close()


def stop_proc(proc, sig=signal.SIGTERM, timeout=15):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class Containerd:
    """Debian's containerd with everything under `base`."""

    def __init__(self, base, proxies, cri=None):
        self.base = base
        self.sock = os.path.join(base, "containerd.sock")
        self.log = os.path.join(base, "containerd.log")
        self.config = os.path.join(base, "containerd.toml")
        self.certs_d = os.path.join(base, "certs.d")
        lines = [
            "version = 2",
            'root = "%s"' % os.path.join(base, "cd-root"),
            'state = "%s"' % os.path.join(base, "cd-state"),
            'disabled_plugins = [%s"io.containerd.internal.v1.opt",'
            ' "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",'
            ' "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.aufs"]' % (
                "" if cri else '"io.containerd.grpc.v1.cri", '),
            "[grpc]",
            '  address = "%s"' % self.sock,
            "[ttrpc]",
            '  address = "%s.ttrpc"' % self.sock,
        ]
        if cri:
            for d in ("cni-bin", "cni-conf", "certs.d"):
                os.makedirs(os.path.join(base, d), exist_ok=True)
            lines += [
                '[plugins."io.containerd.grpc.v1.cri"]',
                '  sandbox_image = "127.0.0.1:1/holdfast-tests/no-sandboxes:0"',
                '  stream_server_address = "127.0.0.1"',
                '  stream_server_port = "0"',
                '  [plugins."io.containerd.grpc.v1.cri".containerd]',
                '    snapshotter = "%s"' % cri,
                "    disable_snapshot_annotations = false",
                '  [plugins."io.containerd.grpc.v1.cri".cni]',
                '    bin_dir = "%s"' % os.path.join(base, "cni-bin"),
                '    conf_dir = "%s"' % os.path.join(base, "cni-conf"),
                '  [plugins."io.containerd.grpc.v1.cri".registry]',
                '    config_path = "%s"' % self.certs_d,
            ]
        lines.append("[proxy_plugins]")
        for name, address in proxies.items():
            lines += ["  [proxy_plugins.%s]" % name, '    type = "snapshot"', '    address = "%s"' % address]
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None
        self.namespaces = set()

    def start(self, timeout=30):
        self.proc = popen([CONTAINERD, "--config", self.config], self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "containerd exited:\n" + read_text(self.log)[-4000:]
            if os.path.exists(self.sock) and self.ctr("version", check=False, timeout=5).returncode == 0:
                return self
            time.sleep(0.1)
        raise AssertionError("containerd not ready:\n" + read_text(self.log)[-4000:])

    def plain_http(self, host):
        """Has the CRI plugin reach the registry at host (HOST:PORT) over
        plain HTTP (containerd's hosts.toml)."""
        d = os.path.join(self.certs_d, host)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hosts.toml"), "w") as f:
            f.write('server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' % (host, host))

    def ctr(self, *args, ns="default", check=True, timeout=120, tool=CTR, input=None):
        self.namespaces.add(ns)
        p = subprocess.run([tool, "-a", self.sock, "-n", ns] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError("ctr %s failed (%d): %s\n%s\ncontainerd log:\n%s" % (
                " ".join(args), p.returncode, p.stdout.decode(errors="replace"),
                p.stderr.decode(errors="replace"), read_text(self.log)[-3000:]))
        return p

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Tasks first: their shims are containerd's children, stopped
            # through containerd.
            for ns in sorted(self.namespaces):
                try:
                    tasks = self.ctr("tasks", "ls", "-q", ns=ns, check=False, timeout=20).stdout.split()
                    for t in tasks:
                        self.ctr("tasks", "kill", "-s", "KILL", t.decode(), ns=ns, check=False, timeout=20)
                        self.ctr("tasks", "rm", "-f", t.decode(), ns=ns, check=False, timeout=20)
                    for c in self.ctr("containers", "ls", "-q", ns=ns, check=False, timeout=20).stdout.split():
                        self.ctr("containers", "rm", c.decode(), ns=ns, check=False, timeout=20)
                except (subprocess.TimeoutExpired, OSError):
                    pass
        stop_proc(self.proc)
        self.proc = None


def mounts_under(base):
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == base or mp.startswith(base + "/"):
                out.append(mp)
    return out


def unmount_all(base):
    # Bounded: each round unmounts what it sees, deepest first.
    for _ in range(5):
        mps = mounts_under(base)
        if not mps:
            return
        for mp in sorted(mps, key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL, timeout=30)


# --- layers --------------------------------------------------------------------

def tar_gz(entries):
    """entries: (name, "dir", mode) | (name, "file", bytes, mode) |
    (name, "link", target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            ti = tarfile.TarInfo(e[0])
            ti.mtime = 1_700_000_000
            if e[1] == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, e[2]
                t.addfile(ti)
            elif e[1] == "file":
                ti.size, ti.mode = len(e[2]), e[3]
                t.addfile(ti, io.BytesIO(e[2]))
            else:
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, e[2], 0o777
                t.addfile(ti)
    return gzip.compress(buf.getvalue(), mtime=0)


def chain_ids(diff_ids):
    chain = [diff_ids[0]]
    for d in diff_ids[1:]:
        chain.append("sha256:" + hashlib.sha256((chain[-1] + " " + d).encode()).hexdigest())
    return chain
