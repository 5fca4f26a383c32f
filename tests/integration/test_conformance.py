"""Conformance of holdfast's eStargz reader and writer with the reference
implementation (stargz-snapshotter's estargz package, via estargz-ref).

Every comparison goes through the dump format of treedump.py: the source
tree's dump is the expected answer, and both implementations must produce
it, each from its own blobs and from the other's.

Run as root:  HOLDFASTCTL=build/supervisor/ctl/holdfastctl \
              /usr/bin/python3 -m pytest tests/integration -v
"""

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile

import pytest

import treedump
from conftest import MiB, KiB, PREFETCH_LIST, parse_json_output, sha256_file

# (id, chunk size or None for the implementations' default of 4 MiB)
CHUNK_SIZES = [("64k", 64 * KiB), ("1m", 1 * MiB), ("default", None)]
PREFETCH = [("noprefetch", False), ("prefetch", True)]

chunk_params = pytest.mark.parametrize("chunk", [c for _, c in CHUNK_SIZES],
                                       ids=[i for i, _ in CHUNK_SIZES])
prefetch_params = pytest.mark.parametrize("prefetch", [p for _, p in PREFETCH],
                                          ids=[i for i, _ in PREFETCH])

CORRUPTION_WORDS = re.compile(r"digest|corrupt|checksum|crc|mismatch|verif|invalid", re.I)


def run(cmd, check=True, timeout=120):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("%s exited %d\nstderr: %s" % (
            " ".join(map(str, cmd)), p.returncode, p.stderr.decode(errors="replace")[-4000:]))
    return p


def assert_dump_equal(expected, actual, what):
    diffs = treedump.diff_dumps(expected, actual)
    assert not diffs, "%s differs from the expected dump:\n  %s" % (what, "\n  ".join(diffs))


def gunzip_sha256(path):
    """sha256 of the concatenated gzip members of `path` (the DiffID)."""
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return "sha256:" + h.hexdigest()


def read_toc(blob):
    """Parse a gzip eStargz blob's footer and TOC without either
    implementation: returns (toc dict, "sha256:" digest of the TOC JSON)."""
    with open(blob, "rb") as f:
        f.seek(-51, os.SEEK_END)
        footer = f.read(51)
        m = re.search(rb"([0-9a-f]{16})STARGZ", footer)
        assert m, "no eStargz footer in %s" % blob
        f.seek(int(m.group(1), 16))
        toc_gz = f.read()[:-51]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(toc_gz))) as t:
        raw = t.extractfile("stargz.index.json").read()
    return json.loads(raw), "sha256:" + hashlib.sha256(raw).hexdigest()


def toc_layout(toc):
    """What must not depend on the writer: entry order, types, sizes, chunk
    boundaries and digests. Names are normalized, a chunk's size is the
    effective one (0 in the TOC means "to the end of the file"), and an
    empty file's digest is ignored; offsets and compression may vary."""
    out = []
    last, last_size = None, 0
    for e in toc["entries"]:
        name = os.path.normpath("/" + e.get("name", "")).lstrip("/")
        if e["type"] == "chunk":
            name = last  # chunk names may be omitted or repeated
        else:
            last, last_size = name, e.get("size", 0)
        chunk_off = e.get("chunkOffset", 0)
        chunk_size = e.get("chunkSize", 0)
        if e["type"] in ("reg", "chunk") and last_size:
            chunk_size = chunk_size or last_size - chunk_off
        digest = e.get("digest", "") if e.get("size", 0) else ""
        link = e.get("linkName", "")
        if e["type"] == "hardlink":
            link = os.path.normpath("/" + link).lstrip("/")
        out.append((name, e["type"], e.get("size", 0), chunk_off, chunk_size, digest,
                    e.get("chunkDigest", ""), link))
    return out


# --- builders, memoized per session ---------------------------------------

def _key(*parts):
    return "-".join(str(p) for p in parts)


