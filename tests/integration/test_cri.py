"""Kubernetes' path to holdfast: containerd's CRI plugin (what the kubelet
talks to) pulling an eStargz image with holdfast as its snapshotter.

A node as a cluster has it: the real supervisor and worker (the
supervisor owns the snapshotter socket), Debian's containerd 1.6 with its
CRI plugin on (`snapshotter = "holdfast"`, `disable_snapshot_annotations =
false`, the registry in its hosts.toml directory), docker-registry on
127.0.0.1 behind tests/integration/faultproxy.py. The image is
tests/integration/test_containerd.py's: busybox and a data layer of a
24 MiB random file, converted by `ctr-remote images convert --estargz
--oci` and pushed. The test speaks the CRI's own gRPC API
(runtime.v1.ImageService) on containerd's socket: PullImage must mount
every layer lazily (the CRI plugin's containerd.io/snapshot/cri.* labels)
and fetch a small part of the image; ImageStatus must know the image;
then a container runs on it (ctr, in the CRI's k8s.io namespace: pod
sandboxes need CNI and a pause image, neither of which this machine has)
and reads the big file whole, checked by its sha256; RemoveImage lets
containerd's collector remove the snapshots, and the FUSE mounts go with
them.

Needs root. Every process started here is stopped by pid, every mount
under the private directory unmounted, also when the test fails."""

import json
import os
import shutil
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import pbwire  # noqa: E402
import registryutil  # noqa: E402
import supervisorutil as su  # noqa: E402
from containerdutil import CONTAINERD, CTR, CTR_REMOTE, Containerd, mounts_under, read_text, unmount_all  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from test_containerd import _supervisor_mounts, push_esgz_image  # noqa: E402

grpc = pytest.importorskip("grpc")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (containerd, FUSE and overlay mounts)")

IMAGES = "/runtime.v1.ImageService/"


def cri(cd, method, fields, timeout=120):
    """One unary call of the CRI image service; the reply's fields."""
    with grpc.insecure_channel("unix:" + cd.sock) as ch:
        reply = ch.unary_unary(IMAGES + method)(pbwire.encode(fields), timeout=timeout)
    return pbwire.parse(reply)


def image_spec(ref):
    return pbwire.encode([(1, ref)])


def lazy_mounts(sup):
    return [m for m in _supervisor_mounts(sup) if "/snapshotter/snapshots/" in m["mountpoint"]]


@pytest.fixture(scope="module")
def cri_node():
    for tool in (CONTAINERD, CTR, CTR_REMOTE, "/usr/sbin/runc", su.supervisor_path(), su.worker_path()):
        if not os.access(tool, os.X_OK):
            pytest.fail("%s missing (packaging/install-deps installs it; meson builds ours)" % tool)
    base = tempfile.mkdtemp(prefix="hf-cri-", dir="/tmp")
    registry = proxy = sup = cd = None
    try:
        registry = registryutil.Registry().start()
        proxy = FaultProxy(registry.url).start()
        snap_sock = os.path.join(base, "snap.sock")
        # what the pull fetches is measured without the background fetch
        # (on by default), which brings the rest of each layer after
        sup = su.SupervisorProc(base, ["--snapshotter-socket", snap_sock],
                                env={"HOLDFAST_BACKGROUND_FETCH": "0"}).start()
        cd = Containerd(base, {"holdfast": snap_sock}, cri="holdfast")
        cd.plain_http(proxy.host)
        cd.start()
        img = push_esgz_image(registry, proxy, cd)
        yield {"proxy": proxy, "sup": sup, "cd": cd, "ref": img["refs"]["esgz"], "expect": img["expect"],
               "layers": img["layers"], "layer_bytes": img["layer_bytes"]}
    finally:
        if cd:
            cd.stop()
        if sup:
            sup.cleanup()
        unmount_all(base)
        if proxy:
            proxy.stop()
        if registry:
            registry.stop()
        if not mounts_under(base):
            shutil.rmtree(base, ignore_errors=True)


def test_cri_pulls_lazily_and_runs(cri_node):
    cd, sup, proxy, ref = cri_node["cd"], cri_node["sup"], cri_node["proxy"], cri_node["ref"]
    before = len(lazy_mounts(sup))
    proxy.stats(reset=True)
    try:
        reply = dict(cri(cd, "PullImage", [(1, image_spec(ref))]))
    except grpc.RpcError as e:
        raise AssertionError("CRI PullImage: %s %s\ncontainerd log:\n%s" % (
            e.code(), e.details(), read_text(cd.log)[-4000:]))
    image_id = reply[1].decode()
    assert image_id.startswith("sha256:"), reply
    served = proxy.stats()["bytes_sent"]
    mounts = lazy_mounts(sup)
    # every layer mounted lazily, through the labels the CRI plugin passes
    assert len(mounts) - before == cri_node["layers"], (mounts, read_text(sup.log_path)[-3000:])
    # the 24 MiB random file is not fetched by the pull
    assert served < cri_node["layer_bytes"] // 4, (served, cri_node["layer_bytes"])

    # the CRI knows the image: ImageStatus answers with its id
    status = dict(cri(cd, "ImageStatus", [(1, image_spec(ref))]))
    assert 1 in status and image_id.encode() in status[1], status

    # a container on it, in the CRI's namespace, reading the big file whole
    out = cd.ctr("run", "--rm", "--snapshotter", "holdfast", ref, "cri-1", "sh", "-c",
                 "cat /etc/hello; sha256sum /data/big | cut -d' ' -f1", ns="k8s.io", timeout=180).stdout.decode()
    assert out.split() == ["hello", "from", "holdfast", cri_node["expect"]["big"]], out

    # RemoveImage: containerd's collector removes the snapshots, and the
    # FUSE mounts go with them (bounded poll: the collector is
    # asynchronous)
    cri(cd, "RemoveImage", [(1, image_spec(ref))])
    for _ in range(100):
        if len(lazy_mounts(sup)) == before:
            break
        time.sleep(0.1)
    assert len(lazy_mounts(sup)) == before, json.dumps(lazy_mounts(sup), indent=1)
