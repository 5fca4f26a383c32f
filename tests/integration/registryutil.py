"""Real OCI registries on 127.0.0.1 for the integration tests and benchmarks.

A Registry is one `docker-registry serve` (Debian's distribution 2.8) with
its config, storage, htpasswd file, certificate and log in a private
temporary directory. It listens on 127.0.0.1 only, plain HTTP, with blob
and manifest deletion enabled, and one of three kinds of authentication:

  auth=None      anonymous push and pull
  auth="basic"   HTTP Basic against an htpasswd (bcrypt) file
  auth="token"   Bearer tokens (the Docker token protocol) issued by a
                 TokenServer run in this process, on its own port

Stopping a Registry (also on a failed test: use it as a context manager or
through registry_fixture()) kills the one pid it started and removes its
directory.

The rest is a small registry client on urllib: RegistryClient answers the
401 challenges (Basic or Bearer) and push_image() uploads blobs and
manifests, Docker schema 2 or OCI, with an image index for several
platforms.

docker-registry 2.8's token verification (registry/auth/token/token.go),
which the TokenServer is written against:
  - The JWT header must name its key with `x5c` (a certificate chain that
    verifies up to the `rootcertbundle`) or `kid`; a `kid` is looked up as
    the libtrust fingerprint of a public key in the bundle (see
    libtrust_key_id()), not as an arbitrary name. A token with neither is
    refused, whatever its signature.
  - `aud` must equal the configured service, `iss` the configured issuer.
  - exp and nbf are checked with 60 s of leeway (token.Leeway): a token is
    accepted until exp + 60 s. The TokenServer subtracts that leeway from
    the exp it signs, so that `expires_in` is really the time the registry
    accepts a token for.
  - A missing exp is 0, long expired; nbf is optional.
"""

import base64
import datetime
import gzip
import hashlib
import http.server
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

REGISTRY_BIN = "/usr/bin/docker-registry"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# eStargz layer annotations (stargz-snapshotter's names).
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"

MEDIA = {
    "oci": {"manifest": OCI_MANIFEST, "index": OCI_INDEX, "config": OCI_CONFIG, "layer": OCI_LAYER_GZIP},
    "docker": {"manifest": DOCKER_MANIFEST, "index": DOCKER_LIST, "config": DOCKER_CONFIG,
               "layer": DOCKER_LAYER_GZIP},
}
# distribution 2.8 answers 404 MANIFEST_UNKNOWN for an OCI manifest or
# index unless Accept names its type.
ACCEPT_ALL = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

# docker-registry 2.8 accepts a token until exp + LEEWAY (token.Leeway).
TOKEN_LEEWAY = 60


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that
    cannot bind port 0 and report it; callers retry on a lost race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def basic_auth_header(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode("ascii")


# --- plain HTTP ---------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: object     # email.message.Message: case-insensitive get()
    body: bytes
    url: str            # after redirects

    def json(self):
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENERS = {
    True: urllib.request.build_opener(urllib.request.ProxyHandler({})),
    False: urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect()),
}


def registry_get(url, headers=None, method="GET", data=None, follow_redirects=True, timeout=30):
    """One request, no authentication dance: returns a Response for every
    HTTP status (urllib's HTTPError is not raised). Redirects are followed
    unless follow_redirects is False; urllib keeps Range and Authorization
    on the new request."""
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)
    try:
        with _OPENERS[follow_redirects].open(req, timeout=timeout) as r:
            return Response(r.status, r.headers, r.read(), r.url)
    except urllib.error.HTTPError as e:
        with e:
            return Response(e.code, e.headers, e.read(), e.url)


def parse_challenge(value):
    """('bearer'|'basic', {param: value}) of a WWW-Authenticate header."""
    scheme, _, rest = value.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def fetch_token(realm, service, scopes, auth=None, timeout=30):
    """GETs a token from a token server: a Response whose json() has
    `token`, `access_token` and `expires_in` on success."""
    query = [("service", service)] + [("scope", s) for s in scopes]
    headers = {"Authorization": basic_auth_header(*auth)} if auth else {}
    sep = "&" if "?" in realm else "?"
    return registry_get(realm + sep + urllib.parse.urlencode(query), headers, timeout=timeout)