@pytest.fixture(scope="session")
def ref_blob(estargz_ref, tree, prefetch_list, blob_cache):
    def build(chunk, prefetch):
        k = _key("ref", chunk, prefetch)
        if k not in blob_cache:
            out = os.path.join(blob_cache["dir"], k + ".blob")
            cmd = [estargz_ref, "build"]
            if chunk:
                cmd += ["--chunk-size", str(chunk)]
            if prefetch:
                cmd += ["--prefetch", prefetch_list]
            p = run(cmd + [tree.tar, out])
            blob_cache[k] = (out, parse_json_output(p, "estargz-ref build"))
        return blob_cache[k]
    return build


@pytest.fixture(scope="session")
def hf_blob(holdfastctl, tree, prefetch_list, blob_cache):
    def build(chunk, prefetch, src=None, tag=""):
        k = _key("hf", chunk, prefetch, tag)
        if k not in blob_cache:
            out = os.path.join(blob_cache["dir"], k + ".blob")
            cmd = [holdfastctl, "convert"]
            if chunk:
                cmd += ["--chunk-size", str(chunk)]
            if prefetch:
                cmd += ["--prefetch", prefetch_list]
            p = run(cmd + [src or tree.tar, out, "--json"])
            info = parse_json_output(p, "holdfastctl convert --json")
            for field in ("toc_digest", "diff_id"):
                assert re.fullmatch(r"sha256:[0-9a-f]{64}", str(info.get(field))), \
                    "holdfastctl convert --json: bad or missing %s in %r" % (field, info)
            blob_cache[k] = (out, info)
        return blob_cache[k]
    return build


def ref_dump(estargz_ref, blob, toc_digest=None):
    cmd = [estargz_ref, "dump"]
    if toc_digest:
        cmd += ["--toc-digest", toc_digest]
    return treedump.parse_lines(run(cmd + [blob]).stdout)


def hf_inspect(holdfastctl, blob, toc_digest):
    p = run([holdfastctl, "inspect", "--json", "--toc-digest", toc_digest, blob])
    return treedump.parse_lines(p.stdout)


# --- the reference against the source tree (no holdfast needed) -----------

def test_source_dump_shape(tree):
    """The fixture covers what it claims to, and the tar carries xattrs."""
    d = {e["path"]: e for e in tree.dump}
    assert len(d) > 2500
    types = {e["type"] for e in tree.dump}
    assert types == {"dir", "reg", "symlink", "char", "block", "fifo"}
    assert d["wh/gone"]["type"] == "char" and d["wh/gone"]["uid"] == 1000
    assert "wh/.wh.x" not in d and "wh/x" in d
    assert d["wh/opaque"]["xattrs"]["trusted.overlay.opaque"] == "eQ=="
    assert d["rootgone"]["type"] == "char"
    assert d["hard/orig"]["nlink"] == 4 and d["links/other-dir"]["nlink"] == 4
    assert d["perm/suid"]["mode"] == 0o4755 and d["perm/sticky"]["mode"] == 0o1777
    assert d["perm/suid"]["mtime"] < 0 and d["perm/all"]["mtime"] > 2**32
    with tarfile.open(tree.tar) as t:
        m = t.getmember("./xattr/file")
        assert m.pax_headers.get("SCHILY.xattr.user.plain") == "value"
        assert "SCHILY.xattr.user.binary" in m.pax_headers


@chunk_params
@prefetch_params
def test_reference_roundtrip(estargz_ref, tree, ref_blob, chunk, prefetch):
    blob, info = ref_blob(chunk, prefetch)
    assert info["size"] == os.path.getsize(blob)
    assert info["blob_digest"] == "sha256:" + sha256_file(blob)
    assert info["diff_id"] == gunzip_sha256(blob)
    toc, toc_digest = read_toc(blob)
    assert info["toc_digest"] == toc_digest
    assert run([estargz_ref, "toc", blob]).stdout.decode().strip() == toc_digest
    assert_dump_equal(tree.dump, ref_dump(estargz_ref, blob, toc_digest),
                      "estargz-ref dump of the reference blob")
    names = [e["name"] for e in toc["entries"] if e["type"] != "chunk"]
    if prefetch:
        landmark = names.index(".prefetch.landmark")
        assert "./big/text-5m" in names[:landmark]
    else:
        assert names[0] == ".no.prefetch.landmark"


