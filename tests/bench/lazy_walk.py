#!/usr/bin/python3
"""Reads a whole tree the way `tar -cf - .` does: depth first, each
directory's entries in readdir order, every regular file read in full,
every symlink's target read; symlinks are not followed. Prints one line:
`files bytes digest`, where digest is a sha256 over the sorted per-entry
records (relative path, type, sha256 of the content or the link target),
so that a mounted image and the tree it was built from compare equal
whatever order their directories list in.

Usage: lazy_walk.py ROOT [SKIP_NAME...]   (names skipped at any depth)
Used by tests/bench/lazy as its "read the whole image" workload; run as a
separate process so that the bench's own threads (the proxy) do not share
its interpreter.
"""

import hashlib
import os
import stat
import sys

BUF = 1 << 20


def main():
    root = sys.argv[1]
    skip = set(sys.argv[2:])
    records = []
    files = nbytes = 0
    buf = bytearray(BUF)
    view = memoryview(buf)

    def walk(rel, depth):
        nonlocal files, nbytes
        if depth > 64:
            raise SystemExit("too deep: %s" % rel)
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                if e.name in skip:
                    continue
                path = os.path.join(rel, e.name)
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    records.append(b"d " + os.fsencode(path))
                    walk(path, depth + 1)
                elif stat.S_ISLNK(st.st_mode):
                    records.append(b"l " + os.fsencode(path) + b"\0" + os.fsencode(os.readlink(e.path)))
                elif stat.S_ISREG(st.st_mode):
                    h = hashlib.sha256()
                    fd = os.open(e.path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        while True:
                            n = os.readv(fd, [buf])
                            if n <= 0:
                                break
                            h.update(view[:n])
                            nbytes += n
                    finally:
                        os.close(fd)
                    files += 1
                    records.append(b"f " + os.fsencode(path) + b"\0" + h.hexdigest().encode())
                else:
                    records.append(b"o " + os.fsencode(path))

    walk("", 0)
    total = hashlib.sha256()
    for r in sorted(records):
        total.update(r + b"\n")
    print(files, nbytes, total.hexdigest())


if __name__ == "__main__":
    main()
