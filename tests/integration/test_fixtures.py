"""Tests of the registry fixtures themselves (registryutil.py,
faultproxy.py) against a real docker-registry on 127.0.0.1: pushes in both
manifest flavours and with an index, Basic and token auth as distribution
2.8 checks them, and every fault of the proxy seen from a client.

Run from the source tree:
  /usr/bin/python3 -m pytest -q tests/integration/test_fixtures.py
"""

import base64
import gzip
import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import faultproxy as fp  # noqa: E402
import registryutil as ru  # noqa: E402

REPO = "holdfast/fixtures"
# distribution 2.8 answers 404 for an OCI manifest unless Accept names it.
ACCEPT_OCI = {"Accept": ru.OCI_MANIFEST}

plain = ru.registry_fixture()
basic = ru.registry_fixture(auth="basic")
token_reg = ru.registry_fixture(auth="token")


@pytest.fixture(scope="module")
def image(plain):
    """An OCI image with two layers; .blob is the bigger one (~300 KB)."""
    rnd = os.urandom(300_000)
    layers = [
        ru.Layer(ru.tar_gz({"big": rnd}), annotations={
            ru.TOC_DIGEST_ANNOTATION: ru.sha256_digest(b"not a real toc"),
            ru.UNCOMPRESSED_SIZE_ANNOTATION: "301568"}),
        ru.Layer(ru.tar_gz({"etc/small": b"small\n"})),
    ]
    res = ru.push_image(plain, REPO, "v1", layers)
    res["blob"] = layers[0].data
    res["blob_path"] = "/v2/%s/blobs/%s" % (REPO, res["layers"][0]["digest"])
    return res


@pytest.fixture
def proxy(plain):
    with fp.FaultProxy(plain.url) as p:
        yield p


def raw_get(host, path, headers=None, timeout=10):
    """(connection, response) for a GET with http.client, for answers that
    urllib would hide."""
    conn = http.client.HTTPConnection(host, timeout=timeout)
    conn.request("GET", path, headers=headers or {})
    return conn, conn.getresponse()


def bearer(token):
    return {"Authorization": "Bearer " + token}


def client_auth(client):
    return {"Authorization": client.authorization}


def pull_access(repo, actions=("pull",)):
    return [{"type": "repository", "name": repo, "actions": list(actions)}]


# --- pushing and fetching -------------------------------------------------------

def test_push_oci_image(plain, image):
    m = ru.registry_get(plain.url + "/v2/%s/manifests/v1" % REPO, ACCEPT_OCI)
    assert m.status == 200
    assert m.headers["Content-Type"] == ru.OCI_MANIFEST
    assert m.headers["Docker-Content-Digest"] == image["digest"] == image["manifest"]
    assert len(m.body) == image["manifest_size"]
    man = m.json()
    assert man["mediaType"] == ru.OCI_MANIFEST and man["config"]["mediaType"] == ru.OCI_CONFIG
    assert [layer["digest"] for layer in man["layers"]] == [layer["digest"] for layer in image["layers"]]
    assert man["layers"][0]["mediaType"] == ru.OCI_LAYER_GZIP
    assert man["layers"][0]["annotations"][ru.UNCOMPRESSED_SIZE_ANNOTATION] == "301568"
    assert ru.TOC_DIGEST_ANNOTATION in man["layers"][0]["annotations"]

    cfg = ru.registry_get(plain.url + "/v2/%s/blobs/%s" % (REPO, man["config"]["digest"])).json()
    assert (cfg["os"], cfg["architecture"]) == ("linux", "amd64")
    assert cfg["rootfs"]["diff_ids"] == [layer["diff_id"] for layer in image["layers"]]
    assert cfg["rootfs"]["diff_ids"][0] == ru.sha256_digest(gzip.decompress(image["blob"]))

    whole = ru.registry_get(plain.url + image["blob_path"])
    assert whole.status == 200 and whole.body == image["blob"]
    part = ru.registry_get(plain.url + image["blob_path"], {"Range": "bytes=1000-1999"})
    assert part.status == 206
    assert part.headers["Content-Range"] == "bytes 1000-1999/%d" % len(image["blob"])
    assert part.body == image["blob"][1000:2000]
    head = ru.registry_get(plain.url + image["blob_path"], method="HEAD")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(image["blob"])


