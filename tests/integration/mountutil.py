"""Helpers for tests that mount layers with `holdfast-worker --standalone`.

Every mount made here is tracked by a Mounter, whose cleanup (run by the
`mounter` fixture even when a test fails) stops each worker it started
(SIGTERM, then SIGKILL, by pid), lazily unmounts anything still mounted
and removes its mountpoints. Only pids started here are ever signalled.

Environment:
  HOLDFAST_WORKER  path of holdfast-worker (default: build/worker/holdfast-worker
                   in the source tree)
"""

import base64
import os
import re
import signal
import stat
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

OVERLAY_OPAQUE = "trusted.overlay.opaque"
USER_OVERLAY_OPAQUE = "user.overlay.opaque"
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error:|ThreadSanitizer")


def worker_path():
    return os.environ.get("HOLDFAST_WORKER") or os.path.normpath(
        os.path.join(HERE, "..", "..", "build", "worker", "holdfast-worker"))


def is_mounted(path):
    """True when `path` is a mountpoint in this mount namespace."""
    # abspath, not realpath: a stat of a FUSE mountpoint whose connection
    # was never initialized would wait forever
    path = os.path.abspath(path)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            mp = line.split(b" ")[4].decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")
            if mp == path:
                return True
    return False


def lazy_umount(path):
    subprocess.run(["umount", "-l", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class MountError(Exception):
    def __init__(self, returncode, stderr):
        super().__init__("holdfast-worker exited %s: %s" % (returncode, stderr))
        self.returncode = returncode
        self.stderr = stderr


class Mount:
    """One running `holdfast-worker --standalone BLOB MOUNTPOINT`."""

    def __init__(self, proc, mountpoint, log_path):
        self.proc = proc
        self.mountpoint = mountpoint
        self.log_path = log_path

    @property
    def pid(self):
        return self.proc.pid

    def path(self, rel=""):
        return os.path.join(self.mountpoint, rel) if rel else self.mountpoint

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout=20):
        """SIGTERM, wait; SIGKILL if needed; unmount whatever is left.
        Returns the worker's exit status (None if it had to be killed)."""
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                rc = None
        if is_mounted(self.mountpoint):
            lazy_umount(self.mountpoint)
        return rc


class Mounter:
    """Starts workers and cleans up after them."""

    def __init__(self, base):
        self.base = base
        self.mounts = []

    def mount(self, blob, root=None, threads=None, env=None, timeout=60):
        mp = tempfile.mkdtemp(prefix="mnt-", dir=self.base)
        log_path = mp + ".log"
        cmd = [worker_path(), "--standalone", blob, mp]
        if root:
            cmd += ["--root", root]
        if threads:
            cmd += ["--threads", str(threads)]
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=full_env)
        m = Mount(proc, mp, log_path)
        self.mounts.append(m)
        deadline = time.monotonic() + timeout
        while True:
            if is_mounted(mp):
                os.stat(mp)  # the first request: INIT is answered
                return m
            rc = proc.poll()
            if rc is not None:
                raise MountError(rc, m.log())
            if time.monotonic() > deadline:
                raise AssertionError("%s did not mount within %ds; log:\n%s" % (blob, timeout, m.log()))
            time.sleep(0.02)

    def cleanup(self):
        """Stops everything; then fails if a sanitizer complained in any
        worker's log (an ASan/UBSan build of holdfast-worker)."""
        reports = []
        for m in reversed(self.mounts):
            m.stop()
            try:
                os.rmdir(m.mountpoint)
            except OSError:
                pass
            log = m.log()
            if SANITIZER_RE.search(log):
                reports.append("%s:\n%s" % (m.log_path, log[-6000:]))
        self.mounts = []
        if reports:
            raise AssertionError("sanitizer reports from holdfast-worker:\n" + "\n".join(reports))


def _round_seconds(ns):
    return (ns + 500_000_000) // 1_000_000_000


