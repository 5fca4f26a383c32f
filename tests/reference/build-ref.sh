#!/bin/sh
# Build the estargz-ref conformance driver offline from Debian's Go packages.
#   build-ref.sh OUTBIN
# Exits 77 when the Go toolchain or golang-github-containerd-stargz-snapshotter-dev
# is missing, so callers can skip instead of fail.
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTBIN" >&2
	exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
go=${GO:-/usr/bin/go}
gocode=/usr/share/gocode
pkg=$gocode/src/github.com/containerd/stargz-snapshotter/estargz

if [ ! -x "$go" ]; then
	echo "build-ref.sh: $go not found (apt-get install golang-go)" >&2
	exit 77
fi
if [ ! -f "$pkg/estargz.go" ]; then
	echo "build-ref.sh: $pkg missing (apt-get install golang-github-containerd-stargz-snapshotter-dev)" >&2
	exit 77
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# GOPATH mode resolves every import from /usr/share/gocode; nothing is
# fetched. A caller may pass GOCACHE to share compiled packages between runs.
mkdir -p "$tmp/gopath"
GO111MODULE=off \
GOPATH="$gocode:$tmp/gopath" \
GOCACHE="${GOCACHE:-$tmp/gocache}" \
GOFLAGS= \
GOPROXY=off \
GOTOOLCHAIN=local \
CGO_ENABLED=0 \
	"$go" build -trimpath -o "$out" "$here/estargz-ref.go"
