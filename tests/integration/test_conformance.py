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
import struct
import subprocess
import tarfile
import zlib

import pytest

import treedump
from conftest import MiB, KiB, make_tar, parse_json_output, sha256_file

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
            # The compression level does not change what a reader sees;
            # level 1 keeps the suite fast. The default-chunk build without a
            # prefetch list keeps the library default (best compression), as real blobs have it.
            if chunk or prefetch:
                cmd += ["--level", "1"]
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
                cmd += ["--prefetch-list", prefetch_list]
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
def test_holdfast_toc_fields_match_reference(hf_blob, ref_blob, chunk, prefetch):
    """Stricter than the layout: every TOC field but the blob offsets is the
    one the reference writes (names as in the tar, modtime strings, mode,
    owner names, xattrs, omitted zero fields)."""
    hf_toc, _ = read_toc(hf_blob(chunk, prefetch)[0])
    ref_toc, _ = read_toc(ref_blob(chunk, prefetch)[0])
    assert hf_toc.get("version") == ref_toc.get("version")
    strip = lambda e: {k: v for k, v in e.items() if k != "offset"}  # noqa: E731
    for i, (a, b) in enumerate(zip(ref_toc["entries"], hf_toc["entries"])):
        assert strip(a) == strip(b), "TOC entry %d differs:\n  reference %r\n  holdfast  %r" % (i, a, b)
    assert len(hf_toc["entries"]) == len(ref_toc["entries"])


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


def test_convert_estargz_input(estargz_ref, tree, hf_blob, ref_blob):
    """Converting a layer that already is eStargz (gzip members, a TOC entry
    and a landmark inside) gives the same files and one fresh landmark."""
    src, _ = ref_blob(1 * MiB, True)
    blob, info = hf_blob(1 * MiB, False, src=src, tag="reconvert")
    names = [os.path.normpath("/" + e["name"]).lstrip("/")
             for e in read_toc(blob)[0]["entries"] if e["type"] != "chunk"]
    assert names.count(".no.prefetch.landmark") == 1 and names[0] == ".no.prefetch.landmark"
    assert ".prefetch.landmark" not in names and "stargz.index.json" not in names
    assert_dump_equal(tree.dump, ref_dump(estargz_ref, blob, info["toc_digest"]),
                      "estargz-ref dump of holdfast's conversion of a reference blob")


# GNU tar in PAX format (which --xattrs implies) records sub-second mtimes
# as "mtime=SECONDS.FRACTION"; the reference rounds them to the nearest
# second (halves up) when it writes the TOC.
FRACTIONAL_MTIMES = {
    "up-6": 1_600_000_000_600_000_000,
    "down-4999": 1_600_000_000_499_999_999,
    "half": 1_600_000_000_500_000_000,
    "pre-epoch-half": -1_500_000_000,
    "pre-epoch-7": -2_700_000_000,
    "just-past-epoch": 400_000_000,
}