def mounted_view_checks(mnt, dump):
    """What the shared dump format leaves out, checked against the mount:
    st_nlink equals the number of names (the dump counts names per st_ino,
    so hardlinks sharing an inode are already checked by comparing dumps),
    and opaque directories also carry user.overlay.opaque = "y". Returns a
    list of problems."""
    problems = []
    for e in dump:
        full = os.path.join(mnt, e["path"])
        st = os.lstat(full)
        if e["type"] != "dir" and st.st_nlink != e["nlink"]:
            problems.append("%r: st_nlink %d, %d names" % (e["path"], st.st_nlink, e["nlink"]))
        if e["type"] == "dir":
            names = os.listxattr(full, follow_symlinks=False)
            opaque = OVERLAY_OPAQUE in e["xattrs"]
            if opaque:
                try:
                    v = os.getxattr(full, USER_OVERLAY_OPAQUE, follow_symlinks=False)
                except OSError as ex:
                    problems.append("%r: no %s (%s)" % (e["path"], USER_OVERLAY_OPAQUE, ex))
                    continue
                if v != b"y" or USER_OVERLAY_OPAQUE not in names:
                    problems.append("%r: %s = %r, listed %s" % (e["path"], USER_OVERLAY_OPAQUE, v, names))
            elif USER_OVERLAY_OPAQUE in names or OVERLAY_OPAQUE in names:
                problems.append("%r: not opaque but lists %s" % (e["path"], names))
    return problems


def strip_user_opaque(dump):
    """The dump of a mount, without user.overlay.opaque (the source tree's
    dump only knows the trusted.* marker)."""
    for e in dump:
        e["xattrs"].pop(USER_OVERLAY_OPAQUE, None)
    return dump


def b64(data):
    return base64.b64encode(data).decode("ascii")


def file_type(mode):
    return stat.S_IFMT(mode)


# --- a fake supervisor, for the worker protocol -----------------------------
#
# Envelopes (proto/holdfast.proto) encoded by hand: a handful of varint and
# length-delimited fields is all the worker protocol uses.

import ctypes  # noqa: E402

import pbwire  # noqa: E402
import socket  # noqa: E402

ENV = {"worker_start": 20, "mount": 21, "worker_go": 22, "unmount": 23, "drain": 24,
       "worker_ready": 30, "mount_status": 31, "drained": 32, "warm": 33, "serving": 34}
ENV_NAMES = {v: k for k, v in ENV.items()}


def pb_encode(fields):
    return pbwire.encode(fields)


def pb_decode(buf):
    """Returns {number: value} (the last of repeated numbers)."""
    return dict(pbwire.parse(buf))


def int32(v):
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def envelope(name, fields=()):
    return pb_encode([(1, 1), (ENV[name], pb_encode(list(fields)))])


libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4


