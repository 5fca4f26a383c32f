"""holdfast-worker serving real FUSE mounts (`--standalone`).

Layers built by the reference implementation and by holdfast from the
conformance tree (conftest.py) are mounted and read back through the
kernel; what the mount shows must be the source tree's expected dump
(treedump.py) exactly: bytes, modes, owners, mtimes, sizes, symlink
targets, xattrs including the overlay opaque marker, device numbers,
whiteouts as 0:0 character devices, nlink, hardlinks sharing st_ino.
Also: big directories, random reads across chunk boundaries, corrupted
blobs (EIO, never wrong bytes), bad blobs refused before mounting, and the
layer store under --root.

Run as root:  HOLDFAST_WORKER=build/worker/holdfast-worker \
              HOLDFASTCTL=build/supervisor/ctl/holdfastctl \
              /usr/bin/python3 -m pytest tests/integration/test_mount.py -v
"""

import ctypes
import ctypes.util
import errno
import hashlib
import os
import random
import signal
import subprocess
import threading

import pytest

import treedump
from conftest import KiB, MiB, make_tar
from mountutil import MountError, Mounter, is_mounted, mounted_view_checks, strip_user_opaque, worker_path
# The blob builders and corruption helpers of the conformance suite.
from test_conformance import _corrupt_copy, _corrupt_keep_gzip_valid, hf_blob, ref_blob  # noqa: F401

CHUNK_SIZES = [("64k", 64 * KiB), ("default", None)]


@pytest.fixture(scope="session")
def worker():
    path = worker_path()
    if not os.access(path, os.X_OK):
        if os.environ.get("CI") or os.environ.get("HOLDFAST_WORKER"):
            pytest.fail("holdfast-worker not found at %s" % path)
        pytest.skip("holdfast-worker not built at %s (set HOLDFAST_WORKER)" % path)
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    return path


@pytest.fixture(scope="module")
def shared_mounts(worker, session_tmp, require_root):
    """Mounts reused by several tests of this module."""
    m = Mounter(session_tmp)
    yield m
    m.cleanup()


@pytest.fixture
def mounter(worker, session_tmp, require_root):
    m = Mounter(session_tmp)
    yield m
    m.cleanup()


_mount_cache = {}


def mounted(shared_mounts, blob):
    if blob not in _mount_cache or not is_mounted(_mount_cache[blob].mountpoint):
        _mount_cache[blob] = shared_mounts.mount(blob)
    return _mount_cache[blob]


def blob_for(which, ref_blob, hf_blob, chunk):
    if which == "ref":
        return ref_blob(chunk, False)[0]
    return hf_blob(chunk, False)[0]


def assert_dump_equal(expected, actual, what):
    diffs = treedump.diff_dumps(expected, actual)
    assert not diffs, "%s differs from the expected dump:\n  %s" % (what, "\n  ".join(diffs))


# --- the whole tree ---------------------------------------------------------

@pytest.mark.parametrize("chunk", [c for _, c in CHUNK_SIZES], ids=[i for i, _ in CHUNK_SIZES])
@pytest.mark.parametrize("which", ["ref", "hf"])
def test_mount_matches_source(tree, ref_blob, hf_blob, shared_mounts, which, chunk):
    """Every path of the mounted layer is what the source tree says."""
    m = mounted(shared_mounts, blob_for(which, ref_blob, hf_blob, chunk))
    actual = strip_user_opaque(treedump.dump_tree(m.path()))
    assert_dump_equal(tree.dump, actual, "the mounted %s layer" % which)
    problems = mounted_view_checks(m.path(), tree.dump)
    assert not problems, "\n".join(problems[:30])


