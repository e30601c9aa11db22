package agent

import (
	"archive/tar"
	"bufio"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"mvm/guest-agent/internal/frame"
)

func init() {
	handlers["tar.read"] = opTarRead
	handlers["tar.write"] = opTarWrite
}

// tar.read {path, user} → DATA 1: a tar stream of the directory's contents (names relative to
// it; a file gives a one-entry tar), EOF 1, RESPONSE {entries, bytes}. Symlinks are stored as
// symlinks; sockets are skipped.
func opTarRead(s *Stream, raw []byte) (any, error) {
	req, err := decodeFileReq(raw)
	if err != nil {
		return nil, err
	}
	root, err := cleanAbs("path", req.Path)
	if err != nil {
		return nil, err
	}
	rootInfo, err := os.Stat(root)
	if err != nil {
		return nil, toError(err, root)
	}
	cw := &chanWriter{s: s, ch: frame.ChanOut}
	bw := bufio.NewWriterSize(cw, frame.MaxData)
	tw := tar.NewWriter(bw)
	entries := 0
	add := func(p, name string, fi fs.FileInfo) error {
		if fi.Mode()&fs.ModeSocket != 0 {
			return nil
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return toError(err, p)
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return newErr(CodeINTERNAL, p, "%s: %v", p, err)
		}
		hdr.Name = filepath.ToSlash(name)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		entries++
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return toError(err, p)
		}
		defer f.Close()
		n, err := io.CopyN(tw, f, hdr.Size)
		if err == io.EOF {
			return newErr(CodeEBUSY, p, "%s shrank from %d to %d bytes while being read", p, hdr.Size, n)
		}
		if err != nil {
			if s.ctx.Err() != nil {
				return s.ctx.Err()
			}
			return toError(err, p)
		}
		return nil
	}
	if !rootInfo.IsDir() {
		err = add(root, filepath.Base(root), rootInfo)
	} else {
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, werr error) error {
			if werr != nil {
				return toError(werr, p)
			}
			if p == root {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return toError(err, p)
			}
			rel, _ := filepath.Rel(root, p)
			return add(p, rel, fi)
		})
	}
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	s.sendEOF(frame.ChanOut)
	return map[string]any{"entries": entries, "bytes": cw.n}, nil
}

// safeRel turns a tar entry name into a clean path relative to the target ("" for the target
// itself), refusing names that climb out of it. A leading "/" is dropped, as GNU tar does.
func safeRel(name string) (string, error) {
	if strings.Contains(name, "\x00") {
		return "", invalid("tar entry name contains NUL")
	}
	clean := path.Clean("/" + strings.TrimLeft(name, "/"))
	if strings.Contains(strings.TrimLeft(name, "/"), "..") {
		// path.Clean of "/"+name cannot escape "/", so look at the raw components.
		depth := 0
		for _, c := range strings.Split(name, "/") {
			switch c {
			case "", ".":
			case "..":
				depth--
				if depth < 0 {
					return "", newErr(CodeEINVAL, name, "tar entry %q escapes the target directory", name)
				}
			default:
				depth++
			}
		}
	}
	return strings.TrimPrefix(clean, "/"), nil
}

// extractor writes entries beneath root without following any symlink on the way: each parent
// directory is opened component by component with O_NOFOLLOW relative to the root's fd.
type extractor struct {
	rootFd int
}

