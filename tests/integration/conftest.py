"""Fixtures for holdfast's eStargz conformance tests.

The reference implementation is Debian's Go package
github.com/containerd/stargz-snapshotter/estargz, driven by
tests/reference/estargz-ref.go. holdfast is driven through holdfastctl.

Environment:
  HOLDFASTCTL  path of holdfastctl (default: build/supervisor/ctl/holdfastctl
               in the source tree)
  ESTARGZ_REF  path of a prebuilt estargz-ref (default: built once per session
               with tests/reference/build-ref.sh into a temporary directory;
               the tests skip when that script exits 77)

The tests need root: they create device nodes, chown files and set
trusted.* xattrs.
"""

import hashlib
import json
import os
import pathlib
import random
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRCROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import treedump  # noqa: E402

KiB = 1024
MiB = 1024 * KiB

# Fixed timestamps (whole seconds: the TOC stores seconds only).
T_RECENT = 1_700_000_000       # 2023-11-14
T_OLD = 489_024_000            # 1985-07-01
T_PRE_EPOCH = -31_536_000      # 1969-01-01
T_FUTURE = 8_640_000_000       # 2243-10-17: past 2^32 and ustar's 11 octal digits
T_EPOCH = 0


def _run(cmd, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(cmd, **kw)


@pytest.fixture(scope="session")
def session_tmp():
    d = tempfile.mkdtemp(prefix="holdfast-conformance-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# pytest's own tmp_path keeps the last runs' directories around; these
# replacements put everything under session_tmp, which is removed at the end.
class _TmpFactory:
    def __init__(self, base):
        self.base = base

    def mktemp(self, name):
        return pathlib.Path(tempfile.mkdtemp(prefix=name, dir=self.base))


@pytest.fixture(scope="session")
def tmp_path_factory(session_tmp):
    return _TmpFactory(session_tmp)


@pytest.fixture
def tmp_path(session_tmp):
    d = tempfile.mkdtemp(prefix="test-", dir=session_tmp)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def require_root():
    if os.geteuid() != 0:
        pytest.skip("conformance tests need root (mknod, chown, trusted.* xattrs)")


@pytest.fixture(scope="session")
def estargz_ref(session_tmp):
    path = os.environ.get("ESTARGZ_REF")
    if path:
        if not os.access(path, os.X_OK):
            pytest.fail("ESTARGZ_REF=%s is not executable" % path)
        return path
    out = os.path.join(session_tmp, "estargz-ref")
    env = dict(os.environ)
    env.setdefault("GOCACHE", os.path.join(session_tmp, "gocache"))
    p = _run([os.path.join(SRCROOT, "tests", "reference", "build-ref.sh"), out], env=env)
    if p.returncode == 77:
        pytest.skip("reference implementation unavailable: " + p.stderr.decode(errors="replace").strip())
    if p.returncode != 0:
        pytest.fail("build-ref.sh failed (%d):\n%s%s" % (p.returncode, p.stdout.decode(errors="replace"),
                                                          p.stderr.decode(errors="replace")))
    return out


@pytest.fixture(scope="session")
def holdfastctl():
    path = os.environ.get("HOLDFASTCTL") or os.path.normpath(
        os.path.join(HERE, "..", "..", "build", "supervisor", "ctl", "holdfastctl"))
    if not os.access(path, os.X_OK):
        # CI sets HOLDFASTCTL; a missing binary there is a failure, not a skip.
        if os.environ.get("CI") or os.environ.get("HOLDFASTCTL"):
            pytest.fail("holdfastctl not found at %s" % path)
        pytest.skip("holdfastctl not built at %s (set HOLDFASTCTL)" % path)
    return path


# --- the source tree -------------------------------------------------------

def _write(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _compressible(rng, size):
    words = [b"holdfast", b"estargz", b"chunk", b"lazy", b"pull", b"layer",
             b"overlay", b"fuse", b"\n", b"  ", b"0123456789", b"toc"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
        out += b" "
    return bytes(out[:size])


def build_source_tree(root, seed=20240517):
    """Populate `root` with a few thousand entries covering what a layer can
    hold. Returns a dict of notable paths for the tests."""
    rng = random.Random(seed)
    notable = {}
    os.makedirs(root, exist_ok=True)

    def p(rel):
        return os.path.join(root, rel)

    # Nested directories with many small and medium files.
    dirs = [""]
    for i in range(80):
        parent = rng.choice(dirs) if i > 6 else ""
        depth = parent.count("/") + 1 if parent else 0
        if depth >= 7:
            parent = ""
        name = "d%02d" % i
        rel = parent + "/" + name if parent else name
        os.mkdir(p(rel))
        dirs.append(rel)
    dirs = dirs[1:]
    sizes = [0, 1, 2, 7, 100, 511, 512, 513, 4095, 4096, 4097, 10_000]
    n = 0
    for d in dirs:
        for j in range(rng.randint(20, 45)):
            r = rng.random()
            if r < 0.5:
                size = rng.choice(sizes)
            elif r < 0.97:
                size = rng.randint(0, 8 * KiB)
            else:
                size = rng.randint(16 * KiB, 200 * KiB)
            data = rng.randbytes(size) if rng.random() < 0.5 else _compressible(rng, size)
            _write(p("%s/f%04d" % (d, n)), data, rng.choice([0o644, 0o600, 0o755, 0o444, 0o640]))
            n += 1

    # Files around the chunk sizes used by the tests (64 KiB, 1 MiB, 4 MiB).
    os.mkdir(p("big"))
    big = {
        "big/zero": b"",
        "big/one": b"x",
        "big/64k-1": rng.randbytes(64 * KiB - 1),
        "big/64k": rng.randbytes(64 * KiB),
        "big/64k+1": rng.randbytes(64 * KiB + 1),
        "big/1m": _compressible(rng, 1 * MiB),
        "big/1m+1": rng.randbytes(1 * MiB + 1),
        "big/random-3m": rng.randbytes(3 * MiB + 12345),
        "big/4m": rng.randbytes(4 * MiB),
        "big/text-5m": _compressible(rng, 5 * MiB + 777),
        "big/zeros-6m": bytes(6 * MiB),
    }
    mixed = bytearray()
    while len(mixed) < 9 * MiB:
        mixed += rng.randbytes(rng.randint(1, 300 * KiB))
        mixed += _compressible(rng, rng.randint(1, 300 * KiB))
    big["big/mixed-9m"] = bytes(mixed[:9 * MiB - 3])
    for rel, data in big.items():
        _write(p(rel), data)
    notable["large"] = "big/mixed-9m"
    notable["empty"] = "big/zero"

    # Names with spaces, unicode, and long paths (beyond ustar's 100/155).
    os.mkdir(p("names"))
    for name in ["with space", " leading space", "trailing space ", "caf\u00e9",
                 "\u65e5\u672c\u8a9e\u30d5\u30a1\u30a4\u30eb", "emoji-\U0001f600",
                 "quote\"and\\backslash", "semi;colon&amp", "dash-", "a" * 200,
                 "tab\tin name", "x=y"]:
        _write(p("names/" + name), name.encode() * 3)
    longdir = "names/" + "/".join(["long-component-%02d" % i for i in range(12)])
    os.makedirs(p(longdir))
    _write(p(longdir + "/" + "deep-file-" + "z" * 120), b"deep")
    notable["unicode"] = "names/caf\u00e9"

    # Symlinks: relative, absolute, dangling, to a directory, long target.
    os.mkdir(p("links"))
    os.symlink("../big/one", p("links/rel"))
    os.symlink("/etc/passwd", p("links/abs"))
    os.symlink("does/not/exist", p("links/dangling"))
    os.symlink("../names", p("links/dir"))
    os.symlink("t" * 180, p("links/longtarget"))
    os.symlink("caf\u00e9 target", p("links/unicode target"))

    # Hardlinks: same directory, other directory, a chain, a multi-chunk
    # file, a zero-length file.
    os.mkdir(p("hard"))
    _write(p("hard/orig"), b"hardlinked content\n" * 100)
    os.link(p("hard/orig"), p("hard/same-dir"))
    os.link(p("hard/orig"), p("links/other-dir"))
    os.link(p("big/random-3m"), p("hard/big-link"))
    _write(p("hard/empty"), b"")
    os.link(p("hard/empty"), p("hard/empty-link"))
    os.mkdir(p("hard/sub"))
    os.link(p("hard/orig"), p("hard/sub/third"))
    notable["hardlink"] = "hard/big-link"

    # Special files.
    os.mkdir(p("dev"))
    os.mknod(p("dev/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(p("dev/tty-ish"), 0o620 | stat.S_IFCHR, os.makedev(136, 7))
    os.mknod(p("dev/sda1"), 0o660 | stat.S_IFBLK, os.makedev(8, 1))
    os.mknod(p("dev/nvme-big-minor"), 0o600 | stat.S_IFBLK, os.makedev(259, 1048575))
    os.mkfifo(p("dev/fifo"), 0o644)
    os.mkfifo(p("dev/fifo2"), 0o600)

    # Permission bits: setuid, setgid, sticky.
    os.mkdir(p("perm"))
    _write(p("perm/suid"), b"#!/bin/sh\n", 0o4755)
    _write(p("perm/sgid"), b"#!/bin/sh\n", 0o2711)
    _write(p("perm/all"), b"all bits\n", 0o7777)
    _write(p("perm/none"), b"no bits\n", 0o000)
    os.mkdir(p("perm/sticky"))
    os.chmod(p("perm/sticky"), 0o1777)
    os.mkdir(p("perm/sgid-dir"))
    os.chmod(p("perm/sgid-dir"), 0o2775)
    os.mkdir(p("perm/closed"))
    os.chmod(p("perm/closed"), 0o700)

    # Owners, including one beyond ustar's 7 octal digits.
    os.mkdir(p("owners"))
    for uid, gid in [(0, 0), (1, 1), (1000, 1000), (65534, 65534), (1000, 0),
                     (123456, 654321), (3000000, 4000000)]:
        rel = "owners/u%d-g%d" % (uid, gid)
        _write(p(rel), b"owned\n")
        os.chown(p(rel), uid, gid)
    os.symlink("u1-g1", p("owners/link-owned"))
    os.chown(p("owners/link-owned"), 1000, 1000, follow_symlinks=False)
    os.mkdir(p("owners/dir-1000"))
    os.chown(p("owners/dir-1000"), 1000, 1001)
    os.chown(p("dev/fifo2"), 7, 8)

    # Extended attributes on files and directories, binary values.
    os.mkdir(p("xattr"))
    _write(p("xattr/file"), b"has xattrs\n")
    os.setxattr(p("xattr/file"), "user.plain", b"value")
    os.setxattr(p("xattr/file"), "user.binary", b"\x00\x01\x02\xff\xfe\x00end")
    os.setxattr(p("xattr/file"), "user.utf8", "h\u00e9llo".encode())
    os.setxattr(p("xattr/file"), "trusted.holdfast", b"trusted\x00value")
    os.setxattr(p("xattr/file"), "user.empty", b"")
    os.setxattr(p("xattr"), "user.dir-attr", b"on a directory")
    _write(p("xattr/big-value"), b"")
    os.setxattr(p("xattr/big-value"), "user.big", bytes(range(256)) * 8)
    _write(p("xattr/multi-chunk"), rng.randbytes(2 * MiB + 5))
    os.setxattr(p("xattr/multi-chunk"), "user.k", b"v")
    os.mkfifo(p("xattr/fifo"))
    os.setxattr(p("xattr/fifo"), "trusted.on-fifo", b"\x00")

    # Whiteouts and an opaque directory, as a layer tar carries them.
    os.mkdir(p("wh"))
    _write(p("wh/x"), b"real x\n")
    _write(p("wh/.wh.x"), b"")              # hidden: x exists
    _write(p("wh/.wh.gone"), b"")           # shown as char 0:0 "gone"
    os.chown(p("wh/.wh.gone"), 1000, 1000)
    os.mkdir(p("wh/opaque"))
    _write(p("wh/opaque/.wh..wh..opq"), b"")
    _write(p("wh/opaque/kept"), b"kept\n")
    os.setxattr(p("wh/opaque"), "user.also", b"1")
    os.mkdir(p("wh/opaque/sub"))
    _write(p("wh/opaque/sub/.wh.deep"), b"")
    _write(p(".wh.rootgone"), b"")

    # Modification times: recent, old, before 1970, the epoch, after 2242.
    # Set bottom-up so that creating entries does not touch them again.
    times = [T_RECENT, T_RECENT + 1, T_OLD, T_RECENT - 86400 * 365]
    special = {
        "big/one": T_OLD, "perm/suid": T_PRE_EPOCH, "perm/sgid": T_EPOCH,
        "perm/all": T_FUTURE, "links/abs": T_OLD, "dev/null": T_PRE_EPOCH,
        "wh/.wh.gone": T_OLD, "names": T_OLD, "xattr/fifo": T_FUTURE,
    }
    notable["times"] = special
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            t = special.get(rel, rng.choice(times))
            os.utime(full, ns=(t * 10**9, t * 10**9), follow_symlinks=False)
    os.utime(root, ns=(T_RECENT * 10**9, T_RECENT * 10**9))
    return notable


def make_tar(src, out):
    """Tar `src` the way layers are made: GNU tar, PAX xattrs, numeric ids."""
    p = _run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--sort=name",
              "-C", src, "-cf", out, "."])
    if p.returncode != 0:
        raise RuntimeError("tar failed: %s" % p.stderr.decode(errors="replace"))


PREFETCH_LIST = [
    "big/text-5m",
    "hard/big-link",         # a hardlink: its target moves along
    "names/caf\u00e9",
    "d00/f0000",
    "xattr/file",
]


class Tree:
    """The session's source tree and everything derived from it."""

    def __init__(self, root, tar, notable, dump):
        self.root = root
        self.tar = tar
        self.notable = notable
        self.dump = dump

    def path(self, rel):
        return os.path.join(self.root, rel)


@pytest.fixture(scope="session")
def tree(session_tmp, require_root):
    root = os.path.join(session_tmp, "src")
    notable = build_source_tree(root)
    tar = os.path.join(session_tmp, "layer.tar")
    make_tar(root, tar)
    dump = treedump.dump_tree(root)
    return Tree(root, tar, notable, dump)


@pytest.fixture(scope="session")
def prefetch_list(session_tmp):
    path = os.path.join(session_tmp, "prefetch.list")
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in PREFETCH_LIST))
    return path


@pytest.fixture(scope="session")
def blob_cache(session_tmp):
    """Memoizes blobs per (builder, chunk size, prefetch) across tests."""
    d = os.path.join(session_tmp, "blobs")
    os.mkdir(d)
    return {"dir": d}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def parse_json_output(p, what):
    out = p.stdout.decode(errors="replace").strip()
    try:
        return json.loads(out)
    except ValueError:
        raise AssertionError("%s printed no JSON object: %r (stderr %r)"
                             % (what, out, p.stderr.decode(errors="replace")))
