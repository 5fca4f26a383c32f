"""worker/fetch, the registry client, against Debian's real docker-registry
on 127.0.0.1, driven through tests/integration/fetch-probe:

  - resolve by tag and by digest, OCI and Docker media types, an index /
    manifest list with platform selection, errors for unknown tags and
    platforms;
  - range reads byte-exact (start, middle, end, past the end, the whole
    blob), several ranges coalesced, many threads on one blob;
  - Basic and Bearer auth with credentials from a Docker config.json, a
    token refreshed after it expired;
  - a hosts.toml mirror, and the fall back to the server when it is down;
  - redirects to a blob store (faultproxy's redirect_blob) that expire,
    redirect loops;
  - every fault faultproxy.py can inject: the read returns the right bytes
    (after retries) or fails with a clear error, never wrong bytes, and
    never later than its deadline;
  - a blob opened with its tail in one suffix-range GET (the size from
    the Content-Range, every lie about it refused), a server that sends
    the blob whole (small: taken; large: given up for HEAD + range);
  - local registries without hosts.toml: plain http with no TLS attempt,
    and a TLS one (Go's 400, or a close, reset or alert) found through the
    fall back to https.

Run from the source tree (meson sets HOLDFAST_FETCH_PROBE; without it,
the probe of HOLDFAST_WORKER's build dir, else of build/):
  HOLDFAST_FETCH_PROBE=build/tests/integration/fetch-probe \\
      /usr/bin/python3 -m pytest -q tests/integration/test_fetch.py
"""

import base64
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import faultproxy as fp  # noqa: E402
import registryutil as ru  # noqa: E402
import supervisorutil as su  # noqa: E402

PROBE = su.tool("HOLDFAST_FETCH_PROBE", "tests/integration/fetch-probe")
REPO = "holdfast/fetch"

plain = ru.registry_fixture()
basic = ru.registry_fixture(auth="basic")
token_reg = ru.registry_fixture(auth="token")


class ProbeResult:
    def __init__(self, proc, elapsed, stats):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr.decode(errors="replace")
        self.elapsed = elapsed
        self.stats = stats

    def json(self):
        return json.loads(self.out)


def probe(*args, timeout=60, env=None, expect_ok=True):
    """Runs fetch-probe with args; returns a ProbeResult (stats parsed)."""
    with tempfile.TemporaryDirectory(prefix="holdfast-probe-") as tmp:
        stats_path = os.path.join(tmp, "stats.json")
        e = dict(os.environ)
        e.pop("DOCKER_CONFIG", None)
        e["HOME"] = tmp   # no ~/.docker/config.json of the machine's
        e.update(env or {})
        t0 = time.monotonic()
        proc = subprocess.run([PROBE, "--stats", stats_path, "--hosts-dir", os.path.join(tmp, "no-hosts")] +
                              list(args), capture_output=True, timeout=timeout, env=e)
        elapsed = time.monotonic() - t0
        stats = None
        if os.path.exists(stats_path):
            with open(stats_path) as f:
                stats = json.load(f)
        r = ProbeResult(proc, elapsed, stats)
    # a sanitized build (-Db_sanitize=address,undefined) reports here
    assert "Sanitizer" not in r.err and "runtime error:" not in r.err, r.err
    if expect_ok is True:
        assert r.rc == 0, r.err
    elif expect_ok is False:
        assert r.rc == 1, "expected a failure, got rc %d, %d bytes" % (r.rc, len(r.out))
    return r


def docker_config(tmp_path, host, **entry):
    d = tmp_path / "docker"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"auths": {host: entry}}))
    return str(d / "config.json")


def auth_entry(user, password):
    return {"auth": base64.b64encode(("%s:%s" % (user, password)).encode()).decode()}


@pytest.fixture(scope="module")
def image(plain):
    """An OCI image with a 1 MiB random layer (not eStargz: the client reads bytes)."""
    blob = os.urandom(1 << 20)
    small = ru.tar_gz({"etc/small": b"small\n"})
    layers = [
        ru.Layer(blob, media_type="application/vnd.oci.image.layer.v1.tar", diff_id=ru.sha256_digest(blob),
                 annotations={ru.TOC_DIGEST_ANNOTATION: ru.sha256_digest(b"toc"),
                              ru.UNCOMPRESSED_SIZE_ANNOTATION: str(len(blob))}),
        ru.Layer(small),
    ]
    res = ru.push_image(plain, REPO, "v1", layers)
    res["blob"] = blob
    res["ref"] = "%s/%s@%s" % (plain.host, REPO, res["layers"][0]["digest"])
    return res


def layer_ref(host, image):
    return "%s/%s@%s" % (host, REPO, image["layers"][0]["digest"])


# --- resolve --------------------------------------------------------------------

def test_resolve_tag_oci(plain, image):
    r = probe("resolve", "%s/%s:v1" % (plain.host, REPO)).json()
    assert r["manifest_digest"] == image["digest"]
    assert r["media_type"] == ru.OCI_MANIFEST
    assert r["host_repo"] == "%s/%s" % (plain.host, REPO)
    assert r["index_digest"] is None
    assert [(l["digest"], l["size"]) for l in r["layers"]] == [(l["digest"], l["size"]) for l in image["layers"]]
    assert r["layers"][0]["toc_digest"] == ru.sha256_digest(b"toc")
    assert r["layers"][0]["annotations"][ru.UNCOMPRESSED_SIZE_ANNOTATION] == str(1 << 20)
    assert r["layers"][1]["toc_digest"] is None


def test_resolve_digest(plain, image):
    r = probe("resolve", "%s/%s@%s" % (plain.host, REPO, image["digest"])).json()
    assert r["manifest_digest"] == image["digest"]
    assert r["manifest_size"] == image["manifest_size"]


