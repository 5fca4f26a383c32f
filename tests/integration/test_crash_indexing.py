"""The crash test while the worker indexes a new layer and writes RocksDB.

A big layer (100,000 TOC entries by default) takes the worker a measurable
time to index, and its record (several MB, written to the WAL before the put
returns) a measurable time to store. Each round mounts a fresh copy of that
blob (a new path, so a new store key with no record yet) and SIGKILLs the
worker that opens it at one of these moments:

  random      a random delay in [0, 1.2 T] after `holdfastctl mount`
              started, T being the slower of two mounts without a kill:
              while it indexes, in the store or after;
  index       a random delay in [0, I], I being the time from the start of
              a mount without a kill to the first write of its record;
  store-open  right after `holdfastctl restart` (a fresh worker reads the
              store as a secondary; its first record opens it read-write):
              the first change in ROOT/meta (LOG rotation, WAL replay into
              an SST, new MANIFEST), plus a random delay of up to 0.25 s;
  wal-write   once the WAL has grown by a random 2-90 % of a record: the
              put is writing, the WAL ends in a torn record;
  wal-synced  once the WAL has grown by a whole record: the record is in
              the page cache (never fsynced: a killed process loses
              nothing there), the put has not (or just) returned.

The moments are seen with inotify on ROOT/meta and the WAL files' sizes.
Every round, the mount command must succeed (the supervisor keeps the mount
and hands it to the next worker, which opens the layer again); the new
mount must list the tar's names in a sample of its directories and give
the right type, size, link target and bytes for a sample of its entries;
readers on a small layer and on a big one mounted before the kills must see
no failed syscall and no wrong byte; the supervisor must hold one /dev/fuse
fd per mount and nothing else may be mounted. At the end a fresh worker
must find every big layer's record in the store, one layer whose record a
killed worker was writing is checked entry by entry and byte by byte, and
after the unmounts the supervisor's fds are what they were before the first
mount.

Where each kill landed is read from the inotify events, the WAL growth
and the worker's debug log on the supervisor's stderr (`layer SRC: index
built from the TOC` or `... from the store`, logged once the layer is open
and its record stored), and printed.

Run as root from the source tree (meson sets the paths):
  HOLDFASTCTL=... HOLDFAST_SUPERVISOR=... HOLDFAST_WORKER=... \\
      /usr/bin/python3 -m pytest tests/integration/test_crash_indexing.py -s

Environment (optional): HOLDFAST_CRASH_INDEX_ENTRIES (TOC entries of the
big layer), HOLDFAST_CRASH_INDEX_ROUNDS (rounds with a kill).
"""

import collections
import ctypes
import hashlib
import os
import random
import re
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRCROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import supervisorutil as su  # noqa: E402
# The supervisor crash test's fixtures (binaries, work directory, the small
# layer, the supervisors' cleanup) and its checksumming readers.
from test_supervisor import Layer, Readers, binaries, layer, sups, workdir  # noqa: E402,F401

ENTRIES = int(os.environ.get("HOLDFAST_CRASH_INDEX_ENTRIES", "100000"))
ROUNDS = int(os.environ.get("HOLDFAST_CRASH_INDEX_ROUNDS", "16"))

INDEX_LOG_RE = re.compile(r"holdfast-worker\[(\d+)\]: (?:[0-9.]+ )?debug: layer (.*): index (from the store|built from the TOC)"
                          r"(?: in \d+ us)?$",
                          re.M)


# --- inotify, just enough to watch ROOT/meta ---------------------------------

IN_MODIFY = 0x2
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_libc = ctypes.CDLL(None, use_errno=True)


