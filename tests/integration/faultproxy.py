#!/usr/bin/python3
"""An HTTP/1.1 reverse proxy in front of a registry that injects faults and
emulates a slow link, for holdfast's registry client tests and benchmarks.

Every request to the proxy (127.0.0.1, a free port unless given) is
forwarded to the upstream registry with its Host, Authorization and Range
headers; bodies are streamed both ways. Threads: one per client connection
(ThreadingHTTPServer), each opening one upstream connection per request.
Faults, stats and realms are shared under FaultProxy.lock, the link's
token bucket under its own lock.

Bearer challenges are rewritten so that token requests go through the proxy
too: the realm of `WWW-Authenticate: Bearer realm="R",...` becomes
`<proxy>/__token__/<n>`, forwarded to R. Faults and stats see them as any
other request.

In-process:
    with FaultProxy(registry.url, latency_ms=20) as p:
        p.set_faults({"kind": "status", "status": 503, "count": 1})
        ... p.stats() ...
From the shell (prints the port on the first line of stdout; SIGTERM or
SIGINT stop it):
    /usr/bin/python3 faultproxy.py --upstream http://127.0.0.1:5000 \\
        [--port N] [--latency-ms 20] [--rate-mbit 100] [--faults JSON]
Control endpoints, on the proxy's own port (never forwarded, not counted):
    POST /__faults__   body: a JSON list of faults; replaces them ([] clears)
    GET  /__faults__   the faults, with how often each was applied
    POST /__link__     body: {"latency_ms": L, "rate_mbit": R}
    GET  /__stats__    the stats; ?reset=1 also zeroes them

A fault is a dict: {"kind": K, ...parameters..., "count": N, "path": RE,
"method": M, "range_only": bool}. count (default: unlimited) is how many
requests it is applied to; path (searched in the request path), method and
range_only (only requests with a Range header) narrow which requests it
matches. The first matching fault with occurrences left applies; one per
request. Kinds and their parameters:
  status         answer `status` (503) without asking upstream; a
                 Retry-After header when `retry_after` is set
  reset          TCP RST: `when` "body" (the default: after `after_bytes`,
                 default half the body; after the headers of an answer
                 without one) or "headers" (a few bytes into the status
                 line and headers)
  stall          sleep `seconds` (default 5) before answering (`when`
                 "headers", the default) or after `after_bytes` (default
                 half) of the body ("body"), then go on
  short          send `missing` (default half) fewer body bytes than the
                 Content-Length says, then close the connection
  long           only `bytes=A-B` requests: ask upstream for `extra` (default
                 4096) more bytes and send them all; `lie` false: with the
                 matching Content-Length and Content-Range; `lie` true:
                 with the headers of the range asked for (then close). At
                 the end of a blob fewer extra bytes exist.
  wrong_range    only `bytes=A-B` requests: ask upstream for the range
                 `shift` (default B-A+1) bytes further and relay it, with
                 its Content-Range naming that other range
  corrupt        XOR 0xff into `nbytes` (default 1) body bytes at `offset`
                 (default the middle)
  redirect_loop  307 to the same path (`mode` "self"), or to
                 /__loop__<path>, which always answers 307 back ("pair")
  redirect_blob  blob GETs: once upstream said 200/206, answer 307 to
                 /__blobstore/<token>/<digest> on the proxy, which serves the
                 blob from upstream (with the original Authorization, and
                 the Range of its own request), like object storage behind
                 a registry; after `ttl` seconds (default 60) the token
                 answers 403, and the client has to ask the registry again
  ignore_range   drop the Range header: upstream answers 200, whole blob
  content_range  a 206 from upstream goes on with the Content-Range `value`
                 (default "bytes {first}-{last}/{total}"), a template of
                 upstream's numbers, each of which may carry +N or -N
                 ("bytes {first+1}-{last}/{total}"); null drops the header.
                 `pad` (default 0) more body bytes (zeros) are sent, or,
                 negative, fewer (cut from the end), with a Content-Length
                 that matches: HTTP framing stays right, the range lies.
                 Any Range form (bytes=A-B, bytes=-N); other answers go on
                 as they are.
long, wrong_range, ignore_range and content_range match only requests with
a Range header.

Link emulation: `latency_ms` is slept once per request before it is
forwarded; `rate_mbit` caps the body bytes sent to all clients together
(a shared token bucket).

Stats (stats()): "requests" by kind (manifest, blob_get, range_get, head,
token, blobstore, other), "bytes_sent" (response bodies), "ranges" (a
{"path", "range"} per request with a Range header), "faults" (how often
each kind was applied) and "log" (the last 10000 [method, path, status,
t_start, t_end, range]; status None when the connection was reset or
broke; the times are this process's time.monotonic() when the request
came and when its answer was sent, t_end None until then or when it
broke; range the Range header, "" without one).
"""