def test_fractional_mtimes(estargz_ref, holdfastctl, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, ns in FRACTIONAL_MTIMES.items():
        (src / name).write_bytes(name.encode())
        os.utime(src / name, ns=(ns, ns))
    os.utime(src, ns=(0, 0))
    tar = str(tmp_path / "frac.tar")
    make_tar(str(src), tar)
    expected = treedump.dump_tree(str(src))
    ref = str(tmp_path / "ref.blob")
    info = parse_json_output(run([estargz_ref, "build", tar, ref]), "estargz-ref build")
    assert_dump_equal(expected, ref_dump(estargz_ref, ref, info["toc_digest"]),
                      "estargz-ref dump of a tar with sub-second mtimes")
    assert_dump_equal(expected, hf_inspect(holdfastctl, ref, info["toc_digest"]),
                      "holdfastctl inspect of a reference blob with sub-second mtimes")
    own = str(tmp_path / "hf.blob")
    hinfo = parse_json_output(run([holdfastctl, "convert", tar, own, "--json"]),
                              "holdfastctl convert --json")
    assert_dump_equal(expected, ref_dump(estargz_ref, own, hinfo["toc_digest"]),
                      "estargz-ref dump of the holdfast blob of a tar with sub-second mtimes")


# --- a hand-made tar with what GNU tar never writes ------------------------

def _odd_tar(path):
    """Entries without parent directories, a directory entry after its
    child, "./"-prefixed and bare names, a hardlink, a whiteout hidden by an
    implicit directory, and a path stored twice (the later one wins)."""
    def reg(name, data, mtime, mode=0o640, uid=5, gid=6):
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.uid, ti.gid = len(data), mtime, mode, uid, gid
        return ti, io.BytesIO(data)

    def special(name, typ, mtime, mode, uid=5, gid=6, linkname=""):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mtime, ti.mode, ti.uid, ti.gid, ti.linkname = typ, mtime, mode, uid, gid, linkname
        return ti, None

    entries = [
        reg("a/b/c.txt", b"abc", 1_600_000_000),
        reg("./a/d.txt", b"", 1_600_000_001),
        reg("x/y/z/.wh.w", b"", 1_600_000_002),
        reg("late/child.txt", b"child", 1_600_000_003),
        special("late/", tarfile.DIRTYPE, 1_500_000_000, 0o700, uid=7, gid=8),
        reg("./.wh.a", b"", 1_600_000_004),
        special("a/b/hl", tarfile.LNKTYPE, 1_600_000_000, 0o640, linkname="./a/b/c.txt"),
        reg("dup.txt", b"first", 1_600_000_006),
        reg("dup.txt", b"second!", 1_600_000_007, mode=0o600),
    ]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            t.addfile(ti, data)


def _dump_entry(path, typ, mode, uid=0, gid=0, mtime=0, data=None, nlink=None):
    return {"path": path, "type": typ, "mode": mode, "uid": uid, "gid": gid,
            "size": len(data) if data is not None else 0, "mtime": mtime, "link": "",
            "devmajor": 0, "devminor": 0, "xattrs": {},
            "sha256": hashlib.sha256(data).hexdigest() if data is not None else "",
            "nlink": (0 if typ == "dir" else 1) if nlink is None else nlink}


ODD_DUMP = [
    _dump_entry("a", "dir", 0o755),
    _dump_entry("a/b", "dir", 0o755),
    _dump_entry("a/b/c.txt", "reg", 0o640, 5, 6, 1_600_000_000, b"abc", nlink=2),
    _dump_entry("a/b/hl", "reg", 0o640, 5, 6, 1_600_000_000, b"abc", nlink=2),
    _dump_entry("a/d.txt", "reg", 0o640, 5, 6, 1_600_000_001, b""),
    _dump_entry("dup.txt", "reg", 0o600, 5, 6, 1_600_000_007, b"second!"),
    _dump_entry("late", "dir", 0o700, 7, 8, 1_500_000_000),
    _dump_entry("late/child.txt", "reg", 0o640, 5, 6, 1_600_000_003, b"child"),
    _dump_entry("x", "dir", 0o755),
    _dump_entry("x/y", "dir", 0o755),
    _dump_entry("x/y/z", "dir", 0o755),
    _dump_entry("x/y/z/w", "char", 0, 5, 6, 1_600_000_002),
]


@pytest.fixture(scope="module")
def odd_blobs(estargz_ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("odd")
    tar = str(d / "odd.tar")
    _odd_tar(tar)
    blob = str(d / "ref.blob")
    info = parse_json_output(run([estargz_ref, "build", tar, blob]), "estargz-ref build")
    return tar, blob, info


def test_reference_odd_tar(estargz_ref, odd_blobs):
    _, blob, info = odd_blobs
    assert_dump_equal(ODD_DUMP, ref_dump(estargz_ref, blob, info["toc_digest"]),
                      "estargz-ref dump of the hand-made tar")


def test_holdfast_reads_reference_odd_tar(holdfastctl, odd_blobs):
    _, blob, info = odd_blobs
    assert_dump_equal(ODD_DUMP, hf_inspect(holdfastctl, blob, info["toc_digest"]),
                      "holdfastctl inspect of the reference blob of the hand-made tar")


def test_holdfast_converts_odd_tar(estargz_ref, holdfastctl, odd_blobs, tmp_path):
    tar, _, _ = odd_blobs
    own = str(tmp_path / "hf.blob")
    info = parse_json_output(run([holdfastctl, "convert", tar, own, "--json"]),
                             "holdfastctl convert --json")
    assert_dump_equal(ODD_DUMP, ref_dump(estargz_ref, own, info["toc_digest"]),
                      "estargz-ref dump of the holdfast blob of the hand-made tar")
    assert_dump_equal(ODD_DUMP, hf_inspect(holdfastctl, own, info["toc_digest"]),
                      "holdfastctl inspect of its own blob of the hand-made tar")


# Names that are not clean relative paths. The reference reads every TOC
# name as path.Clean("/" + name) relative to the root, so it shows these
# under their cleaned path. holdfast refuses such a TOC, naming the entry and
# the problem (a TOC from a registry with "../up/f" is malformed or
# hostile), and its converter writes the cleaned name instead, except for
# "..", which it refuses too.
UNCLEAN_NAMES = [
    ("absolute", "/abs/f", ["abs", "abs/f"], "absolute path"),
    ("double-slash", "dd//f", ["dd", "dd/f"], "empty path component"),
    ("dot-component", "dc/./f", ["dc", "dc/f"], "'.' path component"),
    ("dotdot-leading", "../up/f", ["up", "up/f"], "'..' path component"),
    ("dotdot-inside", "in/../out/f", ["out", "out/f"], "'..' path component"),
]


@pytest.mark.parametrize("name,paths,why", [(n, p, w) for _, n, p, w in UNCLEAN_NAMES],
                         ids=[i for i, _, _, _ in UNCLEAN_NAMES])
def test_unclean_names(estargz_ref, holdfastctl, tmp_path, name, paths, why):
    tar = str(tmp_path / "unclean.tar")
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid = 4, 1_600_000_000, 0o644, 0, 0
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(ti, io.BytesIO(b"data"))
    expected = [_dump_entry(p, "dir", 0o755) for p in paths[:-1]]
    expected.append(_dump_entry(paths[-1], "reg", 0o644, 0, 0, 1_600_000_000, b"data"))
    ref = str(tmp_path / "ref.blob")
    info = parse_json_output(run([estargz_ref, "build", tar, ref]), "estargz-ref build")
    assert_dump_equal(expected, ref_dump(estargz_ref, ref, info["toc_digest"]),
                      "estargz-ref dump of TOC name %r" % name)

    p = subprocess.run([holdfastctl, "inspect", "--json", "--toc-digest", info["toc_digest"], ref],
                       capture_output=True, text=True)
    assert p.returncode == 3, "holdfastctl inspect accepted TOC name %r: %s" % (name, p.stdout)
    assert p.stdout == ""
    assert why in p.stderr and name in p.stderr, p.stderr

    own = str(tmp_path / "hf.blob")
    c = subprocess.run([holdfastctl, "convert", tar, own, "--json"], capture_output=True)
    if ".." in name.split("/"):
        assert c.returncode == 3 and "'..' path component" in c.stderr.decode(), c.stderr
        assert not os.path.exists(own)
        return
    hinfo = parse_json_output(c, "holdfastctl convert --json")
    assert_dump_equal(expected, ref_dump(estargz_ref, own, hinfo["toc_digest"]),
                      "estargz-ref dump of the holdfast blob with tar name %r" % name)
    assert_dump_equal(expected, hf_inspect(holdfastctl, own, hinfo["toc_digest"]),
                      "holdfastctl inspect of its own blob with tar name %r" % name)


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


def _corrupt_keep_gzip_valid(src, dst, target):
    """Copy blob `src` to `dst` changing one byte of the content of a chunk
    of `target` while keeping that chunk's gzip member valid (its CRC32 is
    recomputed), so that only the TOC's chunkDigest can tell. Works on
    incompressible data, which deflate stores verbatim."""
    toc, toc_digest = read_toc(src)
    offsets = sorted(e["offset"] for e in toc["entries"] if e.get("offset"))
    last, chunks = None, []
    for e in toc["entries"]:
        if e["type"] != "chunk":
            last = os.path.normpath("/" + e["name"]).lstrip("/")
        if last == target and e["type"] in ("reg", "chunk") and e.get("offset"):
            chunks.append(e)
    c = chunks[len(chunks) // 2]
    start = c["offset"]
    end = next(o for o in offsets if o > start)
    with open(src, "rb") as f:
        data = bytearray(f.read())
    member = bytes(data[start:end])
    assert member[:3] == b"\x1f\x8b\x08" and member[3] == 0, "unexpected gzip header flags"
    deflate = member[10:-8]
    want = zlib.decompress(deflate, -15)
    for pos in range(len(deflate) // 2, len(deflate) - 16, 97):
        bad = bytearray(deflate)
        bad[pos] ^= 0x01
        try:
            got = zlib.decompress(bytes(bad), -15)
        except zlib.error:
            continue
        if len(got) == len(want) and got != want:
            break
    else:
        raise AssertionError("found no byte to flip in a stored deflate block")
    trailer = struct.pack("<II", zlib.crc32(got), len(got) & 0xffffffff)
    data[start + 10:end] = bytes(bad) + trailer
    assert gzip.decompress(bytes(data[start:end])) == got
    with open(dst, "wb") as f:
        f.write(data)
    return toc_digest


@pytest.fixture(scope="module")
def digest_corrupt_blob(ref_blob, tree, tmp_path_factory):
    blob, _ = ref_blob(64 * KiB, False)
    dst = str(tmp_path_factory.mktemp("corrupt") / "digest-corrupt.blob")
    return dst, _corrupt_keep_gzip_valid(blob, dst, "big/4m"), "big/4m"


def test_reference_rejects_chunk_digest_mismatch(estargz_ref, digest_corrupt_blob):
    blob, toc_digest, _ = digest_corrupt_blob
    p = run([estargz_ref, "dump", "--toc-digest", toc_digest, blob], check=False)
    assert p.returncode != 0, "the corruption went unnoticed by the reference too"
    assert b"digest" in p.stderr


def test_holdfast_rejects_chunk_digest_mismatch(holdfastctl, tree, digest_corrupt_blob):
    """Valid gzip, wrong content: only the chunk digest can catch it."""
    blob, toc_digest, rel = digest_corrupt_blob
    p = run([holdfastctl, "inspect", "--json", "--toc-digest", toc_digest, blob], check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0, "holdfastctl inspect accepted a chunk that does not match its digest"
    assert re.search(r"digest|mismatch|verif", err, re.I), "error does not name the digest: %r" % err
    expected = {e["path"]: e for e in tree.dump}
    for line in p.stdout.decode(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        assert e == expected.get(e.get("path")), "wrong entry printed: %s" % line
    p = run([holdfastctl, "cat", "--toc-digest", toc_digest, blob, rel], check=False)
    assert p.returncode != 0, "holdfastctl cat returned a chunk that does not match its digest"
    with open(tree.path(rel), "rb") as f:
        assert f.read().startswith(p.stdout), "holdfastctl cat printed wrong bytes before failing"


def test_holdfast_rejects_wrong_toc_digest(holdfastctl, ref_blob):
    blob, info = ref_blob(None, False)
    wrong = "sha256:" + hashlib.sha256(b"not the toc").hexdigest()
    p = run([holdfastctl, "inspect", "--json", "--toc-digest", wrong, blob], check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0, "holdfastctl inspect accepted a wrong TOC digest"
    assert p.stdout == b"", "holdfastctl printed entries from an unverified TOC"
    assert re.search(r"toc|digest", err, re.I), "unclear error for a wrong TOC digest: %r" % err
