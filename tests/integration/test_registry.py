"""Registry layers through the whole path: Debian's docker-registry on
127.0.0.1, the fault proxy in front of it (which also counts what is
fetched), holdfast-supervisor and its worker, holdfastctl. Each test
checks the bytes a reader gets against the source tree.

Run as root from the build dir (meson sets the binaries' paths):
  /usr/bin/python3 -m pytest tests/integration/test_registry.py
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import registryutil as ru  # noqa: E402
import supervisorutil as su  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from test_supervisor import binaries, layer, sups, workdir  # noqa: E402,F401

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def registry(binaries):  # noqa: F811
    with ru.Registry() as r:
        yield r


@pytest.fixture(scope="module")
def proxy(registry):
    with FaultProxy(registry.url) as p:
        yield p


class Pushed:
    def __init__(self, ref, toc, size, blob, diff_id):
        self.ref = ref          # HOST/REPO@sha256:... through the proxy
        self.toc = toc
        self.diff_id = diff_id
        self.size = size
        self.blob = blob


@pytest.fixture(scope="module")
def image(layer, proxy, workdir):  # noqa: F811
    """The test layer (1 MiB chunks, a prefetch landmark after d00/f000)
    converted by holdfastctl and pushed with its TOC digest annotation."""
    tar = os.path.join(workdir, "layer.tar")
    plist = os.path.join(workdir, "prefetch.txt")
    with open(plist, "w") as f:
        f.write("d00/f000\nbig/b0\n")
    blob = os.path.join(workdir, "registry-layer.esgz")
    p = subprocess.run([su.holdfastctl_path(), "convert", "--json", "--chunk-size", "1M", "--prefetch-list", plist,
                        tar, blob], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    info = json.loads(p.stdout)
    with open(blob, "rb") as f:
        data = f.read()
    out = ru.push_image(proxy.url, "app", "v1", [ru.Layer(data, annotations={ru.TOC_DIGEST_ANNOTATION: info["toc_digest"]},
                                                          diff_id=info["diff_id"])])
    digest = out["layers"][0]["digest"]
    return Pushed("%s/app@%s" % (proxy.host, digest), info["toc_digest"], len(data), blob, info["diff_id"])


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _check_all(mp, layer):  # noqa: F811
    for rel, (sha, size) in layer.files.items():
        assert os.path.getsize(os.path.join(mp, rel)) == size, rel
        assert _sha(os.path.join(mp, rel)) == sha, rel
    for rel, target in layer.links.items():
        assert os.readlink(os.path.join(mp, rel)) == target, rel
    for rel, names in layer.dirs.items():
        assert sorted(os.listdir(os.path.join(mp, rel))) == names, rel


def _drop_page_cache():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _range_bytes(stats):
    total = 0
    for r in stats["ranges"]:
        a, b = r["range"].split("=")[1].split("-")
        total += int(b) if a == "" else int(b) - int(a) + 1  # bytes=-N: a blob's last N
    return total


def _reads_only(monkeypatch):
    """For a test of what reads and the prefetch fetch: the worker runs
    without the background fetch (on by default), which would fetch the
    rest of the layer meanwhile."""
    monkeypatch.setenv("HOLDFAST_BACKGROUND_FETCH", "0")


def test_lazy_mount_reads_the_right_bytes_and_fetches_little(sups, layer, image, proxy, monkeypatch):  # noqa: F811
    """Reading one small file fetches the TOC and that file's chunk, not the
    layer; then every file, link and directory is right; a restarted
    worker and a cold page cache fetch nothing again (the index is in the
    store, the chunks in the cache)."""
    _reads_only(monkeypatch)
    s = sups.start(["--no-standby"])
    proxy.stats(reset=True)
    mp = s.mount(image.ref + "#toc=" + image.toc)
    rel = "d05/f003"
    assert _sha(os.path.join(mp, rel)) == layer.files[rel][0]
    first = proxy.stats()
    assert first["bytes_sent"] < image.size / 4, (first["bytes_sent"], image.size)
    _check_all(mp, layer)
    whole = proxy.stats()
    print("\nregistry layer of %d B, %d files: reading one small file fetched %d B in %d range request(s); "
          "reading every file: %d range requests, %d B" % (
              image.size, len(layer.files), first["bytes_sent"], first["requests"].get("range_get", 0),
              whole["requests"].get("range_get", 0), _range_bytes(whole)))
    # neighbours and readahead: a few dozen requests, not one per file
    assert whole["requests"].get("range_get", 0) < 60, whole["requests"]
    assert _range_bytes(whole) <= image.size * 1.05, (_range_bytes(whole), image.size)

    proxy.stats(reset=True)
    s.kill_worker()
    s.wait_served()
    _drop_page_cache()
    _check_all(mp, layer)
    after = proxy.stats()
    assert after["requests"].get("range_get", 0) == 0 and after["requests"].get("head", 0) == 0, after["requests"]


def test_prefetch_fetches_the_landmarked_files_at_mount(sups, layer, image, proxy, monkeypatch):  # noqa: F811
    """Files before .prefetch.landmark arrive in the cache right after the
    mount, in one large request, and reading them fetches nothing."""
    _reads_only(monkeypatch)
    s = sups.start(["--no-standby"])
    proxy.stats(reset=True)
    mp = s.mount(image.ref)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        st = proxy.stats()
        if any(_range_bytes({"ranges": [r]}) > 512 * 1024 for r in st["ranges"]):
            break
        time.sleep(0.05)
    time.sleep(0.5)
    before = proxy.stats()["requests"].get("range_get", 0)
    for rel in ("d00/f000", "big/b0"):
        assert _sha(os.path.join(mp, rel)) == layer.files[rel][0], rel
    assert proxy.stats()["requests"].get("range_get", 0) == before, "a prefetched file was fetched again"


def test_corrupt_bytes_are_never_served(sups, layer, image, proxy):  # noqa: F811
    """A registry that flips bytes: the reader gets EIO, never the bytes;
    once it stops, the same reads succeed with the right bytes."""
    s = sups.start(["--no-standby"])
    mp = s.mount(image.ref)
    os.listdir(mp)  # the TOC, unharmed
    proxy.set_faults({"kind": "corrupt", "range_only": True, "nbytes": 16})
    try:
        rel = "big/b2"
        with pytest.raises(OSError) as e:
            with open(os.path.join(mp, rel), "rb") as f:
                f.read()
        assert e.value.errno == 5, e.value
    finally:
        proxy.clear_faults()
    _drop_page_cache()
    assert _sha(os.path.join(mp, rel)) == layer.files[rel][0]


def test_worker_killed_while_fetching(sups, layer, image, proxy):  # noqa: F811
    """A worker killed while a reader's chunk is in flight (the registry
    stalls): the next worker resends the request and the reader gets the
    right bytes, no error; no torn chunk is left in the cache."""
    s = sups.start()
    mp = s.mount(image.ref)
    os.listdir(mp)
    s.wait_standby()
    proxy.set_faults({"kind": "stall", "seconds": 2, "range_only": True, "count": 1})
    proxy.stats(reset=True)
    result = {}
    rel = "big/b1"

    def reader():
        try:
            result["sha"] = _sha(os.path.join(mp, rel))
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not proxy.stats()["faults"].get("stall") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.stats()["faults"].get("stall"), "the read never reached the registry"
    s.kill_worker()
    t.join(30)
    assert not t.is_alive(), "the reader is stuck"
    assert result.get("sha") == layer.files[rel][0], result
    proxy.clear_faults()
    _drop_page_cache()
    _check_all(mp, layer)


def test_bad_layers_are_refused_clearly(sups, image, proxy, registry):
    """A TOC digest that does not match, a blob that is not eStargz, a
    digest the registry does not have: the mount fails with a message that
    says so, and nothing stays mounted."""
    s = sups.start(["--no-standby"])
    wrong = "sha256:" + "0" * 64
    mp = s.new_mountpoint()
    rc, out, err = s.ctl("mount", image.ref + "#toc=" + wrong, mp, check=False)
    assert rc != 0 and "digest" in err.lower(), (rc, out, err)
    assert not os.path.ismount(mp)

    plain = ru.push_image(proxy.url, "plain", "v1", [ru.Layer(ru.tar_gz({"hello.txt": b"hi\n"}))])
    ref = "%s/plain@%s" % (proxy.host, plain["layers"][0]["digest"])
    rc, out, err = s.ctl("mount", ref, mp, check=False)
    assert rc != 0 and ("estargz" in err.lower() or "footer" in err.lower() or "toc" in err.lower()), (rc, out, err)
    assert not os.path.ismount(mp)

    rc, out, err = s.ctl("mount", "%s/app@sha256:%s" % (proxy.host, "1" * 64), mp, check=False)
    assert rc != 0 and ("404" in err or "not found" in err.lower() or "unknown" in err.lower()), (rc, out, err)
    assert not os.path.ismount(mp)
    assert s.status()["mounts"] == []


def test_image_mount_merges_the_layers(sups, layer, image, proxy, workdir):  # noqa: F811
    """holdfastctl image mount: a two-layer image by tag, the upper layer
    replacing one file and deleting another (a whiteout); the merged tree
    at TARGET is what containerd would give; image umount removes it all."""
    s = sups.start(["--no-standby"])
    upper_src = os.path.join(workdir, "upper")
    os.makedirs(os.path.join(upper_src, "d00"), exist_ok=True)
    with open(os.path.join(upper_src, "d00", "f000"), "wb") as f:
        f.write(b"replaced by the upper layer\n")
    open(os.path.join(upper_src, "d00", ".wh.f001"), "wb").close()
    tar = os.path.join(workdir, "upper.tar")
    subprocess.run(["tar", "--numeric-owner", "-C", upper_src, "-cf", tar, "."], check=True)
    blob = os.path.join(workdir, "upper.esgz")
    info = json.loads(subprocess.run([su.holdfastctl_path(), "convert", "--json", tar, blob], check=True,
                                     stdout=subprocess.PIPE).stdout)
    with open(image.blob, "rb") as f:
        lower = f.read()
    with open(blob, "rb") as f:
        upper = f.read()
    ru.push_image(proxy.url, "stack", "v2", [
        ru.Layer(lower, annotations={ru.TOC_DIGEST_ANNOTATION: image.toc}, diff_id=image.diff_id),
        ru.Layer(upper, annotations={ru.TOC_DIGEST_ANNOTATION: info["toc_digest"]}, diff_id=info["diff_id"])])
    target = s.new_mountpoint()
    rc, out, err = s.ctl("image", "mount", "%s/stack:v2" % proxy.host, target)
    assert "2 layers" in out, (out, err)
    try:
        with open(os.path.join(target, "d00", "f000"), "rb") as f:
            assert f.read() == b"replaced by the upper layer\n"
        assert not os.path.exists(os.path.join(target, "d00", "f001"))
        for rel in ("d05/f003", "big/b1", "d11/f029"):
            assert _sha(os.path.join(target, rel)) == layer.files[rel][0], rel
        assert sorted(os.listdir(os.path.join(target, "d00"))) == sorted(
            n for n in layer.dirs["d00"] if n != "f001")
        assert len(s.status()["mounts"]) == 2
    finally:
        s.ctl("image", "umount", target)
    assert not os.path.ismount(target)
    assert s.status()["mounts"] == []


def _read_with_worker_stopped(s, path, timeout=10):
    """Reads path whole while the worker is SIGSTOPped: only passthrough
    (the kernel reading the cached file itself) can answer. Returns the
    sha256, or None if the read did not finish within timeout."""
    f = open(path, "rb")
    pid = s.status()["worker_pid"]
    _drop_page_cache()
    os.kill(pid, signal.SIGSTOP)
    result = {}

    def reader():
        try:
            result["sha"] = hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    os.kill(pid, signal.SIGCONT)
    t.join(30)
    f.close()
    return result.get("sha") if "error" not in result else result["error"]


def test_cached_files_are_read_with_passthrough(sups, layer, image, proxy):  # noqa: F811
    """A file whole in the chunk cache is opened with FUSE passthrough: its
    reads do not reach the worker (they finish while it is stopped). After
    the worker is killed, the next one reuses the backing ids: files kept
    open and new opens of the same inode read the right bytes (a second
    id for an inode in use would fail the open with EIO)."""
    s = sups.start()
    mp = s.mount(image.ref)
    rel = "big/b1"
    path = os.path.join(mp, rel)
    assert _sha(path) == layer.files[rel][0]          # now whole in the cache
    got = _read_with_worker_stopped(s, path)
    assert got == layer.files[rel][0], "not read with passthrough: %r" % (got,)
    kept = open(path, "rb")
    s.wait_standby()
    s.kill_worker()
    s.wait_served()
    _drop_page_cache()
    assert hashlib.sha256(kept.read()).hexdigest() == layer.files[rel][0]
    kept.close()
    assert _sha(path) == layer.files[rel][0]          # a new open, same inode
    # the inherited ids are used: passthrough again under the new worker
    deadline = time.monotonic() + 10
    while True:
        got = _read_with_worker_stopped(s, path, timeout=3)
        if got == layer.files[rel][0] or time.monotonic() > deadline:
            break
    assert got == layer.files[rel][0], "no passthrough after the takeover: %r" % (got,)


def test_a_file_open_while_it_becomes_cached_opens_again(sups, layer, image, proxy):  # noqa: F811
    """A file opened before it was in the cache (read through the worker)
    and kept open, as a running program keeps its binary: once its bytes
    are cached, more opens of it, also under the next worker, must not ask
    for passthrough (the kernel fails an open whose I/O mode differs from
    the inode's other opens with EIO: a container's second exec of its
    shell did)."""
    s = sups.start()
    mp = s.mount(image.ref)
    rel = next(r for r in sorted(layer.files) if r.startswith("d07/") and layer.files[r][1] > 1000)
    path = os.path.join(mp, rel)
    first = open(path, "rb")
    try:
        assert hashlib.sha256(first.read()).hexdigest() == layer.files[rel][0]   # now whole in the cache
        for _ in range(3):
            assert _sha(path) == layer.files[rel][0]
        s.wait_standby()
        s.kill_worker()
        s.wait_served()
        _drop_page_cache()
        assert _sha(path) == layer.files[rel][0]
        first.seek(0)
        assert hashlib.sha256(first.read()).hexdigest() == layer.files[rel][0]
    finally:
        first.close()
    assert _sha(path) == layer.files[rel][0]


def test_background_fetch_brings_the_whole_layer(sups, layer, image, proxy, monkeypatch):  # noqa: F811
    """By default (no HOLDFAST_BACKGROUND_FETCH), after the mount the whole
    layer arrives in the cache without a read; reading every file then
    fetches nothing."""
    monkeypatch.delenv("HOLDFAST_BACKGROUND_FETCH", raising=False)
    s = sups.start(["--no-standby"])
    proxy.stats(reset=True)
    mp = s.mount(image.ref)
    deadline = time.monotonic() + 60
    while _range_bytes(proxy.stats()) < image.size * 0.9 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _range_bytes(proxy.stats()) >= image.size * 0.9, proxy.stats()["requests"]
    _quiet_ranges(proxy)
    before = proxy.stats()["requests"].get("range_get", 0)
    _check_all(mp, layer)
    assert proxy.stats()["requests"].get("range_get", 0) == before
    assert _range_bytes(proxy.stats()) <= image.size * 1.05, (_range_bytes(proxy.stats()), image.size)


def _convert_tree(src, extra=()):
    """src as a tar (names sorted, so blob order is name order) converted
    by holdfastctl: (convert's JSON, the blob's bytes)."""
    tar = src + ".tar"
    subprocess.run(["tar", "--numeric-owner", "--sort=name", "-C", src, "-cf", tar, "."], check=True)
    blob = src + ".esgz"
    p = subprocess.run([su.holdfastctl_path(), "convert", "--json"] + list(extra) + [tar, blob],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    with open(blob, "rb") as f:
        return json.loads(p.stdout), f.read()


def _start_layer(workdir, name, prefetch):
    """A layer with /etc/passwd, /etc/group and a 3 MiB incompressible
    file, converted with `prefetch` as its prefetch list (None: none, so
    .no.prefetch.landmark)."""
    rng = random.Random(name)
    src = os.path.join(workdir, name)
    files = {"etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n" * 3, "etc/group": b"root:x:0:\n" * 5,
             "usr/bin/app": rng.randbytes(3 * MiB), "usr/share/doc/readme": rng.randbytes(300 * 1024)}
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
        with open(os.path.join(src, rel), "wb") as f:
            f.write(data)
    extra = ["--chunk-size", "1M"]
    if prefetch is not None:
        plist = src + ".prefetch"
        with open(plist, "w") as f:
            f.write("".join(p + "\n" for p in prefetch))
        extra += ["--prefetch-list", plist]
    info, data = _convert_tree(src, extra)
    return files, info, data


def _quiet_ranges(proxy, settle=0.5, timeout=20):
    """The range requests once none came for `settle` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = proxy.stats()["requests"].get("range_get", 0)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= settle:
            break
        time.sleep(0.05)
    return last


