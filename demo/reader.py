#!/usr/bin/python3
"""Reads every file under MOUNT again and again for SECONDS, comparing each
with the same file under SOURCE, dropping the file's page cache first so
that every read reaches holdfast. Prints one line at the end:
  reads=N errors=N wrong_bytes=N longest_ms=F
and exits 1 if any read failed or returned wrong bytes."""
import hashlib
import os
import sys
import time


def digest(path, drop):
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        h = hashlib.sha256()
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)
    finally:
        os.close(fd)


def main():
    mount, source, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    files = []
    for d, _, names in os.walk(source):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p) and not n.startswith(".wh."):
                files.append(os.path.relpath(p, source))
    want = {f: digest(os.path.join(source, f), False) for f in files}
    reads = errors = wrong = 0
    longest = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for f in files:
            t0 = time.monotonic()
            try:
                got = digest(os.path.join(mount, f), True)
                if got != want[f]:
                    wrong += 1
            except OSError as e:
                errors += 1
                print("reader: %s: %s" % (f, e), file=sys.stderr)
            longest = max(longest, time.monotonic() - t0)
            reads += 1
    print("reads=%d errors=%d wrong_bytes=%d longest_ms=%.1f" % (reads, errors, wrong, longest * 1000))
    return 1 if errors or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