class RegistryClient:
    """Requests to one registry that answer its 401 challenges: Basic with
    `auth` (user, password), or Bearer with a token fetched from the
    challenge's realm for the challenge's scope (anonymously without
    `auth`). The last Authorization that worked is sent with every later
    request; a 401 fetches a new one once."""

    def __init__(self, url, auth=None):
        self.url = url.rstrip("/")
        self.auth = auth
        self.authorization = None

    def request(self, method, path, data=None, headers=None, follow_redirects=True):
        url = path if path.startswith("http") else self.url + path
        headers = dict(headers or {})
        if self.authorization:
            headers["Authorization"] = self.authorization
        r = registry_get(url, headers, method, data, follow_redirects)
        if r.status != 401 or "WWW-Authenticate" not in r.headers:
            return r
        scheme, params = parse_challenge(r.headers["WWW-Authenticate"])
        if scheme == "basic" and self.auth:
            self.authorization = basic_auth_header(*self.auth)
        elif scheme == "bearer":
            scopes = params["scope"].split(" ") if params.get("scope") else []
            t = fetch_token(params["realm"], params.get("service", ""), scopes, self.auth)
            if t.status != 200:
                return r
            self.authorization = "Bearer " + t.json()["token"]
        else:
            return r
        headers["Authorization"] = self.authorization
        return registry_get(url, headers, method, data, follow_redirects)

    def get(self, path, headers=None, follow_redirects=True):
        return self.request("GET", path, headers=headers, follow_redirects=follow_redirects)

    def get_manifest(self, repo, reference, accept=ACCEPT_ALL):
        return self.get("/v2/%s/manifests/%s" % (repo, reference), {"Accept": accept})

    def get_blob(self, repo, digest, byte_range=None):
        """byte_range: (first, last) inclusive."""
        headers = {"Range": "bytes=%d-%d" % byte_range} if byte_range else {}
        return self.get("/v2/%s/blobs/%s" % (repo, digest), headers)


def _expect(r, statuses, what):
    if r.status not in statuses:
        raise AssertionError("%s: HTTP %d %s" % (what, r.status, r.body[:500].decode(errors="replace")))
    return r


def _client(registry, auth):
    """registry: a Registry (its credentials are the default auth) or a URL."""
    if isinstance(registry, Registry):
        return RegistryClient(registry.url, auth or registry.credentials)
    return RegistryClient(registry, auth)


def push_blob(client, repo, data):
    """Uploads one blob (HEAD first: skipped if present); returns its digest.
    Monolithic upload: POST opens an upload session, one PUT with the
    digest sends all the bytes and closes it."""
    digest = sha256_digest(data)
    if client.request("HEAD", "/v2/%s/blobs/%s" % (repo, digest)).status == 200:
        return digest
    r = _expect(client.request("POST", "/v2/%s/blobs/uploads/" % repo, data=b""), (202,), "start upload")
    # Location may be relative and already carries a query (_state=...).
    location = urllib.parse.urljoin(client.url + "/", r.headers["Location"])
    sep = "&" if "?" in location else "?"
    _expect(client.request("PUT", location + sep + urllib.parse.urlencode({"digest": digest}), data=data,
                           headers={"Content-Type": "application/octet-stream"}),
            (201,), "upload %s" % digest)
    return digest


def push_layer_blob(registry, repo, data, auth=None):
    """Uploads one blob to registry (a Registry or URL); returns
    {"digest", "size"}."""
    return {"digest": push_blob(_client(registry, auth), repo, data), "size": len(data)}


def put_manifest(client, repo, reference, media_type, body):
    """PUTs a manifest or index; returns its digest (as the registry says)."""
    r = _expect(client.request("PUT", "/v2/%s/manifests/%s" % (repo, reference), data=body,
                               headers={"Content-Type": media_type}),
                (201,), "put manifest %s:%s" % (repo, reference))
    digest = r.headers.get("Docker-Content-Digest")
    assert digest == sha256_digest(body), "registry digest %s" % digest
    return digest