def test_resolve_docker_media_types(plain):
    res = ru.push_image(plain, "holdfast/docker", "d1", [ru.Layer(ru.tar_gz({"a": b"a"}))], media="docker")
    r = probe("resolve", "%s/holdfast/docker:d1" % plain.host).json()
    assert r["media_type"] == ru.DOCKER_MANIFEST
    assert r["manifest_digest"] == res["digest"]
    assert r["layers"][0]["media_type"] == ru.DOCKER_LAYER_GZIP


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_resolve_index_platforms(plain, media):
    plats = [("linux", "amd64"), ("linux", "arm64", "v8"), ("linux", "arm", "v7")]
    res = ru.push_image(plain, "holdfast/multi-" + media, "m", [ru.Layer(ru.tar_gz({"a": b"a"}))], media=media,
                        platforms=plats)
    ref = "%s/holdfast/multi-%s:m" % (plain.host, media)
    by_plat = {m["platform"]: m["digest"] for m in res["manifests"]}
    r = probe("resolve", ref, "--platform", "linux/arm64").json()
    assert r["manifest_digest"] == by_plat["linux/arm64/v8"]
    assert r["index_digest"] == res["digest"]
    assert r["platform"] == "linux/arm64"
    r = probe("resolve", ref, "--platform", "linux/arm/v7").json()
    assert r["manifest_digest"] == by_plat["linux/arm/v7"]
    r = probe("resolve", ref).json()    # the running platform: these tests run on amd64
    assert r["manifest_digest"] == by_plat["linux/amd64"]
    r = probe("resolve", "%s/holdfast/multi-%s@%s" % (plain.host, media, res["digest"]), "--platform",
              "linux/x86_64").json()
    assert r["manifest_digest"] == by_plat["linux/amd64"]
    bad = probe("resolve", ref, "--platform", "windows/amd64", expect_ok=False)
    assert "ENOENT" in bad.err and "no manifest for platform windows/amd64" in bad.err
    assert "linux/arm64/v8" in bad.err


def test_resolve_errors(plain, image):
    r = probe("resolve", "%s/%s:nope" % (plain.host, REPO), expect_ok=False)
    assert "ENOENT" in r.err and "manifest %s/%s:nope" % (plain.host, REPO) in r.err and "HTTP 404" in r.err
    r = probe("resolve", "%s/Bad/Repo" % plain.host, expect_ok=False)
    assert "EINVAL" in r.err and "invalid" in r.err
    wrong = "sha256:" + "0" * 64
    r = probe("resolve", "%s/%s@%s" % (plain.host, REPO, wrong), expect_ok=False)
    assert "ENOENT" in r.err
    r = probe("open", "%s/%s@%s" % (plain.host, REPO, wrong), expect_ok=False)
    assert "ENOENT" in r.err and wrong in r.err


# --- reads ----------------------------------------------------------------------

def test_read_ranges_byte_exact(plain, image):
    blob, size = image["blob"], len(image["blob"])
    for off, n in [(0, 1), (0, 4096), (12345, 100000), (size - 1, 1), (size - 10, 10), (size - 10, 4096),
                   (size, 10), (size + 100, 10), (0, size)]:
        r = probe("read", image["ref"], str(off), str(n))
        assert r.out == blob[off:off + n], (off, n)
    assert r.stats["read_bytes"] == size


def test_read_size_checks(plain, image):
    size = len(image["blob"])
    r = probe("--expect-size", str(size), "open", image["ref"])
    assert r.json() == {"size": size}
    r = probe("--expect-size", str(size + 1), "open", image["ref"], expect_ok=False)
    assert "EBADMSG" in r.err and "the manifest %d" % (size + 1) in r.err


def test_read_ranges_coalesced(plain, image):
    blob = image["blob"]
    spec = [(1000, 100), (1200, 100), (1350, 50), (900000, 10), (5000, 10), (1_040_000, 100_000)]
    arg = ",".join("%d:%d" % s for s in spec)
    r = probe("--max-gap", "4096", "ranges", image["ref"], arg)
    want = b"".join(blob[o:o + n] for o, n in spec)
    assert r.out == want
    # 1000..1400 and 5000 are one request; 900000 and the tail are two more
    assert r.stats["range_requests"] == 3
    assert r.stats["ranges_coalesced"] == 3
    r = probe("--max-gap", "0", "ranges", image["ref"], arg)
    assert r.out == want and r.stats["range_requests"] == 6
    # everything within 1 MB, but no request spans more than 8 KiB (a range
    # longer than that alone is still one request)
    r = probe("--max-gap", "1000000", "--max-request", "8192", "ranges", image["ref"], arg)
    assert r.out == want and r.stats["range_requests"] == 3
    r = probe("--max-gap", "1000000", "ranges", image["ref"], arg)
    assert r.out == want and r.stats["range_requests"] == 1


def test_read_many_threads(plain, image):
    r = probe("--threads", "16", "--repeat", "5", "read", image["ref"], "77777", "300000")
    assert r.out == image["blob"][77777:77777 + 300000]
    assert r.stats["http"]["requests"]["blob_get"] == 80
    assert r.stats["errors"] == 0


def test_per_host_cap(plain, image):
    with fp.FaultProxy(plain.url, latency_ms=200) as p:
        r = probe("--max-conns", "2", "--threads", "8", "read", layer_ref(p.host, image), "0", "1000")
        assert r.out == image["blob"][:1000]
        assert r.stats["http"]["queued"] >= 4


# --- auth -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def basic_image(basic):
    blob = os.urandom(200_000)
    res = ru.push_image(basic, REPO, "v1", [ru.Layer(blob, media_type="application/vnd.oci.image.layer.v1.tar",
                                                     diff_id=ru.sha256_digest(blob))], auth=basic.credentials)
    res["blob"] = blob
    return res