def test_mount_details(tree, hf_blob, shared_mounts):
    """What the dump does not spell out: st_ino shared by hardlinks,
    rdev numbers, the root, readdir's "." and "..", read-only."""
    m = mounted(shared_mounts, hf_blob(64 * KiB, False)[0])
    st = os.lstat(m.path())
    assert st.st_ino == 1 and os.path.isdir(m.path())
    a = os.lstat(m.path("hard/orig"))
    for other in ("hard/same-dir", "links/other-dir", "hard/sub/third"):
        b = os.lstat(m.path(other))
        assert (b.st_ino, b.st_nlink) == (a.st_ino, 4), other
    big = os.lstat(m.path("dev/nvme-big-minor"))
    assert (os.major(big.st_rdev), os.minor(big.st_rdev)) == (259, 1048575)
    assert os.readlink(m.path("links/longtarget")) == "t" * 180
    wh = os.lstat(m.path("wh/gone"))
    assert wh.st_rdev == 0 and (wh.st_mode & 0o170000) == 0o020000
    assert not os.path.lexists(m.path("wh/.wh.x")) and not os.path.lexists(m.path("wh/opaque/.wh..wh..opq"))
    ls = subprocess.run(["ls", "-a", m.path("hard")], stdout=subprocess.PIPE, check=True).stdout.split()
    assert sorted(ls) == sorted([b".", b"..", b"orig", b"same-dir", b"big-link", b"empty", b"empty-link", b"sub"])
    assert os.lstat(m.path("hard/sub/..")).st_ino == os.lstat(m.path("hard")).st_ino
    with pytest.raises(OSError) as e:
        open(m.path("big/one"), "wb")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        os.mkdir(m.path("newdir"))
    assert e.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        os.lstat(m.path("no/such"))
    with pytest.raises(FileNotFoundError):
        os.lstat(m.path("big/nope"))
    sv = os.statvfs(m.path())
    assert sv.f_bsize == 4096 and sv.f_files > 1000 and sv.f_namemax == 255


def test_xattr_size_probe(tree, hf_blob, shared_mounts):
    """getxattr/listxattr with size 0 report the size; a buffer too small
    is ERANGE (called through libc: Python always probes first)."""
    m = mounted(shared_mounts, hf_blob(64 * KiB, False)[0])
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    path = m.path("xattr/file").encode()
    want = b"value"
    assert libc.lgetxattr(path, b"user.plain", None, 0) == len(want)
    buf = ctypes.create_string_buffer(len(want))
    assert libc.lgetxattr(path, b"user.plain", buf, 2) == -1 and ctypes.get_errno() == errno.ERANGE
    assert libc.lgetxattr(path, b"user.plain", buf, len(want)) == len(want) and buf.raw == want
    assert libc.lgetxattr(path, b"user.missing", buf, len(want)) == -1 and ctypes.get_errno() == errno.ENODATA
    n = libc.llistxattr(path, None, 0)
    assert n > 0
    assert libc.llistxattr(path, ctypes.create_string_buffer(n), n - 1) == -1 and ctypes.get_errno() == errno.ERANGE
    lst = ctypes.create_string_buffer(n)
    assert libc.llistxattr(path, lst, n) == n
    assert set(lst.raw.rstrip(b"\0").split(b"\0")) == {b"user.plain", b"user.binary", b"user.utf8",
                                                       b"trusted.holdfast", b"user.empty"}
    assert os.getxattr(m.path("xattr/big-value"), "user.big") == bytes(range(256)) * 8
    opq = m.path("wh/opaque")
    assert os.getxattr(opq, "trusted.overlay.opaque") == b"y"
    assert os.getxattr(opq, "user.overlay.opaque") == b"y"
    assert os.getxattr(opq, "user.also") == b"1"


# --- reads ------------------------------------------------------------------

def _source_bytes(tree, rel):
    with open(tree.path(rel), "rb") as f:
        return f.read()


