"""holdfast as a containerd proxy snapshotter, against the real peers:
Debian's containerd 1.6 (its own root, state and socket in a private
directory; CRI off; [proxy_plugins] pointing at snapshotter-serve), runc,
ctr and ctr-remote, and docker-registry on 127.0.0.1 serving a small image
made of /bin/busybox (Debian's busybox-static).

snapshotter-serve (tests/integration/snapshotter-serve.c) serves
worker/snapshotter on a unix socket; HOLDFAST_SNAPSHOTTER_SERVE names it.
Two instances: "holdfast" (plain) and "holdfast-remote" (--fake-remote:
every Prepare that asks for a remote snapshot is answered "provided").

Bad requests are sent straight to the socket with python3-grpcio's generic
client, with python3-h2 (hand-made HTTP/2 streams: wrong content types,
lying length prefixes, cut messages) and as raw bytes.

Needs root (containerd, overlay mounts). Every process started here is
stopped by pid, every mount under the private directory unmounted, also
when a test fails."""

import gzip
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRCROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import pbwire  # noqa: E402
import registryutil  # noqa: E402
from containerdutil import BUSYBOX, CONTAINERD, CTR, CTR_REMOTE, Containerd  # noqa: E402
from containerdutil import chain_ids as _chain_ids, mounts_under as _mounts_under  # noqa: E402
from containerdutil import popen as _popen, read_text as _read, stop_proc as _stop  # noqa: E402
from containerdutil import tar_gz as _tar_gz, unmount_all as _unmount_all  # noqa: E402

grpc = pytest.importorskip("grpc")
h2conn = pytest.importorskip("h2.connection")
import h2.config  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402

SERVE = os.environ.get("HOLDFAST_SNAPSHOTTER_SERVE",
                       os.path.join(SRCROOT, "build", "tests", "integration", "snapshotter-serve"))
SVC = "/containerd.services.snapshots.v1.Snapshots/"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (containerd, overlay mounts)")


# --- processes -----------------------------------------------------------------

class Serve:
    """One snapshotter-serve on `sock` with its root `root`."""

    def __init__(self, root, sock, log, args=()):
        self.root, self.sock, self.log, self.args = root, sock, log, list(args)
        self.proc = None

    def start(self, timeout=20):
        assert self.proc is None or self.proc.poll() is not None
        self.proc = _popen([SERVE, "--root", self.root, "--socket", self.sock] + self.args, self.log,
                           stdout=subprocess.PIPE)
        # "ready" on stdout, bounded by a reader thread and a deadline
        line = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        assert line and line[0] == b"ready\n", "snapshotter-serve did not start:\n" + _read(self.log)[-3000:]
        return self

    def stop(self, sig=signal.SIGTERM):
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        _stop(proc, sig)
        if proc.stdout:
            proc.stdout.close()
        return proc.returncode

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr(self):
        return _read(self.log)


# --- the image -----------------------------------------------------------------

def build_image(registry):
    with open(BUSYBOX, "rb") as f:
        bb = f.read()
    tools = ["sh", "cat", "ls", "echo", "test", "sleep", "mkdir", "rm"]
    l1 = _tar_gz([("bin", "dir", 0o755), ("bin/busybox", "file", bb, 0o755)] +
                 [("bin/" + t, "link", "busybox") for t in tools] +
                 [("tmp", "dir", 0o1777), ("etc", "dir", 0o755), ("etc/old", "file", b"old\n", 0o644)])
    l2 = _tar_gz([("etc", "dir", 0o755), ("etc/hello", "file", b"hello from layer 2\n", 0o644)])
    # a whiteout: layer 3 deletes layer 1's etc/old
    l3 = _tar_gz([("etc", "dir", 0o755), ("etc/.wh.old", "file", b"", 0o644),
                  ("etc/three", "file", b"3\n", 0o644)])
    layers = [registryutil.Layer(d) for d in (l1, l2, l3)]
    diff_ids = [registryutil.sha256_digest(gzip.decompress(d)) for d in (l1, l2, l3)]
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": "holdfast tests"} for _ in layers]}
    pushed = registryutil.push_image(registry, "holdfast/busybox", "v1", layers, config=config)
    return {"ref": "%s/holdfast/busybox:v1" % registry.host, "diff_ids": diff_ids,
            "chain": _chain_ids(diff_ids), "layers": [l["digest"] for l in pushed["layers"]]}


# --- fixtures ------------------------------------------------------------------

