// estargz-ref: a small test-only driver around the reference eStargz
// implementation (github.com/containerd/stargz-snapshotter/estargz, as
// packaged by Debian). holdfast's conformance tests use it to build blobs
// that holdfast must read, and to read blobs that holdfast built.
//
//	estargz-ref build [--chunk-size N] [--prefetch LISTFILE] [--level L] IN.tar OUT.blob
//	estargz-ref dump [--toc-digest D] BLOB
//	estargz-ref toc BLOB
//
// "dump" prints the layer as overlayfs would see it, one JSON object per
// path, in the format documented in tests/integration/treedump.py; that
// format is shared with `holdfastctl inspect --json`.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	opaqueXattr    = "trusted.overlay.opaque"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage:\n"+
		"  estargz-ref build [--chunk-size N] [--prefetch LISTFILE] [--level L] IN.tar OUT.blob\n"+
		"  estargz-ref dump [--toc-digest D] BLOB\n"+
		"  estargz-ref toc BLOB\n")
	os.Exit(2)
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "estargz-ref: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = cmdBuild(os.Args[2:])
	case "dump":
		err = cmdDump(os.Args[2:])
	case "toc":
		err = cmdTOC(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fail("%s: %v", os.Args[1], err)
	}
}

func readList(p string) ([]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var list []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := sc.Text(); l != "" {
			list = append(list, l)
		}
	}
	return list, sc.Err()
}