@pytest.mark.parametrize("prefetch", [["usr/bin/app"], None], ids=["landmark", "no-landmark"])
def test_start_files_are_prefetched(sups, proxy, workdir, prefetch, monkeypatch):
    """Every container start reads the rootfs' /etc/passwd and /etc/group
    (containerd, runc): they arrive at mount, in a request of their own
    made with the landmark's first (not behind the landmark's files, which
    the container reads later), also in a layer whose converter had no
    prefetch list, and reading them then fetches nothing; the rest of the
    layer is not fetched."""
    _reads_only(monkeypatch)
    name = "start-" + ("landmark" if prefetch else "none")
    files, info, data = _start_layer(workdir, name, prefetch)
    out = ru.push_image(proxy.url, name, "v1", [ru.Layer(data, diff_id=info["diff_id"])])
    ref = "%s/%s@%s" % (proxy.host, name, out["layers"][0]["digest"])
    s = sups.start(["--no-standby"])
    proxy.stats(reset=True)
    mp = s.mount(ref)
    settled = _quiet_ranges(proxy)
    fetched = _range_bytes(proxy.stats())
    # the tail (footer and TOC), then the start files' request and, with
    # a landmark, the landmark's, both on the wire at once
    ranges = proxy.stats()["ranges"]
    assert settled == (3 if prefetch else 2), ranges
    if prefetch:
        gets = sorted((e[3], e[4], e[5]) for e in proxy.stats()["log"] if e[0] == "GET" and e[5])[1:]
        assert gets[1][0] < gets[0][1], gets
    for rel in ("etc/passwd", "etc/group"):
        with open(os.path.join(mp, rel), "rb") as f:
            assert f.read() == files[rel], rel
    assert proxy.stats()["requests"].get("range_get", 0) == settled, "a start file was fetched on its read"
    # the layer's other files stayed in the registry (with a landmark:
    # only the app besides the TOC and the start files)
    expect = 3 * MiB + 128 * 1024 if prefetch else 256 * 1024
    assert fetched < expect, (fetched, expect)
    with open(os.path.join(mp, "usr/share/doc/readme"), "rb") as f:
        assert f.read() == files["usr/share/doc/readme"]


