package agent

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"mvm/guest-agent/internal/frame"
)

func init() {
	handlers["file.stat"] = opFileStat
	handlers["file.list"] = opFileList
	handlers["file.mkdir"] = opFileMkdir
	handlers["file.move"] = opFileMove
	handlers["file.remove"] = opFileRemove
	handlers["file.read"] = opFileRead
	handlers["file.write"] = opFileWrite
}

// fileReq is the union of the file ops' fields (each op reads its own).
type fileReq struct {
	Path      string          `json:"path"`
	User      json.RawMessage `json:"user"`
	Follow    *bool           `json:"follow"`
	Parents   bool            `json:"parents"`
	Mode      *uint32         `json:"mode"`
	Mkdirs    *bool           `json:"mkdirs"`
	Append    bool            `json:"append"`
	Recursive bool            `json:"recursive"`
	Force     bool            `json:"force"`
	From      string          `json:"from"`
	To        string          `json:"to"`
	Overwrite bool            `json:"overwrite"`
	Offset    int64           `json:"offset"`
	Length    *int64          `json:"length"`
}

// decodeFileReq decodes the request and switches this goroutine to the request's user (file
// operations then get that user's permission checks and ownership).
func decodeFileReq(raw []byte) (*fileReq, error) {
	var req fileReq
	if err := decodeReq(raw, &req); err != nil {
		return nil, err
	}
	u, err := lookupUser(req.User)
	if err != nil {
		return nil, err
	}
	if err := becomeUser(u); err != nil {
		return nil, err
	}
	return &req, nil
}

// cleanAbs checks that p is an absolute path and cleans it.
func cleanAbs(field, p string) (string, error) {
	if p == "" {
		return "", invalid("%s is required", field)
	}
	if strings.Contains(p, "\x00") {
		return "", invalid("%s contains NUL", field)
	}
	if !filepath.IsAbs(p) {
		return "", newErr(CodeEINVAL, p, "%s must be an absolute path, got %q", field, p)
	}
	return filepath.Clean(p), nil
}

// FileStat is the stat of one file (file.stat, file.list entries, file.read's EVENT).
type FileStat struct {
	Name          string `json:"name"`
	Path          string `json:"path,omitempty"`
	Type          string `json:"type"` // file, dir, symlink, fifo, socket, char, block, other
	Size          int64  `json:"size"`
	Mode          uint32 `json:"mode"` // permission bits with setuid/setgid/sticky (07777)
	MtimeMs       int64  `json:"mtimeMs"`
	Uid           int    `json:"uid"`
	Gid           int    `json:"gid"`
	SymlinkTarget string `json:"symlinkTarget,omitempty"`
}

func fileType(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "file"
	case m.IsDir():
		return "dir"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "char"
	case m&fs.ModeDevice != 0:
		return "block"
	}
	return "other"
}

func statOf(path string, fi fs.FileInfo) FileStat {
	st := FileStat{Name: fi.Name(), Path: path, Type: fileType(fi.Mode()), Size: fi.Size(), MtimeMs: fi.ModTime().UnixMilli(), Mode: uint32(fi.Mode().Perm())}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.Mode = sys.Mode & 0o7777
		st.Uid, st.Gid = int(sys.Uid), int(sys.Gid)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		st.SymlinkTarget, _ = os.Readlink(path)
	}
	return st
}

// file.stat {path, follow = true, user} → FileStat (with follow=false a symlink is described itself).
func opFileStat(s *Stream, raw []byte) (any, error) {
	req, err := decodeFileReq(raw)
	if err != nil {
		return nil, err
	}
	p, err := cleanAbs("path", req.Path)
	if err != nil {
		return nil, err
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return nil, toError(err, p)
	}
	st := statOf(p, fi)
	if fi.Mode()&fs.ModeSymlink != 0 && (req.Follow == nil || *req.Follow) {
		target := st.SymlinkTarget
		if fi, err = os.Stat(p); err != nil {
			return nil, toError(err, p)
		}
		st = statOf(p, fi)
		st.SymlinkTarget = target
	}
	return st, nil
}

// file.list {path, user} → DATA 1: one FileStat per line (lstat: symlinks are not followed, their
// target is given), in directory order, EOF, RESPONSE {count}. Constant memory for any size.
func opFileList(s *Stream, raw []byte) (any, error) {
	req, err := decodeFileReq(raw)
	if err != nil {
		return nil, err
	}
	p, err := cleanAbs("path", req.Path)
	if err != nil {
		return nil, err
	}
	d, err := os.Open(p)
	if err != nil {
		return nil, toError(err, p)
	}
	defer d.Close()
	if fi, err := d.Stat(); err != nil {
		return nil, toError(err, p)
	} else if !fi.IsDir() {
		return nil, newErr(CodeENOTDIR, p, "%s: not a directory", p)
	}
	w := &chanWriter{s: s, ch: frame.ChanOut}
	enc := json.NewEncoder(w)
	count := 0
	for {
		entries, err := d.ReadDir(512)
		for _, e := range entries {
			fp := filepath.Join(p, e.Name())
			fi, ierr := e.Info()
			if ierr != nil {
				continue // removed meanwhile
			}
			if err := enc.Encode(statOf(fp, fi)); err != nil {
				return nil, err
			}
			count++
		}
		if err == io.EOF || (err == nil && len(entries) == 0) {
			break
		}
		if err != nil {
			return nil, toError(err, p)
		}
	}
	s.sendEOF(frame.ChanOut)
	return map[string]any{"count": count}, nil
}

