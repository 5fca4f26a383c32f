// Reference side of the TOC benchmark: the estargz Go package (Debian's
// golang-github-containerd-stargz-snapshotter-dev) opening the same blob:
// footer, TOC decompression, JSON decoding and its entry index.
//
//	ref-open BLOB [N]   prints open_ms (median) and maxrss_kib
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ref-open BLOB [N]")
		os.Exit(2)
	}
	n := 5
	if len(os.Args) > 2 {
		if v, err := strconv.Atoi(os.Args[2]); err == nil && v > 0 && v <= 1000 {
			n = v
		}
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	st, err := f.Stat()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	times := make([]float64, 0, n)
	entries := 0
	for i := 0; i < n; i++ {
		t0 := time.Now()
		r, err := estargz.Open(io.NewSectionReader(f, 0, st.Size()))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		times = append(times, float64(time.Since(t0).Microseconds())/1000)
		entries = 0
		root, ok := r.Lookup("")
		if ok {
			var walk func(e *estargz.TOCEntry)
			walk = func(e *estargz.TOCEntry) {
				e.ForeachChild(func(_ string, c *estargz.TOCEntry) bool {
					entries++
					if c.Type == "dir" {
						walk(c)
					}
					return true
				})
			}
			walk(root)
		}
	}
	sort.Float64s(times)
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	fmt.Printf("open_ms=%.2f entries=%d maxrss_kib=%d\n", times[n/2], entries, ru.Maxrss)
}