def test_basic_auth(basic, basic_image, tmp_path):
    ref = layer_ref(basic.host, basic_image)
    r = probe("read", ref, "10", "1000", expect_ok=False)
    assert "EACCES" in r.err and "Docker config has none" in r.err
    cfg = docker_config(tmp_path, basic.host, **auth_entry(*basic.credentials))
    r = probe("--docker-config", cfg, "read", ref, "10", "1000")
    assert r.out == basic_image["blob"][10:1010]
    assert r.stats["auth_challenges"] == 1      # then Basic from the start
    r = probe("--docker-config", cfg, "resolve", "%s/%s:v1" % (basic.host, REPO))
    assert r.json()["manifest_digest"] == basic_image["digest"]
    # username/password fields, through $DOCKER_CONFIG
    cfg2 = docker_config(tmp_path, "http://" + basic.host + "/v2/", username=basic.credentials[0],
                         password=basic.credentials[1])
    r = probe("read", ref, "0", "5", env={"DOCKER_CONFIG": os.path.dirname(cfg2)})
    assert r.out == basic_image["blob"][:5]
    bad = docker_config(tmp_path, basic.host, **auth_entry(basic.credentials[0], "wrong-password"))
    r = probe("--docker-config", bad, "read", ref, "0", "5", expect_ok=False)
    assert "EACCES" in r.err and "wrong-password" not in r.err


@pytest.fixture(scope="module")
def token_image(token_reg):
    blob = os.urandom(200_000)
    res = ru.push_image(token_reg, REPO, "v1", [ru.Layer(blob, media_type="application/vnd.oci.image.layer.v1.tar",
                                                         diff_id=ru.sha256_digest(blob))],
                        auth=token_reg.credentials)
    res["blob"] = blob
    return res


def test_token_auth(token_reg, token_image, tmp_path):
    ref = layer_ref(token_reg.host, token_image)
    r = probe("read", ref, "0", "100", expect_ok=False)
    assert "EACCES" in r.err and "token request" in r.err
    cfg = docker_config(tmp_path, token_reg.host, **auth_entry(*token_reg.credentials))
    r = probe("--docker-config", cfg, "--repeat", "3", "read", ref, "100", "50000")
    assert r.out == token_image["blob"][100:50100]
    assert r.stats["tokens_fetched"] == 1
    assert r.stats["auth_challenges"] == 1
    r = probe("--docker-config", cfg, "resolve", "%s/%s:v1" % (token_reg.host, REPO))
    assert r.json()["manifest_digest"] == token_image["digest"]
    assert token_reg.credentials[1] not in r.err


def test_token_refresh_after_expiry(tmp_path):
    with ru.Registry(auth="token", token_expires_in=2) as reg:
        blob = os.urandom(50_000)
        res = ru.push_image(reg, REPO, "v1", [ru.Layer(blob, media_type="application/vnd.oci.image.layer.v1.tar",
                                                       diff_id=ru.sha256_digest(blob))], auth=reg.credentials)
        cfg = docker_config(tmp_path, reg.host, **auth_entry(*reg.credentials))
        r = probe("--docker-config", cfg, "--repeat", "3", "--sleep-ms", "2500", "read", layer_ref(reg.host, res),
                  "5", "1000")
        assert r.out == blob[5:1005]
        # one token for the HEAD and the first read, a fresh one for each later read
        assert r.stats["tokens_fetched"] == 3
        assert r.stats["errors"] == 0


# --- hosts.toml -------------------------------------------------------------------

def hosts_dir(tmp_path, host, text):
    d = tmp_path / "certs.d" / host
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(text)
    return str(tmp_path / "certs.d")


def test_hosts_toml_mirror(plain, image, tmp_path):
    with fp.FaultProxy(plain.url) as mirror:
        hd = hosts_dir(tmp_path, plain.host, 'server = "http://%s"\n\n[host."http://%s"]\n'
                       '  capabilities = ["pull", "resolve"]  # the mirror\n' % (plain.host, mirror.host))
        r = probe("--hosts-dir", hd, "resolve", "%s/%s:v1" % (plain.host, REPO))
        assert r.json()["manifest_digest"] == image["digest"]
        r = probe("--hosts-dir", hd, "read", image["ref"], "1000", "2000")
        assert r.out == image["blob"][1000:3000]
        st = mirror.stats()
        assert st["requests"].get("manifest") == 1 and st["requests"].get("range_get") == 1
        assert all("ns=%s" % plain.host in e[1] for e in st["log"]), st["log"]
        # the mirror fails: the server answers
        mirror.set_faults({"kind": "status", "status": 500})
        r = probe("--hosts-dir", hd, "--backoff-ms", "5", "read", image["ref"], "0", "100")
        assert r.out == image["blob"][:100]
        assert r.stats["endpoint_fallbacks"] >= 1
    # a mirror that is not there at all
    hd2 = hosts_dir(tmp_path / "2", plain.host, 'server = "http://%s"\n[host."http://127.0.0.1:1"]\n' % plain.host)
    r = probe("--hosts-dir", hd2, "--backoff-ms", "5", "read", image["ref"], "0", "100")
    assert r.out == image["blob"][:100]
    # a mirror for pull only is not asked to resolve tags
    with fp.FaultProxy(plain.url) as mirror:
        hd3 = hosts_dir(tmp_path / "3", plain.host, 'server = "http://%s"\n[host."http://%s"]\ncapabilities = ["pull"]\n'
                        % (plain.host, mirror.host))
        probe("--hosts-dir", hd3, "resolve", "%s/%s:v1" % (plain.host, REPO))
        assert mirror.stats()["requests"] == {}
    bad = hosts_dir(tmp_path / "4", plain.host, 'server = "http://%s"\n[host."http://x"]\ncapabilities = ["fly"]\n'
                    % plain.host)
    r = probe("--hosts-dir", bad, "read", image["ref"], "0", "1", expect_ok=False)
    assert "hosts.toml" in r.err and "unknown capability \"fly\"" in r.err


# --- redirects ------------------------------------------------------------------