// file.mkdir {path, parents, mode = 0755, user} → {created}.
func opFileMkdir(s *Stream, raw []byte) (any, error) {
	req, err := decodeFileReq(raw)
	if err != nil {
		return nil, err
	}
	p, err := cleanAbs("path", req.Path)
	if err != nil {
		return nil, err
	}
	mode := os.FileMode(0o755)
	if req.Mode != nil {
		mode = os.FileMode(*req.Mode & 0o7777)
	}
	if req.Parents {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			return map[string]any{"created": false}, nil
		}
		if err := os.MkdirAll(p, mode); err != nil {
			return nil, toError(err, p)
		}
	} else if err := os.Mkdir(p, mode); err != nil {
		return nil, toError(err, p)
	}
	if req.Mode != nil {
		_ = os.Chmod(p, mode) // the umask applied to mkdir
	}
	return map[string]any{"created": true}, nil
}

// file.move {from, to, overwrite = false, user} → {}.
func opFileMove(s *Stream, raw []byte) (any, error) {
	req, err := decodeFileReq(raw)
	if err != nil {
		return nil, err
	}
	from, err := cleanAbs("from", req.From)
	if err != nil {
		return nil, err
	}
	to, err := cleanAbs("to", req.To)
	if err != nil {
		return nil, err
	}
	if req.Overwrite {
		err = unix.Rename(from, to)
	} else {
		err = unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			// A file system without RENAME_NOREPLACE: check, then rename.
			if _, lerr := os.Lstat(to); lerr == nil {
				return nil, newErr(CodeEEXIST, to, "%s: file exists (pass overwrite to replace it)", to)
			}
			err = unix.Rename(from, to)
		}
	}
	if err != nil {
		path := from
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EISDIR) {
			path = to
		}
		if _, serr := os.Lstat(from); serr != nil {
			path = from
		}
		return nil, toError(err, path)
	}
	return map[string]any{}, nil
}

// file.remove {path, recursive, force, user} → {removed}.
func opFileRemove(s *Stream, raw []byte) (any, error) {
	req, err := decodeFileReq(raw)
	if err != nil {
		return nil, err
	}
	p, err := cleanAbs("path", req.Path)
	if err != nil {
		return nil, err
	}
	if p == "/" {
		return nil, newErr(CodeEINVAL, p, "refusing to remove /")
	}
	if _, err := os.Lstat(p); err != nil {
		if req.Force && errors.Is(err, fs.ErrNotExist) {
			return map[string]any{"removed": false}, nil
		}
		return nil, toError(err, p)
	}
	if req.Recursive {
		err = os.RemoveAll(p)
	} else {
		err = os.Remove(p)
	}
	if err != nil {
		return nil, toError(err, p)
	}
	return map[string]any{"removed": true}, nil
}

// file.read {path, offset, length, user} → EVENT {stat}, DATA 1 (within credit, so in constant
// memory), EOF 1, RESPONSE {size}.
func opFileRead(s *Stream, raw []byte) (any, error) {
	req, err := decodeFileReq(raw)
	if err != nil {
		return nil, err
	}
	p, err := cleanAbs("path", req.Path)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, toError(err, p)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, toError(err, p)
	}
	if fi.IsDir() {
		return nil, newErr(CodeEISDIR, p, "%s: is a directory (use file.list or tar.read)", p)
	}
	if req.Offset < 0 || (req.Length != nil && *req.Length < 0) {
		return nil, invalid("offset and length must be non-negative")
	}
	s.event(map[string]any{"stat": statOf(p, fi)})
	var r io.Reader = f
	if req.Offset > 0 {
		if _, err := f.Seek(req.Offset, io.SeekStart); err != nil {
			return nil, toError(err, p)
		}
	}
	if req.Length != nil {
		r = io.LimitReader(f, *req.Length)
	}
	n, err := s.pumpFrom(frame.ChanOut, r, nil)
	if err != nil {
		return nil, toError(err, p)
	}
	s.sendEOF(frame.ChanOut)
	return map[string]any{"size": n}, nil
}

// file.write {path, mode, mkdirs = true, append, user} + DATA 0 … EOF 0 → RESPONSE {size}.
// Missing parents are created (0755); mode (default 0644) applies to a new file, and to an
// existing one when given. The data goes straight to the file: a cancelled upload leaves it
// partial.
func opFileWrite(s *Stream, raw []byte) (any, error) {
	req, err := decodeFileReq(raw)
	if err != nil {
		return nil, err
	}
	p, err := cleanAbs("path", req.Path)
	if err != nil {
		return nil, err
	}
	if req.Mkdirs == nil || *req.Mkdirs {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, toError(err, filepath.Dir(p))
		}
	}
	flags := os.O_WRONLY | os.O_CREATE | unix.O_CLOEXEC
	if req.Append {
		flags |= os.O_APPEND
	} else {
		flags |= os.O_TRUNC
	}
	mode := os.FileMode(0o644)
	if req.Mode != nil {
		mode = os.FileMode(*req.Mode & 0o7777)
	}
	f, err := os.OpenFile(p, flags, mode)
	if err != nil {
		return nil, toError(err, p)
	}
	defer f.Close()
	if req.Mode != nil {
		if err := f.Chmod(mode); err != nil {
			return nil, toError(err, p)
		}
	}
	buf := make([]byte, frame.MaxData)
	var size int64
	for {
		n, rerr := s.Read(buf)
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				return nil, toError(err, p)
			}
			size += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return nil, rerr
		}
	}
	if err := f.Close(); err != nil {
		return nil, toError(err, p)
	}
	return map[string]any{"size": size}, nil
}
