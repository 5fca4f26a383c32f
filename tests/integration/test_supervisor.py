"""holdfast-supervisor with the real holdfast-worker: the control socket
(status, mount, umount, mounts; bad and hostile requests), the crash loop,
and the crash test: readers never see an error or a wrong byte while the
worker is SIGKILLed at random moments, upgraded, and the supervisor
re-executes itself.

Run as root from the source tree (meson sets the paths):
  HOLDFASTCTL=... HOLDFAST_SUPERVISOR=... HOLDFAST_WORKER=... \
      /usr/bin/python3 -m pytest tests/integration/test_supervisor.py -s
"""

import errno
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mountutil
import supervisorutil as su  # noqa: E402

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def binaries():
    if os.geteuid() != 0:
        pytest.skip("the supervisor needs root (mount(2), /dev/fuse)")
    paths = [su.holdfastctl_path(), su.supervisor_path(), su.worker_path()]
    for p in paths:
        if not os.access(p, os.X_OK):
            # meson passes all three: a missing one there is a failure.
            if os.environ.get("HOLDFAST_SUPERVISOR") or os.environ.get("CI"):
                pytest.fail("%s is not built" % p)
            pytest.skip("%s is not built" % p)
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    return paths


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="holdfast-supervisor-test-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Layer:
    def __init__(self, blob, files, links, dirs):
        self.blob = blob
        self.files = files    # rel -> (sha256, size)
        self.links = links    # rel -> target
        self.dirs = dirs      # rel -> sorted names


