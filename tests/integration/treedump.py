#!/usr/bin/python3
"""Dump a directory tree the way an eStargz layer built from it looks when
mounted as an overlayfs lower layer.

This is the shared dump format of holdfast's conformance tests: the same
lines come from `holdfastctl inspect --json BLOB` and from
`estargz-ref dump BLOB` (tests/reference/estargz-ref.go).

One JSON object per line, one line per path, sorted bytewise by path; the
root directory is left out; paths are relative, without "./", "/" or a
trailing slash. Every key is always present:

  path      "a/b"
  type      "dir" | "reg" | "symlink" | "char" | "block" | "fifo"
  mode      st_mode & 0o7777 (permissions plus setuid/setgid/sticky)
  uid, gid  numeric owner
  size      content length for "reg", else 0
  mtime     unix seconds, rounded to the nearest second, halves up (the
            reference stores seconds in the TOC, rounding sub-second tar
            times this way)
  link      symlink target, else ""
  devmajor, devminor  for "char"/"block", else 0
  xattrs    {name: base64(value)}, sorted by name
  sha256    lowercase hex of the content for "reg", else ""
  nlink     non-directories: how many paths in the layer name the same
            file (hardlinks count); directories: 0

Overlay view rules:
  * `.wh.NAME` (other than `.wh..wh..opq`) shows as NAME, a "char" device
    0:0 with mode 0, no xattrs, size 0, and the uid, gid and mtime of the
    whiteout entry, unless NAME itself exists in the same directory, in
    which case the whiteout is hidden.
  * `DIR/.wh..wh..opq` is hidden and DIR gets the xattr
    trusted.overlay.opaque = "y".
  * `.prefetch.landmark` and `.no.prefetch.landmark` at the root are
    hidden.
  * Directories with no entry of their own show as mode 0755, uid 0,
    gid 0, mtime 0 (only a blob can have those; a source tree cannot).
  * A hardlink shows as the file it links to.

In a source tree a whiteout is an empty regular file named `.wh.NAME` and
an opaque marker an empty file `.wh..wh..opq`. Only xattrs in the "user."
and "trusted." namespaces are dumped (tar archives only carry those in
practice, and security.* labels differ from machine to machine).

Usable as a module (dump_tree, format_lines, parse_lines, diff_dumps) and
as a command: treedump.py DIR
"""

import base64
import hashlib
import json
import os
import stat
import sys

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
LANDMARKS = (".prefetch.landmark", ".no.prefetch.landmark")
XATTR_NAMESPACES = ("user.", "trusted.")

KEYS = ("path", "type", "mode", "uid", "gid", "size", "mtime", "link",
        "devmajor", "devminor", "xattrs", "sha256", "nlink")


def _round_seconds(ns):
    """Nanoseconds to whole seconds the way the reference does it: Go's
    Time.Round(time.Second), which rounds halves up (towards the future,
    also before 1970: -1.5 s becomes -1 s)."""
    return (ns + 500_000_000) // 1_000_000_000


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _xattrs(path):
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for name in names:
        if not name.startswith(XATTR_NAMESPACES):
            continue
        value = os.getxattr(path, name, follow_symlinks=False)
        out[name] = base64.b64encode(value).decode("ascii")
    return out


def _type_of(mode):
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "reg"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode):
        return "char"
    if stat.S_ISBLK(mode):
        return "block"
    if stat.S_ISFIFO(mode):
        return "fifo"
    raise ValueError("unsupported file type %o" % mode)


def _sort_key(path):
    return path.encode("utf-8", "surrogateescape")