class MetaWatch:
    """inotify on one directory, as (mask, name) events. Writes to RocksDB's
    info log (LOG) are left out: any open of the store writes it."""

    def __init__(self, path):
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, "inotify_init1: " + os.strerror(e))
        if _libc.inotify_add_watch(self.fd, path.encode(), IN_MODIFY | IN_MOVED_TO | IN_CREATE | IN_DELETE) < 0:
            e = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(e, "inotify_add_watch %s: %s" % (path, os.strerror(e)))

    def read(self, timeout=0):
        """The events queued now, after waiting up to `timeout` seconds for
        the first one."""
        out = []
        r, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        while r:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            off = 0
            while off + 16 <= len(buf):
                _, mask, _, n = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16:off + 16 + n].rstrip(b"\0").decode(errors="replace")
                off += 16 + n
                if not (name == "LOG" and mask & IN_MODIFY):
                    out.append((mask, name))
        return out

    def close(self):
        os.close(self.fd)


def is_wal_write(ev):
    mask, name = ev
    return bool(mask & IN_MODIFY) and name.endswith(".log")


def is_rw_open(ev):
    """What only a read-write open does: rotate the info log, start a new
    MANIFEST, point CURRENT at it."""
    mask, name = ev
    return (name.startswith("LOG.old") or name == "CURRENT" or
            (name.startswith("MANIFEST-") and bool(mask & IN_CREATE)))


def busy_rocksdb_threads(pid):
    """RocksDB's background threads of pid (rocksdb:high flushes,
    rocksdb:low compacts) that are running or in disk sleep."""
    out = []
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                comm = f.read().strip()
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if comm.startswith("rocksdb") and state in ("R", "D"):
            out.append(comm)
    return out


# --- the big layer -------------------------------------------------------------

class BigLayer:
    """The source tar's view of the layer: what a mount of it must show."""

    def __init__(self, blob, entries, dirs, files, links):
        self.blob = blob
        self.entries = entries  # rel -> (type, size); "reg" for hardlinks
        self.dirs = dirs        # rel dir -> sorted names ("" is the root)
        self.files = files      # rel -> (sha256, size), hardlinks included
        self.links = links      # rel -> target

    def as_layer(self):
        """The same content in the shape the small layer's Readers use."""
        return Layer(self.blob, self.files, self.links, self.dirs)