import argparse
import http.client
import http.server
import io
import json
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse

KINDS = {"status", "reset", "stall", "short", "long", "wrong_range", "corrupt", "redirect_loop", "redirect_blob",
         "ignore_range", "content_range"}
RANGE_KINDS = {"long", "wrong_range", "ignore_range", "content_range"}
# Parameters of each kind, with their defaults (None: computed per request).
PARAMS = {
    "status": {"status": 503, "retry_after": None},
    "reset": {"when": "body", "after_bytes": None},
    "stall": {"when": "headers", "seconds": 5.0, "after_bytes": None},
    "short": {"missing": None},
    "long": {"extra": 4096, "lie": False},
    "wrong_range": {"shift": None},
    "corrupt": {"offset": None, "nbytes": 1},
    "redirect_loop": {"mode": "self"},
    "redirect_blob": {"ttl": 60.0},
    "ignore_range": {},
    "content_range": {"value": "bytes {first}-{last}/{total}", "pad": 0},
}
MATCHERS = {"kind", "count", "path", "method", "range_only"}

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "proxy-connection"}
BLOB_RE = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")
MANIFEST_RE = re.compile(r"^/v2/.+/manifests/[^/]+$")
CLOSED_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d+)$")
REALM_RE = re.compile(r'realm="([^"]*)"')
CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
TEMPLATE_RE = re.compile(r"\{(first|last|total)([+-]\d+)?\}")
CHUNK = 32 * 1024
LOG_MAX = 10000
UPSTREAM_TIMEOUT = 60


class Fault:
    """One fault spec (see the module docstring), validated, and how often
    it was applied (protected by FaultProxy.lock)."""

    def __init__(self, spec):
        spec = dict(spec)
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError("unknown fault kind %r" % kind)
        unknown = set(spec) - MATCHERS - set(PARAMS[kind])
        if unknown:
            raise ValueError("%s: unknown parameters %s" % (kind, sorted(unknown)))
        if spec.get("when", "body") not in ("headers", "body") or spec.get("mode", "self") not in ("self", "pair"):
            raise ValueError("%s: when is headers or body, mode is self or pair" % kind)
        if kind == "content_range" and (not isinstance(spec.get("value", ""), (str, type(None))) or
                                        not isinstance(spec.get("pad", 0), int)):
            raise ValueError("content_range: value is a string or null, pad an integer")
        self.kind = kind
        self.count = spec.get("count")
        self.path = spec.get("path")
        self._path_re = re.compile(self.path) if self.path else None
        self.method = spec.get("method")
        self.range_only = bool(spec.get("range_only")) or kind in RANGE_KINDS
        self.params = {k: spec.get(k, d) for k, d in PARAMS[kind].items()}
        self.applied = 0

    def matches(self, method, path, range_header):
        if self.count is not None and self.applied >= self.count:
            return False
        if self.method and self.method != method:
            return False
        if self._path_re and not self._path_re.search(path):
            return False
        if self.range_only and not range_header:
            return False
        if self.kind in ("long", "wrong_range") and not CLOSED_RANGE_RE.match(range_header):
            return False
        if self.kind == "redirect_blob" and not (method == "GET" and BLOB_RE.match(path)):
            return False
        return True

    def to_json(self):
        out = {"kind": self.kind, "count": self.count, "path": self.path, "method": self.method,
               "range_only": self.range_only, "applied": self.applied}
        out.update(self.params)
        return out