func cmdBuild(args []string) error {
	fs := flag.NewFlagSet("build", flag.ExitOnError)
	chunkSize := fs.Int("chunk-size", 0, "chunk size in bytes (0: library default)")
	prefetch := fs.String("prefetch", "", "file listing prioritized paths, one per line")
	level := fs.Int("level", -1, "gzip compression level (-1: library default, best compression)")
	fs.Parse(args)
	if fs.NArg() != 2 {
		usage()
	}
	in, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	var opts []estargz.Option
	if *chunkSize > 0 {
		opts = append(opts, estargz.WithChunkSize(*chunkSize))
	}
	if *level >= 0 {
		opts = append(opts, estargz.WithCompressionLevel(*level))
	}
	if *prefetch != "" {
		list, err := readList(*prefetch)
		if err != nil {
			return err
		}
		opts = append(opts, estargz.WithPrioritizedFiles(list))
	}
	blob, err := estargz.Build(io.NewSectionReader(in, 0, st.Size()), opts...)
	if err != nil {
		return err
	}
	defer blob.Close()

	out, err := os.Create(fs.Arg(1))
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), blob)
	if err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	res := struct {
		TOCDigest  string `json:"toc_digest"`
		DiffID     string `json:"diff_id"`
		BlobDigest string `json:"blob_digest"`
		Size       int64  `json:"size"`
	}{
		TOCDigest:  blob.TOCDigest().String(),
		DiffID:     blob.DiffID().String(),
		BlobDigest: "sha256:" + hex.EncodeToString(h.Sum(nil)),
		Size:       n,
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func openBlob(p string) (*estargz.Reader, *os.File, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	r, err := estargz.Open(io.NewSectionReader(f, 0, st.Size()))
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return r, f, nil
}

func cmdTOC(args []string) error {
	if len(args) != 1 {
		usage()
	}
	r, f, err := openBlob(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Println(r.TOCDigest().String())
	return nil
}

// dumpEntry is one line of the dump; field order is the documented one.
type dumpEntry struct {
	Path     string            `json:"path"`
	Type     string            `json:"type"`
	Mode     int64             `json:"mode"`
	UID      int               `json:"uid"`
	GID      int               `json:"gid"`
	Size     int64             `json:"size"`
	Mtime    int64             `json:"mtime"`
	Link     string            `json:"link"`
	DevMajor int               `json:"devmajor"`
	DevMinor int               `json:"devminor"`
	Xattrs   map[string]string `json:"xattrs"`
	SHA256   string            `json:"sha256"`
	Nlink    int               `json:"nlink"`
}

func mtimeOf(e *estargz.TOCEntry) int64 {
	// Implicit directories and entries without "modtime" have the zero
	// time, which must read as 0, not year 1.
	if e.ModTime().IsZero() {
		return 0
	}
	return e.ModTime().Unix()
}

// readVerified reads the whole payload of the regular file e through
// OpenFile, chunk by chunk, checking every chunk against its TOC digest
// and the whole file against the file digest. It returns the hex sha256.
func readVerified(r *estargz.Reader, v estargz.TOCEntryVerifier, p string, e *estargz.TOCEntry) (string, error) {
	sr, err := r.OpenFile(p)
	if err != nil {
		return "", err
	}
	if sr.Size() != e.Size {
		return "", fmt.Errorf("%s: OpenFile size %d, TOC size %d", p, sr.Size(), e.Size)
	}
	whole := sha256.New()
	var off int64
	for off < e.Size {
		// Chunks are registered under the name of the entry that owns
		// the payload; for a hardlink p differs from e.Name.
		ce, ok := r.ChunkEntryForOffset(e.Name, off)
		if !ok {
			return "", fmt.Errorf("%s: no chunk at offset %d", p, off)
		}
		if ce.ChunkOffset != off || ce.ChunkSize <= 0 || off+ce.ChunkSize > e.Size {
			return "", fmt.Errorf("%s: bad chunk at offset %d (chunkOffset %d, chunkSize %d)",
				p, off, ce.ChunkOffset, ce.ChunkSize)
		}
		buf := make([]byte, ce.ChunkSize)
		if _, err := sr.ReadAt(buf, off); err != nil && !(errors.Is(err, io.EOF) && off+ce.ChunkSize == e.Size) {
			return "", fmt.Errorf("%s: reading chunk at %d: %v", p, off, err)
		}
		cv, err := v.Verifier(ce)
		if err != nil {
			return "", fmt.Errorf("%s: chunk at %d: %v", p, off, err)
		}
		cv.Write(buf)
		if !cv.Verified() {
			return "", fmt.Errorf("%s: chunk at offset %d does not match its digest", p, off)
		}
		whole.Write(buf)
		off += ce.ChunkSize
	}
	sum := hex.EncodeToString(whole.Sum(nil))
	if e.Digest != "" && e.Digest != "sha256:"+sum {
		return "", fmt.Errorf("%s: content digest sha256:%s, TOC says %s", p, sum, e.Digest)
	}
	return sum, nil
}

func cmdDump(args []string) error {
	fs := flag.NewFlagSet("dump", flag.ExitOnError)
	tocDigest := fs.String("toc-digest", "", "expected TOC JSON digest")
	fs.Parse(args)
	if fs.NArg() != 1 {
		usage()
	}
	r, f, err := openBlob(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()

	var v estargz.TOCEntryVerifier
	if *tocDigest != "" {
		d, err := digest.Parse(*tocDigest)
		if err != nil {
			return fmt.Errorf("bad --toc-digest: %v", err)
		}
		if v, err = r.VerifyTOC(d); err != nil {
			return err
		}
	} else if v, err = r.Verifiers(); err != nil {
		return err
	}

	root, ok := r.Lookup("")
	if !ok {
		return fmt.Errorf("no root directory")
	}
	var out []dumpEntry
	var walk func(dir string, d *estargz.TOCEntry) error
	walk = func(dir string, d *estargz.TOCEntry) error {
		children := map[string]*estargz.TOCEntry{}
		d.ForeachChild(func(name string, e *estargz.TOCEntry) bool {
			children[name] = e
			return true
		})
		for name, e := range children {
			p := name
			if dir != "" {
				p = dir + "/" + name
			}
			if dir == "" && (name == estargz.PrefetchLandmark || name == estargz.NoPrefetchLandmark) {
				continue
			}
			if name == opaqueMarker {
				continue // reported as an xattr of dir
			}
			if strings.HasPrefix(name, whiteoutPrefix) {
				target := name[len(whiteoutPrefix):]
				if _, real := children[target]; real {
					continue
				}
				tp := target
				if dir != "" {
					tp = dir + "/" + target
				}
				out = append(out, dumpEntry{
					Path: tp, Type: "char", UID: e.UID, GID: e.GID,
					Mtime: mtimeOf(e), Xattrs: map[string]string{}, Nlink: e.NumLink,
				})
				continue
			}
			de := dumpEntry{
				Path:   p,
				Type:   e.Type,
				Mode:   e.Mode & 07777,
				UID:    e.UID,
				GID:    e.GID,
				Mtime:  mtimeOf(e),
				Xattrs: map[string]string{},
			}
			for k, val := range e.Xattrs {
				de.Xattrs[k] = base64.StdEncoding.EncodeToString(val)
			}
			switch e.Type {
			case "dir":
				if _, ok := e.LookupChild(opaqueMarker); ok {
					de.Xattrs[opaqueXattr] = base64.StdEncoding.EncodeToString([]byte("y"))
				}
				if err := walk(p, e); err != nil {
					return err
				}
			case "reg":
				de.Size = e.Size
				sum, err := readVerified(r, v, p, e)
				if err != nil {
					return err
				}
				de.SHA256 = sum
			case "symlink":
				de.Link = e.LinkName
			case "char", "block":
				de.DevMajor = e.DevMajor
				de.DevMinor = e.DevMinor
			case "fifo":
			default:
				return fmt.Errorf("%s: unexpected entry type %q", p, e.Type)
			}
			if e.Type != "dir" {
				de.Nlink = e.NumLink
			}
			out = append(out, de)
		}
		return nil
	}
	if err := walk("", root); err != nil {
		return err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })

	w := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for i := range out {
		if path.Clean(out[i].Path) != out[i].Path {
			return fmt.Errorf("unclean path %q", out[i].Path)
		}
		if err := enc.Encode(&out[i]); err != nil {
			return err
		}
	}
	return w.Flush()
}
