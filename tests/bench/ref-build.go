// Reference side of the convert benchmark: estargz.Build (what ctr-remote
// uses) on a layer tar, default options (4 MiB chunks, best compression,
// parallel compression on every core).
//
//	ref-build IN.tar OUT
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/containerd/stargz-snapshotter/estargz"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: ref-build IN.tar OUT")
		os.Exit(2)
	}
	in, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	st, _ := in.Stat()
	blob, err := estargz.Build(io.NewSectionReader(in, 0, st.Size()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := os.Create(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := io.Copy(out, blob); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	blob.Close()
	out.Close()
	fmt.Println(blob.TOCDigest())
}
