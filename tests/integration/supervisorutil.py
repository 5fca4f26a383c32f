"""Helpers for tests of holdfast-supervisor with the real holdfast-worker.

A SupervisorProc is one `holdfast-supervisor --root ROOT` started by a test.
Its cleanup (run by the fixtures even when a test fails) stops it with
SIGTERM (then SIGKILL), kills any worker it left behind (only pids this
helper saw as that supervisor's workers, checked against /proc first),
lazily unmounts every mountpoint the test used and removes its directories.

Also: raw access to the control socket (a minimal protobuf encoder/decoder
for the few fields the tests need, so that no protobuf package is needed)
and reading the supervisor's open fds.

Environment (meson sets all three):
  HOLDFASTCTL          build/supervisor/ctl/holdfastctl
  HOLDFAST_SUPERVISOR  build/supervisor/holdfast-supervisor
  HOLDFAST_WORKER      build/worker/holdfast-worker
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time

import pbwire

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.normpath(os.path.join(HERE, "..", "..", "build"))
# run by hand against another build dir with only HOLDFAST_WORKER set:
# the other tools come from that dir too, not silently from build/
if os.environ.get("HOLDFAST_WORKER"):
    BUILD = os.path.dirname(os.path.dirname(os.path.abspath(os.environ["HOLDFAST_WORKER"])))


def tool(env, default):
    return os.environ.get(env) or os.path.join(BUILD, default)


def holdfastctl_path():
    return tool("HOLDFASTCTL", "supervisor/ctl/holdfastctl")


def supervisor_path():
    return tool("HOLDFAST_SUPERVISOR", "supervisor/holdfast-supervisor")


def worker_path():
    return tool("HOLDFAST_WORKER", "worker/holdfast-worker")


def mounted_paths():
    out = set()
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            mp = line.split(b" ")[4].decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")
            out.add(mp)
    return out


def canon(path):
    """realpath() of a mountpoint without touching the mount itself: a
    stat of a FUSE mount nobody serves would block."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def lazy_umount(path):
    subprocess.run(["umount", "-l", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def proc_fds(pid):
    """{fd: target} of a process."""
    out = {}
    d = "/proc/%d/fd" % pid
    for name in os.listdir(d):
        try:
            out[int(name)] = os.readlink(os.path.join(d, name))
        except OSError:
            pass
    return out


def fd_kinds(fds):
    """Sorted targets with inode numbers dropped: fd numbers and socket
    inodes change when workers are replaced and across a re-exec, the
    multiset of what is open must not."""
    import re
    return sorted(re.sub(r"\[\d+\]", "[]", t) for t in fds.values())


def ppid_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _proc_stat(pid):
    """(state, ppid) of a process, or None when it is gone."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, ValueError, IndexError):
        return None


def _children(pid, zombies):
    out = []
    for d in os.listdir("/proc"):
        st = _proc_stat(d) if d.isdigit() else None
        if st and st[1] == pid and (st[0] == "Z") == zombies:
            out.append(int(d))
    return out


def children_of(pid):
    """Live children of pid."""
    return _children(pid, False)


def zombie_children(pid):
    """Children of pid that exited and were not reaped."""
    return _children(pid, True)


def alive(pid):
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z"


def cmdline_of(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


# --- protobuf, just enough for Envelope/CtlRequest/CtlReply ---------------

pb_field = pbwire.field
pb_parse = pbwire.parse


OP = {"STATUS": 0, "MOUNT": 1, "UMOUNT": 2, "UPGRADE": 3, "RESTART": 4, "REEXEC": 5}


def ctl_request(op, source=None, mountpoint=None, worker_path=None, version=1):
    req = pb_field(1, op)
    if source is not None:
        req += pb_field(2, source)
    if mountpoint is not None:
        req += pb_field(3, mountpoint)
    if worker_path is not None:
        req += pb_field(4, worker_path)
    return pb_field(1, version) + pb_field(10, req)


def parse_reply(datagram):
    """(error, message) of a CtlReply datagram, or None for anything else."""
    for num, v in pb_parse(datagram):
        if num == 11:
            error, message = 0, ""
            for f, x in pb_parse(v):
                if f == 1:
                    error = x - (1 << 64) if x >= 1 << 63 else x
                elif f == 2:
                    message = x.decode(errors="replace")
            return error, message
    return None


class SupervisorProc:
    def __init__(self, base, extra_args=(), worker=None, env=None):
        self.base = base
        self.env = dict(os.environ, **(env or {}))   # the worker inherits it
        self.root = tempfile.mkdtemp(prefix="root-", dir=base)
        self.log_path = os.path.join(base, "supervisor-%s.log" % os.path.basename(self.root))
        self.worker = worker or worker_path()
        self.extra_args = list(extra_args)
        self.proc = None
        self.worker_pids = set()
        self.killed = set()      # workers kill_worker() killed
        self.mountpoints = []
        self.sock = os.path.join(self.root, "supervisor.sock")

    def start(self, timeout=20):
        cmd = [supervisor_path(), "--root", self.root, "--worker", self.worker] + self.extra_args
        if not any(a.startswith(("--snapshotter-socket", "--no-snapshotter")) for a in self.extra_args):
            # never the node's own /run/holdfast/snapshotter.sock
            cmd += ["--snapshotter-socket", os.path.join(self.root, "snapshotter.sock")]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("supervisor exited %s:\n%s" % (self.proc.returncode, self.log()))
            if os.path.exists(self.sock):
                # the socket file exists from bind(2) on, a moment before
                # listen(2): a refused connection means "not yet"
                rc, out, _ = self.ctl("status", "--json", check=False)
                st = json.loads(out) if rc == 0 else {}
                if st.get("worker_pid") and "serving" in st.get("state", ""):
                    return self
            time.sleep(0.02)
        raise AssertionError("supervisor did not come up; log:\n" + self.log())

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def ctl(self, *args, check=True, timeout=120):
        p = subprocess.run([holdfastctl_path(), "--root", self.root] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        if check and p.returncode != 0:
            raise AssertionError("holdfastctl %s: exit %d: %s%s\nsupervisor log tail:\n%s"
                                 % (" ".join(args), p.returncode, out, err, self.log()[-3000:]))
        return p.returncode, out, err

    def status(self):
        _, out, _ = self.ctl("status", "--json")
        st = json.loads(out)
        for k in ("worker_pid", "standby_pid"):
            if st.get(k):
                self.worker_pids.add(st[k])
        return st

    def wait_standby(self, not_pid=0, timeout=30):
        """Waits until a standby worker (other than not_pid) holds the mounts."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st["standby_pid"] and st["standby_pid"] != not_pid:
                return st
            if time.monotonic() > deadline:
                raise AssertionError("no standby after %ds: %r\n%s" % (timeout, st, self.log()[-3000:]))
            time.sleep(0.02)

    def wait_served(self, timeout=30):
        """Waits until a worker that was not killed serves every mount (a
        status taken right after a kill may still name the dying one)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if (st["worker_pid"] and st["worker_pid"] not in self.killed and "serving" in st["state"]
                    and all(m["served"] for m in st["mounts"])):
                return st
            if time.monotonic() > deadline:
                raise AssertionError("not served after %ds: %r\n%s" % (timeout, st, self.log()[-3000:]))
            time.sleep(0.02)

    def new_mountpoint(self):
        mp = tempfile.mkdtemp(prefix="mnt-", dir=self.base)
        self.mountpoints.append(mp)
        return mp

    def mount(self, blob, mp=None):
        mp = mp or self.new_mountpoint()
        self.ctl("mount", blob, mp)
        return mp

    def fds_quiet(self, timeout=5.0):
        """The supervisor's fds once they have not changed for 0.3 s (a
        control connection from the last request may still be closing)."""
        deadline = time.monotonic() + timeout
        last, since = self.fds(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.fds()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= 0.3:
                break
        return last

    def fds_settle(self, expected, timeout=5.0):
        """The supervisor's fds once they equal `expected`, or after `timeout`
        seconds: a control connection is closed when the supervisor's loop
        sees the client hang up, a moment after the client returned."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.fds()
            if now == expected or time.monotonic() > deadline:
                return now
            time.sleep(0.05)

    def fds(self):
        return proc_fds(self.pid)

    def raw(self, datagrams, fd=None, expect_reply=True):
        """Sends datagrams on a fresh control connection; returns the
        replies (error, message) received until the supervisor hangs up or
        stops sending for a second."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(self.sock)
            s.settimeout(5)
            for d in datagrams:
                if fd is not None:
                    s.sendmsg([d], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(memoryview(
                        __import__("array").array("i", [fd]))))])
                else:
                    s.send(d)
            replies = []
            if expect_reply:
                s.settimeout(2)
                while True:
                    try:
                        d = s.recv(65536)
                    except (socket.timeout, ConnectionResetError):
                        break
                    if not d:
                        break
                    r = parse_reply(d)
                    if r is not None:
                        replies.append(r)
                        if len(replies) >= len(datagrams):
                            break
            return replies
        finally:
            s.close()

    def kill_worker(self):
        """SIGKILLs the current worker if it is really this supervisor's child."""
        st = self.status()
        pid = st["worker_pid"]
        if pid and ppid_of(pid) == self.pid:
            os.kill(pid, signal.SIGKILL)
            self.killed.add(pid)
            return pid
        return None

    def stop(self, timeout=20):
        """SIGTERM and wait; returns the exit code (None: had to SIGKILL)."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                rc = None
        return rc

    def cleanup(self):
        self.stop()
        root_arg = self.root.encode()
        for pid in self.worker_pids:
            cl = cmdline_of(pid)
            if cl and cl[0].endswith(b"holdfast-worker") and root_arg in cl:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        mounted = mounted_paths()
        for mp in self.mountpoints:
            if canon(mp) in mounted:
                lazy_umount(mp)
            try:
                os.rmdir(mp)
            except OSError:
                pass


class Supervisors:
    """Fixture object: starts supervisors, cleans up every one."""

    def __init__(self, base):
        self.base = base
        self.all = []

    def start(self, extra_args=(), worker=None):
        s = SupervisorProc(self.base, extra_args, worker)
        self.all.append(s)
        return s.start()

    def cleanup(self):
        for s in reversed(self.all):
            s.cleanup()