def fuse_mount(mountpoint):
    """Opens /dev/fuse and mounts it as holdfastctl does; returns the fd."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    opts = "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions" % fd
    if libc.mount(b"holdfast", mountpoint.encode(), b"fuse.holdfast", MS_RDONLY | MS_NOSUID | MS_NODEV,
                  opts.encode()) != 0:
        e = ctypes.get_errno()
        os.close(fd)
        raise OSError(e, "mount %s: %s" % (mountpoint, os.strerror(e)))
    return fd


class FakeSupervisor:
    """Spawns holdfast-worker with a SOCK_SEQPACKET socketpair and speaks
    the supervisor's side of the protocol. Tracks every worker, mount and
    fd it made; cleanup() kills its own workers (by pid), unmounts and
    closes everything."""

    def __init__(self, base, root):
        self.base = base
        self.root = root
        self.workers = []
        self.mounts = []   # (mountpoint, fd)
        self.sock = None
        self.proc = None
        self.warms = []

    def spawn(self):
        sup, wk = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log = open(os.path.join(self.base, "worker-%d.log" % len(self.workers)), "wb")
        proc = subprocess.Popen([worker_path(), "--root", self.root, "--supervisor-fd", str(wk.fileno())],
                                pass_fds=[wk.fileno()], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wk.close()
        log.close()
        sup.settimeout(30)
        self.workers.append(proc)
        self.sock, self.proc = sup, proc
        name, msg, fds = self.recv_fds()
        assert name == "worker_ready" and msg.get(1) == proc.pid, (name, msg)
        assert len(fds) == 1, "WorkerReady without its in-flight table"
        # the worker's in-flight table (a memfd), for its successor
        self.inflight = getattr(self, "inflight", {})
        self.inflight[proc.pid] = fds[0]
        return proc

    def recv_fds(self):
        """The next message with the fds that came with it."""
        data, fds, _, _ = socket.recv_fds(self.sock, 16384, 4)
        if not data:
            raise EOFError("worker closed the socket")
        env = pb_decode(data)
        for num, v in env.items():
            if num in ENV_NAMES:
                return ENV_NAMES[num], pb_decode(v), fds
        raise AssertionError("no message in %r" % env)

    def log(self, i=-1):
        with open(os.path.join(self.base, "worker-%d.log" % (len(self.workers) + i if i < 0 else i)), "rb") as f:
            return f.read().decode(errors="replace")

    def send(self, name, fields=(), fd=None):
        data = envelope(name, fields)
        if fd is None:
            self.sock.send(data)
        else:
            socket.send_fds(self.sock, [data], [fd])

    def recv(self, skip_warm=True):
        """The next message; Warm (which a holding worker sends when it
        pleases) is counted in self.warms and skipped unless asked for."""
        while True:
            name, msg = self._recv1()
            if name == "warm" and skip_warm:
                self.warms.append(msg)
                continue
            return name, msg

    def _recv1(self):
        data = self.sock.recv(16384)
        if not data:
            raise EOFError("worker closed the socket")
        env = pb_decode(data)
        assert env.get(1) == 1, "envelope version %r" % env.get(1)
        for num, v in env.items():
            if num in ENV_NAMES:
                return ENV_NAMES[num], pb_decode(v)
        raise AssertionError("no message in %r" % env)

    def new_mount_point(self):
        mp = tempfile.mkdtemp(prefix="mnt-", dir=self.base)
        return mp

    def mount(self, mp):
        fd = fuse_mount(mp)
        self.mounts.append((mp, fd))
        return fd

    def hold(self, records, generation=1):
        """WorkerStart and records [(fields, fd)]: the worker holds them."""
        self.send("worker_start", [(1, generation), (2, self.root), (3, len(records))])
        for fields, fd in records:
            self.send("mount", fields, fd)

    def start(self, records, takeover=False, generation=1, table=None):
        """WorkerStart, records [(fields, fd)], WorkerGo (with the previous
        worker's in-flight table fd, if given); returns the Serving that
        follows (after a MountStatus for each record that failed, which
        the caller reads with recv())."""
        self.hold(records, generation)
        self.send("worker_go", [(1, takeover)], table)
        statuses = []
        while True:
            name, msg = self.recv()
            if name == "serving":
                self.refused = statuses
                return msg
            assert name == "mount_status", (name, msg)
            statuses.append(msg)

    def cleanup(self):
        for p in self.workers:
            if p.poll() is None:
                p.kill()
                p.wait()
        for mp, fd in self.mounts:
            if is_mounted(mp):
                lazy_umount(mp)
            try:
                os.close(fd)
            except OSError:
                pass
        if self.sock:
            self.sock.close()
        for fd in getattr(self, "inflight", {}).values():
            os.close(fd)

    def sanitizer_reports(self):
        out = []
        for i in range(len(self.workers)):
            log = self.log(i)
            if SANITIZER_RE.search(log):
                out.append(log[-6000:])
        return out