@pytest.fixture(scope="module")
def layer(binaries, workdir):
    rng = random.Random(4242)
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    files, links, dirs = {}, {}, {}
    for d in range(12):
        os.mkdir(os.path.join(src, "d%02d" % d))
        for i in range(30):
            r = rng.random()
            size = rng.randint(0, 4 * KiB) if r < 0.6 else rng.randint(4 * KiB, 300 * KiB)
            data = rng.randbytes(size)
            rel = "d%02d/f%03d" % (d, i)
            with open(os.path.join(src, rel), "wb") as f:
                f.write(data)
            files[rel] = (hashlib.sha256(data).hexdigest(), size)
        rel = "d%02d/link" % d
        os.symlink("f000", os.path.join(src, rel))
        links[rel] = "f000"
    os.mkdir(os.path.join(src, "big"))
    for i, size in enumerate([1 * MiB + 3, 5 * MiB + 17, 9 * MiB]):
        data = rng.randbytes(size)
        rel = "big/b%d" % i
        with open(os.path.join(src, rel), "wb") as f:
            f.write(data)
        files[rel] = (hashlib.sha256(data).hexdigest(), size)
    for dp, dn, fn in os.walk(src):
        rel = os.path.relpath(dp, src)
        dirs["" if rel == "." else rel] = sorted(dn + fn)
    tar = os.path.join(workdir, "layer.tar")
    subprocess.run(["tar", "--numeric-owner", "--sort=name", "-C", src, "-cf", tar, "."], check=True)
    blob = os.path.join(workdir, "layer.esgz")
    p = subprocess.run([su.holdfastctl_path(), "convert", "--chunk-size", "1M", tar, blob],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.returncode == 0, p.stderr.decode()
    return Layer(blob, files, links, dirs)


@pytest.fixture
def sups(binaries, workdir):
    s = su.Supervisors(workdir)
    yield s
    s.cleanup()


def check_file(mp, layer, rel):
    with open(os.path.join(mp, rel), "rb") as f:
        data = f.read()
    assert (hashlib.sha256(data).hexdigest(), len(data)) == layer.files[rel], rel


# --- the control plane -----------------------------------------------------

def test_not_running(binaries, workdir):
    root = tempfile.mkdtemp(prefix="noroot-", dir=workdir)
    p = subprocess.run([su.holdfastctl_path(), "--root", root, "status"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    assert p.returncode == 1
    assert p.stderr.decode().startswith(
        "holdfastctl: cannot reach the supervisor at %s/supervisor.sock: " % root), p.stderr


def test_status_mount_umount(sups, layer):
    s = sups.start()
    st = s.status()
    for k in ("worker_pid", "generation", "restarts", "mounts", "uptime_ms", "supervisor_pid"):
        assert k in st, k
    # generation 2 once the standby worker started
    assert st["supervisor_pid"] == s.pid and st["generation"] in (1, 2) and st["restarts"] == 0
    assert st["mounts"] == []
    assert oct(os.stat(s.root).st_mode & 0o7777) == "0o700"
    assert oct(os.stat(s.sock).st_mode & 0o777) == "0o600"
    fds_before = s.fds_quiet()

    mp = s.mount(layer.blob)
    st = s.status()
    assert [(m["mountpoint"], m["source"], m["served"]) for m in st["mounts"]] == [(mp, layer.blob, True)]
    assert su.canon(mp) in su.mounted_paths()
    for rel in list(layer.files)[::7]:
        check_file(mp, layer, rel)
    assert sorted(os.listdir(mp)) == layer.dirs[""]
    assert os.readlink(os.path.join(mp, "d03/link")) == "f000"
    _, out, _ = s.ctl("mounts")
    assert mp in out and layer.blob in out and "yes" in out

    # The same mountpoint again: refused, nothing new kept.
    fds_mounted = s.fds_quiet()
    rc, _, err = s.ctl("mount", layer.blob, mp, check=False)
    assert rc == 1 and "already a FUSE mount" in err, err
    assert s.fds_settle(fds_mounted) == fds_mounted

    _, out, _ = s.ctl("umount", mp)
    assert "unmounted" in out
    assert su.canon(mp) not in su.mounted_paths()
    assert s.status()["mounts"] == []
    rc, _, err = s.ctl("umount", mp, check=False)
    assert rc == 1 and "not a holdfast mount" in err

    # A holdfast mount whose client died before it handed the fd over (its
    # connection is gone, the supervisor never knew it): umount detaches it.
    os.close(mountutil.fuse_mount(mp))
    try:
        _, out, _ = s.ctl("umount", mp)
        assert "lost its connection" in out, out
        assert su.canon(mp) not in su.mounted_paths()
    finally:
        if su.canon(mp) in su.mounted_paths():
            subprocess.run(["umount", "-l", mp], check=False)
    assert s.fds_settle(fds_before) == fds_before
    assert s.stop() == 0


def test_bad_requests(sups, layer, workdir):
    s = sups.start()
    fds_before = s.fds_quiet()
    mounts_before = su.mounted_paths()
    mp = s.new_mountpoint()

    def refused(args, want):
        rc, out, err = s.ctl(*args, check=False)
        assert rc == 1, (args, out, err)
        assert err.startswith("holdfastctl: ") and want in err, (args, err)

    refused(["mount", layer.blob, os.path.join(workdir, "does-not-exist")], "No such file or directory")
    refused(["mount", os.path.join(workdir, "no-blob"), mp], "No such file or directory")
    refused(["mount", workdir, mp], "not a regular file")
    fifo = os.path.join(workdir, "fifo")
    os.mkfifo(fifo)
    refused(["mount", fifo, mp], "not a regular file")
    notdir = os.path.join(workdir, "layer.tar")
    refused(["mount", layer.blob, notdir], "Not a directory")
    full = tempfile.mkdtemp(dir=workdir)
    open(os.path.join(full, "x"), "w").close()
    refused(["mount", layer.blob, full], "not empty")
    # A readable file that is not eStargz: the worker refuses it and the
    # supervisor takes the mount back.
    refused(["mount", notdir, mp], "")
    assert su.canon(mp) not in su.mounted_paths()
    refused(["umount", "/nonexistent/mnt"], "not a holdfast mount")
    refused(["upgrade", "--worker", "/nonexistent/worker"], "No such file or directory")

    # Raw requests: relative paths, empty fields, unknown ops, garbage.
    R = su.ctl_request
    cases = [
        # holdfastctl mounts and sends the fd; the supervisor looks up no path
        (R(su.OP["MOUNT"], layer.blob, mp), -errno.EBADMSG, "/dev/fuse fd"),
        (R(su.OP["UMOUNT"], mountpoint="relative"), -errno.EINVAL, "not an absolute path"),
        (R(su.OP["UPGRADE"], worker_path="bin/worker"), -errno.EINVAL, "not absolute"),
        (R(77), -errno.EOPNOTSUPP, "unknown request"),
        (R(su.OP["STATUS"], version=2), -errno.EPROTO, "version"),
        (b"\xff\xff\xff\xff garbage", -errno.EBADMSG, "undecodable"),
        (su.pb_field(1, 1) + su.pb_field(30, su.pb_field(1, 5)), -errno.EBADMSG, "expected a CtlRequest"),
        (su.pb_field(1, 1) + su.pb_field(10, su.pb_field(2, "x" * 5000)), -errno.EBADMSG, "undecodable"),
    ]
    for datagram, want_err, want_msg in cases:
        replies = s.raw([datagram])
        assert replies and replies[0][0] == want_err and want_msg in replies[0][1], (datagram[:40], replies)
    # An fd attached to a request is refused and closed; a MOUNT's must be
    # a /dev/fuse, with an absolute mountpoint.
    with open(layer.blob, "rb") as f:
        replies = s.raw([R(su.OP["STATUS"])], fd=f.fileno())
        assert replies and replies[0][0] == -errno.EBADMSG, replies
        replies = s.raw([R(su.OP["MOUNT"], layer.blob, mp)], fd=f.fileno())
        assert replies and replies[0][0] == -errno.EBADMSG and "/dev/fuse" in replies[0][1], replies
    with open("/dev/fuse", "rb+", buffering=0) as f:
        for src, where in [("", mp), (layer.blob, "mnt")]:
            replies = s.raw([R(su.OP["MOUNT"], src, where)], fd=f.fileno())
            assert replies and replies[0][0] == -errno.EINVAL and "absolute" in replies[0][1], replies
    # A layer reference with a space, a relative source: refused before
    # anything is mounted.
    refused(["mount", "reg.example/a b@sha256:" + "0" * 64, mp], "space")
    refused(["mount", "layer.esgz", mp], "No such file or directory")
    # Oversized datagrams, empty ones, random bytes, a client that hangs up
    # at once: the supervisor stays up.
    rng = random.Random(7)
    for n in [0, 1, 17, 16384, 16385, 70000]:
        try:
            s.raw([rng.randbytes(n)])
        except OSError:
            pass  # EMSGSIZE from our own send
    for _ in range(30):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(s.sock)
        c.close()
    assert s.raw([R(su.OP["STATUS"])])[0][0] == 0
    time.sleep(0.2)
    assert s.fds_settle(fds_before) == fds_before
    assert su.mounted_paths() == mounts_before
    assert s.status()["restarts"] == 0
    assert s.stop() == 0


def test_standby_takes_over(sups, layer):
    """A standby worker holds every mount; when the worker is killed it is
    the one that serves next (no process start), with every byte right,
    including a mount made while it held the others; a new standby
    follows. A standby that dies is replaced and the worker never notices."""
    s = sups.start()
    mp1 = s.mount(layer.blob)
    st = s.wait_standby()
    standby = st["standby_pid"]
    assert su.ppid_of(standby) == s.pid
    mp2 = s.mount(layer.blob)  # the standby gets its record, then its INIT parameters
    check_file(mp2, layer, "big/b0")
    time.sleep(0.2)
    # the killed worker's memory keeper (its one child, sharing its memory)
    # must leave soon after it: nothing of a dead worker stays
    keepers = su.children_of(s.status()["worker_pid"])
    assert len(keepers) == 1, keepers
    worker = s.kill_worker()
    st = s.wait_served()
    assert st["worker_pid"] == standby, (st, worker)
    deadline = time.monotonic() + 5
    while su.alive(keepers[0]):
        assert time.monotonic() < deadline, "the killed worker's keeper %d is still alive" % keepers[0]
        time.sleep(0.05)
    for mp in (mp1, mp2):
        for rel in ("big/b1", "d03/f004", "d11/f029"):
            check_file(mp, layer, rel)
        assert sorted(os.listdir(os.path.join(mp, "d05"))) == layer.dirs["d05"]
    st = s.wait_standby(not_pid=standby)
    second = st["standby_pid"]
    os.kill(second, signal.SIGKILL)
    st = s.wait_standby(not_pid=second)
    assert st["worker_pid"] == standby, "killing the standby disturbed the worker"
    check_file(mp1, layer, "big/b2")
    assert st["restarts"] == 2, st


def test_no_standby(sups, layer):
    """--no-standby: no second worker; a killed worker is still replaced."""
    s = sups.start(["--no-standby"])
    mp = s.mount(layer.blob)
    time.sleep(1.0)
    st = s.status()
    assert st["standby_pid"] == 0 and st["generation"] == 1, st
    s.kill_worker()
    st = s.wait_served()
    check_file(mp, layer, "big/b1")
    assert st["standby_pid"] == 0 and st["generation"] == 2, st


def test_upgrade_replaces_standby(sups, layer, workdir):
    """An upgrade to another binary replaces the standby (which runs the
    old one): after it, worker and standby both run the new binary."""
    s = sups.start()
    mp = s.mount(layer.blob)
    old_standby = s.wait_standby()["standby_pid"]
    new_bin = os.path.join(workdir, "holdfast-worker-new")
    shutil.copy2(su.worker_path(), new_bin)
    s.ctl("upgrade", "--worker", new_bin)
    st = s.wait_standby(not_pid=old_standby)
    for pid in (st["worker_pid"], st["standby_pid"]):
        assert su.cmdline_of(pid)[0] == new_bin.encode(), (pid, su.cmdline_of(pid))
    assert not os.path.exists("/proc/%d" % old_standby) or su.ppid_of(old_standby) is None
    check_file(mp, layer, "big/b2")


def test_sigterm_unmounts(sups, layer):
    s = sups.start()
    mps = [s.mount(layer.blob) for _ in range(3)]
    worker = s.status()["worker_pid"]
    assert s.stop() == 0
    mounted = su.mounted_paths()
    assert not any(su.canon(mp) in mounted for mp in mps)
    assert not os.path.exists("/proc/%d" % worker) or su.ppid_of(worker) is None


def test_crash_loop_gives_up_and_restart_retries(sups, layer):
    s = sups.start(["--restart-limit", "3/60"])
    mp = s.mount(layer.blob)
    for _ in range(3):
        s.wait_served()
        assert s.kill_worker()
    deadline = time.monotonic() + 20
    while "given up" not in s.status()["state"]:
        assert time.monotonic() < deadline, s.log()
        time.sleep(0.05)
    st = s.status()
    assert st["worker_pid"] == 0 and [m["mountpoint"] for m in st["mounts"]] == [mp]
    assert su.canon(mp) in su.mounted_paths()  # never dropped
    rc, _, err = s.ctl("mount", layer.blob, s.new_mountpoint(), check=False)
    assert rc == 1 and "holdfastctl restart" in err
    # A reader blocked meanwhile gets its bytes once restart brings a worker.
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("ok", check_file(mp, layer, "d01/f001") or True))
    t.start()
    time.sleep(0.3)
    s.ctl("restart")
    t.join(30)
    assert result.get("ok"), "the blocked read did not complete"
    s.wait_served()
    check_file(mp, layer, "big/b1")


# --- the crash test ----------------------------------------------------------

class Readers:
    """Threads that read the mount continuously and check every byte."""

    def __init__(self, mp, layer, n_threads=6, n_kept=12):
        self.mp, self.layer = mp, layer
        self.stop = threading.Event()
        self.errors = []
        self.ops = 0
        self.max_latency = 0.0
        self.lock = threading.Lock()
        rels = sorted(layer.files)
        rng = random.Random(99)
        self.kept = []
        for rel in rng.sample([r for r in rels if layer.files[r][1] > 0], n_kept):
            with open(os.path.join(mp, rel), "rb") as f:
                data = f.read()
            fd = os.open(os.path.join(mp, rel), os.O_RDONLY)
            self.kept.append((rel, fd, data))
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(n_threads)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)
        for rel, fd, data in self.kept:
            try:
                assert os.pread(fd, len(data) + 1, 0) == data, rel
            except Exception as e:  # noqa: BLE001
                self.errors.append("kept %s at the end: %r" % (rel, e))
            os.close(fd)

    def run(self, i):
        rng = random.Random(i)
        rels = sorted(self.layer.files)
        dirs = sorted(self.layer.dirs)
        links = sorted(self.layer.links)
        while not self.stop.is_set():
            kind = rng.random()
            t0 = time.monotonic()
            try:
                if kind < 0.45:
                    rel = rng.choice(rels)
                    with open(os.path.join(self.mp, rel), "rb") as f:
                        data = f.read()
                    if (hashlib.sha256(data).hexdigest(), len(data)) != self.layer.files[rel]:
                        raise AssertionError("wrong bytes in %s" % rel)
                elif kind < 0.65:
                    rel, fd, data = rng.choice(self.kept)
                    off = rng.randrange(len(data))
                    n = rng.randint(1, 200 * KiB)
                    if os.pread(fd, n, off) != data[off:off + n]:
                        raise AssertionError("wrong bytes in kept-open %s at %d" % (rel, off))
                elif kind < 0.8:
                    rel = rng.choice(rels)
                    st = os.stat(os.path.join(self.mp, rel))
                    if st.st_size != self.layer.files[rel][1]:
                        raise AssertionError("wrong size of %s" % rel)
                elif kind < 0.92:
                    d = rng.choice(dirs)
                    if sorted(os.listdir(os.path.join(self.mp, d))) != self.layer.dirs[d]:
                        raise AssertionError("wrong listing of %r" % d)
                else:
                    rel = rng.choice(links)
                    if os.readlink(os.path.join(self.mp, rel)) != self.layer.links[rel]:
                        raise AssertionError("wrong link %s" % rel)
            except Exception as e:  # noqa: BLE001
                with self.lock:
                    self.errors.append(repr(e))
                continue
            dt = time.monotonic() - t0
            with self.lock:
                self.ops += 1
                self.max_latency = max(self.max_latency, dt)


def _stats(xs):
    xs = sorted(xs)
    if not xs:
        return "n=0"
    return "n=%d median %.1f ms, p90 %.1f ms, max %.1f ms" % (
        len(xs), xs[len(xs) // 2] / 1000, xs[int(len(xs) * 0.9)] / 1000, xs[-1] / 1000)


def test_crash_upgrade_reexec(sups, layer):
    kills = int(os.environ.get("HOLDFAST_CRASH_KILLS", "50"))
    upgrades = int(os.environ.get("HOLDFAST_CRASH_UPGRADES", "20"))
    reexecs = int(os.environ.get("HOLDFAST_CRASH_REEXECS", "5"))
    s = sups.start(["--restart-limit", "0/60", "--restart-delay-max", "200"])
    fds_empty = s.fds_quiet()
    mps = [s.mount(layer.blob) for _ in range(2)]
    fds_mounted = s.fds_quiet()
    readers = [Readers(mp, layer) for mp in mps]
    for r in readers:
        r.start()
    rng = random.Random(1234)
    crash_stalls, upgrade_stalls, reexec_times = [], [], []
    try:
        killed = set()
        while len(killed) < kills:
            time.sleep(rng.uniform(0.0, 0.3))
            # Random moments: sometimes while the previous worker is still
            # taking over, most of the time while it serves.
            if rng.random() < 0.8:
                s.wait_served()
                crash_stalls.append(None)
            pid = s.kill_worker()
            if pid:
                # a worker killed twice (the second SIGKILL reaching it while
                # it is already dying) is one worker
                killed.add(pid)
        st = s.wait_served()
        # every distinct worker killed was replaced by a newer generation
        assert st["generation"] > len(killed), st
        last = st["last_stall_us"]
        for _ in range(upgrades):
            time.sleep(rng.uniform(0.0, 0.2))
            _, out, _ = s.ctl("upgrade")
            upgrade_stalls.append(s.status()["last_stall_us"])
        for _ in range(reexecs):
            time.sleep(rng.uniform(0.0, 0.2))
            s.wait_served()
            t0 = time.monotonic()
            _, out, _ = s.ctl("upgrade", "--supervisor")
            reexec_times.append((time.monotonic() - t0) * 1e6)
            assert "re-executed" in out
            assert s.status()["supervisor_pid"] == s.pid
        time.sleep(0.5)
    finally:
        for r in readers:
            r.finish()
    st = s.wait_served()
    report = ("crash test: %d kills, %d upgrades, %d supervisor re-execs; readers: %s ops, %d errors; "
              "max reader latency %.1f ms; last crash stall %.1f ms; upgrade stalls (Drain -> last "
              "MountStatus) %s; re-exec round trips %s" % (
                  kills, upgrades, reexecs, [r.ops for r in readers], sum(len(r.errors) for r in readers),
                  max(r.max_latency for r in readers) * 1000, last / 1000, _stats(upgrade_stalls),
                  _stats(reexec_times)))
    print("\n" + report)
    for r in readers:
        assert not r.errors, r.errors[:20]
        assert r.ops > 100
    assert st["restarts"] >= kills and st["generation"] >= kills + upgrades + 1
    assert su.fd_kinds(s.fds_quiet()) == su.fd_kinds(fds_mounted), (s.fds(), fds_mounted)
    assert su.zombie_children(s.pid) == [], "the supervisor left workers unreaped"
    for mp in mps:
        s.ctl("umount", mp)
    assert su.fd_kinds(s.fds_quiet()) == su.fd_kinds(fds_empty), (s.fds(), fds_empty)
    mounted = su.mounted_paths()
    assert not any(su.canon(mp) in mounted for mp in mps)
    assert s.stop() == 0