class Link:
    """Per-request latency and a bandwidth cap shared by all connections.

    The cap is a token bucket kept as a virtual clock: `_clock` is when the
    bytes granted so far will have gone out at the given rate. A sender
    reserves its chunk's time under the lock and sleeps until then outside
    it, so concurrent senders share the rate. An idle link saves up at most
    BURST seconds of credit."""

    BURST = 0.01

    def __init__(self, latency_ms=0, rate_mbit=0):
        self.lock = threading.Lock()
        self.latency_ms = latency_ms
        self.rate_mbit = rate_mbit
        self._clock = 0.0     # protected by lock

    def set(self, latency_ms=None, rate_mbit=None):
        with self.lock:
            if latency_ms is not None:
                self.latency_ms = latency_ms
            if rate_mbit is not None:
                self.rate_mbit = rate_mbit

    def delay(self, stopping):
        if self.latency_ms > 0:
            stopping.wait(self.latency_ms / 1000.0)

    def throttle(self, nbytes, stopping):
        with self.lock:
            if self.rate_mbit <= 0:
                return
            now = time.monotonic()
            self._clock = max(self._clock, now - self.BURST) + nbytes * 8 / (self.rate_mbit * 1e6)
            wait = self._clock - now
        if wait > 0:
            stopping.wait(wait)


class Stats:
    """What the proxy saw; protected by FaultProxy.lock."""

    def __init__(self):
        self.requests = {}
        self.bytes_sent = 0
        self.ranges = []
        self.faults = {}
        self.log = []

    def to_json(self):
        return {"requests": dict(self.requests), "bytes_sent": self.bytes_sent, "ranges": list(self.ranges),
                "faults": dict(self.faults), "log": [list(e) for e in self.log]}


def classify(method, path, range_header):
    """The kind of a request, for the stats."""
    if path.startswith("/__token__/"):
        return "token"
    if path.startswith("/__blobstore/"):
        return "blobstore"
    if method == "HEAD":
        return "head"
    if MANIFEST_RE.match(path):
        return "manifest"
    if method == "GET" and BLOB_RE.match(path):
        return "range_get" if range_header else "blob_get"
    return "other"