// parent opens the directory that holds rel (creating missing directories when mkdirs) and
// returns its fd and rel's last component.
func (x *extractor) parent(rel string, mkdirs bool) (int, string, error) {
	dir, base := path.Split(rel)
	fd, err := unix.Dup(x.rootFd)
	if err != nil {
		return -1, "", err
	}
	for _, c := range strings.Split(strings.TrimSuffix(dir, "/"), "/") {
		if c == "" {
			continue
		}
		nfd, err := unix.Openat(fd, c, unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && mkdirs {
			if err = unix.Mkdirat(fd, c, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				nfd, err = unix.Openat(fd, c, unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
			}
		}
		unix.Close(fd)
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return -1, "", newErr(CodeEINVAL, rel, "tar entry %q: %s is a symlink or not a directory (refusing to write through it)", rel, c)
		}
		if err != nil {
			return -1, "", toError(err, rel)
		}
		fd = nfd
	}
	return fd, base, nil
}

// clear removes a non-directory at base so the entry can replace it.
func clear(dirfd int, base string) error {
	err := unix.Unlinkat(dirfd, base, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

func (x *extractor) entry(hdr *tar.Header, rel string, body io.Reader) error {
	dirfd, base, err := x.parent(rel, true)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := unix.Mkdirat(dirfd, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return toError(err, rel)
		}
		fd, err := unix.Openat(dirfd, base, unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return newErr(CodeEINVAL, rel, "tar entry %q: exists and is not a directory", rel)
		}
		defer unix.Close(fd)
		return toError(unix.Fchmod(fd, mode), rel)
	case tar.TypeReg, tar.TypeRegA:
		if err := clear(dirfd, base); err != nil {
			return toError(err, rel)
		}
		fd, err := unix.Openat(dirfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return toError(err, rel)
		}
		f := os.NewFile(uintptr(fd), rel)
		defer f.Close()
		if _, err := io.Copy(f, body); err != nil {
			return err
		}
		if err := f.Chmod(os.FileMode(mode)); err != nil {
			return toError(err, rel)
		}
		ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
		if hdr.ModTime.IsZero() {
			now := unix.NsecToTimespec(time.Now().UnixNano())
			ts = []unix.Timespec{now, now}
		}
		_ = unix.UtimesNanoAt(dirfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
		return toError(f.Close(), rel)
	case tar.TypeSymlink:
		if err := clear(dirfd, base); err != nil {
			return toError(err, rel)
		}
		return toError(unix.Symlinkat(hdr.Linkname, dirfd, base), rel)
	case tar.TypeLink:
		target, err := safeRel(hdr.Linkname)
		if err != nil || target == "" {
			return newErr(CodeEINVAL, rel, "tar entry %q: hard link to %q outside the target", rel, hdr.Linkname)
		}
		tfd, tbase, err := x.parent(target, false)
		if err != nil {
			return err
		}
		defer unix.Close(tfd)
		if err := clear(dirfd, base); err != nil {
			return toError(err, rel)
		}
		return toError(unix.Linkat(tfd, tbase, dirfd, base, 0), rel)
	case tar.TypeFifo:
		if err := clear(dirfd, base); err != nil {
			return toError(err, rel)
		}
		return toError(unix.Mkfifoat(dirfd, base, mode), rel)
	case tar.TypeChar, tar.TypeBlock:
		if err := clear(dirfd, base); err != nil {
			return toError(err, rel)
		}
		kind := uint32(unix.S_IFCHR)
		if hdr.Typeflag == tar.TypeBlock {
			kind = unix.S_IFBLK
		}
		return toError(unix.Mknodat(dirfd, base, kind|mode, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))), rel)
	}
	return newErr(CodeUNSUPPORTED, rel, "tar entry %q: unsupported type %q", rel, string(hdr.Typeflag))
}

// tar.write {path, user} + DATA 0 (a tar stream) … EOF 0 → RESPONSE {entries, bytes}: extracts
// beneath path (created if missing). An entry that would land outside it — a ".." name, a hard
// link out, or a path through a symlink — fails the op with EINVAL (entries before it stay).
func opTarWrite(s *Stream, raw []byte) (any, error) {
	req, err := decodeFileReq(raw)
	if err != nil {
		return nil, err
	}
	root, err := cleanAbs("path", req.Path)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, toError(err, root)
	}
	rootFd, err := unix.Open(root, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, toError(err, root)
	}
	defer unix.Close(rootFd)
	x := &extractor{rootFd: rootFd}
	counter := &countingReader{r: s}
	tr := tar.NewReader(bufio.NewReaderSize(counter, frame.MaxData))
	entries := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if s.ctx.Err() != nil {
				return nil, s.ctx.Err()
			}
			return nil, newErr(CodeEINVAL, root, "bad tar stream: %v", err)
		}
		rel, err := safeRel(hdr.Name)
		if err != nil {
			return nil, err
		}
		if rel == "" {
			continue // the target itself
		}
		switch hdr.Typeflag {
		case tar.TypeXGlobalHeader, tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
			continue
		}
		if err := x.entry(hdr, rel, tr); err != nil {
			if s.ctx.Err() != nil {
				return nil, s.ctx.Err()
			}
			var e *Error
			if errors.As(err, &e) {
				return nil, e
			}
			return nil, newErr(CodeINTERNAL, rel, "tar entry %q: %v", rel, err)
		}
		entries++
	}
	// Consume the rest (tar record padding) up to the host's EOF.
	if _, err := io.Copy(io.Discard, counter); err != nil {
		return nil, err
	}
	return map[string]any{"entries": entries, "bytes": counter.n}, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