def dump_tree(root):
    """Return the dump of directory `root` as a list of dicts in path order."""
    root = os.fspath(root)
    # First pass: every path with its lstat, to count names per inode.
    stats = {}
    links = {}

    def scan(rel):
        full = os.path.join(root, rel) if rel else root
        for name in os.listdir(full):
            r = rel + "/" + name if rel else name
            st = os.lstat(os.path.join(root, r))
            stats[r] = st
            if not stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                links[key] = links.get(key, 0) + 1
            else:
                scan(r)

    scan("")

    children = {}
    for r in stats:
        d, _, name = r.rpartition("/")
        children.setdefault(d, set()).add(name)

    out = []
    for r, st in stats.items():
        d, _, name = r.rpartition("/")
        if d == "" and name in LANDMARKS:
            continue
        if name == OPAQUE_MARKER:
            continue
        nlink = 0
        if not stat.S_ISDIR(st.st_mode):
            nlink = links[(st.st_dev, st.st_ino)]
        if name.startswith(WHITEOUT_PREFIX):
            target = name[len(WHITEOUT_PREFIX):]
            if target in children[d]:
                continue
            out.append({
                "path": d + "/" + target if d else target,
                "type": "char", "mode": 0, "uid": st.st_uid,
                "gid": st.st_gid, "size": 0,
                "mtime": _round_seconds(st.st_mtime_ns), "link": "",
                "devmajor": 0, "devminor": 0, "xattrs": {}, "sha256": "",
                "nlink": nlink,
            })
            continue
        full = os.path.join(root, r)
        typ = _type_of(st.st_mode)
        xattrs = _xattrs(full)
        if typ == "dir" and OPAQUE_MARKER in children.get(r, ()):
            xattrs[OPAQUE_XATTR] = base64.b64encode(b"y").decode("ascii")
        e = {
            "path": r,
            "type": typ,
            "mode": st.st_mode & 0o7777,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "size": st.st_size if typ == "reg" else 0,
            "mtime": _round_seconds(st.st_mtime_ns),
            "link": os.readlink(full) if typ == "symlink" else "",
            "devmajor": os.major(st.st_rdev) if typ in ("char", "block") else 0,
            "devminor": os.minor(st.st_rdev) if typ in ("char", "block") else 0,
            "xattrs": dict(sorted(xattrs.items())),
            "sha256": _sha256_file(full) if typ == "reg" else "",
            "nlink": nlink,
        }
        out.append(e)
    out.sort(key=lambda e: _sort_key(e["path"]))
    return out


def format_lines(entries):
    """Entries as dump text (one JSON object per line, trailing newline)."""
    return "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in entries)


def parse_lines(text):
    """Parse dump text into a list of dicts; checks shape and order."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            raise ValueError("line %d: empty line in dump" % n)
        e = json.loads(line)
        if not isinstance(e, dict):
            raise ValueError("line %d: not a JSON object" % n)
        missing = [k for k in KEYS if k not in e]
        extra = [k for k in e if k not in KEYS]
        if missing or extra:
            raise ValueError("line %d (%r): missing keys %s, unknown keys %s"
                             % (n, e.get("path"), missing, extra))
        out.append(e)
    paths = [_sort_key(e["path"]) for e in out]
    if paths != sorted(paths) or len(set(paths)) != len(paths):
        raise ValueError("dump is not sorted by path or has duplicate paths")
    return out


def diff_dumps(expected, actual, limit=30):
    """Human-readable list of differences between two dumps ([] if equal)."""
    exp = {e["path"]: e for e in expected}
    act = {e["path"]: e for e in actual}
    msgs = []
    for p in sorted(exp.keys() | act.keys(), key=_sort_key):
        if p not in act:
            msgs.append("missing path %r (expected %s)" % (p, json.dumps(exp[p])))
        elif p not in exp:
            msgs.append("unexpected path %r: %s" % (p, json.dumps(act[p])))
        else:
            for k in KEYS:
                if exp[p].get(k) != act[p].get(k):
                    msgs.append("%r: %s expected %r, got %r"
                                % (p, k, exp[p].get(k), act[p].get(k)))
    if not msgs and [e["path"] for e in expected] != [e["path"] for e in actual]:
        msgs.append("same entries but different order")
    if len(msgs) > limit:
        msgs = msgs[:limit] + ["... and %d more differences" % (len(msgs) - limit)]
    return msgs


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: treedump.py DIR\n")
        return 2
    sys.stdout.write(format_lines(dump_tree(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