def test_redirect_to_blob_store(plain, image):
    with fp.FaultProxy(plain.url) as p:
        p.set_faults({"kind": "redirect_blob", "ttl": 1.2})
        ref = layer_ref(p.host, image)
        # reads at 0, 0.7, 1.4, 2.1 s: the second uses the remembered URL,
        # the third finds it expired (403), asks the registry again, and
        # the fourth uses the new one
        r = probe("--repeat", "4", "--sleep-ms", "700", "read", ref, "4096", "65536")
        assert r.out == image["blob"][4096:4096 + 65536]
        assert r.stats["redirects"] >= 2
        assert r.stats["redirect_cache_hits"] >= 1
        assert r.stats["redirect_cache_drops"] >= 1
        assert p.stats()["requests"].get("blobstore", 0) >= 3
        # our own expiry of the remembered URL
        r = probe("--redirect-ttl-ms", "100", "--repeat", "2", "--sleep-ms", "300", "read", ref, "0", "10")
        assert r.out == image["blob"][:10]
        assert r.stats["redirect_cache_hits"] == 0 and r.stats["redirects"] == 2
        # the whole blob through the store, digest checked
        r = probe("read", ref, "0", str(len(image["blob"])))
        assert r.out == image["blob"]


@pytest.mark.parametrize("mode", ["self", "pair"])
def test_redirect_loop(plain, image, mode):
    with fp.FaultProxy(plain.url) as p:
        p.set_faults({"kind": "redirect_loop", "mode": mode, "method": "GET"})
        r = probe("read", layer_ref(p.host, image), "0", "10", expect_ok=False)
        assert "ELOOP" in r.err and "more than 10 redirects" in r.err
        assert r.elapsed < 10


# --- faults -----------------------------------------------------------------------

RANGE_GET = {"method": "GET", "range_only": True}
OFF, LEN = 300_000, 200_000


def fault_read(p, image, *faults, args=(), off=OFF, n=LEN, expect_ok=True, timeout_ms=8000):
    p.set_faults(*[dict(RANGE_GET, **f) for f in faults])
    return probe("--timeout-ms", str(timeout_ms), "--backoff-ms", "20", *args, "read", layer_ref(p.host, image),
                 str(off), str(n), expect_ok=expect_ok)


@pytest.fixture
def proxy(plain):
    with fp.FaultProxy(plain.url) as p:
        yield p


RECOVERABLE = [
    {"kind": "status", "status": 503, "count": 2},
    {"kind": "status", "status": 500, "count": 1},
    {"kind": "status", "status": 502, "count": 1},
    {"kind": "status", "status": 429, "count": 1},
    {"kind": "reset", "when": "body", "count": 2},
    {"kind": "reset", "when": "headers", "count": 1},
    {"kind": "short", "count": 1},
    {"kind": "short", "missing": 1, "count": 1},
    {"kind": "long", "count": 1},
    {"kind": "wrong_range", "count": 1},
    {"kind": "ignore_range", "count": 1},
    {"kind": "stall", "when": "headers", "seconds": 5, "count": 1},
    {"kind": "stall", "when": "body", "seconds": 5, "count": 1},
]