def test_prefetch_lets_layer_opens_go_first(sups, image, proxy, workdir, monkeypatch):
    """A layer whose TOC is still coming (its registry stalls) holds back
    another layer's prefetch: a pull waits for each TOC, and the container
    that reads what is prefetched starts after the pull."""
    _reads_only(monkeypatch)
    files, info, data = _start_layer(workdir, "slow-toc", ["usr/bin/app"])
    out = ru.push_image(proxy.url, "slow", "v1", [ru.Layer(data, diff_id=info["diff_id"])])
    slow_digest = out["layers"][0]["digest"]
    slow_ref = "%s/slow@%s" % (proxy.host, slow_digest)
    s = sups.start(["--no-standby"])
    proxy.stats(reset=True)
    proxy.set_faults({"kind": "stall", "seconds": 1.0, "path": slow_digest.split(":")[1], "range_only": True,
                      "count": 1})
    errors = []

    def mount_slow():
        try:
            s.mount(slow_ref)
        except Exception as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=mount_slow, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not proxy.stats()["faults"].get("stall") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.stats()["faults"].get("stall"), "the slow layer's TOC was never asked for"
        mp = s.mount(image.ref)           # its TOC comes at once; its prefetch waits
        mounted = time.monotonic()
        t.join(30)
    finally:
        proxy.clear_faults()
    assert not t.is_alive() and not errors, errors
    _quiet_ranges(proxy)
    log = proxy.stats()["log"]
    slow_hex, image_hex = slow_digest.split(":")[1], image.ref.split("@sha256:")[1]
    # the first of the slow layer's GETs is the stalled one, for its TOC
    slow_toc_end = min((e[3], e[4]) for e in log if slow_hex in e[1] and e[0] == "GET")[1]
    assert slow_toc_end > mounted, "the slow layer was not slow"
    image_gets = [e[3] for e in log if image_hex in e[1] and e[0] == "GET"]
    # the image's open asked before its mount returned, its prefetch
    # only once the slow layer's TOC was there
    early = [t0 for t0 in image_gets if mounted <= t0 < slow_toc_end - 0.05]
    assert not early, (early, mounted, slow_toc_end)
    assert any(t0 >= slow_toc_end - 0.05 for t0 in image_gets), "no prefetch at all"
    with open(os.path.join(mp, "d00/f000"), "rb") as f:
        f.read()