def test_reference_rejects_wrong_toc_digest(estargz_ref, ref_blob):
    blob, _ = ref_blob(None, False)
    p = run([estargz_ref, "dump", "--toc-digest", "sha256:" + "0" * 64, blob], check=False)
    assert p.returncode != 0 and p.stdout == b""


# --- holdfast reads reference blobs ----------------------------------------

@chunk_params
@prefetch_params
def test_holdfast_reads_reference(holdfastctl, tree, ref_blob, chunk, prefetch):
    blob, info = ref_blob(chunk, prefetch)
    assert_dump_equal(tree.dump, hf_inspect(holdfastctl, blob, info["toc_digest"]),
                      "holdfastctl inspect of the reference blob")


@pytest.mark.parametrize("which", ["large", "empty", "hardlink", "unicode"])
def test_holdfast_cat_reference(holdfastctl, tree, ref_blob, which):
    blob, _ = ref_blob(64 * KiB, True)
    rel = tree.notable[which]
    p = run([holdfastctl, "cat", blob, rel])
    with open(tree.path(rel), "rb") as f:
        want = f.read()
    assert len(p.stdout) == len(want)
    assert p.stdout == want, "holdfastctl cat %s returned different content" % rel


# --- the reference reads holdfast blobs ------------------------------------

@chunk_params
@prefetch_params
def test_reference_reads_holdfast(estargz_ref, tree, hf_blob, ref_blob, chunk, prefetch):
    blob, info = hf_blob(chunk, prefetch)
    toc, toc_digest = read_toc(blob)
    assert info["toc_digest"] == toc_digest, "convert --json toc_digest is not the TOC JSON's digest"
    assert run([estargz_ref, "toc", blob]).stdout.decode().strip() == info["toc_digest"]
    assert info["diff_id"] == gunzip_sha256(blob), "convert --json diff_id is not sha256 of zcat BLOB"
    assert_dump_equal(tree.dump, ref_dump(estargz_ref, blob, info["toc_digest"]),
                      "estargz-ref dump of the holdfast blob")


@chunk_params
@prefetch_params
def test_holdfast_toc_layout_matches_reference(hf_blob, ref_blob, chunk, prefetch):
    """Same entry order (prefetch files, landmark, rest), same chunking."""
    hf_toc, _ = read_toc(hf_blob(chunk, prefetch)[0])
    ref_toc, _ = read_toc(ref_blob(chunk, prefetch)[0])
    hf, ref = toc_layout(hf_toc), toc_layout(ref_toc)
    for i, (a, b) in enumerate(zip(ref, hf)):
        assert a == b, "TOC entry %d differs:\n  reference %r\n  holdfast  %r" % (i, a, b)
    assert len(hf) == len(ref)


@chunk_params
@prefetch_params
def test_holdfast_reads_own(holdfastctl, tree, hf_blob, chunk, prefetch):
    blob, info = hf_blob(chunk, prefetch)
    assert_dump_equal(tree.dump, hf_inspect(holdfastctl, blob, info["toc_digest"]),
                      "holdfastctl inspect of its own blob")


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_convert_compressed_input(estargz_ref, holdfastctl, tree, hf_blob, session_tmp, codec):
    src = os.path.join(session_tmp, "layer.tar." + codec)
    if not os.path.exists(src):
        with open(src, "wb") as out:
            run_cmd = [codec, "-c", "-1", tree.tar] if codec == "gzip" else \
                      ["zstd", "-q", "-c", "-1", tree.tar]
            subprocess.run(run_cmd, stdout=out, check=True)
    blob, info = hf_blob(256 * KiB, False, src=src, tag=codec)
    assert info["diff_id"] == gunzip_sha256(blob)
    assert_dump_equal(tree.dump, ref_dump(estargz_ref, blob, info["toc_digest"]),
                      "estargz-ref dump of the holdfast blob from a %s tar" % codec)
    plain, plain_info = hf_blob(256 * KiB, False, tag="plain")
    assert info["toc_digest"] == plain_info["toc_digest"], \
        "converting the %s-compressed tar gave another TOC than the plain tar" % codec