@pytest.mark.parametrize("media", ["docker", "oci"])
def test_push_index_two_platforms(plain, media):
    types = ru.MEDIA[media]
    layer = ru.Layer(ru.tar_gz({"f": media.encode()}))
    res = ru.push_image(plain, REPO + "-" + media, "multi", [layer], media=media,
                        platforms=[("linux", "amd64"), ("linux", "arm64", "v8")])
    assert res["manifest"] is None and res["digest"] == res["index"]
    r = ru.registry_get(plain.url + "/v2/%s-%s/manifests/multi" % (REPO, media), {"Accept": ru.ACCEPT_ALL})
    assert r.status == 200 and r.headers["Content-Type"] == types["index"]
    assert r.headers["Docker-Content-Digest"] == res["index"] and len(r.body) == res["index_size"]
    index = r.json()
    assert [m["platform"] for m in index["manifests"]] == [
        {"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64", "variant": "v8"}]
    assert [m["digest"] for m in index["manifests"]] == [m["digest"] for m in res["manifests"]]
    for want, entry in zip(res["manifests"], index["manifests"]):
        m = ru.registry_get(plain.url + "/v2/%s-%s/manifests/%s" % (REPO, media, entry["digest"]),
                            {"Accept": types["manifest"]})
        assert m.status == 200 and m.headers["Content-Type"] == types["manifest"]
        man = m.json()
        assert man["mediaType"] == types["manifest"] and man["config"]["digest"] == want["config"]
        assert man["layers"][0]["mediaType"] == types["layer"]
        cfg = ru.registry_get(plain.url + "/v2/%s-%s/blobs/%s" % (REPO, media, want["config"])).json()
        assert cfg["architecture"] == entry["platform"]["architecture"]


def test_push_layer_blob(plain):
    data = os.urandom(5000)
    got = ru.push_layer_blob(plain, REPO, data)
    assert got == {"digest": ru.sha256_digest(data), "size": 5000}
    assert ru.registry_get(plain.url + "/v2/%s/blobs/%s" % (REPO, got["digest"])).body == data
    # Pushing it again finds it in place.
    assert ru.push_layer_blob(plain, REPO, data) == got


# --- authentication --------------------------------------------------------------

def test_basic_auth(basic):
    r = ru.registry_get(basic.url + "/v2/")
    assert r.status == 401
    assert ru.parse_challenge(r.headers["WWW-Authenticate"]) == ("basic", {"realm": "holdfast-test"})
    user, password = basic.credentials
    assert ru.registry_get(basic.url + "/v2/", {"Authorization": ru.basic_auth_header(user, "no")}).status == 401
    assert ru.registry_get(basic.url + "/v2/", {"Authorization": ru.basic_auth_header(user, password)}).status == 200

    res = ru.push_image(basic, REPO, "basic", [ru.Layer(ru.tar_gz({"b": b"basic"}))])
    assert ru.registry_get(basic.url + "/v2/%s/manifests/basic" % REPO).status == 401
    m = basic.client().get_manifest(REPO, "basic")
    assert m.status == 200 and m.headers["Docker-Content-Digest"] == res["digest"]