@pytest.fixture(scope="module")
def env():
    for tool in (SERVE, CONTAINERD, CTR, CTR_REMOTE, BUSYBOX, "/usr/bin/runc"):
        if not os.access(tool, os.X_OK):
            pytest.fail("%s missing (packaging/install-deps installs it)" % tool)
    # Short: unix socket paths are at most 107 bytes.
    base = tempfile.mkdtemp(prefix="hf-snap-", dir="/tmp")
    registry = serve = remote = direct = cd = None
    try:
        registry = registryutil.Registry().start()
        image = build_image(registry)
        serve = Serve(os.path.join(base, "root"), os.path.join(base, "holdfast.sock"),
                      os.path.join(base, "serve.log")).start()
        remote = Serve(os.path.join(base, "root-remote"), os.path.join(base, "remote.sock"),
                       os.path.join(base, "remote.log"), ["--fake-remote"]).start()
        # containerd's garbage collector removes every backend snapshot its
        # metadata does not know: the socket tests get their own server.
        direct = Serve(os.path.join(base, "root-direct"), os.path.join(base, "direct.sock"),
                       os.path.join(base, "direct.log")).start()
        cd = Containerd(base, {"holdfast": serve.sock, "holdfast-remote": remote.sock}).start()
        yield {"base": base, "registry": registry, "image": image, "serve": serve, "remote": remote,
               "direct": direct, "cd": cd}
    finally:
        if cd:
            cd.stop()
        for s in (serve, remote, direct):
            if s:
                s.stop()
        _unmount_all(base)
        if registry:
            registry.stop()
        if not _mounts_under(base):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pulled(env):
    cd, image = env["cd"], env["image"]
    cd.ctr("images", "pull", "--plain-http", "--snapshotter", "holdfast", image["ref"])
    return image


# --- helpers -------------------------------------------------------------------

def ls(cd, snapshotter="holdfast", ns="default"):
    """{key: (parent, kind)} from `ctr snapshots ls`."""
    out = cd.ctr("snapshots", "--snapshotter", snapshotter, "ls", ns=ns).stdout.decode().splitlines()
    assert out[0].split() == ["KEY", "PARENT", "KIND"], out
    rows = {}
    for line in out[1:]:
        f = line.split()
        rows[f[0]] = (f[1], f[2]) if len(f) == 3 else ("", f[1])
    return rows


def channel(sock):
    return grpc.insecure_channel("unix:" + sock)


def call(ch, method, fields, timeout=10, stream=False):
    body = pbwire.encode(fields) if isinstance(fields, list) else fields
    if stream:
        return list(ch.unary_stream(SVC + method)(body, timeout=timeout))
    return ch.unary_unary(SVC + method)(body, timeout=timeout)