# --- implicit directories ---------------------------------------------------

def _implicit_tar(path):
    """A tar without directory entries (and mixed name prefixes)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data, mtime in [("a/b/c.txt", b"abc", 1_600_000_000),
                                  ("./a/d.txt", b"", 1_600_000_001),
                                  ("x/y/z/.wh.w", b"", 1_600_000_002)]:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode, ti.uid, ti.gid = len(data), mtime, 0o640, 5, 6
            t.addfile(ti, io.BytesIO(data))


IMPLICIT_DUMP = [
    {"path": "a", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0, "size": 0, "mtime": 0,
     "link": "", "devmajor": 0, "devminor": 0, "xattrs": {}, "sha256": "", "nlink": 0},
    {"path": "a/b", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0, "size": 0, "mtime": 0,
     "link": "", "devmajor": 0, "devminor": 0, "xattrs": {}, "sha256": "", "nlink": 0},
    {"path": "a/b/c.txt", "type": "reg", "mode": 0o640, "uid": 5, "gid": 6, "size": 3,
     "mtime": 1_600_000_000, "link": "", "devmajor": 0, "devminor": 0, "xattrs": {},
     "sha256": hashlib.sha256(b"abc").hexdigest(), "nlink": 1},
    {"path": "a/d.txt", "type": "reg", "mode": 0o640, "uid": 5, "gid": 6, "size": 0,
     "mtime": 1_600_000_001, "link": "", "devmajor": 0, "devminor": 0, "xattrs": {},
     "sha256": hashlib.sha256(b"").hexdigest(), "nlink": 1},
    {"path": "x", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0, "size": 0, "mtime": 0,
     "link": "", "devmajor": 0, "devminor": 0, "xattrs": {}, "sha256": "", "nlink": 0},
    {"path": "x/y", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0, "size": 0, "mtime": 0,
     "link": "", "devmajor": 0, "devminor": 0, "xattrs": {}, "sha256": "", "nlink": 0},
    {"path": "x/y/z", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0, "size": 0, "mtime": 0,
     "link": "", "devmajor": 0, "devminor": 0, "xattrs": {}, "sha256": "", "nlink": 0},
    {"path": "x/y/z/w", "type": "char", "mode": 0, "uid": 5, "gid": 6, "size": 0,
     "mtime": 1_600_000_002, "link": "", "devmajor": 0, "devminor": 0, "xattrs": {},
     "sha256": "", "nlink": 1},
]


@pytest.fixture(scope="module")
def implicit_blobs(estargz_ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("implicit")
    tar = str(d / "implicit.tar")
    _implicit_tar(tar)
    blob = str(d / "ref.blob")
    info = parse_json_output(run([estargz_ref, "build", tar, blob]), "estargz-ref build")
    return tar, blob, info


def test_reference_implicit_dirs(estargz_ref, implicit_blobs):
    _, blob, info = implicit_blobs
    assert_dump_equal(IMPLICIT_DUMP, ref_dump(estargz_ref, blob, info["toc_digest"]),
                      "estargz-ref dump of a tar without directory entries")


def test_holdfast_implicit_dirs(estargz_ref, holdfastctl, implicit_blobs, tmp_path):
    tar, blob, info = implicit_blobs
    assert_dump_equal(IMPLICIT_DUMP, hf_inspect(holdfastctl, blob, info["toc_digest"]),
                      "holdfastctl inspect of a reference blob without directory entries")
    own = str(tmp_path / "hf.blob")
    hinfo = parse_json_output(run([holdfastctl, "convert", tar, own, "--json"]),
                              "holdfastctl convert --json")
    assert_dump_equal(IMPLICIT_DUMP, ref_dump(estargz_ref, own, hinfo["toc_digest"]),
                      "estargz-ref dump of a holdfast blob without directory entries")
    assert_dump_equal(IMPLICIT_DUMP, hf_inspect(holdfastctl, own, hinfo["toc_digest"]),
                      "holdfastctl inspect of its own blob without directory entries")


# --- corruption and wrong digests ------------------------------------------

def _corrupt_copy(src, dst, target):
    """Copy blob `src` to `dst` with one byte flipped in the middle of the
    compressed data of the second chunk of `target` (or its only chunk)."""
    toc, toc_digest = read_toc(src)
    ents = toc["entries"]
    offsets = sorted(e["offset"] for e in ents if e.get("offset"))
    chunks = []
    last = None
    for e in ents:
        if e["type"] != "chunk":
            last = os.path.normpath("/" + e["name"]).lstrip("/")
        if last == target and e["type"] in ("reg", "chunk") and e.get("offset"):
            chunks.append(e)
    assert chunks, "no chunk of %s in the TOC" % target
    c = chunks[1] if len(chunks) > 1 else chunks[0]
    start = c["offset"]
    end = next(o for o in offsets if o > start)
    # Skip the gzip member's own 10-byte header; hit the deflate data.
    pos = start + 10 + (end - start - 10) // 2
    with open(src, "rb") as f:
        data = bytearray(f.read())
    data[pos] ^= 0x55
    with open(dst, "wb") as f:
        f.write(data)
    return toc_digest, c.get("chunkOffset", 0)


@pytest.fixture(scope="module")
def corrupt_blob(ref_blob, tree, tmp_path_factory):
    blob, _ = ref_blob(64 * KiB, True)
    dst = str(tmp_path_factory.mktemp("corrupt") / "corrupt.blob")
    toc_digest, _ = _corrupt_copy(blob, dst, tree.notable["large"])
    return dst, toc_digest


def test_reference_rejects_corrupt_chunk(estargz_ref, corrupt_blob):
    blob, toc_digest = corrupt_blob
    p = run([estargz_ref, "dump", "--toc-digest", toc_digest, blob], check=False)
    assert p.returncode != 0, "the corruption went unnoticed by the reference too"


def test_holdfast_rejects_corrupt_chunk(holdfastctl, tree, corrupt_blob):
    blob, toc_digest = corrupt_blob
    p = run([holdfastctl, "inspect", "--json", "--toc-digest", toc_digest, blob], check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0, "holdfastctl inspect accepted a corrupted chunk"
    assert CORRUPTION_WORDS.search(err), "error does not say what is wrong: %r" % err
    # Whatever was printed before the failure must be right.
    expected = {e["path"]: e for e in tree.dump}
    for line in p.stdout.decode(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue  # a cut-off last line
        assert e == expected.get(e.get("path")), "wrong entry printed: %s" % line


def test_holdfast_cat_rejects_corrupt_chunk(holdfastctl, tree, corrupt_blob):
    blob, _ = corrupt_blob
    rel = tree.notable["large"]
    p = run([holdfastctl, "cat", blob, rel], check=False)
    assert p.returncode != 0, "holdfastctl cat returned a corrupted chunk"
    with open(tree.path(rel), "rb") as f:
        want = f.read()
    assert want.startswith(p.stdout), "holdfastctl cat printed wrong bytes before failing"


def test_holdfast_rejects_wrong_toc_digest(holdfastctl, ref_blob):
    blob, info = ref_blob(None, False)
    wrong = "sha256:" + hashlib.sha256(b"not the toc").hexdigest()
    p = run([holdfastctl, "inspect", "--json", "--toc-digest", wrong, blob], check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0, "holdfastctl inspect accepted a wrong TOC digest"
    assert p.stdout == b"", "holdfastctl printed entries from an unverified TOC"
    assert re.search(r"toc|digest", err, re.I), "unclear error for a wrong TOC digest: %r" % err
