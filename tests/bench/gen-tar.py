#!/usr/bin/python3
"""Writes a deterministic layer tar for the benchmarks.

  gen-tar.py toc OUT.tar N      N entries: dirs, small files, symlinks, hardlinks
  gen-tar.py data OUT.tar MIB   MIB mebibytes of file data, half text-like
                                (compressible), half random, in 1-16 MiB files
"""
import io
import random
import sys
import tarfile


def add(tf, name, kind, data=b"", link=""):
    ti = tarfile.TarInfo(name)
    ti.mtime = 1700000000
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    if kind == "dir":
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(ti)
    elif kind == "sym":
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, link, 0o777
        tf.addfile(ti)
    elif kind == "hard":
        ti.type, ti.linkname, ti.mode = tarfile.LNKTYPE, link, 0o644
        tf.addfile(ti)
    else:
        ti.size, ti.mode = len(data), 0o644
        tf.addfile(ti, io.BytesIO(data))


def gen_toc(out, n):
    rnd = random.Random(1)
    words = [b"lib", b"usr", b"share", b"python3", b"site", b"data", b"x86_64"]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        dirs = ["usr"]
        add(tf, "usr/", "dir")
        files = []
        i = 0
        while i < n - 1:
            r = rnd.random()
            parent = rnd.choice(dirs)
            if r < 0.1 and len(parent) < 200:
                d = "%s/d%05d" % (parent, i)
                add(tf, d + "/", "dir")
                dirs.append(d)
            elif r < 0.15:
                add(tf, "%s/l%05d" % (parent, i), "sym", link="../target%d" % i)
            elif r < 0.17 and files:
                add(tf, "%s/h%05d" % (parent, i), "hard", link=rnd.choice(files))
            else:
                f = "%s/f%05d.py" % (parent, i)
                size = rnd.choice([0, 64, 300, 1200, 4000])
                add(tf, f, "reg", b" ".join(rnd.choice(words) for _ in range(size // 5))[:size])
                files.append(f)
            i += 1


def gen_data(out, mib):
    rnd = random.Random(2)
    text = b"".join(b"def f%d(x):\n    return x * %d + %d\n" % (i, i, i * 7) for i in range(200000))
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "data/", "dir")
        left, i = mib << 20, 0
        while left > 0:
            size = min(left, rnd.choice([1, 2, 4, 8, 16]) << 20)
            if i % 2 == 0:
                start = rnd.randrange(0, len(text) - 1)
                data = (text[start:] + text) * (size // len(text) + 2)
                data = data[:size]
            else:
                data = rnd.randbytes(size)
            add(tf, "data/file%03d" % i, "reg", data)
            left -= size
            i += 1


if __name__ == "__main__":
    kind, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    gen_toc(out, n) if kind == "toc" else gen_data(out, n)