def test_token_challenge_scope_and_grants(token_reg):
    ts = token_reg.token_server
    res = ru.push_image(token_reg, REPO, "tok", [ru.Layer(ru.tar_gz({"t": b"token"}))])
    assert ts.requests >= 2          # a pull token, then a pull,push one
    assert any(sorted(i["access"][0]["actions"]) == ["pull", "push"] for i in ts.issued)
    path = "/v2/%s/manifests/tok" % REPO

    r = ru.registry_get(token_reg.url + path)
    assert r.status == 401
    scheme, ch = ru.parse_challenge(r.headers["WWW-Authenticate"])
    assert scheme == "bearer"
    assert ch == {"realm": ts.realm, "service": token_reg.SERVICE, "scope": "repository:%s:pull" % REPO}

    before = ts.requests
    t = ru.fetch_token(ch["realm"], ch["service"], [ch["scope"]], token_reg.credentials)
    assert t.status == 200 and ts.requests == before + 1
    body = t.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    assert ts.issued[-1] == {"subject": token_reg.credentials[0], "scopes": [ch["scope"]],
                             "access": pull_access(REPO)}
    ok = ru.registry_get(token_reg.url + path, {**bearer(body["token"]), "Accept": ru.ACCEPT_ALL})
    assert ok.status == 200 and ok.headers["Docker-Content-Digest"] == res["digest"]

    # The registry checks the token's access against each request's scope.
    other = ts.make_token(pull_access("someone/else"))
    r = ru.registry_get(token_reg.url + path, bearer(other))
    assert r.status == 401 and ru.parse_challenge(r.headers["WWW-Authenticate"])[1]["error"] == "insufficient_scope"
    r = ru.registry_get(token_reg.url + "/v2/%s/blobs/uploads/" % REPO, bearer(body["token"]), method="POST",
                        data=b"")
    assert r.status == 401
    # 2.8 builds the challenge's actions from a Go map: any order.
    scope = ru.parse_scope(ru.parse_challenge(r.headers["WWW-Authenticate"])[1]["scope"])
    assert scope["name"] == REPO and sorted(scope["actions"]) == ["pull", "push"]

    # The token server: bad or missing credentials, and the OAuth2 form.
    assert ru.fetch_token(ts.realm, ts.service, [ch["scope"]], (token_reg.credentials[0], "no")).status == 401
    assert ru.fetch_token(ts.realm, ts.service, [ch["scope"]]).status == 401
    form = "grant_type=password&service=%s&scope=%s&username=%s&password=%s" % (
        ts.service, ch["scope"], *token_reg.credentials)
    t = ru.registry_get(ts.realm, method="POST", data=form.encode(),
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert t.status == 200
    r = ru.registry_get(token_reg.url + path, {**bearer(t.json()["access_token"]), "Accept": ru.OCI_MANIFEST})
    assert r.status == 200


@pytest.mark.parametrize("key_header,status", [("x5c", 200), ("kid", 200), ("both", 200), ("none", 401)])
def test_token_key_header(token_reg, key_header, status):
    """distribution 2.8 finds the verification key only through x5c (a
    chain up to rootcertbundle) or kid (a libtrust fingerprint)."""
    ru.push_image(token_reg, REPO, "keys", [ru.Layer(ru.tar_gz({"k": b"k"}))])
    token = token_reg.token_server.make_token(pull_access(REPO), key_header=key_header)
    r = ru.registry_get(token_reg.url + "/v2/%s/manifests/keys" % REPO, {**bearer(token), **ACCEPT_OCI})
    assert r.status == status
    if status == 401:
        assert ru.parse_challenge(r.headers["WWW-Authenticate"])[1]["error"] == "invalid_token"


def test_token_refused_when_untrusted(token_reg):
    ts = token_reg.token_server
    path = token_reg.url + "/v2/%s/manifests/keys" % REPO
    stranger = ru.SigningKey()
    for token in [ts.make_token(pull_access(REPO), key_header="x5c", key=stranger),
                  ts.make_token(pull_access(REPO), key_header="kid", key=stranger),
                  ts.make_token(pull_access(REPO), audience="another-service"),
                  ts.make_token(pull_access(REPO), issuer="another-issuer")]:
        assert ru.registry_get(path, bearer(token)).status == 401


def test_token_expiry_and_refresh(token_reg):
    ts = token_reg.token_server
    ru.push_image(token_reg, REPO, "exp", [ru.Layer(ru.tar_gz({"e": b"e"}))])
    path = "/v2/%s/manifests/exp" % REPO
    token = ts.make_token(pull_access(REPO), expires_in=1)
    t0 = time.monotonic()
    assert ru.registry_get(token_reg.url + path, {**bearer(token), **ACCEPT_OCI}).status == 200
    # Refused between 1 and 2 s later (exp is rounded up to a second).
    time.sleep(max(0.0, 2.2 - (time.monotonic() - t0)))
    r = ru.registry_get(token_reg.url + path, bearer(token))
    assert r.status == 401 and ru.parse_challenge(r.headers["WWW-Authenticate"])[1]["error"] == "invalid_token"

    # A client holding the expired token gets a new one on the 401.
    client = token_reg.client()
    client.authorization = "Bearer " + token
    before = ts.requests
    assert client.get(path, ACCEPT_OCI).status == 200 and ts.requests == before + 1


def test_token_rs256_kid_and_anonymous_pull():
    with ru.Registry(auth="token", token_alg="RS256", token_key_header="kid", anonymous_pull=True) as reg:
        ts = reg.token_server
        ru.push_image(reg, REPO, "anon", [ru.Layer(ru.tar_gz({"a": b"a"}))])
        scope = "repository:%s:pull,push" % REPO
        t = ru.fetch_token(ts.realm, ts.service, [scope])
        assert t.status == 200 and ts.issued[-1]["subject"] is None
        assert ts.issued[-1]["access"] == pull_access(REPO)     # push is not granted
        token = t.json()["token"]
        assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==")) == {
            "typ": "JWT", "alg": "RS256", "kid": ts.key.kid}
        assert ru.registry_get(reg.url + "/v2/%s/manifests/anon" % REPO, {**bearer(token), **ACCEPT_OCI}
                               ).status == 200
        r = ru.registry_get(reg.url + "/v2/%s/blobs/uploads/" % REPO, bearer(token), method="POST", data=b"")
        assert r.status == 401
    assert reg.dir is None and reg.proc is None