def code_of(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def parse_info(b):
    d = {"labels": {}, "parent": "", "kind": 0}
    for n, v in pbwire.parse(b):
        if n == 1:
            d["name"] = v.decode()
        elif n == 2:
            d["parent"] = v.decode()
        elif n == 3:
            d["kind"] = v
        elif n in (4, 5):
            ts = dict(pbwire.parse(v))
            d["created" if n == 4 else "updated"] = ts.get(1, 0) * 10**9 + ts.get(2, 0)
        elif n == 6:
            kv = dict(pbwire.parse(v))
            d["labels"][kv.get(1, b"").decode()] = kv.get(2, b"").decode()
    return d


def list_infos(sock, filters=()):
    with channel(sock) as ch:
        out = []
        for resp in call(ch, "List", [(2, f) for f in filters], stream=True):
            out += [parse_info(v) for n, v in pbwire.parse(resp) if n == 1]
        return out


def labels_field(labels):
    return [(4, pbwire.encode([(1, k), (2, v)])) for k, v in labels.items()]


def parse_mounts(b):
    out = []
    for n, v in pbwire.parse(b):
        assert n == 1
        m = {"options": []}
        for fn, fv in pbwire.parse(v):
            if fn == 1:
                m["type"] = fv.decode()
            elif fn == 2:
                m["source"] = fv.decode()
            elif fn == 4:
                m["options"].append(fv.decode())
        out.append(m)
    return out


def grpc_frame(msg, flag=0, length=None):
    return struct.pack(">BI", flag, len(msg) if length is None else length) + msg


def h2_request(sock_path, path=SVC + "Stat", body=b"", content_type="application/grpc", method="POST",
               end_stream=True, extra_headers=(), timeout=10):
    """One hand-made HTTP/2 request; returns {"headers", "trailers", "data",
    "reset", "closed"}."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    conn = h2conn.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.increment_flow_control_window(16 << 20)
    s.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    headers = [(":method", method), (":scheme", "http"), (":path", path), (":authority", "localhost"),
               ("content-type", content_type), ("te", "trailers")] + list(extra_headers)
    conn.send_headers(sid, headers, end_stream=end_stream and not body)
    s.sendall(conn.data_to_send())
    res = {"headers": {}, "trailers": {}, "data": b"", "reset": None, "closed": False}
    pending = memoryview(body)
    deadline = time.monotonic() + timeout
    done = False
    while not done and time.monotonic() < deadline:
        # send what the flow-control window allows
        while pending:
            n = min(len(pending), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if n <= 0:
                break
            try:
                conn.send_data(sid, bytes(pending[:n]), end_stream=end_stream and n == len(pending))
            except h2.exceptions.StreamClosedError:
                pending = b""
                break
            pending = pending[n:]
        try:
            s.sendall(conn.data_to_send())
        except (ConnectionResetError, BrokenPipeError):
            res["closed"] = True
            break
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            res["closed"] = True
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                res["headers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.TrailersReceived):
                res["trailers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                res["data"] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
            elif isinstance(ev, h2.events.StreamReset):
                res["reset"] = ev.error_code
                done = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                res["closed"] = True
                done = True
        try:
            s.sendall(conn.data_to_send())
        except (ConnectionResetError, BrokenPipeError):
            res["closed"] = True
            break
    s.close()
    return res


def status_of(res):
    """grpc-status of a response: in the trailers, or the headers of a
    trailers-only one."""
    st = res["trailers"].get("grpc-status", res["headers"].get("grpc-status"))
    return int(st) if st is not None else None


def sanitizer_reports(text):
    return [l for l in text.splitlines()
            if "AddressSanitizer" in l or "LeakSanitizer" in l or "runtime error:" in l]


def assert_serving(env_serve):
    assert env_serve.alive(), "snapshotter-serve died:\n" + env_serve.stderr()[-3000:]
    with channel(env_serve.sock) as ch:
        assert code_of(lambda: call(ch, "Stat", [(2, "no-such-key")]))[0] == grpc.StatusCode.NOT_FOUND


# --- containerd -----------------------------------------------------------------

def test_pull_creates_the_chain(env, pulled):
    cd = env["cd"]
    rows = ls(cd)
    chain = pulled["chain"]
    for i, c in enumerate(chain):
        assert rows[c] == (chain[i - 1] if i else "", "Committed"), rows
    info = json.loads(cd.ctr("snapshots", "--snapshotter", "holdfast", "info", chain[2]).stdout)
    assert info["Kind"] == "Committed" and info["Parent"] == chain[1]

    # the backend's own view: containerd's namespaced keys, the same chain
    backend = {i["name"]: i for i in list_infos(env["serve"].sock)}
    names = {n.split("/", 2)[2]: n for n in backend}
    for i, c in enumerate(chain):
        b = backend[names[c]]
        assert b["kind"] == 3
        assert b["parent"] == (names[chain[i - 1]] if i else "")
        assert b["created"] > 0 and b["created"] == b["updated"]

    # usage: the busybox layer is ~2 MB of blocks, measured at commit
    with channel(env["serve"].sock) as ch:
        u = dict(pbwire.parse(call(ch, "Usage", [(2, names[chain[0]])])))
        assert u[1] >= os.path.getsize(BUSYBOX) and u[2] >= 10, u
        u3 = dict(pbwire.parse(call(ch, "Usage", [(2, names[chain[2]])])))
        assert 0 < u3.get(1, 0) < 64 * 1024, u3
    out = cd.ctr("snapshots", "--snapshotter", "holdfast", "usage", chain[0]).stdout.decode()
    assert chain[0] in out and "MiB" in out, out


def test_run_container_writes_upper(env, pulled):
    cd = env["cd"]
    out = cd.ctr("run", "--rm", "--snapshotter", "holdfast", pulled["ref"], "hf-run-1", "/bin/sh", "-c",
                 "echo hi > /tmp/x && cat /tmp/x && cat /etc/hello /etc/three && test ! -e /etc/old && echo gone",
                 timeout=180).stdout.decode()
    assert out.split("\n") == ["hi", "hello from layer 2", "3", "gone", ""], out
    # --rm removed the container's active snapshot
    assert set(ls(cd)) == set(pulled["chain"])

    # without --rm the snapshot stays: its upper directory has the file
    cd.ctr("run", "--snapshotter", "holdfast", pulled["ref"], "hf-run-2", "/bin/sh", "-c",
           "mkdir -p /data && echo kept > /data/y", timeout=180)
    try:
        rows = ls(cd)
        assert rows["hf-run-2"] == (pulled["chain"][2], "Active")
        key = [i["name"] for i in list_infos(env["serve"].sock) if i["name"].endswith("/hf-run-2")][0]
        with channel(env["serve"].sock) as ch:
            m = parse_mounts(call(ch, "Mounts", [(2, key)]))
            assert len(m) == 1 and m[0]["type"] == "overlay", m
            opts = dict(o.split("=", 1) for o in m[0]["options"] if "=" in o)
            assert opts["lowerdir"].count(":") == 2
            with open(os.path.join(opts["upperdir"], "data", "y")) as f:
                assert f.read() == "kept\n"
            u = dict(pbwire.parse(call(ch, "Usage", [(2, key)])))
            assert u[1] >= 4096 and u[2] >= 3, u
        usage = cd.ctr("snapshots", "--snapshotter", "holdfast", "usage", "hf-run-2").stdout.decode()
        assert "hf-run-2" in usage
    finally:
        cd.ctr("containers", "rm", "hf-run-2", check=False)
    assert "hf-run-2" not in ls(cd)


def test_snapshot_commands(env, pulled):
    cd = env["cd"]

    def sn(*a, check=True):
        return cd.ctr("snapshots", "--snapshotter", "holdfast", *a, check=check)

    sn("prepare", "t-a")
    p = sn("prepare", "t-a", check=False)
    assert p.returncode != 0 and b"already exists" in p.stderr
    assert sn("mounts", "/mnt", "t-a").stdout.decode().strip().endswith("-o rw,rbind")
    sn("commit", "t-c", "t-a")
    assert ls(cd)["t-c"] == ("", "Committed")
    sn("prepare", "t-b", "t-c")
    m = sn("mounts", "/mnt", "t-b").stdout.decode()
    assert m.startswith("mount -t overlay overlay /mnt -o ") and "upperdir=" in m and "workdir=" in m, m
    # ctr makes views without a gc.root label: containerd's collector may
    # take one before the next command. Let the collection the commit
    # scheduled run first; then retry, bounded, with a new key.
    time.sleep(1)
    for i in range(5):
        sn("view", "t-v%d" % i, "t-c")
        p = sn("mounts", "/mnt", "t-v%d" % i, check=False)
        if p.returncode == 0:
            break
        assert b"not found" in p.stderr, p.stderr
    made = i + 1
    v = p.stdout.decode()
    assert "-t bind" in v and "ro,rbind" in v, v
    p = sn("rm", "t-c", check=False)
    assert p.returncode != 0 and b"failed precondition" in p.stderr, p.stderr
    p = sn("info", "t-none", check=False)
    assert p.returncode != 0 and b"not found" in p.stderr
    # labels through Update
    sn("label", "t-c", "holdfast.test/a=1")
    assert json.loads(sn("info", "t-c").stdout)["Labels"]["holdfast.test/a"] == "1"
    collected = False
    for i in range(made):
        p = sn("rm", "t-v%d" % i, check=False)
        collected = collected or p.returncode != 0
    sn("rm", "t-b")
    p = sn("rm", "t-c", check=False)
    if p.returncode != 0:
        # containerd 1.6's collector removes a snapshot without removing
        # the child link from its parent (metadata/gc.go remove()): once it
        # took a view, ctr cannot remove the view's parent any more.
        assert collected and b"with child" in p.stderr, p.stderr
    assert not {"t-a", "t-b"} & set(ls(cd)) and not [k for k in ls(cd) if k.startswith("t-v")]
    # one directory per backend snapshot, no more (containerd removes
    # backend snapshots from its collector, asynchronously: poll, bounded;
    # a directory whose removal failed is an orphan until a Cleanup, which
    # containerd runs after some collections but not all: ask for one)
    # (the infos are listed before and after the directories, and only a
    # poll that saw the same count three times counts: the collector may
    # remove a snapshot between two looks)
    for i in range(40):
        before = len(list_infos(env["serve"].sock))
        ids = sorted(os.listdir(os.path.join(env["serve"].root, "snapshots")))
        after = len(list_infos(env["serve"].sock))
        if before == len(ids) == after:
            break
        if i >= 20:
            with channel(env["serve"].sock) as ch:
                call(ch, "Cleanup", [])
        time.sleep(0.25)
    assert before == len(ids) == after, (before, ids, after)


def test_restart_keeps_snapshots(env, pulled):
    cd, serve = env["cd"], env["serve"]

    def image_infos():
        # the image's snapshots: containerd's collector may still be
        # removing what earlier tests left, the image's stay
        return [i for i in list_infos(serve.sock) if i["name"].endswith(tuple(pulled["chain"]))]

    before, infos = ls(cd), image_infos()
    assert len(infos) == 3
    for sig in (signal.SIGTERM, signal.SIGKILL):
        rc = serve.stop(sig)
        if sig == signal.SIGTERM:
            assert rc == 0, serve.stderr()[-3000:]
        serve.start()
        # containerd's client reconnects with a backoff: poll, bounded
        deadline = time.monotonic() + 30
        while True:
            p = cd.ctr("snapshots", "--snapshotter", "holdfast", "ls", check=False)
            if p.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ls(cd) == before
        assert image_infos() == infos
    out = cd.ctr("run", "--rm", "--snapshotter", "holdfast", pulled["ref"], "hf-run-3", "/bin/cat", "/etc/hello",
                 timeout=180).stdout
    assert out == b"hello from layer 2\n"


def test_remote_snapshots(env):
    """containerd's remote-snapshot protocol (what CRI and ctr-remote's
    rpull use: Prepare with containerd.io/snapshot.ref, ALREADY_EXISTS,
    a List by label and parent): the fake hook provides every layer, so
    no layer blob is fetched."""
    cd, remote, image = env["cd"], env["remote"], env["image"]
    ns = "hf-remote"
    cd.ctr("images", "rpull", "--plain-http", "--snapshotter", "holdfast-remote", image["ref"], ns=ns,
           tool=CTR_REMOTE, timeout=180)
    rows = ls(cd, "holdfast-remote", ns)
    chain = image["chain"]
    for i, c in enumerate(chain):
        assert rows[c] == (chain[i - 1] if i else "", "Committed"), rows
    log = remote.stderr()
    for c in chain:
        assert "remote snapshot %s" % c in log, log
    # the backend committed them under the chain IDs themselves, labelled
    backend = {i["name"]: i for i in list_infos(remote.sock)}
    for i, c in enumerate(chain):
        assert backend[c]["labels"]["containerd.io/snapshot.ref"] == c
        assert backend[c]["parent"] == (chain[i - 1] if i else "")
    # lazily: no layer blob in containerd's content store
    content = cd.ctr("content", "ls", "-q", ns=ns).stdout.decode()
    for d in image["layers"]:
        assert d not in content
    # the filter containerd sends for them
    f = 'labels."containerd.io/snapshot.ref"==%s,parent=="%s"' % (chain[1], chain[0])
    assert [i["name"] for i in list_infos(remote.sock, [f])] == [chain[1]]
    # removing the image lets containerd's GC remove them: each release is
    # announced to the hook
    cd.ctr("images", "rm", "--sync", image["ref"], ns=ns)
    deadline = time.monotonic() + 30
    while ls(cd, "holdfast-remote", ns) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ls(cd, "holdfast-remote", ns) == {}
    assert remote.stderr().count("release remote snapshot") >= len(chain)


# --- the socket, directly --------------------------------------------------------

def test_status_codes(env):
    sock = env["direct"].sock
    with channel(sock) as ch:
        C = grpc.StatusCode
        assert code_of(lambda: call(ch, "Stat", [(2, "sc-none")]))[0] == C.NOT_FOUND
        assert code_of(lambda: call(ch, "Prepare", [(2, "")]))[0] == C.INVALID_ARGUMENT
        call(ch, "Prepare", [(1, "holdfast"), (2, "sc-a")] + labels_field({"k": "v", "empty": ""}))
        assert code_of(lambda: call(ch, "Prepare", [(2, "sc-a")]))[0] == C.ALREADY_EXISTS
        assert code_of(lambda: call(ch, "Prepare", [(2, "sc-x"), (3, "sc-a")]))[0] == C.INVALID_ARGUMENT
        assert code_of(lambda: call(ch, "Prepare", [(2, "sc-x"), (3, "sc-none")]))[0] == C.NOT_FOUND
        info = parse_info(dict(pbwire.parse(call(ch, "Stat", [(2, "sc-a")])))[1])
        assert info["labels"] == {"k": "v"} and info["kind"] == 2
        call(ch, "Commit", [(2, "sc-c"), (3, "sc-a")] + labels_field({"c": "1"}))
        assert code_of(lambda: call(ch, "Commit", [(2, "sc-c"), (3, "sc-a")]))[0] == C.ALREADY_EXISTS
        assert code_of(lambda: call(ch, "Commit", [(2, "sc-d"), (3, "sc-a")]))[0] == C.NOT_FOUND
        assert code_of(lambda: call(ch, "Mounts", [(2, "sc-c")]))[0] == C.FAILED_PRECONDITION
        call(ch, "View", [(2, "sc-v"), (3, "sc-c")])
        assert code_of(lambda: call(ch, "Commit", [(2, "sc-e"), (3, "sc-v")]))[0] == C.FAILED_PRECONDITION
        assert code_of(lambda: call(ch, "Remove", [(2, "sc-c")]))[0] == C.FAILED_PRECONDITION
        big = {"k": "x" * 5000}
        assert code_of(lambda: call(ch, "Prepare", [(2, "sc-big")] + labels_field(big)))[0] in (
            C.INVALID_ARGUMENT, C.INTERNAL)
        assert code_of(lambda: call(ch, "Prepare", [(2, "sc-big")] + labels_field({"kk": "x" * 4095})))[0] == \
            C.INVALID_ARGUMENT
        # Update: labels only
        upd = pbwire.encode([(1, "sc-c")] + [(6, pbwire.encode([(1, "n"), (2, "2")]))])
        info = parse_info(dict(pbwire.parse(call(ch, "Update", [(2, upd), (3, pbwire.encode([(1, "labels.n")]))])))[1])
        assert info["labels"] == {"c": "1", "n": "2"} and info["updated"] > info["created"]
        assert code_of(lambda: call(ch, "Update", [(2, upd), (3, pbwire.encode([(1, "parent")]))]))[0] == \
            C.INVALID_ARGUMENT
        # filters
        names = lambda fs: sorted(i["name"] for i in list_infos(sock, fs))  # noqa: E731
        assert names(["labels.c==1"]) == ["sc-c"]
        assert names(['parent=="sc-c"']) == ["sc-v"]
        assert names(["name~=/^sc-[cv]$/"]) == ["sc-c", "sc-v"]
        assert names(["kind==view", "labels.n"]) == ["sc-c", "sc-v"]
        assert names(["kind==view,labels.n"]) == []
        assert code_of(lambda: call(ch, "List", [(2, "labels.c==")], stream=True))[0] == C.INVALID_ARGUMENT
        assert code_of(lambda: call(ch, "List", [(2, "a==b ,c")], stream=True))[0] == C.INVALID_ARGUMENT
        for k in ("sc-v", "sc-c"):
            call(ch, "Remove", [(2, k)])
        assert code_of(lambda: call(ch, "Remove", [(2, "sc-c")]))[0] == C.NOT_FOUND
        call(ch, "Cleanup", [])
    assert_serving(env["direct"])


def test_list_streams_many(env):
    """More infos than one reply holds: List streams several messages."""
    sock = env["direct"].sock
    with channel(sock) as ch:
        keys = ["ls-%04d" % i for i in range(250)]
        for k in keys:
            call(ch, "View", [(2, k)] + labels_field({"pad": "p" * 2000}))
        resps = call(ch, "List", [(2, "labels.pad")], stream=True)
        assert len(resps) >= 3
        got = [parse_info(v)["name"] for r in resps for n, v in pbwire.parse(r)]
        assert got == keys
        for k in keys:
            call(ch, "Remove", [(2, k)])


def test_unknown_and_oversize(env):
    sock = env["direct"].sock
    with channel(sock) as ch:
        c, d = code_of(lambda: ch.unary_unary(SVC + "Frobnicate")(b"", timeout=10))
        assert c == grpc.StatusCode.UNIMPLEMENTED and "Frobnicate" in d
        c, _ = code_of(lambda: ch.unary_unary("/no.such.Service/Stat")(b"", timeout=10))
        assert c == grpc.StatusCode.UNIMPLEMENTED
        c, d = code_of(lambda: call(ch, "Prepare", [(2, "big"), (3, "x" * (5 << 20))], timeout=30))
        assert c == grpc.StatusCode.RESOURCE_EXHAUSTED, d
        c, d = code_of(lambda: call(ch, "Stat", b"\xff\xff\xff"))
        assert c == grpc.StatusCode.INTERNAL and "unmarshalling" in d, d
        c, _ = code_of(lambda: call(ch, "Stat", [(2, "k" * 5000)]))
        assert c == grpc.StatusCode.INTERNAL
    # a compressing client: we announce identity only
    with grpc.insecure_channel("unix:" + sock, compression=grpc.Compression.Gzip) as ch:
        c, _ = code_of(lambda: call(ch, "Stat", [(2, "gz")]))
        assert c in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL), c
    assert_serving(env["direct"])


def test_many_concurrent_calls(env):
    """More calls at once than one connection's stream limit (32): the
    client queues, every call is answered."""
    sock = env["direct"].sock
    with channel(sock) as ch:
        stat = ch.unary_unary(SVC + "Stat")
        futs = [stat.future(pbwire.encode([(2, "cc-%d" % i)]), timeout=30) for i in range(200)]
        codes = [code_of(f.result)[0] for f in futs]
        assert codes == [grpc.StatusCode.NOT_FOUND] * 200
    assert_serving(env["direct"])


def test_hand_made_http2(env):
    sock = env["direct"].sock
    ok_body = grpc_frame(pbwire.encode([(2, "h2-none")]))
    r = h2_request(sock, body=ok_body)
    assert r["headers"].get(":status") == "200" and status_of(r) == 5, r

    r = h2_request(sock, body=ok_body, content_type="text/plain")
    assert r["headers"].get(":status") == "415", r
    r = h2_request(sock, body=ok_body, method="PUT")
    assert r["headers"].get(":status") == "405", r
    # a length prefix over the cap, and far more than is sent
    r = h2_request(sock, body=grpc_frame(b"x" * 100, length=0xFFFFFFF0))
    assert status_of(r) == 8, r
    # a cut message, a second message, no message, a bad flag
    r = h2_request(sock, body=grpc_frame(b"x" * 100, length=200))
    assert status_of(r) == 13, r
    r = h2_request(sock, body=ok_body + ok_body)
    assert status_of(r) == 13, r
    r = h2_request(sock, body=b"")
    assert status_of(r) == 13, r
    r = h2_request(sock, body=grpc_frame(b"", flag=7))
    assert status_of(r) == 13, r
    r = h2_request(sock, body=grpc_frame(b"abc", flag=1))
    assert status_of(r) == 13, r
    r = h2_request(sock, body=ok_body, extra_headers=[("grpc-encoding", "gzip")])
    assert status_of(r) == 12, r
    r = h2_request(sock, path="/x" * 300, body=ok_body)
    assert status_of(r) == 12, r
    # a request that never ends: the answer comes once the message is in
    r = h2_request(sock, body=ok_body, end_stream=False, timeout=2)
    assert status_of(r) is None
    assert_serving(env["direct"])


def test_garbage_closes_only_its_connection(env):
    serve = env["direct"]

    def raw(data, timeout=10):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(serve.sock)
        try:
            s.sendall(data)
            got = b""
            while True:  # until the server closes, bounded by the timeout
                b = s.recv(65536)
                if not b:
                    return got
                got += b
        except (ConnectionResetError, BrokenPipeError):
            return None
        finally:
            s.close()

    # a held, idle connection survives everyone else's garbage
    with channel(serve.sock) as held:
        call(held, "Cleanup", [])
        raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw(os.urandom(4096))
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        got = raw(preface + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + os.urandom(64))
        # after a valid preface the server says why: a GOAWAY (type 7)
        assert got is None or b"\x07" in got[:200]
        # a frame longer than SETTINGS_MAX_FRAME_SIZE
        raw(preface + struct.pack(">I", 0x100000)[1:] + b"\x00\x00\x00\x00\x00\x01" + b"\x00" * 1000)
        # a HEADERS frame with a broken HPACK block
        raw(preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x05\x01\x05\x00\x00\x00\x01\xff\xff\xff\xff\xff")
        # many connections at once: those past the cap are closed, the rest
        # and the held one go on
        socks = []
        try:
            for _ in range(80):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(serve.sock)
                socks.append(s)
        finally:
            for s in socks:
                s.close()
        call(held, "Cleanup", [])
    assert "closing a connection" in serve.stderr()
    assert_serving(serve)


class RawH2:
    """HTTP/2 frames by hand (hpack for the header blocks): for what
    python3-h2 refuses to do, like finishing a request after a GOAWAY."""

    def __init__(self, path, timeout=10):
        import hpack
        self.enc, self.dec = hpack.Encoder(), hpack.Decoder()
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""
        self.s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + self.frame(4, 0, 0, b""))

    @staticmethod
    def frame(ftype, flags, sid, payload):
        return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, sid) + payload

    def headers(self, sid, headers, end_stream=False):
        self.s.sendall(self.frame(1, 0x4 | (0x1 if end_stream else 0), sid, self.enc.encode(headers)))

    def data(self, sid, payload, end_stream=False):
        self.s.sendall(self.frame(0, 0x1 if end_stream else 0, sid, payload))

    def next_frame(self):
        """(type, flags, stream, payload), or None at the end of the
        connection; headers decoded; SETTINGS acknowledged."""
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    ftype, flags, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                    payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
                    if ftype == 4 and not flags & 1:
                        self.s.sendall(self.frame(4, 1, 0, b""))
                    if ftype == 1:
                        payload = dict(self.dec.decode(payload))
                    return ftype, flags, sid, payload
            try:
                b = self.s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                b = b""
            if not b:
                return None
            self.buf += b

    def close(self):
        self.s.close()


def test_cancel_and_reset(env):
    """Clients that go away mid-call: a List cancelled after its first
    reply while its handler waits for the client to read, connections
    closed with calls in flight, and streams reset right after their
    request (300 in a row on one connection). The server answers the next
    call; under ASan nothing leaks (test_clean_shutdown)."""
    direct = env["direct"]
    with channel(direct.sock) as ch:
        keys = ["cr-%04d" % i for i in range(400)]
        for k in keys:
            call(ch, "View", [(2, k)] + labels_field({"pad": "p" * 4000}))
        for _ in range(5):
            it = ch.unary_stream(SVC + "List")(pbwire.encode([(2, "labels.pad")]), timeout=30)
            first = next(it)
            assert len(pbwire.parse(first)) == 100
            it.cancel()
    for _ in range(5):
        ch = channel(direct.sock)
        futs = [ch.unary_stream(SVC + "List")(pbwire.encode([(2, "labels.pad")]), timeout=30) for _ in range(4)]
        ch.close()  # with the calls in flight
        for f in futs:
            assert code_of(lambda: list(f))[0] != grpc.StatusCode.OK
    raw = RawH2(direct.sock)
    try:
        hdrs = [(":method", "POST"), (":scheme", "http"), (":path", SVC + "Stat"), (":authority", "x"),
                ("content-type", "application/grpc")]
        body = grpc_frame(pbwire.encode([(2, "cr-none")]))
        for i in range(300):
            sid = 2 * i + 1
            raw.headers(sid, hdrs)
            raw.data(sid, body, end_stream=True)
            raw.s.sendall(raw.frame(3, 0, sid, struct.pack(">I", 8)))  # RST_STREAM(CANCEL)
        sid = 601
        raw.headers(sid, hdrs)
        raw.data(sid, body, end_stream=True)
        status = None
        for _ in range(2000):  # bounded: the answers to the reset ones may come first
            f = raw.next_frame()
            assert f is not None, "connection closed"
            if f[0] == 1 and f[2] == sid and "grpc-status" in f[3]:
                status = f[3]["grpc-status"]
                break
        assert status == "5"
    finally:
        raw.close()
    with channel(direct.sock) as ch:
        for k in keys:
            call(ch, "Remove", [(2, k)])
    assert_serving(direct)


def test_drain_answers_calls_in_flight(env):
    """SIGTERM makes snapshotter-serve drain as a worker handing over
    would: GOAWAY (NO_ERROR) on every connection, a call whose request was
    still arriving is answered, then the connection closes and the process
    exits 0."""
    direct = env["direct"]
    raw = RawH2(direct.sock)
    try:
        raw.headers(1, [(":method", "POST"), (":scheme", "http"), (":path", SVC + "Stat"),
                        (":authority", "x"), ("content-type", "application/grpc")])
        body = grpc_frame(pbwire.encode([(2, "drain-none")]))
        raw.data(1, body[:3])
        # the server's SETTINGS first: the connection is up
        f = raw.next_frame()
        assert f and f[0] == 4
        direct.proc.send_signal(signal.SIGTERM)
        goaway = None
        for _ in range(20):  # bounded: a few SETTINGS/WINDOW_UPDATE frames first
            f = raw.next_frame()
            assert f is not None, "closed without a GOAWAY"
            if f[0] == 7:
                goaway = f
                break
        assert goaway, "no GOAWAY"
        last_sid, code = struct.unpack(">II", goaway[3][:8])
        assert code == 0 and last_sid == 1, (last_sid, code)
        # the call in flight is still answered
        raw.data(1, body[3:], end_stream=True)
        status = None
        for _ in range(20):
            f = raw.next_frame()
            if f is None:
                break
            if f[0] == 1 and f[2] == 1 and "grpc-status" in f[3]:
                status = f[3]["grpc-status"]
                break
        assert status == "5", status
        # then the connection ends, and the process
        for _ in range(20):
            if raw.next_frame() is None:
                break
        else:
            raise AssertionError("the connection stayed open")
        assert direct.proc.wait(timeout=15) == 0, direct.stderr()[-3000:]
    finally:
        raw.close()


def test_clean_shutdown(env):
    """Last: each server stops on SIGTERM with exit 0 (every thread joined,
    everything freed: under ASan a leak would fail the exit), and no
    sanitizer spoke during the whole module."""
    for name in ("direct", "remote", "serve"):
        serve = env[name]
        rc = serve.stop(signal.SIGTERM)
        assert rc in (0, None), serve.stderr()[-3000:]
        assert sanitizer_reports(serve.stderr()) == [], serve.stderr()[-3000:]