class _BlobStore:
    """Expiring tokens for redirect_blob: token -> (repo, digest,
    Authorization, deadline)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tokens = {}        # protected by lock

    def issue(self, repo, digest, authorization, ttl):
        token = secrets.token_urlsafe(16)
        with self.lock:
            self.tokens[token] = (repo, digest, authorization, time.monotonic() + ttl)
        return token

    def resolve(self, token, digest):
        """(repo, Authorization) while the token is valid for digest, else
        None."""
        with self.lock:
            entry = self.tokens.get(token)
        if not entry or entry[1] != digest or time.monotonic() > entry[3]:
            return None
        return entry[0], entry[2]


class _Reset(Exception):
    """The connection was reset on purpose: nothing more can be sent."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120           # an idle keep-alive connection ends by itself
    disable_nagle_algorithm = True
    _log_entry = None       # [method, path, status] of the request being answered

    def log_message(self, fmt, *args):
        if self.server.proxy.verbose:
            sys.stderr.write("faultproxy: %s\n" % (fmt % args))

    def setup(self):
        super().setup()
        self.server.proxy._track(self.connection, True)

    def finish(self):
        self.server.proxy._track(self.connection, False)
        super().finish()

    def send_response_only(self, code, message=None):
        # The status goes into the log entry before the client can see it,
        # so that stats() read after an answer always include it.
        if self._log_entry is not None:
            with self.server.proxy.lock:
                self._log_entry[2] = code
        super().send_response_only(code, message)

    def _handle(self):
        proxy = self.server.proxy
        self._body_done = False
        self._log_entry = None
        url = urllib.parse.urlsplit(self.path)
        if url.path in ("/__faults__", "/__stats__", "/__link__"):
            self._control(url)
            return
        range_header = self.headers.get("Range", "")
        kind = classify(self.command, url.path, range_header)
        fault = None
        # method, path, status, then the monotonic clock (s) when the
        # request came and when its answer was sent
        self._log_entry = [self.command, self.path, None, time.monotonic(), None, range_header]
        with proxy.lock:
            st = proxy._stats
            st.requests[kind] = st.requests.get(kind, 0) + 1
            if range_header:
                st.ranges.append({"path": url.path, "range": range_header})
            st.log.append(self._log_entry)
            del st.log[:-LOG_MAX]
            f = next((f for f in proxy.faults if f.matches(self.command, url.path, range_header)), None)
            if f:
                f.applied += 1
                st.faults[f.kind] = st.faults.get(f.kind, 0) + 1
                fault = dict(f.params, kind=f.kind)
        try:
            proxy.link.delay(proxy.stopping)
            self._serve(url, fault)
            self._log_entry[4] = time.monotonic()
        except _Reset:
            with proxy.lock:
                self._log_entry[2] = None
        except (OSError, ValueError, http.client.HTTPException):
            # The client or upstream went away mid-answer, or the request's
            # chunked framing was bad: this connection cannot carry another
            # request.
            self.close_connection = True
            with proxy.lock:
                self._log_entry[2] = None

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

    # --- request bodies -----------------------------------------------------

    def _copy_request_body(self, write):
        """Copies the request body to write(), once per request. A chunked
        body is copied with its framing (the upstream request is chunked
        too), up to its last chunk and trailers."""
        if self._body_done:
            return
        self._body_done = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                write(line)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while line not in (b"\r\n", b"\n", b""):
                        line = self.rfile.readline(65537)
                        write(line)
                    return
                self._copy_exact(size + 2, write)     # data and its CRLF
        else:
            self._copy_exact(int(self.headers.get("Content-Length") or 0), write)

    def _copy_exact(self, n, write):
        while n > 0:
            data = self.rfile.read(min(n, CHUNK))
            if not data:
                raise ConnectionError("request body cut short")
            write(data)
            n -= len(data)

    def _read_body(self):
        out = io.BytesIO()
        self._copy_request_body(out.write)
        return out.getvalue()

    # --- answers made here --------------------------------------------------

    def _reply(self, status, body=b"", headers=(), content_type="application/json"):
        """An answer of the proxy's own; the request body is read first so
        that the connection stays usable."""
        self._read_body()
        self.send_response_only(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _redirect(self, target):
        return self._reply(307, headers=[("Location", self.server.proxy.url + target)])

    def _reset(self, partial=b""):
        """Sends `partial`, then resets the connection (RST, not FIN)."""
        if partial:
            self.wfile.write(partial)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # socket.close() with makefile() objects alive only drops a
        # reference: close those first so that the fd is really closed,
        # which with a zero linger time sends the RST. Then give
        # BaseHTTPRequestHandler and socketserver, which still flush and
        # close these, harmless stand-ins.
        self.rfile.close()
        self.wfile.close()
        self.connection.close()
        self.rfile, self.wfile = io.BytesIO(), io.BytesIO()
        self.close_connection = True
        raise _Reset()

    def _control(self, url):
        proxy = self.server.proxy
        try:
            if self.command == "POST":
                arg = json.loads(self._read_body() or b"null")
                if url.path == "/__faults__":
                    proxy.set_faults(*arg)
                elif url.path == "/__link__":
                    proxy.set_link(**arg)
                else:
                    raise ValueError("POST %s: use GET" % url.path)
            elif self.command != "GET":
                raise ValueError("%s %s: use GET or POST" % (self.command, url.path))
        except (ValueError, TypeError, re.error) as e:
            return self._reply(400, json.dumps({"error": str(e)}).encode())
        if url.path == "/__stats__":
            out = proxy.stats(reset=urllib.parse.parse_qs(url.query).get("reset") == ["1"])
        elif url.path == "/__link__":
            out = {"latency_ms": proxy.link.latency_ms, "rate_mbit": proxy.link.rate_mbit}
        else:
            out = proxy.faults_json()
        return self._reply(200, json.dumps(out).encode())

    # --- forwarding ---------------------------------------------------------

    def _serve(self, url, fault):
        """Answers one request that is not for the control endpoints."""
        proxy = self.server.proxy
        kind = fault["kind"] if fault else None
        if kind == "status":
            code = fault["status"]
            err = {"errors": [{"code": "TOOMANYREQUESTS" if code == 429 else "UNAVAILABLE",
                               "message": "injected by faultproxy"}]}
            extra = [("Retry-After", str(fault["retry_after"]))] if fault["retry_after"] is not None else []
            return self._reply(code, json.dumps(err).encode(), extra)
        if kind == "redirect_loop":
            return self._redirect(self.path if fault["mode"] == "self" else "/__loop__" + self.path)
        if url.path.startswith("/__loop__/"):
            return self._redirect(self.path[len("/__loop__"):])
        if kind == "stall" and fault["when"] == "headers":
            proxy.stopping.wait(fault["seconds"])
        if kind == "reset" and fault["when"] == "headers":
            self._read_body()
            self._reset(b"HTTP/1.1 200 OK\r\nContent-Type: appl")

        target = self._target(url)
        if target == 403:
            return self._reply(403, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>"
                                    b"<Message>Request has expired</Message></Error>",
                               content_type="application/xml")
        if target == 404:
            return self._reply(404, b'{"errors":[{"code":"NOT_FOUND","message":"no such token realm"}]}')
        base, path, headers, blobstore = target

        asked = None
        if kind in ("long", "wrong_range"):
            m = CLOSED_RANGE_RE.match(self.headers["Range"])
            asked = (int(m[1]), int(m[2]))
            if kind == "long":
                _set_header(headers, "Range", "bytes=%d-%d" % (asked[0], asked[1] + fault["extra"]))
            else:
                n = asked[1] - asked[0] + 1
                first = max(0, asked[0] + (n if fault["shift"] is None else fault["shift"]))
                _set_header(headers, "Range", "bytes=%d-%d" % (first, first + n - 1))
        elif kind == "ignore_range":
            _set_header(headers, "Range", None)

        conn = http.client.HTTPConnection(*_host_port(base), timeout=UPSTREAM_TIMEOUT)
        try:
            try:
                conn.connect()
            except OSError as e:
                return self._reply(502, json.dumps({"errors": [{"code": "UNAVAILABLE",
                                                                "message": "upstream: %s" % e}]}).encode())
            conn.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                conn.putheader(k, v)
            conn.endheaders()
            self._copy_request_body(conn.send)
            resp = conn.getresponse()
            if kind == "redirect_blob" and resp.status in (200, 206):
                m = BLOB_RE.match(url.path)
                token = proxy.blobstore.issue(m[1], m[2], self.headers.get("Authorization"), fault["ttl"])
                return self._redirect("/__blobstore/%s/%s" % (token, m[2]))
            return self._relay(resp, fault, asked, blobstore)
        finally:
            conn.close()

    def _target(self, url):
        """(upstream base URL, path and query, headers [(name, value)],
        is_blobstore) of this request, or the status to answer instead
        (403: blobstore token expired or unknown, 404: no such token
        realm). Repeated headers (several Accept lines) stay repeated."""
        proxy = self.server.proxy
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host", "expect"}]
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            headers.append(("Transfer-Encoding", "chunked"))
        if url.path.startswith("/__token__/"):
            index = url.path[len("/__token__/"):]
            with proxy.lock:
                realm = proxy.realms[int(index)] if index.isdigit() and int(index) < len(proxy.realms) else None
            if realm is None:
                return 404
            r = urllib.parse.urlsplit(realm)
            query = "&".join(filter(None, [r.query, url.query]))
            _set_header(headers, "Host", r.netloc)
            return r.scheme + "://" + r.netloc, (r.path or "/") + ("?" + query if query else ""), headers, False
        if url.path.startswith("/__blobstore/"):
            token, _, digest = url.path[len("/__blobstore/"):].partition("/")
            found = proxy.blobstore.resolve(token, digest)
            if found is None:
                return 403
            repo, authorization = found
            _set_header(headers, "Authorization", authorization)
            _set_header(headers, "Host", proxy.upstream_host)
            return proxy.upstream, "/v2/%s/blobs/%s" % (repo, digest), headers, True
        # The client's Host goes upstream: the registry builds the Location
        # of upload sessions from it, so that they point at the proxy.
        _set_header(headers, "Host", self.headers.get("Host", proxy.host))
        return proxy.upstream, self.path, headers, False

    def _rewrite_realm(self, value):
        """Points a Bearer challenge's realm at /__token__/<n> on the proxy."""
        proxy = self.server.proxy
        if not value.lower().startswith("bearer "):
            return value

        def sub(m):
            with proxy.lock:
                if m[1] not in proxy.realms:
                    proxy.realms.append(m[1])
                return 'realm="%s/__token__/%d"' % (proxy.url, proxy.realms.index(m[1]))
        return REALM_RE.sub(sub, value, count=1)

    def _relay(self, resp, fault, asked, blobstore):
        """Sends upstream's answer on, as the fault has it."""
        kind = fault["kind"] if fault else None
        headers = []
        for k, v in resp.getheaders():
            lk = k.lower()
            if lk in HOP_BY_HOP or (blobstore and lk.startswith("docker-")):
                continue    # object storage does not speak for the registry
            headers.append((k, self._rewrite_realm(v) if lk == "www-authenticate" else v))
        length = resp.getheader("Content-Length")
        length = int(length) if length is not None else None
        has_body = self.command != "HEAD" and resp.status not in (204, 304)

        # limit: body bytes to send; stall_at: where to pause; flip: the
        # [first, end) body bytes to corrupt.
        limit, stall_at, flip = length, None, None
        half = (length or 0) // 2
        if has_body and kind == "short" and length:
            limit = max(0, length - (fault["missing"] if fault["missing"] is not None else max(1, half)))
        elif has_body and kind == "reset":
            limit = fault["after_bytes"] if fault["after_bytes"] is not None else half
        elif has_body and kind == "stall" and fault["when"] == "body":
            stall_at = fault["after_bytes"] if fault["after_bytes"] is not None else half
        elif has_body and kind == "corrupt":
            first = fault["offset"] if fault["offset"] is not None else half
            flip = (first, first + fault["nbytes"])
        elif kind == "content_range" and resp.status == 206 and length is not None:
            headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "content-range")]
            if fault["value"] is not None:
                headers.append(("Content-Range", _fill_range(fault["value"], resp.getheader("Content-Range"))))
            pad = fault["pad"]
            limit = max(0, length + min(0, pad))
            headers.append(("Content-Length", str(limit + max(0, pad))))
            if pad < 0:
                self.close_connection = True    # upstream's last bytes stay unread
        elif kind == "long" and fault["lie"] and resp.status == 206:
            # The headers of the range asked for, with the longer body.
            total = (resp.getheader("Content-Range") or "/*").rpartition("/")[2]
            headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "content-range")]
            headers += [("Content-Length", str(asked[1] - asked[0] + 1)),
                        ("Content-Range", "bytes %d-%d/%s" % (asked[0], asked[1], total))]
            self.close_connection = True

        if has_body and (length is None or kind == "short"):
            self.close_connection = True    # the end of the body is the end of the connection
        self.send_response_only(resp.status, resp.reason)
        for k, v in headers:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        pos = self._send_body(resp, limit, stall_at, fault, flip) if has_body else 0
        if has_body and kind == "content_range" and resp.status == 206 and fault["pad"] > 0:
            self.wfile.write(bytes(fault["pad"]))
        if kind == "reset":
            self._reset()       # a body-less answer is reset after its headers
        if has_body and length is not None and pos < length and kind != "short":
            self.close_connection = True    # upstream ended early

    def _send_body(self, resp, limit, stall_at, fault, flip):
        """Streams up to `limit` (None: all) body bytes, pausing at
        stall_at and corrupting the [first, end) range `flip`; returns the
        number of bytes sent."""
        proxy = self.server.proxy
        pos = 0
        while limit is None or pos < limit:
            want = CHUNK if limit is None else min(CHUNK, limit - pos)
            if stall_at is not None and pos < stall_at:
                want = min(want, stall_at - pos)
            data = resp.read(want)
            if not data:
                break
            if flip and flip[0] < pos + len(data) and pos < flip[1]:
                buf = bytearray(data)
                for i in range(max(flip[0], pos), min(flip[1], pos + len(data))):
                    buf[i - pos] ^= 0xFF
                data = bytes(buf)
            proxy.link.throttle(len(data), proxy.stopping)
            with proxy.lock:
                proxy._stats.bytes_sent += len(data)    # counted before the client can have them
            self.wfile.write(data)
            pos += len(data)
            if pos == stall_at:
                proxy.stopping.wait(fault["seconds"])
                stall_at = None
        return pos