def test_registry_cleanup():
    reg = ru.Registry().start()
    pid, d = reg.proc.pid, reg.dir
    assert ru.registry_get(reg.url + "/v2/").status == 200 and os.path.isdir(d)
    reg.stop()
    assert not os.path.exists(d)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --- the fault proxy ---------------------------------------------------------------

def test_proxy_forwards_and_counts(proxy, image):
    m = ru.registry_get(proxy.url + "/v2/%s/manifests/v1" % REPO, ACCEPT_OCI)
    assert m.status == 200 and m.headers["Docker-Content-Digest"] == image["digest"]
    assert ru.registry_get(proxy.url + image["blob_path"]).body == image["blob"]
    r = ru.registry_get(proxy.url + image["blob_path"], {"Range": "bytes=7-106"})
    assert r.status == 206 and r.body == image["blob"][7:107]
    assert ru.registry_get(proxy.url + image["blob_path"], method="HEAD").status == 200
    st = proxy.stats()
    assert st["requests"] == {"manifest": 1, "blob_get": 1, "range_get": 1, "head": 1}
    assert st["ranges"] == [{"path": image["blob_path"], "range": "bytes=7-106"}]
    assert st["bytes_sent"] == len(m.body) + len(image["blob"]) + 100
    assert [e[2] for e in st["log"]] == [200, 200, 206, 200]
    assert proxy.stats(reset=True)["bytes_sent"] and proxy.stats()["requests"] == {}

    # Uploads go through too: the registry's Location names the proxy.
    res = ru.push_image(proxy.url, REPO, "via-proxy", [ru.Layer(ru.tar_gz({"p": b"proxied"}))])
    assert ru.registry_get(proxy.url + "/v2/%s/manifests/via-proxy" % REPO, {"Accept": ru.ACCEPT_ALL}
                           ).headers["Docker-Content-Digest"] == res["digest"]


def test_fault_status(proxy, image):
    proxy.set_faults({"kind": "status", "status": 503, "retry_after": 2, "count": 1})
    r = ru.registry_get(proxy.url + image["blob_path"])
    assert r.status == 503 and r.headers["Retry-After"] == "2"
    assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert ru.registry_get(proxy.url + image["blob_path"]).status == 200
    proxy.set_faults({"kind": "status", "status": 429})
    for _ in range(3):
        r = ru.registry_get(proxy.url + image["blob_path"])
        assert r.status == 429 and "Retry-After" not in r.headers
    assert proxy.faults_json()[0]["applied"] == 3
    proxy.clear_faults()
    assert ru.registry_get(proxy.url + image["blob_path"]).status == 200
    assert proxy.stats()["faults"] == {"status": 4}


