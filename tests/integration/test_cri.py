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
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import pbwire  # noqa: E402
from containerdutil import read_text  # noqa: E402
from test_containerd import holdfast_node, lazy_mounts  # noqa: E402

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


@pytest.fixture(scope="module")
def cri_node():
    with holdfast_node("hf-cri-", [], cri="holdfast") as (base, registry, proxy, sup, cd, img):
        yield {"proxy": proxy, "sup": sup, "cd": cd, "ref": img["refs"]["esgz"], "expect": img["expect"],
               "layers": img["layers"], "layer_bytes": img["layer_bytes"]}


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