# --- images -------------------------------------------------------------------

@dataclass
class Layer:
    data: bytes                # the blob as stored
    media_type: str = None     # default: the gzip layer type of the manifest's kind
    annotations: dict = None   # e.g. {TOC_DIGEST_ANNOTATION: ..., UNCOMPRESSED_SIZE_ANNOTATION: ...}
    diff_id: str = None        # default: sha256 of the gunzipped blob


def tar_gz(files, mtime=1_700_000_000):
    """A gzipped tar of {name: bytes} (regular files, mode 0644): a layer
    blob for tests that do not need eStargz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def _diff_id(layer):
    if layer.diff_id:
        return layer.diff_id
    mt = layer.media_type or ""
    if mt.endswith(".tar"):
        return sha256_digest(layer.data)
    if mt and not mt.endswith("gzip"):
        raise ValueError("pass diff_id for a layer of type %s" % mt)
    # eStargz blobs are several gzip members back to back: gzip.decompress
    # reads them all.
    return sha256_digest(gzip.decompress(layer.data))


def _platform(p):
    """("linux", "arm64"[, "v8"]) -> OCI platform object."""
    out = {"architecture": p[1], "os": p[0]}
    if len(p) > 2:
        out["variant"] = p[2]
    return out


def push_image(registry, repo, tag, layers, config=None, media="oci", platforms=None, auth=None):
    """Pushes `layers` (Layer objects) as repo:tag and returns what was made.

    media: "oci" or "docker" (schema 2). config: None builds a minimal image
    config per platform (rootfs.diff_ids from the layers); a dict or bytes
    is pushed as is. platforms: None pushes one linux/amd64 manifest under
    the tag; a list of (os, arch[, variant]) pushes one manifest per
    platform (same layers, a config naming the platform) and an index (OCI)
    or manifest list (Docker) under the tag.

    Returns {"repo", "tag", "digest" (what the tag names), "media_type"
    (of that), "index", "index_size" (None without platforms), "manifest",
    "manifest_size" (the single manifest; None with platforms),
    "manifests": [{"platform", "digest", "size", "config"}],
    "layers": [{"digest", "size", "media_type", "diff_id", "annotations"}]}.
    """
    client = _client(registry, auth)
    types = MEDIA[media]
    descs = []
    for layer in layers:
        digest = push_blob(client, repo, layer.data)
        d = {"mediaType": layer.media_type or types["layer"], "digest": digest, "size": len(layer.data)}
        if layer.annotations:
            d["annotations"] = dict(layer.annotations)
        descs.append((d, _diff_id(layer)))

    manifests = []
    for plat in platforms or [("linux", "amd64")]:
        if config is None:
            cfg = dict(_platform(plat), created="2024-01-01T00:00:00Z", config={},
                       rootfs={"type": "layers", "diff_ids": [diff_id for _, diff_id in descs]},
                       history=[{"created": "2024-01-01T00:00:00Z", "created_by": "holdfast tests"}
                                for _ in descs])
            cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
        else:
            cfg_bytes = config if isinstance(config, bytes) else json.dumps(config, sort_keys=True).encode()
        cfg_digest = push_blob(client, repo, cfg_bytes)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": types["manifest"],
            "config": {"mediaType": types["config"], "digest": cfg_digest, "size": len(cfg_bytes)},
            "layers": [d for d, _ in descs],
        }, indent=2).encode()
        # With an index, each manifest goes in by digest before the index
        # that names it: the registry checks that it exists.
        ref = sha256_digest(manifest) if platforms else tag
        manifests.append({"platform": "/".join(plat), "config": cfg_digest, "size": len(manifest),
                          "digest": put_manifest(client, repo, ref, types["manifest"], manifest)})

    result = {
        "repo": repo, "tag": tag, "manifests": manifests,
        "index": None, "index_size": None, "manifest": None, "manifest_size": None,
        "layers": [{"digest": d["digest"], "size": d["size"], "media_type": d["mediaType"],
                    "diff_id": diff_id, "annotations": d.get("annotations", {})} for d, diff_id in descs],
    }
    if platforms:
        index = json.dumps({
            "schemaVersion": 2,
            "mediaType": types["index"],
            "manifests": [{"mediaType": types["manifest"], "digest": m["digest"], "size": m["size"],
                           "platform": _platform(plat)} for m, plat in zip(manifests, platforms)],
        }, indent=2).encode()
        digest = put_manifest(client, repo, tag, types["index"], index)
        result.update(digest=digest, media_type=types["index"], index=digest, index_size=len(index))
    else:
        digest = manifests[0]["digest"]
        result.update(digest=digest, media_type=types["manifest"], manifest=digest,
                      manifest_size=manifests[0]["size"])
    return result


# --- token server -------------------------------------------------------------

def libtrust_key_id(public_key):
    """The `kid` docker-registry 2.8 expects: libtrust's fingerprint, the
    first 240 bits of sha256(DER SubjectPublicKeyInfo) in base32, in
    twelve groups of four joined by ':'."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


