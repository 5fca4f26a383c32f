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
    never later than its deadline.

Run from the source tree (meson sets HOLDFAST_FETCH_PROBE):
  HOLDFAST_FETCH_PROBE=build/tests/integration/fetch-probe \\
      /usr/bin/python3 -m pytest -q tests/integration/test_fetch.py
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import faultproxy as fp  # noqa: E402
import registryutil as ru  # noqa: E402

PROBE = os.environ.get("HOLDFAST_FETCH_PROBE") or os.path.join(HERE, "..", "..", "build", "tests", "integration",
                                                                "fetch-probe")
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
                     {"kind": "reset", "when": "headers", "count": 1, "path": "/manifests/"})
    r = probe("--backoff-ms", "20", "open", layer_ref(proxy.host, image))
    assert r.json()["size"] == len(image["blob"])
    r = probe("--backoff-ms", "20", "resolve", "%s/%s:v1" % (proxy.host, REPO))
    assert r.json()["manifest_digest"] == image["digest"]
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
    # no hosts.toml: a local registry is tried over https first, without verification
    r = probe("read", ref, "5", "10")
    assert r.out == image["blob"][5:15] and r.stats["http"]["http2"] >= 1