def test_fault_filters(proxy, image):
    manifest = proxy.url + "/v2/%s/manifests/v1" % REPO
    blob = proxy.url + image["blob_path"]
    proxy.set_faults({"kind": "status", "status": 500, "path": "/manifests/", "method": "GET", "count": 2},
                     {"kind": "status", "status": 502, "range_only": True})
    assert ru.registry_get(blob).status == 200
    assert ru.registry_get(manifest, ACCEPT_OCI, method="HEAD").status == 200
    assert ru.registry_get(blob, {"Range": "bytes=0-9"}).status == 502
    assert [ru.registry_get(manifest, ACCEPT_OCI).status for _ in range(3)] == [500, 500, 200]
    assert [f["applied"] for f in proxy.faults_json()] == [2, 1]
    with pytest.raises(ValueError):
        proxy.set_faults({"kind": "meteor"})
    with pytest.raises(ValueError):
        proxy.set_faults({"kind": "short", "seconds": 1})


def test_fault_reset(proxy, image):
    proxy.set_faults({"kind": "reset", "when": "headers", "count": 1})
    with pytest.raises(ConnectionError):
        raw_get(proxy.host, image["blob_path"])
    proxy.set_faults({"kind": "reset", "after_bytes": 1000, "count": 1})
    conn, resp = raw_get(proxy.host, image["blob_path"])
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(image["blob"])
    got = b""
    with pytest.raises(ConnectionResetError):
        while True:
            data = resp.read1(4096)
            if not data:
                break
            got += data
    assert len(got) <= 1000 and image["blob"].startswith(got)
    conn.close()
    assert ru.registry_get(proxy.url + image["blob_path"]).body == image["blob"]
    assert [e[2] for e in proxy.stats()["log"]] == [None, None, 200]


def test_fault_stall(proxy, image):
    proxy.set_faults({"kind": "stall", "seconds": 0.3, "count": 1})
    t0 = time.monotonic()
    assert ru.registry_get(proxy.url + image["blob_path"]).status == 200
    assert time.monotonic() - t0 >= 0.3
    proxy.set_faults({"kind": "stall", "when": "body", "after_bytes": 2000, "seconds": 0.5, "count": 1})
    conn, resp = raw_get(proxy.host, image["blob_path"], timeout=0.2)
    assert resp.status == 200
    with pytest.raises(socket.timeout):
        resp.read()
    conn.close()


def test_fault_short(proxy, image):
    proxy.set_faults({"kind": "short", "missing": 1000, "count": 1})
    conn, resp = raw_get(proxy.host, image["blob_path"])
    with pytest.raises(http.client.IncompleteRead) as e:
        resp.read()
    assert e.value.partial == image["blob"][:-1000]
    conn.close()
    proxy.set_faults({"kind": "short", "range_only": True})
    conn, resp = raw_get(proxy.host, image["blob_path"], {"Range": "bytes=0-99"})
    assert resp.status == 206 and resp.getheader("Content-Length") == "100"
    with pytest.raises(http.client.IncompleteRead) as e:
        resp.read()
    assert e.value.partial == image["blob"][:50]
    conn.close()


def test_fault_long(proxy, image):
    blob, total = image["blob"], len(image["blob"])
    proxy.set_faults({"kind": "long", "extra": 50, "count": 1})
    r = ru.registry_get(proxy.url + image["blob_path"], {"Range": "bytes=100-199"})
    assert r.status == 206 and r.headers["Content-Range"] == "bytes 100-249/%d" % total
    assert r.body == blob[100:250]

    # Lying: the headers of the range asked for, then 50 more bytes.
    proxy.set_faults({"kind": "long", "extra": 50, "lie": True, "count": 1})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nRange: bytes=100-199\r\n\r\n"
                  % (image["blob_path"].encode(), proxy.host.encode()))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Length: 100\r\n" in head
    assert b"Content-Range: bytes 100-199/%d\r\n" % total in head
    assert body == blob[100:250]