class SigningKey:
    """A key and a self-signed certificate for it, as the registry's
    rootcertbundle holds it. alg: "ES256" (P-256) or "RS256" (RSA 2048)."""

    def __init__(self, alg="ES256", name="holdfast test token issuer"):
        if alg == "ES256":
            self.key = ec.generate_private_key(ec.SECP256R1())
        elif alg == "RS256":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError("unsupported alg %r" % alg)
        self.alg = alg
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder()
                     .subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.kid = libtrust_key_id(self.key.public_key())

    def cert_pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def x5c(self):
        """The `x5c` header value: standard (not URL-safe) base64 of DER."""
        return [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode("ascii")]

    def sign(self, data):
        if self.alg == "RS256":
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # JWS wants ECDSA signatures as r || s, 32 bytes each, not DER.
        r, s = decode_dss_signature(self.key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def parse_scope(scope):
    """"repository:a/b:pull,push" -> {"type", "name", "actions"}. The name
    may hold ':' (registry:catalog:*, host:port/...), the actions never."""
    typ, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return {"type": typ, "name": name, "actions": [a for a in actions.split(",") if a]}


class TokenServer:
    """A Docker token server (distribution's docs/spec/auth/token.md) on
    127.0.0.1, in a thread of this process.

    GET /token?service=S&scope=...&scope=... with optional Basic
    credentials, and POST /token with an OAuth2 password grant (form
    fields grant_type=password, username, password, service, scope
    space-separated), as containerd sends when it has a password.
    Known users get every action they ask for; without credentials only
    `pull` is granted, and only when anonymous_pull; bad credentials get a
    401. Tokens say `expires_in` and are refused by the registry that many
    seconds later.

    Counters (under self.lock): requests (every request to /token) and
    issued (one {"subject", "scopes", "access"} per token given out)."""

    def __init__(self, service, issuer, users, anonymous_pull=False, expires_in=300, alg="ES256",
                 key_header="x5c"):
        self.service = service
        self.issuer = issuer
        self.users = dict(users)
        self.anonymous_pull = anonymous_pull
        self.expires_in = expires_in
        self.key_header = key_header
        self.key = SigningKey(alg)
        self.lock = threading.Lock()
        self.requests = 0
        self.issued = []
        self._httpd = None
        self._thread = None

    @property
    def realm(self):
        return "http://127.0.0.1:%d/token" % self._httpd.server_address[1]

    def start(self):
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
        self._httpd.daemon_threads = True
        self._httpd.token_server = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="token-server", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
            self._httpd = None

    def make_token(self, access, subject="", expires_in=None, key_header=None, key=None, audience=None,
                   issuer=None):
        """A signed JWT granting `access` ([{"type", "name", "actions"}]).
        key_header: "x5c", "kid", "both" or "none" (none: the registry must
        refuse it); key: another SigningKey (one the registry does not
        trust)."""
        key = key or self.key
        key_header = key_header or self.key_header
        expires_in = self.expires_in if expires_in is None else expires_in
        now = time.time()
        header = {"typ": "JWT", "alg": key.alg}
        if key_header in ("x5c", "both"):
            header["x5c"] = key.x5c()
        if key_header in ("kid", "both"):
            header["kid"] = key.kid
        claims = {
            "iss": issuer or self.issuer,
            "sub": subject,
            "aud": audience or self.service,
            # ceil: the token lives at least expires_in seconds; minus the
            # leeway the registry adds back (see the module docstring).
            "exp": math.ceil(now + expires_in) - TOKEN_LEEWAY,
            "nbf": int(now) - 1,
            "iat": int(now),
            "jti": b64url(os.urandom(12)),
            "access": access,
        }
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         b64url(json.dumps(claims, separators=(",", ":")).encode()))
        return signing_input + "." + b64url(key.sign(signing_input.encode("ascii")))

    def _grant(self, user, scopes):
        """The token response for a checked user (None: anonymous)."""
        access = []
        for scope in scopes:
            res = parse_scope(scope)
            if user is None:
                res["actions"] = [a for a in res["actions"] if a == "pull" and res["type"] == "repository"]
            access.append(res)
        token = self.make_token(access, subject=user or "")
        with self.lock:
            self.issued.append({"subject": user, "scopes": list(scopes), "access": access})
        return {"token": token, "access_token": token, "expires_in": self.expires_in,
                "issued_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, fmt, *args):
        pass

    def _reply(self, status, obj, extra=()):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, ts, user, password, scopes):
        if user is not None and ts.users.get(user) != password:
            return self._reply(401, {"details": "bad credentials"},
                               [("WWW-Authenticate", 'Basic realm="holdfast-token"')])
        if user is None and not ts.anonymous_pull:
            return self._reply(401, {"details": "authentication required"},
                               [("WWW-Authenticate", 'Basic realm="holdfast-token"')])
        return self._reply(200, ts._grant(user, scopes))

    def do_GET(self):
        ts = self.server.token_server
        with ts.lock:
            ts.requests += 1
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            return self._reply(404, {"details": "not found"})
        q = urllib.parse.parse_qs(url.query)
        if q.get("service", [""])[0] != ts.service:
            return self._reply(400, {"details": "unknown service"})
        user = password = None
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:], validate=True).decode(errors="replace").partition(":")
            except ValueError:
                user = password = ""    # undecodable: bad credentials
        self._answer(ts, user, password, q.get("scope", []))

    def do_POST(self):
        ts = self.server.token_server
        with ts.lock:
            ts.requests += 1
        n = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(n).decode(errors="replace"))
        if urllib.parse.urlsplit(self.path).path != "/token":
            return self._reply(404, {"details": "not found"})
        if form.get("grant_type", [""])[0] != "password":
            return self._reply(400, {"error": "unsupported_grant_type"})
        if form.get("service", [""])[0] != ts.service:
            return self._reply(400, {"error": "invalid_request"})
        scopes = " ".join(form.get("scope", [])).split()
        self._answer(ts, form.get("username", [""])[0], form.get("password", [""])[0], scopes)