@pytest.mark.parametrize("fault", RECOVERABLE, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_fault_recovered(proxy, image, fault):
    r = fault_read(proxy, image, fault, args=("--stall-ms", "1000"))
    assert r.out == image["blob"][OFF:OFF + LEN]
    assert r.stats["http"]["retries"]["blob_get"] >= 1
    assert r.elapsed < 5, "a stall must be cut short by the stall timeout"


PERMANENT = [
    ({"kind": "status", "status": 503}, "EIO", "HTTP 503"),
    ({"kind": "status", "status": 500}, "EIO", "HTTP 500"),
    ({"kind": "status", "status": 404}, "ENOENT", "HTTP 404"),
    ({"kind": "status", "status": 403}, "EACCES", "HTTP 403"),
    ({"kind": "reset", "when": "body"}, "", "after retries"),
    ({"kind": "reset", "when": "headers"}, "", "after retries"),
    ({"kind": "short"}, "EIO", "after retries"),
    ({"kind": "long"}, "EIO", "Content-Range"),
    ({"kind": "wrong_range"}, "EIO", "Content-Range"),
    ({"kind": "ignore_range"}, "EIO", "instead of 206"),
]


@pytest.mark.parametrize("fault,errno,msg", PERMANENT, ids=lambda f: str(f))
def test_fault_permanent(proxy, image, fault, errno, msg):
    r = fault_read(proxy, image, fault, expect_ok=False)
    assert r.out == b""
    assert errno in r.err and msg in r.err, r.err
    assert "reading %s/%s@" % (proxy.host, REPO) in r.err
    assert r.elapsed < 8 + 2


def test_fault_long_lie(proxy, image):
    """Extra bytes after the Content-Length a server promised are not part
    of the answer (HTTP framing): curl stops at the length and drops the
    connection; the bytes within it are the right ones."""
    r = fault_read(proxy, image, {"kind": "long", "lie": True})
    assert r.out == image["blob"][OFF:OFF + LEN]


def test_fault_ignore_range_allowed(proxy, image):
    r = fault_read(proxy, image, {"kind": "ignore_range"}, args=("--allow-full",))
    assert r.out == image["blob"][OFF:OFF + LEN]
    assert r.stats["http"]["retries"]["blob_get"] == 0


def test_fault_retry_after(proxy, image):
    r = fault_read(proxy, image, {"kind": "status", "status": 429, "retry_after": 1, "count": 1})
    assert r.out == image["blob"][OFF:OFF + LEN]
    assert r.elapsed >= 1.0
    # a Retry-After past the deadline fails at once, not at the deadline
    r = fault_read(proxy, image, {"kind": "status", "status": 503, "retry_after": 120}, expect_ok=False,
                   timeout_ms=20000)
    assert "Retry-After" in r.err and "deadline" in r.err
    assert r.elapsed < 5


def test_fault_corrupt_whole_blob(proxy, image):
    """A corrupted body cannot be told from the real one in a range; a whole
    blob is checked against its digest."""
    size = len(image["blob"])
    r = fault_read(proxy, image, {"kind": "corrupt", "nbytes": 3}, off=0, n=size, expect_ok=False)
    assert "EBADMSG" in r.err and "digest" in r.err and r.out == b""


@pytest.mark.parametrize("fault", [
    {"kind": "stall", "when": "headers", "seconds": 60},
    {"kind": "stall", "when": "body", "seconds": 60},
])
def test_deadline(proxy, image, fault):
    r = fault_read(proxy, image, fault, args=("--stall-ms", "30000"), timeout_ms=2000, expect_ok=False)
    assert "ETIMEDOUT" in r.err and "deadline" in r.err, r.err
    assert r.elapsed < 2.0 + 1.5


def test_deadline_with_retries(proxy, image):
    """Stalls and retries together still end by the deadline."""
    r = fault_read(proxy, image, {"kind": "stall", "when": "headers", "seconds": 60}, args=("--stall-ms", "1000"),
                   timeout_ms=3500, expect_ok=False)
    assert "ETIMEDOUT" in r.err or "EIO" in r.err
    assert r.elapsed < 3.5 + 1.5
    assert r.stats["http"]["attempts"]["blob_get"] >= 2


def test_faults_on_head_and_manifest(proxy, image):
    proxy.set_faults({"kind": "status", "status": 503, "count": 2, "method": "HEAD"},
                     {"kind": "reset", "when": "headers", "count": 2, "path": "/manifests/"})
    r = probe("--backoff-ms", "20", "open", layer_ref(proxy.host, image))
    assert r.json()["size"] == len(image["blob"])
    assert r.stats["http"]["retries"]["blob_head"] == 2
    # The first request of a client to a local registry is a probe: a reset
    # may mean a TLS server, so https is tried at once (the proxy speaks
    # none), then plain http again, retried as any request.
    r = probe("--backoff-ms", "20", "resolve", "%s/%s:v1" % (proxy.host, REPO))
    assert r.json()["manifest_digest"] == image["digest"]
    assert r.stats["scheme_fallbacks"] == 1
    assert r.stats["http"]["requests"]["manifest"] == 3
    assert r.stats["http"]["retries"]["manifest"] == 1


def test_no_retries(proxy, image):
    r = fault_read(proxy, image, {"kind": "status", "status": 503, "count": 1}, args=("--retries", "0"),
                   expect_ok=False)
    assert "HTTP 503" in r.err and r.stats["http"]["attempts"]["blob_get"] == 1


# --- TLS and HTTP/2 -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_registry(plain, image, tmp_path_factory):
    """A second docker-registry serving the plain one's storage over TLS
    (Go speaks HTTP/2 there), with a self-signed certificate for
    127.0.0.1. registryutil.Registry has no TLS option, so it is started
    here: the config is JSON, which is YAML too."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-keyout", key, "-out", cert, "-days", "1", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = ru.free_port()
    cfg = {"version": "0.1", "log": {"level": "error"},
           "storage": {"filesystem": {"rootdirectory": os.path.join(plain.dir, "storage")},
                       "maintenance": {"uploadpurging": {"enabled": False}}},
           "http": {"addr": "127.0.0.1:%d" % port, "secret": "holdfast-test-secret",
                    "tls": {"certificate": cert, "key": key}}}
    (d / "config.yml").write_text(json.dumps(cfg))
    log = open(d / "registry.log", "wb")
    proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", ru.REGISTRY_BIN, "serve", str(d / "config.yml")],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        import socket
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (d / "registry.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "TLS registry did not start"
                time.sleep(0.05)
        yield {"host": "127.0.0.1:%d" % port, "cert": cert, "dir": d}
    finally:
        proc.kill()
        proc.wait()
        log.close()


def test_tls_http2_with_ca(tls_registry, image, tmp_path):
    host = tls_registry["host"]
    ref = "%s/%s@%s" % (host, REPO, image["layers"][0]["digest"])
    hd = tmp_path / "certs.d" / host
    hd.mkdir(parents=True)
    os.symlink(tls_registry["cert"], str(hd / "registry-ca.pem"))
    (hd / "hosts.toml").write_text('server = "https://%s"\nca = "registry-ca.pem"\n' % host)
    r = probe("--hosts-dir", str(tmp_path / "certs.d"), "--threads", "8", "--repeat", "3", "read", ref, "1000", "300000")
    assert r.out == image["blob"][1000:301000]
    st = r.stats["http"]
    assert st["http2"] >= 24, st
    # 24 reads multiplexed: far fewer connections than transfers
    assert st["connections"] <= 4, st
    r = probe("--hosts-dir", str(tmp_path / "certs.d"), "resolve", "%s/%s:v1" % (host, REPO))
    assert r.json()["manifest_digest"] == image["digest"]
    # without the CA: a certificate error, at once, and no plain-http fallback for a non-local name in hosts.toml
    (hd / "hosts.toml").write_text('server = "https://%s"\n' % host)
    r = probe("--hosts-dir", str(tmp_path / "certs.d"), "read", ref, "0", "10", expect_ok=False)
    assert "EPROTO" in r.err and "certificate" in r.err.lower(), r.err
    assert r.elapsed < 5
    # skip_verify
    (hd / "hosts.toml").write_text('server = "https://%s"\nskip_verify = true\n' % host)
    r = probe("--hosts-dir", str(tmp_path / "certs.d"), "read", ref, "0", "10")
    assert r.out == image["blob"][:10]
    assert r.stats["scheme_fallbacks"] == 0 and r.stats["http"]["failures"]["blob_head"] == 0
    # no hosts.toml: a local registry is spoken to over plain http first (as
    # containerd and stargz-snapshotter do); Go's TLS server answers that
    # with a 400, and the client goes on over https, without verification,
    # at once and only once: the endpoint's scheme is learned
    r = probe("--threads", "4", "read", ref, "5", "10")
    assert r.out == image["blob"][5:15] and r.stats["http"]["http2"] >= 1
    assert r.stats["scheme_fallbacks"] == 1, r.stats
    assert r.stats["http"]["failures"]["blob_head"] == 1 and r.stats["http"]["retries"]["blob_head"] == 0
    assert r.stats["http"]["failures"]["blob_get"] == 0 and r.stats["http"]["attempts"]["blob_get"] == 4
    r = tail_probe(host, image["layers"][0]["digest"], read=(5, 10))
    assert r.data == image["blob"][-TAIL:] + image["blob"][5:15] and r.info["size"] == len(image["blob"])
    assert r.stats["scheme_fallbacks"] == 1 and r.stats["http"]["failures"]["blob_get"] == 1
    assert r.stats["http"]["attempts"]["blob_get"] == 3 and r.stats["http"]["retries"]["blob_get"] == 0
    assert r.elapsed < 5


# --- open with the tail ---------------------------------------------------------------

TAIL = 65536


def tail_probe(host, digest, n=TAIL, read=None, args=(), expect_ok=True):
    """fetch-probe tail: r.info is its JSON line, r.data the bytes after it."""
    extra = [str(read[0]), str(read[1])] if read else []
    r = probe(*args, "tail", "%s/%s@%s" % (host, REPO, digest), str(n), *extra, expect_ok=expect_ok)
    r.info, r.data = None, None
    if r.rc == 0:
        head, _, r.data = r.out.partition(b"\n")
        r.info = json.loads(head)
    return r


def blob_path(digest):
    return "/v2/%s/blobs/%s" % (REPO, digest)


def log3(proxy):
    return [e[:3] for e in proxy.stats()["log"]]


@pytest.fixture(scope="module")
def small_blob(plain):
    data = os.urandom(1000)
    return dict(ru.push_layer_blob(plain, REPO, data), data=data)


@pytest.fixture(scope="module")
def big_blob(plain):
    data = os.urandom(3 << 20)
    return dict(ru.push_layer_blob(plain, REPO, data), data=data)


def test_tail_one_request(proxy, image):
    """Open + the last 64 KiB: one GET, no HEAD; the size from its
    Content-Range."""
    digest, blob = image["layers"][0]["digest"], image["blob"]
    r = tail_probe(proxy.host, digest)
    assert r.info == {"size": len(blob), "tail": TAIL} and r.data == blob[-TAIL:]
    assert log3(proxy) == [["GET", blob_path(digest), 206]]
    assert proxy.stats()["ranges"] == [{"path": blob_path(digest), "range": "bytes=-%d" % TAIL}]
    st = r.stats
    assert st["http"]["requests"]["blob_head"] == 0 and st["http"]["attempts"]["blob_get"] == 1, st
    assert st["blobs_opened"] == 1 and st["read_bytes"] == TAIL and st["range_requests"] == 1
    assert st["scheme_fallbacks"] == 0 and st["errors"] == 0
    # the blob it opened reads on
    proxy.stats(reset=True)
    r = tail_probe(proxy.host, digest, read=(1000, 100))
    assert r.data == blob[-TAIL:] + blob[1000:1100]
    assert [e[0] for e in log3(proxy)] == ["GET", "GET"]
    # the manifest's size is checked against the Content-Range's
    r = tail_probe(proxy.host, digest, args=("--expect-size", str(len(blob))))
    assert r.data == blob[-TAIL:]
    r = tail_probe(proxy.host, digest, args=("--expect-size", str(len(blob) - 1)), expect_ok=False)
    assert "EBADMSG" in r.err and "the manifest %d" % (len(blob) - 1) in r.err and r.out == b""
    # a known size (our own record): no request to open, the tail a plain range
    proxy.stats(reset=True)
    r = tail_probe(proxy.host, digest, args=("--known-size", "--expect-size", str(len(blob))))
    assert r.info == {"size": len(blob), "tail": TAIL} and r.data == blob[-TAIL:]
    assert proxy.stats()["ranges"] == [{"path": blob_path(digest),
                                        "range": "bytes=%d-%d" % (len(blob) - TAIL, len(blob) - 1)}]


def test_tail_smaller_than_asked(proxy, small_blob, plain):
    """A blob no larger than the tail asked for is the tail, whole, and
    checked against its digest."""
    digest, data = small_blob["digest"], small_blob["data"]
    for n in (TAIL, len(data), len(data) - 1, 1):
        r = tail_probe(proxy.host, digest, n=n)
        k = min(n, len(data))
        assert r.info == {"size": len(data), "tail": k} and r.data == data[-k:], n
    proxy.stats(reset=True)
    proxy.set_faults({"kind": "corrupt", "nbytes": 1})
    r = tail_probe(proxy.host, digest, expect_ok=False)
    assert "EBADMSG" in r.err and "digest" in r.err and r.out == b""
    # an empty blob: Go's registry answers "206, bytes 0--1/0"; the HEAD says 0
    proxy.clear_faults()
    empty = ru.push_layer_blob(plain, REPO, b"")["digest"]
    proxy.stats(reset=True)
    r = tail_probe(proxy.host, empty)
    assert r.info == {"size": 0, "tail": 0} and r.data == b""
    assert log3(proxy) == [["GET", blob_path(empty), 206], ["HEAD", blob_path(empty), 200]]


# (the content_range fault, what the client must say)
LIES = [
    ({"value": None}, "(none)"),                                        # no Content-Range
    ({"value": "bytes {first}-{last}/*"}, "/*"),                        # no size
    ({"value": "bytes {first}-{last-1}/{total}", "pad": -1}, "Content-Range"),  # not the end of the blob
    ({"value": "bytes {first+1}-{last}/{total}", "pad": -1}, "Content-Range"),  # less than asked, blob larger
    ({"value": "bytes {first-1}-{last}/{total}", "pad": 1}, "Content-Range"),   # more than asked
    ({"value": "bytes {first}-{last}/{total+1}"}, "Content-Range"),     # the last byte is not the last
    ({"value": "bytes {first}-{last}/{total-1}"}, "Content-Range"),
    ({"value": "bytes {first}-{last}"}, "Content-Range"),
    ({"pad": 100}, "sent more than"),                                  # a longer body
    ({"pad": -100}, "short body"),                                     # a shorter one
]


@pytest.mark.parametrize("lie,msg", LIES, ids=lambda v: str(v))
def test_tail_content_range_lies(proxy, image, lie, msg):
    """Each lie about the range or the size is refused with a clear
    message (after the retries), never with wrong bytes; once it stops,
    the retry gets the right ones."""
    digest, blob = image["layers"][0]["digest"], image["blob"]
    proxy.set_faults(dict(lie, kind="content_range"))
    r = tail_probe(proxy.host, digest, args=("--backoff-ms", "5"), expect_ok=False)
    assert r.out == b"" and "EIO" in r.err and msg in r.err and "after retries" in r.err, r.err
    assert "blob %s/%s@%s" % (proxy.host, REPO, digest) in r.err
    assert r.elapsed < 5
    proxy.set_faults(dict(lie, kind="content_range", count=1))
    r = tail_probe(proxy.host, digest, args=("--backoff-ms", "5"))
    assert r.info == {"size": len(blob), "tail": TAIL} and r.data == blob[-TAIL:]
    assert r.stats["http"]["retries"]["blob_get"] == 1


def test_tail_size_lie(proxy, image):
    """A Content-Range that lies consistently (the blob one byte longer) is
    refused by the manifest's size; without one, the next answer of the
    honest registry gives the lie away."""
    digest, blob = image["layers"][0]["digest"], image["blob"]
    lie = {"kind": "content_range", "value": "bytes {first+1}-{last+1}/{total+1}"}
    proxy.set_faults(dict(lie, count=1))
    r = tail_probe(proxy.host, digest, args=("--expect-size", str(len(blob))), expect_ok=False)
    assert "EBADMSG" in r.err and "%d bytes, the manifest %d" % (len(blob) + 1, len(blob)) in r.err
    proxy.set_faults(dict(lie, count=1))
    r = tail_probe(proxy.host, digest, read=(0, 10), expect_ok=False)
    assert "EBADMSG" in r.err and "now says it has %d bytes" % len(blob) in r.err and r.out == b""


def test_tail_whole_blob(proxy, image, big_blob):
    """A server that ignores the Range: a small blob sent whole is taken
    (size and digest from it); a large one is given up at its headers and
    the blob opened with a HEAD and a range."""
    digest, blob = image["layers"][0]["digest"], image["blob"]
    proxy.set_faults({"kind": "ignore_range"})
    for n in (TAIL, 1000):
        r = tail_probe(proxy.host, digest, n=n)
        assert r.info == {"size": len(blob), "tail": n} and r.data == blob[-n:]
        assert r.stats["http"]["attempts"]["blob_get"] == 1 and r.stats["http"]["requests"]["blob_head"] == 0
    # the whole blob is checked against its digest (one fault per request:
    # a second proxy corrupts what the first asked for without a Range)
    with fp.FaultProxy(proxy.url) as front:
        front.set_faults({"kind": "ignore_range"})
        proxy.set_faults({"kind": "corrupt", "nbytes": 1, "method": "GET"})
        proxy.stats(reset=True)
        r = tail_probe(front.host, digest, expect_ok=False)
        assert "EBADMSG" in r.err and "digest" in r.err and r.out == b""
        assert proxy.stats()["faults"] == {"corrupt": 1}

    # 3 MiB at 8 Mbit/s would take 3 s
    big, data = big_blob["digest"], big_blob["data"]
    proxy.set_link(rate_mbit=8)
    proxy.set_faults({"kind": "ignore_range", "count": 1})
    proxy.stats(reset=True)
    r = tail_probe(proxy.host, big)
    assert r.info == {"size": len(data), "tail": TAIL} and r.data == data[-TAIL:]
    log = log3(proxy)
    # the first answer is cut short by the client (the proxy notes None once it notices)
    assert log[0][:2] == ["GET", blob_path(big)] and log[0][2] in (200, None), log
    assert log[1:] == [["HEAD", blob_path(big), 200], ["GET", blob_path(big), 206]], log
    assert r.stats["http"]["bytes"]["blob_get"] == TAIL, r.stats["http"]
    assert r.stats["http"]["retries"]["blob_get"] == 0
    assert r.elapsed < 2
    # a server that never sends a range
    proxy.set_link(rate_mbit=0)
    proxy.set_faults({"kind": "ignore_range"})
    r = tail_probe(proxy.host, big, args=("--backoff-ms", "5"), expect_ok=False)
    assert "EIO" in r.err and "instead of 206" in r.err and r.out == b""


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 503, "count": 2},
    {"kind": "status", "status": 500, "count": 1},
    {"kind": "short", "count": 1},
    {"kind": "reset", "when": "body", "count": 1},
], ids=lambda f: "-".join(str(v) for v in f.values()))
def test_tail_retried(proxy, image, fault):
    digest, blob = image["layers"][0]["digest"], image["blob"]
    proxy.set_faults(fault)
    r = tail_probe(proxy.host, digest, args=("--backoff-ms", "5"))
    assert r.info == {"size": len(blob), "tail": TAIL} and r.data == blob[-TAIL:]
    assert r.stats["http"]["requests"]["blob_head"] == 0
    assert r.stats["http"]["attempts"]["blob_get"] >= 2


def test_tail_redirect(proxy, image):
    """A redirect to a blob store is followed and remembered, as for any
    read."""
    digest, blob = image["layers"][0]["digest"], image["blob"]
    proxy.set_faults({"kind": "redirect_blob"})
    r = tail_probe(proxy.host, digest, read=(4096, 100))
    assert r.data == blob[-TAIL:] + blob[4096:4196]
    assert r.stats["redirects"] == 1 and r.stats["redirect_cache_hits"] == 1
    st = proxy.stats()
    assert st["requests"] == {"range_get": 1, "blobstore": 2}, st["requests"]
    # the registry, the blob store it sent us to, then the blob store straight away
    assert [(r["path"].startswith("/__blobstore/"), r["range"]) for r in st["ranges"]] == [
        (False, "bytes=-%d" % TAIL), (True, "bytes=-%d" % TAIL), (True, "bytes=4096-4195")], st["ranges"]


def test_tail_token_auth(token_reg, token_image, tmp_path):
    blob = token_image["blob"]
    digest = token_image["layers"][0]["digest"]
    r = tail_probe(token_reg.host, digest, expect_ok=False)
    assert "EACCES" in r.err
    cfg = docker_config(tmp_path, token_reg.host, **auth_entry(*token_reg.credentials))
    r = tail_probe(token_reg.host, digest, read=(100, 1000), args=("--docker-config", cfg))
    assert r.data == blob[-TAIL:] + blob[100:1100] and r.info["size"] == len(blob)
    assert r.stats["auth_challenges"] == 1 and r.stats["tokens_fetched"] == 1
    assert r.stats["http"]["requests"]["blob_head"] == 0 and r.stats["http"]["requests"]["blob_get"] == 3


def test_tail_mirror(plain, image, tmp_path):
    """Mirrors first, then the server, as for any request."""
    digest, blob = image["layers"][0]["digest"], image["blob"]
    with fp.FaultProxy(plain.url) as mirror:
        hd = hosts_dir(tmp_path, plain.host, 'server = "http://%s"\n[host."http://127.0.0.1:1"]\n'
                       '[host."http://%s"]\n' % (plain.host, mirror.host))
        r = tail_probe(plain.host, digest, args=("--hosts-dir", hd, "--backoff-ms", "5"))
        assert r.data == blob[-TAIL:] and r.stats["endpoint_fallbacks"] == 1
        assert log3(mirror) == [["GET", blob_path(digest) + "?ns=" + plain.host, 206]]
        # a mirror that sends a large blob whole: the next endpoint
        mirror.set_faults({"kind": "ignore_range"})
        big = os.urandom(2 << 20)
        d = ru.push_layer_blob(plain, REPO, big)["digest"]
        r = tail_probe(plain.host, d, args=("--hosts-dir", hd, "--backoff-ms", "5"))
        assert r.data == big[-TAIL:] and r.stats["endpoint_fallbacks"] == 2
        assert r.stats["http"]["requests"]["blob_head"] == 0


# --- local registries without hosts.toml: plain http first ---------------------------

def test_local_plain_no_tls_attempt(proxy, image):
    """The default for 127.0.0.1 without hosts.toml is plain http: no TLS
    handshake is tried, nothing fails, one connection."""
    r = probe("resolve", "%s/%s:v1" % (proxy.host, REPO))
    assert r.json()["manifest_digest"] == image["digest"]
    assert r.stats["scheme_fallbacks"] == 0 and r.stats["endpoint_fallbacks"] == 0
    assert sum(r.stats["http"]["failures"].values()) == 0
    assert r.stats["http"]["attempts"] == r.stats["http"]["requests"], r.stats["http"]
    assert r.stats["http"]["connections"] == 1 and r.stats["http"]["http2"] == 0
    proxy.stats(reset=True)
    digest = image["layers"][0]["digest"]
    r = tail_probe(proxy.host, digest, read=(0, 10))
    assert log3(proxy) == [["GET", blob_path(digest), 206], ["GET", blob_path(digest), 206]]
    assert r.stats["scheme_fallbacks"] == 0 and sum(r.stats["http"]["failures"].values()) == 0
    assert r.stats["http"]["attempts"]["blob_get"] == 2 and r.stats["http"]["connections"] == 1


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("cert")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-keyout", key, "-out", cert, "-days", "1", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


class TlsFront:
    """TLS on 127.0.0.1 (HTTP/1.1) in front of a plain registry, answering
    a connection that does not open with a TLS handshake the way TLS
    servers other than Go's do: `plain` "close" (no answer), "reset" (RST)
    or "alert" (a TLS alert record, then close). `tls` False: it does that
    to TLS connections too."""

    def __init__(self, upstream, cert, key, plain, tls=True):
        self.upstream = upstream
        self.plain = plain
        self.tls = tls
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stopping = False
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(timeout=5)

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _refuse(self, c):
        if self.plain == "alert":
            c.sendall(b"\x15\x03\x01\x00\x02\x02\x46")    # fatal protocol_version
        elif self.plain == "reset":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()

    def _serve(self, c):
        try:
            first = c.recv(1, socket.MSG_PEEK)
            if first != b"\x16" or not self.tls:
                return self._refuse(c)
            t = self.ctx.wrap_socket(c, server_side=True)
            u = socket.create_connection(self.upstream)
        except OSError:
            c.close()
            return

        def pipe(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        threading.Thread(target=pipe, args=(u, t), daemon=True).start()
        pipe(t, u)


@pytest.mark.parametrize("plain_answer", ["close", "reset", "alert"])
def test_local_tls_front_fallback(proxy, image, self_signed, plain_answer):
    """A local TLS registry that closes, resets or sends an alert on a plain
    request: the client goes on over https at once (no retries of the
    plain attempt), and stays there."""
    digest, blob = image["layers"][0]["digest"], image["blob"]
    with TlsFront(("127.0.0.1", proxy.port), *self_signed, plain=plain_answer) as front:
        r = tail_probe(front.host, digest, read=(7, 100))
        assert r.data == blob[-TAIL:] + blob[7:107] and r.info["size"] == len(blob)
        assert r.stats["scheme_fallbacks"] == 1
        st = r.stats["http"]
        assert st["attempts"]["blob_get"] == 3 and st["failures"]["blob_get"] == 1 and st["retries"]["blob_get"] == 0
        assert log3(proxy) == [["GET", blob_path(digest), 206], ["GET", blob_path(digest), 206]]
        assert r.elapsed < 3


def test_local_neither_scheme(proxy, image, self_signed):
    """A local server that answers neither scheme: the plain attempt's
    error (after its retries) is the one that counts, the https one is
    named too."""
    with TlsFront(("127.0.0.1", proxy.port), *self_signed, plain="reset", tls=False) as front:
        r = tail_probe(front.host, image["layers"][0]["digest"], args=("--backoff-ms", "5"), expect_ok=False)
        assert "ECONNRESET" in r.err and "GET http://%s/" % front.host in r.err, r.err
        assert "after retries" in r.err and "(and over https: GET https://%s/" % front.host in r.err, r.err
        assert r.stats["scheme_fallbacks"] == 1
        assert r.elapsed < 5