@pytest.fixture(scope="module")
def big(binaries, workdir):
    t0 = time.monotonic()
    tar = os.path.join(workdir, "big.tar")
    p = subprocess.run([sys.executable, os.path.join(SRCROOT, "tests", "bench", "gen-tar.py"), "toc", tar,
                        str(ENTRIES)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.returncode == 0, p.stderr.decode()
    blob = os.path.join(workdir, "big.esgz")
    p = subprocess.run([su.holdfastctl_path(), "convert", "--level", "1", tar, blob], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    assert p.returncode == 0, p.stderr.decode()

    entries, files, links = {}, {}, {}
    dirs = collections.defaultdict(list)
    hardlinks = {}
    with tarfile.open(tar) as tf:
        for ti in tf:
            rel = ti.name.strip("/")
            if rel.startswith("./"):
                rel = rel[2:]
            parent, _, base = rel.rpartition("/")
            dirs[parent].append(base)
            if ti.isdir():
                entries[rel] = ("dir", 0)
                dirs.setdefault(rel, [])
            elif ti.issym():
                entries[rel] = ("symlink", len(ti.linkname.encode()))
                links[rel] = ti.linkname
            elif ti.islnk():
                hardlinks[rel] = ti.linkname.strip("/")
            elif ti.isreg():
                data = tf.extractfile(ti).read()
                entries[rel] = ("reg", len(data))
                files[rel] = (hashlib.sha256(data).hexdigest(), len(data))
            else:
                raise AssertionError("gen-tar.py wrote a %r entry: %s" % (ti.type, rel))
    for rel, target in hardlinks.items():
        entries[rel] = entries[target]
        files[rel] = files[target]
    os.unlink(tar)
    print("\nbig layer: %d TOC entries, %d bytes, made in %.0f s" % (ENTRIES, os.path.getsize(blob),
                                                                     time.monotonic() - t0))
    return BigLayer(blob, entries, {d: sorted(n) for d, n in dirs.items()}, files, links)


def check_big_mount(mp, big, rng, n_dirs=300, n_stat=1000, n_read=100, full=False):
    """Directories of the mount list exactly the tar's names, entries have
    the right type, size and link target, files the right bytes: a random
    sample of each, or with full every one of them. Any failed syscall
    raises."""
    def fail(e):
        raise e

    if full:
        listed = 0
        for dp, dn, fn in os.walk(mp, onerror=fail):
            rel = os.path.relpath(dp, mp)
            rel = "" if rel == "." else rel
            assert sorted(dn + fn) == big.dirs.get(rel), "%s: listing of %r differs from the tar" % (mp, rel)
            listed += 1
        assert listed == len(big.dirs), "%s: %d directories walked, the tar has %d" % (mp, listed, len(big.dirs))
    else:
        for rel in [""] + rng.sample(sorted(big.dirs), min(n_dirs, len(big.dirs))):
            assert sorted(os.listdir(os.path.join(mp, rel))) == big.dirs[rel], \
                "%s: listing of %r differs from the tar" % (mp, rel)

    rels = sorted(big.entries)
    for rel in (rels if full else rng.sample(rels, min(n_stat, len(rels)))):
        kind, size = big.entries[rel]
        st = os.lstat(os.path.join(mp, rel))
        got = {stat.S_IFDIR: "dir", stat.S_IFREG: "reg", stat.S_IFLNK: "symlink"}.get(stat.S_IFMT(st.st_mode))
        assert got == kind, "%s: %s is a %s, not a %s" % (mp, rel, got, kind)
        if kind != "dir":
            assert st.st_size == size, "%s: %s has %d bytes, not %d" % (mp, rel, st.st_size, size)
        if kind == "symlink":
            assert os.readlink(os.path.join(mp, rel)) == big.links[rel], "%s: link %s" % (mp, rel)
    regs = sorted(big.files)
    for rel in (regs if full else rng.sample(regs, min(n_read, len(regs)))):
        with open(os.path.join(mp, rel), "rb") as f:
            data = f.read()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == big.files[rel], "%s: wrong bytes in %s" % (mp, rel)


# --- one mount, one kill ----------------------------------------------------------

def wal_sizes(meta):
    """{name: size} of RocksDB's write-ahead logs."""
    out = {}
    for name in os.listdir(meta):
        if name.endswith(".log"):
            try:
                out[name] = os.stat(os.path.join(meta, name)).st_size
            except FileNotFoundError:
                pass
    return out


def wal_growth(meta, before):
    """Bytes appended to the WALs since `before` (new WALs count whole)."""
    return sum(max(0, size - before.get(name, 0)) for name, size in wal_sizes(meta).items())


class Round:
    """What one mount with a kill saw."""

    def __init__(self, mode, blob, mp):
        self.mode, self.blob, self.mp = mode, blob, mp
        self.killed_pid = None
        self.events = []          # ROOT/meta events before the worker died
        self.growth = 0           # WAL bytes the killed worker wrote
        self.busy = []            # its RocksDB threads busy at the kill
        self.mount_done = False   # the mount command had returned at the kill
        self.elapsed = 0.0        # mount start -> SIGKILL
        self.rc = None
        self.out = ""

    def phase(self, log, record_bytes):
        """Where the kill landed, as far as the outside can tell."""
        if self.killed_pid is None:
            return "no kill"
        if self.mount_done:
            return "after the mount"
        if any(int(m.group(1)) == self.killed_pid and m.group(2) == self.blob for m in INDEX_LOG_RE.finditer(log)):
            return "record stored, before FUSE_INIT"
        if record_bytes and self.growth >= record_bytes:
            return "record in the WAL, put not returned"
        if self.growth:
            return "WAL write (torn record)"
        if any(is_rw_open(e) for e in self.events):
            return "RocksDB read-write open"
        return "indexing"

    def opened_after(self, log):
        """How the next worker opened the layer: "from the store", "built
        from the TOC", or None when the log does not say."""
        for m in INDEX_LOG_RE.finditer(log):
            if m.group(2) == self.blob and int(m.group(1)) != self.killed_pid:
                return m.group(3)
        return None


def start_mount(s, blob, mp):
    return subprocess.Popen([su.holdfastctl_path(), "--root", s.root, "mount", blob, mp], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_mount(s, proc, what):
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("%s: holdfastctl mount still waits after 120 s\nsupervisor log tail:\n%s"
                             % (what, s.log()[-4000:]))
    return proc.returncode, out.decode(errors="replace") + err.decode(errors="replace")


def kill_worker_pid(s, pid):
    """SIGKILLs pid if it is still this supervisor's worker; waits until the
    supervisor has reaped it. Returns None if it was not killed, else the
    RocksDB threads that were busy at the kill."""
    if su.ppid_of(pid) != s.pid or not su.cmdline_of(pid)[0].endswith(b"holdfast-worker"):
        return None
    busy = busy_rocksdb_threads(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while su.ppid_of(pid) == s.pid:
        assert time.monotonic() < deadline, "worker %d not reaped 20 s after SIGKILL" % pid
        time.sleep(0.002)
    return busy


def mount_with_kill(s, watch, meta, rnd, blob, mp, mode, t_mount, t_index, record_bytes):
    """Mounts blob on mp and SIGKILLs the worker at the moment `mode` names
    (see the module's docstring)."""
    r = Round(mode, blob, mp)
    pid = s.wait_served()["worker_pid"]
    watch.read()
    wal_before = wal_sizes(meta)
    if mode == "wal-write":
        kill_growth = max(1, int(record_bytes * rnd.uniform(0.02, 0.9)))
    else:
        kill_growth = record_bytes
    t0 = time.monotonic()
    proc = start_mount(s, blob, mp)
    deadline = t0 + 60
    kill_at = None
    if mode == "random":
        kill_at = t0 + rnd.uniform(0, 1.2 * t_mount)
    elif mode == "index":
        kill_at = t0 + rnd.uniform(0, t_index)
    while True:
        now = time.monotonic()
        if kill_at is not None and now >= kill_at:
            break
        if proc.poll() is not None:
            break  # the mount was done before the moment came
        assert now < deadline, "%s: no %s moment within 60 s" % (blob, mode)
        for ev in watch.read(min(kill_at - now if kill_at is not None else 0.05, 0.05)):
            r.events.append(ev)
            if kill_at is not None:
                continue
            if mode == "store-open":
                # into the open, or right away if the store was open already
                kill_at = time.monotonic() + (0 if is_wal_write(ev) else rnd.uniform(0, 0.25))
            elif is_wal_write(ev) and wal_growth(meta, wal_before) >= kill_growth:
                kill_at = time.monotonic()
    r.mount_done = proc.poll() is not None
    r.elapsed = time.monotonic() - t0
    busy = kill_worker_pid(s, pid)
    if busy is not None:
        r.killed_pid, r.busy = pid, busy
    # What the dead worker did before it died: the next one writes nothing
    # before it has indexed the layer again.
    r.growth = wal_growth(meta, wal_before)
    r.events += watch.read()
    r.rc, r.out = finish_mount(s, proc, blob)
    return r


def fuse_fds(fds):
    return sum(1 for t in fds.values() if t == "/dev/fuse")


def holdfast_mounts_under(base):
    base = os.path.realpath(base) + "/"
    return sorted(mp for mp in su.mounted_paths() if mp.startswith(base))


def test_kill_while_indexing_and_storing(sups, layer, big, workdir, monkeypatch):
    # The worker's debug log says how each layer was opened.
    monkeypatch.setenv("HOLDFAST_DEBUG", "1")
    t_start = time.monotonic()
    s = sups.start(["--restart-limit", "0/60", "--restart-delay-max", "200"])
    meta = os.path.join(s.root, "meta")
    os.makedirs(meta, exist_ok=True)  # made by the worker, unless built without the store
    watch = MetaWatch(meta)
    rnd = random.Random(20240601)
    blobs_dir = os.path.join(workdir, "blobs")
    os.makedirs(blobs_dir, exist_ok=True)
    n_blobs = [0]

    def fresh_blob():
        # A distinct file: the store keys a layer by path, size, mtime, inode.
        n_blobs[0] += 1
        path = os.path.join(blobs_dir, "big-%03d.esgz" % n_blobs[0])
        shutil.copyfile(big.blob, path)
        return path

    fds_empty = s.fds_quiet()
    small_mp = s.mount(layer.blob)
    readers = [Readers(small_mp, layer, n_threads=3)]
    readers[0].start()
    rounds, big_mounts = [], []  # big_mounts: (blob, mountpoint)
    timings = {}
    try:
        # Two mounts without a kill: how long a new big layer takes, how
        # long until its record is written, and how many bytes it adds to
        # the WAL.
        t_mounts, t_indexes, record_bytes = [], [], 0
        for _ in range(2):
            blob, mp = fresh_blob(), s.new_mountpoint()
            watch.read()
            wal_before = wal_sizes(meta)
            t0 = time.monotonic()
            proc = start_mount(s, blob, mp)
            first_write = None
            while proc.poll() is None:
                if any(is_wal_write(e) for e in watch.read(0.01)) and first_write is None:
                    first_write = time.monotonic() - t0
                assert time.monotonic() < t0 + 120, "%s: not mounted within 120 s" % blob
            t_mounts.append(time.monotonic() - t0)
            if first_write is not None:
                t_indexes.append(first_write)
            rc, out = finish_mount(s, proc, blob)
            assert rc == 0 and "mounted" in out, (rc, out, s.log()[-3000:])
            record_bytes = wal_growth(meta, wal_before)
            big_mounts.append((blob, mp))
        t_mount = max(t_mounts)
        t_index = min(t_indexes) if t_indexes else t_mount
        check_big_mount(big_mounts[0][1], big, rnd)
        # Readers on a big layer too: the next worker loads it from the store
        # while it opens the new one.
        readers.append(Readers(big_mounts[0][1], big.as_layer(), n_threads=1))
        readers[-1].start()
        store = os.path.exists(os.path.join(meta, "CURRENT")) and record_bytes > 0
        print("mounts without a kill: %s s, their first WAL write after %s s; a record adds %d bytes to the WAL%s"
              % (" ".join("%.2f" % t for t in t_mounts), " ".join("%.2f" % t for t in t_indexes), record_bytes,
                 "" if store else " (no store: worker built without it)"))
        timings["setup"] = time.monotonic() - t_start

        # The kills: half at random moments (anywhere, or before the record
        # is written), half at store writes.
        cycle = ["random", "index", "store-open", "wal-write", "wal-synced", "random"]
        if not store:
            cycle = ["random", "index"]
        modes = (cycle * ROUNDS)[:ROUNDS]
        rnd.shuffle(modes)
        restarts0 = s.status()["restarts"]
        killed = 0
        for i, mode in enumerate(modes):
            if mode == "store-open":
                # A fresh worker has the store open as a reader: its first
                # record opens it read-write.
                s.ctl("restart")
            blob, mp = fresh_blob(), s.new_mountpoint()
            r = mount_with_kill(s, watch, meta, rnd, blob, mp, mode, t_mount, t_index, record_bytes)
            rounds.append(r)
            # The supervisor keeps a mount whose worker died and hands it to
            # the next worker, which opens the layer again.
            assert r.rc == 0 and "mounted" in r.out, (
                "round %d (%s, kill %.3f s after the mount started): mount failed: %s\nsupervisor log tail:\n%s"
                % (i, mode, r.elapsed, r.out, s.log()[-4000:]))
            big_mounts.append((blob, mp))
            killed += r.killed_pid is not None
            st = s.wait_served()
            assert st["restarts"] == restarts0 + killed, st
            assert sorted(m["mountpoint"] for m in st["mounts"]) == sorted([small_mp] + [m for _, m in big_mounts])
            check_big_mount(mp, big, rnd)
            for rd in readers:
                assert not rd.errors, "round %d (%s): %s" % (i, mode, rd.errors[:10])
            # one /dev/fuse fd per mount in the supervisor, one mount per fd
            assert fuse_fds(s.fds()) == len(st["mounts"]), s.fds()
            assert holdfast_mounts_under(workdir) == sorted(su.canon(m["mountpoint"]) for m in st["mounts"])
        timings["rounds"] = time.monotonic() - t_start - timings["setup"]

        # A fresh worker finds every big layer's record in the store.
        s.ctl("restart")
        final_pid = s.wait_served()["worker_pid"]
        for blob, mp in big_mounts:
            check_big_mount(mp, big, rnd, n_dirs=50, n_stat=200, n_read=20)
    finally:
        for rd in readers:
            rd.finish()
        watch.close()
    # Every entry and byte of one layer whose record a killed worker was
    # writing (the last one if no kill landed there), without the readers
    # competing for the CPUs.
    log = s.log()
    torn = [r.mp for r in rounds if "WAL" in r.phase(log, record_bytes)]
    check_big_mount((torn or [big_mounts[-1][1]])[0], big, rnd, full=True)
    timings["final checks"] = time.monotonic() - t_start - timings["setup"] - timings["rounds"]

    log = s.log()
    opened = {m.group(2): m.group(3) for m in INDEX_LOG_RE.finditer(log) if int(m.group(1)) == final_pid}
    phases = collections.Counter(r.phase(log, record_bytes) for r in rounds)
    st = s.wait_served()
    print("kills: %d rounds, %d workers killed, %d restarts; modes %s" % (
        len(rounds), killed, st["restarts"], dict(collections.Counter(r.mode for r in rounds))))
    for phase, n in sorted(phases.items()):
        how = collections.Counter(r.opened_after(log) or "not logged" for r in rounds
                                  if r.phase(log, record_bytes) == phase)
        print("  killed in %-38s %2d  (the next worker opened the layer: %s)" % (phase + ":", n, dict(how)))
    print("  kill moments after the mount started: %s s" % " ".join("%.3f" % r.elapsed for r in rounds))
    print("  kills while a RocksDB flush or compaction thread ran: %d; rounds with SST writes before the kill: %d" % (
        sum(1 for r in rounds if r.busy), sum(1 for r in rounds if any(e[1].endswith(".sst") for e in r.events))))
    print("readers: %s ops, %d errors, max latency %.0f ms; time: %s, total %.0f s" % (
        [rd.ops for rd in readers], sum(len(rd.errors) for rd in readers),
        max(rd.max_latency for rd in readers) * 1000, ", ".join("%s %.0f s" % kv for kv in timings.items()),
        time.monotonic() - t_start))

    for rd in readers:
        assert not rd.errors, rd.errors[:20]
        assert rd.ops > 100
    assert killed == len(rounds)
    if store:
        # the kills hit the store, not only the indexing
        assert sum(n for p, n in phases.items() if "WAL" in p or "RocksDB" in p) > 0, phases
        # every record survived or was written again: nothing is indexed twice
        assert INDEX_LOG_RE.search(log), "the worker's debug log no longer says how it opened a layer"
        missing = {b: opened.get(b) for b, _ in big_mounts if opened.get(b) != "from the store"}
        assert not missing, "layers the last worker did not find in the store: %s" % missing

    for _, mp in big_mounts + [(None, small_mp)]:
        s.ctl("umount", mp)
    assert su.fd_kinds(s.fds_quiet()) == su.fd_kinds(fds_empty), (s.fds(), fds_empty)
    assert holdfast_mounts_under(workdir) == []
    assert s.proc.poll() is None, "the supervisor died"
    assert s.stop() == 0