def test_a_toc_larger_than_the_tail_read_fetches_only_its_start(sups, proxy, workdir, monkeypatch):
    """A layer whose compressed TOC is larger than the 64 KiB read with the
    footer: the second request asks only for the TOC's bytes before the
    tail, and the layer reads right."""
    _reads_only(monkeypatch)
    rng = random.Random(5)
    src = os.path.join(workdir, "big-toc")
    names = ["%s-%d" % (rng.randbytes(24).hex(), i) for i in range(3000)]
    for n in names:
        os.makedirs(os.path.join(src, n[:2]), exist_ok=True)
        with open(os.path.join(src, n[:2], n), "wb") as f:
            f.write(n.encode())
    info, data = _convert_tree(src)
    out = ru.push_image(proxy.url, "bigtoc", "v1", [ru.Layer(data, diff_id=info["diff_id"])])
    s = sups.start(["--no-standby"])
    proxy.stats(reset=True)
    mp = s.mount("%s/bigtoc@%s#toc=%s" % (proxy.host, out["layers"][0]["digest"], info["toc_digest"]))
    ranges = [r["range"] for r in proxy.stats()["ranges"]]
    assert ranges[0] == "bytes=-65536", ranges
    first, last = (int(x) for x in ranges[1].split("=")[1].split("-"))
    assert last == len(data) - 65536 - 1 and first < last, (ranges, len(data))
    for n in names[::97]:
        with open(os.path.join(mp, n[:2], n), "rb") as f:
            assert f.read() == n.encode(), n