@pytest.mark.parametrize("which", ["ref", "hf"])
def test_random_reads_across_chunks(tree, ref_blob, hf_blob, shared_mounts, which):
    """Reads at random offsets and lengths, many straddling 64 KiB chunk
    boundaries, from several threads at once, through fresh file
    descriptors and after dropping the page cache."""
    m = mounted(shared_mounts, blob_for(which, ref_blob, hf_blob, 64 * KiB))
    files = ["big/mixed-9m", "big/random-3m", "big/64k+1", "big/1m+1", "hard/big-link", "big/text-5m"]
    data = {rel: _source_bytes(tree, rel) for rel in files}
    rng = random.Random(7)
    jobs = []
    for rel in files:
        size = len(data[rel])
        for _ in range(60):
            if rng.random() < 0.5 and size > 64 * KiB:
                boundary = rng.randrange(1, size // (64 * KiB) + 1) * 64 * KiB
                off = max(0, boundary - rng.randint(1, 3000))
            else:
                off = rng.randrange(0, size + 10)
            jobs.append((rel, off, rng.choice([1, 100, 4096, 5000, 65536, 70000, 300000])))
    rng.shuffle(jobs)
    errors = []

    def run(part):
        for rel, off, n in part:
            fd = os.open(m.path(rel), os.O_RDONLY)
            try:
                got = os.pread(fd, n, off)
            finally:
                os.close(fd)
            if got != data[rel][off:off + n]:
                errors.append("%s: %d bytes at %d differ" % (rel, n, off))

    subprocess.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"], check=False)
    threads = [threading.Thread(target=run, args=(jobs[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:10]
    # and whole files, sequentially
    for rel in files:
        with open(m.path(rel), "rb") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data[rel]).digest(), rel


def _chunk_reads(path, want, chunk):
    """Reads `path` chunk by chunk with fresh fds; returns the offsets that
    failed with EIO, and asserts every read that succeeded is right."""
    failed = []
    for off in range(0, len(want), chunk):
        fd = os.open(path, os.O_RDONLY)
        try:
            got = os.pread(fd, chunk, off)
        except OSError as e:
            assert e.errno == errno.EIO, "read at %d: %s, expected EIO" % (off, e)
            failed.append(off)
            continue
        finally:
            os.close(fd)
        assert got == want[off:off + chunk], "WRONG BYTES at %d" % off
    return failed


@pytest.mark.parametrize("kind", ["corrupt-deflate", "digest-mismatch"])
def test_corrupt_blob_gives_eio(tree, ref_blob, mounter, tmp_path, kind):
    """A chunk whose bytes are damaged (broken deflate data) or changed in
    a way only the chunk digest catches reads as EIO; every other chunk
    still reads right; no read ever returns wrong bytes."""
    if kind == "corrupt-deflate":
        rel = tree.notable["large"]
        src, _ = ref_blob(64 * KiB, True)
        dst = str(tmp_path / "corrupt.blob")
        _, bad_off = _corrupt_copy(src, dst, rel)
    else:
        rel = "big/4m"
        src, _ = ref_blob(64 * KiB, False)
        dst = str(tmp_path / "digest-corrupt.blob")
        _corrupt_keep_gzip_valid(src, dst, rel)
        bad_off = None
    want = _source_bytes(tree, rel)
    m = mounter.mount(dst)
    subprocess.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"], check=False)
    with pytest.raises(OSError) as e:
        with open(m.path(rel), "rb") as f:
            f.read()
    assert e.value.errno == errno.EIO
    failed = _chunk_reads(m.path(rel), want, 64 * KiB)
    assert failed, "no read failed"
    if bad_off is not None:
        assert bad_off - bad_off % (64 * KiB) in failed
    assert len(failed) <= 2, "too many chunks fail: %s" % failed
    # other files are unaffected
    assert open(m.path("big/random-3m"), "rb").read() == _source_bytes(tree, "big/random-3m")
    assert "failed" in m.log() or "mismatch" in m.log() or "corrupt" in m.log()


# --- big directories --------------------------------------------------------

@pytest.fixture(scope="module")
def bigdir_blob(holdfastctl, hf_blob, tmp_path_factory):
    base = tmp_path_factory.mktemp("bigdir")
    src = base / "src"
    os.makedirs(src / "many")
    names = []
    for i in range(6000):
        name = "entry-%05d-%s" % (i, "n" * (i % 200))
        names.append(name)
        (src / "many" / name).write_bytes(b"%d\n" % i)
    os.makedirs(src / "dirs")
    for i in range(1500):
        os.mkdir(src / "dirs" / ("d%04d" % i))
    tar = str(base / "bigdir.tar")
    make_tar(str(src), tar)
    blob, _ = hf_blob(None, False, src=tar, tag="bigdir")
    return blob, sorted(names)


def test_big_directories(bigdir_blob, mounter):
    """Listings that take many READDIR(PLUS) replies, all entries once,
    in a stable order, each with the right attributes."""
    blob, names = bigdir_blob
    m = mounter.mount(blob)
    listed = os.listdir(m.path("many"))
    assert len(listed) == len(set(listed)) == len(names)
    assert sorted(listed) == names
    seen = {}
    with os.scandir(m.path("many")) as it:
        for e in it:
            st = e.stat(follow_symlinks=False)
            seen[e.name] = (e.inode(), st.st_ino, st.st_size)
    for name in names[::97]:
        i = int(name.split("-")[1])
        ino, st_ino, size = seen[name]
        assert ino == st_ino and size == len(b"%d\n" % i)
        with open(m.path("many/" + name), "rb") as f:
            assert f.read() == b"%d\n" % i
    assert sorted(os.listdir(m.path("dirs"))) == ["d%04d" % i for i in range(1500)]
    assert os.lstat(m.path("dirs")).st_nlink == 1502
    ls = subprocess.run(["ls", "-a", "-f", m.path("many")], stdout=subprocess.PIPE, check=True).stdout.split(b"\n")
    assert ls.count(b".") == 1 and ls.count(b"..") == 1


# --- refusing bad blobs -----------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "garbage", "relative", "directory"])
def test_bad_blob_is_refused(worker, mounter, tmp_path, case):
    if case == "missing":
        blob, words = str(tmp_path / "no-such.blob"), ["no-such.blob", "No such file"]
    elif case == "garbage":
        blob = str(tmp_path / "garbage.blob")
        with open(blob, "wb") as f:
            f.write(os.urandom(100000))
        words = ["garbage.blob", "footer"]
    elif case == "relative":
        blob, words = "relative.blob", ["relative.blob", "absolute"]
    else:
        blob, words = str(tmp_path), [str(tmp_path), "regular file"]
    with pytest.raises(MountError) as e:
        mounter.mount(blob, timeout=20)
    assert e.value.returncode == 1
    for w in words:
        assert w.lower() in e.value.stderr.lower(), "error does not mention %r: %s" % (w, e.value.stderr)
    assert not is_mounted(mounter.mounts[-1].mountpoint)


def test_usage(worker):
    p = subprocess.run([worker, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.returncode == 0 and b"--standalone" in p.stdout and b"--supervisor-fd" in p.stdout
    p = subprocess.run([worker, "--bogus"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.returncode == 2
    p = subprocess.run([worker, "--threads", "0", "--standalone", "a", "b"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    assert p.returncode == 2


# --- the layer store --------------------------------------------------------

def test_layer_store(tree, hf_blob, mounter, tmp_path):
    """With --root, the second mount of a blob takes its index from the
    store and serves the same tree."""
    blob, _ = hf_blob(64 * KiB, False)
    root = str(tmp_path / "state")
    env = {"HOLDFAST_DEBUG": "1"}
    m = mounter.mount(blob, root=root, env=env)
    assert "built from the TOC" in m.log()
    assert m.stop() == 0
    assert not is_mounted(m.mountpoint)
    m = mounter.mount(blob, root=root, env=env)
    if "from the store" not in m.log():
        pytest.fail("index not taken from the store; log:\n" + m.log())
    actual = strip_user_opaque(treedump.dump_tree(m.path()))
    assert_dump_equal(tree.dump, actual, "the layer served from the store")


def test_stop_unmounts(tree, hf_blob, mounter):
    """SIGTERM: exit 0 and the mountpoint is unmounted; an unmount from
    outside ends the worker too."""
    blob, _ = hf_blob(64 * KiB, False)
    m = mounter.mount(blob)
    assert m.stop() == 0 and not is_mounted(m.mountpoint)
    m = mounter.mount(blob)
    subprocess.run(["umount", m.mountpoint], check=True)
    assert m.proc.wait(timeout=20) == 0


# --- under a supervisor: the worker protocol and takeover -------------------

from mountutil import FakeSupervisor, int32  # noqa: E402


@pytest.fixture
def supervisor(worker, session_tmp, require_root, tmp_path):
    s = FakeSupervisor(str(tmp_path), str(tmp_path / "root"))
    yield s
    s.cleanup()
    reports = s.sanitizer_reports()
    assert not reports, "sanitizer reports:\n" + "\n".join(reports)


def _read_in_thread(mp):
    """Reads big/mixed-9m and lists names/ in a thread: (thread, results)."""
    results = {}

    def reader():
        try:
            with open(os.path.join(mp, "big/mixed-9m"), "rb") as g:
                results["data"] = g.read()
            results["list"] = sorted(os.listdir(os.path.join(mp, "names")))
        except OSError as e:
            results["error"] = e

    t = threading.Thread(target=reader)
    t.start()
    return t, results


def _record(mid, mp, blob, init=None):
    fields = [(1, mid), (2, mp), (3, blob), (4, init is not None)]
    if init is not None:
        fields.append((5, init))
    return fields


def test_worker_protocol_and_takeover(tree, hf_blob, supervisor):
    """A new mount, a drain and takeover by a new worker (open files keep
    working), a killed worker with requests queued and taken over, a bad
    layer refused, Unmount, Drain."""
    s = supervisor
    blob, _ = hf_blob(64 * KiB, False)
    want = _source_bytes(tree, "big/random-3m")

    s.spawn()
    s.start([])
    mp = s.new_mount_point()
    fd = s.mount(mp)
    s.send("mount", _record(7, mp, blob), fd)
    name, st = s.recv()
    assert name == "mount_status" and st.get(1) == 7 and int32(st.get(2, 0)) == 0 and st.get(4) == 1, st
    init = st[5]
    assert 0 < len(init) <= 128
    # Every close(2) of a FUSE file sends FLUSH, including the closes of
    # inherited fds in the child that becomes the next worker (Popen), which
    # would wait forever for the worker it is about to become. Our worker
    # answers FLUSH with ENOSYS, after which the kernel never sends it again
    # on this connection: close one file while the mount is served.
    open(os.path.join(mp, "big/one"), "rb").close()
    f = open(os.path.join(mp, "big/random-3m"), "rb")
    assert f.read(100000) == want[:100000]

    # Drain: Drained, exit 0; the next worker takes the connection over.
    s.send("drain")
    assert s.recv()[0] == "drained"
    assert s.proc.wait(timeout=20) == 0
    s.spawn()
    st = s.start([(_record(7, mp, blob, init), fd)], takeover=True, generation=2)
    assert st.get(1) == 1 and not s.refused, (st, s.refused)
    assert f.read() == want[100000:], "an open file read wrong bytes after the takeover"
    f.close()

    # A worker that dies with requests queued: they are served by the next.
    os.kill(s.proc.pid, signal.SIGSTOP)
    t, results = _read_in_thread(mp)
    t.join(0.5)
    assert t.is_alive(), "a request was answered by a stopped worker"
    s.proc.kill()
    s.proc.wait()
    s.spawn()
    st = s.start([(_record(7, mp, blob, init), fd)], takeover=True, generation=3)
    assert st.get(1) == 1 and not s.refused, (st, s.refused)
    t.join(30)
    assert not t.is_alive(), "queued requests were not served after the takeover"
    assert "error" not in results, results.get("error")
    assert results["data"] == _source_bytes(tree, "big/mixed-9m")
    assert results["list"] == sorted(os.listdir(tree.path("names")))
    actual = strip_user_opaque(treedump.dump_tree(mp))
    assert_dump_equal(tree.dump, actual, "the layer after two takeovers")

    # A bad layer is refused with a message; the supervisor unmounts it.
    mp2 = s.new_mount_point()
    fd2 = s.mount(mp2)
    s.send("mount", _record(8, mp2, "/nonexistent/layer.blob"), fd2)
    name, st = s.recv()
    assert name == "mount_status" and st.get(1) == 8 and int32(st.get(2)) == -errno.ENOENT, st
    assert b"/nonexistent/layer.blob" in st.get(3, b""), st
    subprocess.run(["umount", "-l", mp2], check=True)

    # Unmount, then Drain.
    subprocess.run(["umount", "-l", mp], check=True)
    s.send("unmount", [(1, 7)])
    s.send("drain")
    assert s.recv()[0] == "drained"
    assert s.proc.wait(timeout=20) == 0


def _inflight_busy(table_fd, mount_id):
    """The count the in-flight table (worker/fuse/inflight.h) keeps for
    mount_id: 64-byte header, then 16-byte slots {u64 id, u32 busy}."""
    hdr = os.pread(table_fd, 64, 0)
    assert hdr[:8] == b"hfinflt\0", hdr[:8]
    hiwater = int.from_bytes(hdr[20:24], "little")
    slots = os.pread(table_fd, 16 * hiwater, 64)
    for i in range(hiwater):
        if int.from_bytes(slots[16 * i:16 * i + 8], "little") == mount_id:
            return int.from_bytes(slots[16 * i + 8:16 * i + 12], "little")
    return None


def test_takeover_resends_connections_with_requests_in_flight(tree, hf_blob, supervisor):
    """A worker stopped while it holds a request it read and has not
    answered (its in-flight table says so), then killed: the next worker,
    given that table, resends that connection and only that one, and the
    reader's request is answered. Without the RESEND it would wait
    forever."""
    s = supervisor
    blob, _ = hf_blob(64 * KiB, False)
    s.spawn()
    s.start([])
    records = []
    for mid in (7, 8):
        mp = s.new_mount_point()
        fd = s.mount(mp)
        s.send("mount", _record(mid, mp, blob), fd)
        name, st = s.recv()
        assert name == "mount_status" and st.get(1) == mid and int32(st.get(2, 0)) == 0, st
        open(os.path.join(mp, "big/one"), "rb").close()  # no FLUSH after this: see test_worker_protocol_and_takeover
        records.append((_record(mid, mp, blob, st[5]), fd, mp))
    busy_mp = records[0][2]
    state = {"stop": False, "errors": [], "ops": 0}
    want = _source_bytes(tree, "big/mixed-9m")

    def prober():
        # Reads that reach the worker (the pages are dropped first) and
        # keep it busy decoding chunks, so that a SIGSTOP lands in the
        # middle of one most of the time.
        rnd = random.Random(7)
        with open(os.path.join(busy_mp, "big/mixed-9m"), "rb") as f:
            for _ in range(10_000_000):
                if state["stop"]:
                    return
                off = rnd.randrange(0, len(want) - 131072)
                try:
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    if os.pread(f.fileno(), 131072, off) != want[off:off + 131072]:
                        state["errors"].append("wrong bytes at %d" % off)
                    state["ops"] += 1
                except OSError as e:
                    state["errors"].append(e)

    t = threading.Thread(target=prober, daemon=True)
    t.start()
    a = s.proc
    table = s.inflight[a.pid]
    caught = False
    try:
        for _ in range(400):
            os.kill(a.pid, signal.SIGSTOP)
            # the stop is asynchronous: wait until the worker is stopped
            for _ in range(1000):
                with open("/proc/%d/stat" % a.pid) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "T":
                        break
            if _inflight_busy(table, 7):
                caught = True
                break
            os.kill(a.pid, signal.SIGCONT)
            threading.Event().wait(0.002)
        assert caught, "never caught the worker with a request in flight"
        assert _inflight_busy(table, 8) == 0
        a.kill()
        a.wait()
        s.spawn()
        st = s.start([(rec, fd) for rec, fd, _ in records], takeover=True, generation=2, table=table)
        assert st.get(1) == 2 and not s.refused, (st, s.refused)
        ops = state["ops"]
        for _ in range(2000):
            if state["ops"] > ops + 10:
                break
            threading.Event().wait(0.005)
        assert state["ops"] > ops + 10, "the request in flight was not resent: the reader is stuck"
    finally:
        state["stop"] = True
        if not caught:
            os.kill(a.pid, signal.SIGCONT)
        t.join(20)
    assert not t.is_alive()
    assert not state["errors"], state["errors"][:5]
    assert "1 of 1 RESENDs written" in s.log(), s.log()[-2000:]
    for _, _, mp in records:
        assert sorted(os.listdir(os.path.join(mp, "names"))) == sorted(os.listdir(tree.path("names")))


def test_worker_standby_hold_and_go(tree, hf_blob, supervisor):
    """A standby worker holds every mount (kept in step: a new mount, its
    record replaced once its INIT is answered, an Unmount) and reads none of
    them: a request stays queued while the serving worker is stopped. After
    that worker is killed, WorkerGo makes the standby serve the queued
    request and the rest with the right bytes. A standby told to Drain
    during the hold says Drained and exits 0."""
    s = supervisor
    blob, _ = hf_blob(64 * KiB, False)
    want = _source_bytes(tree, "big/mixed-9m")

    s.spawn()
    s.start([])
    a = (s.sock, s.proc)
    mp = s.new_mount_point()
    fd = s.mount(mp)
    s.send("mount", _record(7, mp, blob), fd)
    name, st = s.recv()
    assert name == "mount_status" and int32(st.get(2, 0)) == 0 and st.get(4) == 1, st
    init = st[5]
    open(os.path.join(mp, "big/one"), "rb").close()  # see test_worker_protocol_and_takeover

    s.spawn()
    b = (s.sock, s.proc)
    s.hold([(_record(7, mp, blob, init), fd)], generation=2)
    name, warm = s.recv(skip_warm=False)
    assert name == "warm" and warm.get(1) == 1, (name, warm)  # layer opened from its record
    # a second mount while B holds: A serves it, B gets its record, then
    # the record with the INIT parameters, then its Unmount
    mp2 = s.new_mount_point()
    fd2 = s.mount(mp2)
    s.send("mount", _record(9, mp2, blob), fd2)
    s.sock, s.proc = a
    s.send("mount", _record(9, mp2, blob), fd2)
    name, st = s.recv()
    assert name == "mount_status" and st.get(1) == 9 and int32(st.get(2, 0)) == 0, st
    s.sock, s.proc = b
    s.send("mount", _record(9, mp2, blob, st[5]), fd2)
    subprocess.run(["umount", "-l", mp2], check=True)
    s.send("unmount", [(1, 9)])
    s.sock, s.proc = a
    s.send("unmount", [(1, 9)])

    os.kill(a[1].pid, signal.SIGSTOP)
    t, results = _read_in_thread(mp)
    t.join(1.0)
    assert t.is_alive(), "a request was answered while the serving worker was stopped (the standby read it?)"
    a[1].kill()
    a[1].wait()
    s.sock, s.proc = b
    s.send("worker_go", [(1, True)])
    name, st = s.recv()
    assert name == "serving" and st.get(1) == 1, (name, st)
    t.join(30)
    assert not t.is_alive(), "the queued request was not served after WorkerGo"
    assert "error" not in results, results.get("error")
    assert results["data"] == want, "wrong bytes after the standby took over"
    actual = strip_user_opaque(treedump.dump_tree(mp))
    assert_dump_equal(tree.dump, actual, "the layer after the standby took over")

    # a standby that is not wanted any more
    s.spawn()
    s.hold([(_record(7, mp, blob, init), fd)], generation=3)
    s.send("drain")
    assert s.recv()[0] == "drained"
    assert s.proc.wait(timeout=20) == 0
    s.sock, s.proc = b
    assert os.listdir(mp), "the serving worker stopped serving when the standby drained"


@pytest.mark.parametrize("case", ["go-first", "mount-before-go-without-fd", "garbage", "record-initialized-later"])
def test_worker_protocol_errors(supervisor, hf_blob, case):
    """Undecodable or out-of-order messages end the worker with status 1."""
    s = supervisor
    s.spawn()
    if case == "go-first":
        s.send("worker_go")
    elif case == "mount-before-go-without-fd":
        s.send("worker_start", [(1, 1), (2, s.root), (3, 1)])
        s.send("mount", _record(1, "/x", "/y"))
    elif case == "garbage":
        s.sock.send(b"\xff\xff\xff\xff")
    else:
        s.start([])
        mp = s.new_mount_point()
        fd = s.mount(mp)
        s.send("mount", _record(1, mp, hf_blob(64 * KiB, False)[0], b"x" * 40), fd)
    assert s.proc.wait(timeout=20) == 1
    assert "error" in s.log()