# --- the registry -------------------------------------------------------------

def _yaml(obj, indent=0):
    """Enough YAML for the config: nested dicts of scalars (strings as JSON
    strings, which YAML reads as double-quoted scalars)."""
    out = []
    for k, v in obj.items():
        if isinstance(v, dict):
            out.append("%s%s:\n%s" % (" " * indent, k, _yaml(v, indent + 2)))
        else:
            out.append("%s%s: %s\n" % (" " * indent, k, json.dumps(v)))
    return "".join(out)


class Registry:
    """One docker-registry on 127.0.0.1 (see the module docstring).

    auth: None, "basic" or "token"; user/password: the one account;
    anonymous_pull, token_expires_in, token_alg, token_key_header: passed to
    the TokenServer. base_dir: where the private directory is made.

    Attributes once started: url ("http://127.0.0.1:PORT"), host
    ("127.0.0.1:PORT"), port, dir, log_path, credentials ((user, password)
    or None), token_server (the TokenServer, or None)."""

    SERVICE = "holdfast-test-registry"
    ISSUER = "holdfast-test-issuer"

    def __init__(self, auth=None, user="holdfast", password="holdfast-pw", anonymous_pull=False,
                 token_expires_in=300, token_alg="ES256", token_key_header="x5c", base_dir=None):
        if auth not in (None, "basic", "token"):
            raise ValueError("auth must be None, 'basic' or 'token'")
        self.auth = auth
        self.credentials = (user, password) if auth else None
        self._token_args = {"anonymous_pull": anonymous_pull, "expires_in": token_expires_in,
                            "alg": token_alg, "key_header": token_key_header}
        self.base_dir = base_dir
        self.dir = None
        self.proc = None
        self.port = None
        self.token_server = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def log_path(self):
        return os.path.join(self.dir, "registry.log")

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def client(self, auth=None):
        """A RegistryClient with this registry's credentials (or `auth`)."""
        return RegistryClient(self.url, auth or self.credentials)

    def _config(self):
        cfg = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": os.path.join(self.dir, "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # A fixed secret: without one the registry logs a warning and
            # picks a random one.
            "http": {"addr": self.host, "secret": "holdfast-test-secret"},
        }
        if self.auth == "basic":
            htpasswd = os.path.join(self.dir, "htpasswd")
            subprocess.run(["htpasswd", "-B", "-b", "-c", htpasswd, *self.credentials], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            cfg["auth"] = {"htpasswd": {"realm": "holdfast-test", "path": htpasswd}}
        elif self.auth == "token":
            bundle = os.path.join(self.dir, "token-ca.pem")
            with open(bundle, "wb") as f:
                f.write(self.token_server.key.cert_pem())
            cfg["auth"] = {"token": {"realm": self.token_server.realm, "service": self.SERVICE,
                                     "issuer": self.ISSUER, "rootcertbundle": bundle}}
        return cfg

    def start(self, timeout=15):
        self.dir = tempfile.mkdtemp(prefix="holdfast-registry-", dir=self.base_dir)
        try:
            if self.auth == "token":
                self.token_server = TokenServer(self.SERVICE, self.ISSUER, [self.credentials],
                                                **self._token_args).start()
            # free_port() can race with another process: retry a few ports.
            for _ in range(5):
                self.port = free_port()
                if self._spawn(timeout):
                    return self
                if "address already in use" not in self.log():
                    break
            raise AssertionError("docker-registry did not start; log:\n" + self.log()[-4000:])
        except BaseException:
            self.stop()
            raise

    def _spawn(self, timeout):
        """Starts docker-registry; True once /v2/ answers, False if it
        exited."""
        config = os.path.join(self.dir, "config.yml")
        with open(config, "w") as f:
            f.write(_yaml(self._config()))
        with open(self.log_path, "ab") as log:
            # setpriv execs the registry with PR_SET_PDEATHSIG: it dies with
            # this process even when pytest is killed before its teardown
            # (a meson timeout sends SIGTERM). Its own session keeps a
            # Ctrl-C in the terminal from reaching it first.
            self.proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", REGISTRY_BIN, "serve", config],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            try:
                # 401 is ready too: /v2/ needs credentials with auth.
                if registry_get(self.url + "/v2/", timeout=1).status in (200, 401):
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError("docker-registry not ready after %ds; log:\n%s" % (timeout, self.log()[-4000:]))

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.token_server:
            self.token_server.stop()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def registry_fixture(scope="module", **kwargs):
    """A pytest fixture yielding a started Registry(**kwargs), stopped after
    its scope even when tests fail:
        registry = registryutil.registry_fixture(auth="basic")"""
    import pytest

    @pytest.fixture(scope=scope)
    def fixture():
        with Registry(**kwargs) as reg:
            yield reg
    return fixture