def _fill_range(template, upstream):
    """The content_range fault's template filled with upstream's
    Content-Range numbers ('*' stays '*', whatever is added to it)."""
    m = CONTENT_RANGE_RE.match(upstream or "")
    if not m:
        raise ValueError("content_range: upstream said Content-Range %r" % upstream)
    nums = {"first": m[1], "last": m[2], "total": m[3]}

    def sub(t):
        v = nums[t[1]]
        return v if v == "*" or not t[2] else str(int(v) + int(t[2]))
    return TEMPLATE_RE.sub(sub, template)


def _set_header(headers, name, value):
    """Replaces every `name` header in the list with one (none if value is
    None)."""
    headers[:] = [(k, v) for k, v in headers if k.lower() != name.lower()]
    if value is not None:
        headers.append((name, value))


def _host_port(base):
    u = urllib.parse.urlsplit(base)
    return u.hostname, u.port or 80


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients hanging up (on purpose, in these tests) is not an error.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FaultProxy:
    """The proxy (see the module docstring). upstream: the registry's base
    URL; port 0 picks a free one."""

    def __init__(self, upstream, port=0, latency_ms=0, rate_mbit=0, verbose=False):
        self.upstream = upstream.rstrip("/")
        self.upstream_host = urllib.parse.urlsplit(self.upstream).netloc
        self.verbose = verbose
        self.link = Link(latency_ms, rate_mbit)
        self.blobstore = _BlobStore()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.faults = []        # protected by lock
        self.realms = []        # protected by lock: upstream token realms, by index
        self._stats = Stats()   # protected by lock
        self._conns = set()     # protected by lock: client connections being served
        self._port = port
        self._httpd = None
        self._thread = None

    @property
    def port(self):
        return self._httpd.server_address[1]

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def url(self):
        return "http://" + self.host

    def start(self):
        self.stopping.clear()
        self._httpd = _Server(("127.0.0.1", self._port), _Handler)
        self._httpd.proxy = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stops accepting, wakes stalled answers and closes every client
        connection."""
        if self._httpd is None:
            return
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _track(self, conn, add):
        with self.lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def set_faults(self, *faults):
        """Replaces the faults (dicts, see the module docstring); none:
        plain forwarding again. Raises ValueError on a bad spec."""
        parsed = [Fault(f) for f in faults]
        with self.lock:
            self.faults = parsed

    def clear_faults(self):
        self.set_faults()

    def faults_json(self):
        with self.lock:
            return [f.to_json() for f in self.faults]

    def set_link(self, latency_ms=None, rate_mbit=None):
        self.link.set(latency_ms, rate_mbit)

    def stats(self, reset=False):
        with self.lock:
            out = self._stats.to_json()
            if reset:
                self._stats = Stats()
        return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fault-injecting HTTP proxy in front of a registry.")
    ap.add_argument("--upstream", required=True, help="the registry, e.g. http://127.0.0.1:5000")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--latency-ms", type=float, default=0)
    ap.add_argument("--rate-mbit", type=float, default=0)
    ap.add_argument("--faults", default="[]", help="initial faults, a JSON list")
    ap.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = ap.parse_args(argv)
    proxy = FaultProxy(args.upstream, args.port, args.latency_ms, args.rate_mbit, args.verbose)
    proxy.set_faults(*json.loads(args.faults))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    proxy.start()
    print(proxy.port, flush=True)
    while not done.wait(1):
        pass
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