def test_fault_wrong_range(proxy, image):
    blob, total = image["blob"], len(image["blob"])
    proxy.set_faults({"kind": "wrong_range", "count": 1}, {"kind": "wrong_range", "shift": -100})
    r = ru.registry_get(proxy.url + image["blob_path"], {"Range": "bytes=100-199"})
    assert r.status == 206 and r.headers["Content-Range"] == "bytes 200-299/%d" % total
    assert r.body == blob[200:300]
    r = ru.registry_get(proxy.url + image["blob_path"], {"Range": "bytes=100-199"})
    assert r.headers["Content-Range"] == "bytes 0-99/%d" % total and r.body == blob[:100]


def test_fault_corrupt(proxy, image):
    blob = image["blob"]
    proxy.set_faults({"kind": "corrupt", "count": 1}, {"kind": "corrupt", "offset": 10, "nbytes": 4})
    r = ru.registry_get(proxy.url + image["blob_path"])
    diff = [i for i in range(len(blob)) if r.body[i] != blob[i]]
    assert r.status == 200 and len(r.body) == len(blob) and diff == [len(blob) // 2]
    r = ru.registry_get(proxy.url + image["blob_path"], {"Range": "bytes=1000-1099"})
    want = blob[1000:1100]
    assert [i for i in range(100) if r.body[i] != want[i]] == [10, 11, 12, 13]
    assert r.body[10] == want[10] ^ 0xFF


def test_fault_redirect_loop(proxy, image):
    url = proxy.url + image["blob_path"]
    proxy.set_faults({"kind": "redirect_loop"})
    r = ru.registry_get(url, follow_redirects=False)
    assert r.status == 307 and r.headers["Location"] == url
    assert ru.registry_get(url).status == 307      # urllib gives up on the loop

    proxy.set_faults({"kind": "redirect_loop", "mode": "pair", "count": 1})
    r = ru.registry_get(url, follow_redirects=False)
    assert r.headers["Location"] == proxy.url + "/__loop__" + image["blob_path"]
    back = ru.registry_get(r.headers["Location"], follow_redirects=False)
    assert back.status == 307 and back.headers["Location"] == url
    # The fault is spent: followed, the loop ends at the blob.
    proxy.set_faults({"kind": "redirect_loop", "mode": "pair", "count": 1})
    r = ru.registry_get(url)
    assert r.status == 200 and r.body == image["blob"]


def test_fault_redirect_blob(proxy, image):
    blob = image["blob"]
    proxy.set_faults({"kind": "redirect_blob", "ttl": 0.5})
    r = ru.registry_get(proxy.url + image["blob_path"], {"Range": "bytes=10-19"}, follow_redirects=False)
    assert r.status == 307
    location = r.headers["Location"]
    assert location.startswith(proxy.url + "/__blobstore/") and location.endswith(image["layers"][0]["digest"])
    got = ru.registry_get(location, {"Range": "bytes=5000-5999"})
    assert got.status == 206 and got.body == blob[5000:6000]
    assert "Docker-Content-Digest" not in got.headers
    assert ru.registry_get(location).body == blob
    followed = ru.registry_get(proxy.url + image["blob_path"], {"Range": "bytes=10-19"})
    assert followed.status == 206 and followed.body == blob[10:20] and "/__blobstore/" in followed.url

    time.sleep(0.6)
    expired = ru.registry_get(location)
    assert expired.status == 403 and b"AccessDenied" in expired.body
    # Asking the registry again gives a fresh location.
    again = ru.registry_get(proxy.url + image["blob_path"], {"Range": "bytes=0-9"})
    assert again.status == 206 and again.body == blob[:10] and again.url != location
    st = proxy.stats()
    assert st["requests"]["blobstore"] == 5 and st["requests"]["range_get"] == 3
    assert st["faults"] == {"redirect_blob": 3}


def test_fault_ignore_range(proxy, image):
    proxy.set_faults({"kind": "ignore_range"})
    r = ru.registry_get(proxy.url + image["blob_path"], {"Range": "bytes=0-99"})
    assert r.status == 200 and r.body == image["blob"] and "Content-Range" not in r.headers
    assert proxy.stats()["ranges"] == [{"path": image["blob_path"], "range": "bytes=0-99"}]


def test_link_latency(proxy, image):
    proxy.set_link(latency_ms=20)
    for _ in range(5):
        t0 = time.monotonic()
        assert ru.registry_get(proxy.url + "/v2/%s/manifests/v1" % REPO, ACCEPT_OCI).status == 200
        assert time.monotonic() - t0 >= 0.020


def test_link_rate_is_shared(proxy, image):
    size = len(image["blob"])
    proxy.set_link(rate_mbit=16)        # 2 MB/s
    t0 = time.monotonic()
    assert ru.registry_get(proxy.url + image["blob_path"]).body == image["blob"]
    one = time.monotonic() - t0
    assert one >= size * 8 / 16e6 * 0.85

    results = []
    threads = [threading.Thread(target=lambda: results.append(ru.registry_get(proxy.url + image["blob_path"])))
               for _ in range(2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    both = time.monotonic() - t0
    assert [r.body == image["blob"] for r in results] == [True, True]
    assert both >= 2 * size * 8 / 16e6 * 0.85


def test_proxy_token_auth_and_blobstore(token_reg):
    ts = token_reg.token_server
    res = ru.push_image(token_reg, REPO, "proxied", [ru.Layer(ru.tar_gz({"x": os.urandom(10_000)}))])
    layer = res["layers"][0]["digest"]
    with fp.FaultProxy(token_reg.url) as p:
        r = ru.registry_get(p.url + "/v2/%s/manifests/proxied" % REPO)
        assert ru.parse_challenge(r.headers["WWW-Authenticate"])[1]["realm"] == p.url + "/__token__/0"

        client = ru.RegistryClient(p.url, token_reg.credentials)
        assert client.get_manifest(REPO, "proxied").status == 200
        assert p.stats()["requests"]["token"] == 1

        # The blob store serves with the Authorization the client sent.
        p.set_faults({"kind": "redirect_blob"})
        b = client.get_blob(REPO, layer, (0, 99))
        assert b.status == 206 and b.body == ru.registry_get(
            token_reg.url + "/v2/%s/blobs/%s" % (REPO, layer), {**client_auth(client), "Range": "bytes=0-99"}).body

        # A fault on the token endpoint.
        p.set_faults({"kind": "status", "status": 503, "path": "^/__token__/", "count": 1})
        before = ts.requests
        fresh = ru.RegistryClient(p.url, token_reg.credentials)
        assert fresh.get_manifest(REPO, "proxied").status == 401
        assert fresh.get_manifest(REPO, "proxied").status == 200
        assert ts.requests == before + 1 and p.stats()["faults"]["status"] == 1


def test_cli(plain, image):
    proc = subprocess.Popen(["/usr/bin/python3", os.path.join(HERE, "faultproxy.py"), "--upstream", plain.url,
                             "--latency-ms", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "faultproxy.py printed no port"
        url = "http://127.0.0.1:%d" % int(proc.stdout.readline())
        fault = json.dumps([{"kind": "status", "status": 503, "count": 1}]).encode()
        assert ru.registry_get(url + "/__faults__", method="POST", data=fault).status == 200
        assert ru.registry_get(url + image["blob_path"]).status == 503
        assert ru.registry_get(url + image["blob_path"]).body == image["blob"]
        bad = ru.registry_get(url + "/__faults__", method="POST", data=b'[{"kind": "nope"}]')
        assert bad.status == 400 and "nope" in bad.json()["error"]
        assert ru.registry_get(url + "/__link__", method="POST", data=b'{"rate_mbit": 100}').status == 200
        assert ru.registry_get(url + "/__link__").json() == {"latency_ms": 5, "rate_mbit": 100}
        st = ru.registry_get(url + "/__stats__?reset=1").json()
        assert st["requests"] == {"blob_get": 2} and st["faults"] == {"status": 1}
        assert ru.registry_get(url + "/__stats__").json()["requests"] == {}
        assert ru.registry_get(url + "/__faults__").json()[0]["applied"] == 1
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.stderr.close()
    assert rc == 0, stderr