def test_a_reader_walking_the_layer_keeps_the_link_busy(sups, proxy, workdir, monkeypatch):
    """A reader that reads a layer's files in blob order, as a copy does,
    on a link with 20 ms per request: the next span's request is on the
    wire while the last one's bytes still come (a 20 ms gap and more
    before each span had cost a copy 10% against a full pull), the layer
    is fetched about once, and every byte is right."""
    _reads_only(monkeypatch)
    rng = random.Random(7)
    src = os.path.join(workdir, "walk")
    files = {}
    for i in range(320):
        rel = "d%02d/f%03d" % (i // 40, i)
        files[rel] = rng.randbytes(48 * 1024)
        os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
        with open(os.path.join(src, rel), "wb") as f:
            f.write(files[rel])
    info, data = _convert_tree(src)
    out = ru.push_image(proxy.url, "walk", "v1", [ru.Layer(data, diff_id=info["diff_id"])])
    digest = out["layers"][0]["digest"]
    s = sups.start(["--no-standby"])
    mp = s.mount("%s/walk@%s#toc=%s" % (proxy.host, digest, info["toc_digest"]))
    _quiet_ranges(proxy)
    proxy.stats(reset=True)
    proxy.set_link(20, 200)
    try:
        for rel in sorted(files):
            with open(os.path.join(mp, rel), "rb") as f:
                assert f.read() == files[rel], rel
    finally:
        proxy.set_link(0, 0)
    st = proxy.stats()
    gets = sorted((e[3], e[4]) for e in st["log"] if digest.split(":")[1] in e[1] and e[0] == "GET")
    assert len(gets) >= 3, gets
    overlapped = sum(1 for a, b in zip(gets, gets[1:]) if b[0] < a[1])
    assert overlapped >= 1, ["%.3f-%.3f" % g for g in gets]
    assert _range_bytes(st) <= len(data) * 1.05, (_range_bytes(st), len(data))


def test_a_miss_sweeps_the_small_files_of_its_directory(sups, proxy, workdir, monkeypatch):
    """A reader that misses a file of a directory has the worker fetch the
    directory's other small files (an interpreter imports modules from one
    __pycache__): read after that, they cost no request; the directory's
    large file (over 128 KiB compressed) and the next directory are left
    to their readers. Also without the background fetch, and every byte
    is right."""
    _reads_only(monkeypatch)
    rng = random.Random(11)
    src = os.path.join(workdir, "sweep")
    files = {"a/big.bin": rng.randbytes(300 * 1024)}
    for i in range(1, 13):
        files["a/m%02d" % i] = rng.randbytes(24 * 1024)
        files["b/n%02d" % i] = rng.randbytes(24 * 1024)
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
        with open(os.path.join(src, rel), "wb") as f:
            f.write(data)
    info, data = _convert_tree(src)
    out = ru.push_image(proxy.url, "sweep", "v1", [ru.Layer(data, diff_id=info["diff_id"])])
    s = sups.start(["--no-standby"])
    mp = s.mount("%s/sweep@%s#toc=%s" % (proxy.host, out["layers"][0]["digest"], info["toc_digest"]))
    _quiet_ranges(proxy)

    def read(rel):
        before = proxy.stats()["requests"].get("range_get", 0)
        with open(os.path.join(mp, rel), "rb") as f:
            assert f.read() == files[rel], rel
        return proxy.stats()["requests"].get("range_get", 0) - before

    # the last file of a/ in the blob: what follows it is b/, so the
    # rest of a/ can only come from the sweep
    assert read("a/m12") >= 1
    _quiet_ranges(proxy)
    for i in range(1, 12):
        assert read("a/m%02d" % i) == 0, "a/m%02d was not swept" % i
    assert read("a/big.bin") >= 1, "a file of 300 KiB was swept"
    assert read("b/n12") >= 1, "the next directory was swept"


def test_background_pieces_go_one_at_a_time_in_turns(sups, proxy, workdir, monkeypatch):
    """The background fetch of several layers: one request at a time over
    all of them, each a piece of at most 512 KiB (and a chunk), the
    layers in turns while more than one has something left, and each
    layer whole in the end, fetched once."""
    monkeypatch.delenv("HOLDFAST_BACKGROUND_FETCH", raising=False)
    layers = []
    for k in range(3):
        rng = random.Random(100 + k)
        src = os.path.join(workdir, "turns%d" % k)
        files = {"d/f%03d" % i: rng.randbytes(32 * 1024) for i in range(64)}
        for rel, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
            with open(os.path.join(src, rel), "wb") as f:
                f.write(data)
        info, data = _convert_tree(src)
        out = ru.push_image(proxy.url, "turns%d" % k, "v1", [ru.Layer(data, diff_id=info["diff_id"])])
        layers.append((out["layers"][0]["digest"], info, files, len(data)))
    s = sups.start(["--no-standby"])
    proxy.stats(reset=True)
    mps = []
    for k, (digest, info, files, size) in enumerate(layers):
        mps.append(s.mount("%s/turns%d@%s#toc=%s" % (proxy.host, k, digest, info["toc_digest"])))
    mounted = time.monotonic()
    _quiet_ranges(proxy, settle=1.0, timeout=60)
    st = proxy.stats()
    gets = []
    for e in st["log"]:
        if e[0] != "GET" or not e[5] or not e[5].startswith("bytes=") or e[5].startswith("bytes=-"):
            continue
        k = [i for i, l in enumerate(layers) if l[0].split(":")[1] in e[1]]
        lo, hi = (int(x) for x in e[5][6:].split("-"))
        gets.append((e[3], e[4], k[0], lo, hi))
    gets.sort()
    for k, (digest, info, files, size) in enumerate(layers):
        got = sum(g[4] - g[3] + 1 for g in gets if g[2] == k)
        assert size * 0.9 <= got <= size * 1.05, (k, got, size)
    # the TOC reads (the tail, then the rest of a TOC larger than it) are
    # the layers' opens; the background pieces are the requests after them
    pieces = [g for g in gets if g[0] >= mounted and g[4] - g[3] + 1 <= 512 * 1024 + 64 * 1024]
    assert len(pieces) >= 6, gets
    for a, b in zip(pieces, pieces[1:]):
        assert b[0] >= a[1] - 0.002, ("two background requests at once", a, b)
    for i, (a, b) in enumerate(zip(pieces, pieces[1:])):
        if a[2] == b[2]:
            others = [g for g in pieces[i + 2:] if g[2] != a[2]]
            assert not others, ("layer %d went twice while another waited" % a[2], pieces)
    for mp, (digest, info, files, size) in zip(mps, layers):
        for rel in list(files)[::7]:
            with open(os.path.join(mp, rel), "rb") as f:
                assert f.read() == files[rel], rel
