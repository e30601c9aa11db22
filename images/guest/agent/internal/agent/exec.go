package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"mvm/guest-agent/internal/frame"
)

// DefaultPath is the PATH of an exec unless setup or the request sets one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// drainIdle: once a process has exited, its output is still forwarded until the pipes reach
// EOF or stay idle this long (a descendant may keep them open).
const drainIdle = 250 * time.Millisecond

func init() {
	handlers["exec"] = opExec
}

type execRequest struct {
	Cmd         []string          `json:"cmd"`
	Env         map[string]string `json:"env"`
	Cwd         string            `json:"cwd"`
	User        json.RawMessage   `json:"user"`
	Tty         bool              `json:"tty"`
	Cols        int               `json:"cols"`
	Rows        int               `json:"rows"`
	TimeoutMs   int64             `json:"timeoutMs"`
	Stdin       bool              `json:"stdin"`
	Background  bool              `json:"background"`
	Tag         string            `json:"tag"`
	BufferBytes int64             `json:"bufferBytes"`
}

// ExecResult is the RESPONSE of exec and of process.attach.
type ExecResult struct {
	ExitCode   int     `json:"exitCode"`
	Signal     *string `json:"signal"`
	TimedOut   bool    `json:"timedOut"`
	DurationMs int64   `json:"durationMs"`
	Pid        int     `json:"pid,omitempty"`
}

// child is a started process with the host-facing ends of its stdio.
type child struct {
	cmd     *exec.Cmd
	pid     int
	pty     *os.File // tty: the master (output and input)
	stdin   *os.File // pipe: write end (nil without stdin)
	stdout  *os.File // pipe: read end
	stderr  *os.File // pipe: read end
	started time.Time
}

// notRunnable is an exec that fails the way a shell reports it: 127 (not found) or 126 (found
// but not executable), with a message for stderr.
type notRunnable struct {
	code int
	msg  string
}

func (c *child) killGroup(sig syscall.Signal) {
	if c.pid > 0 {
		_ = unix.Kill(-c.pid, sig) // the child leads its own process group (setpgid or setsid)
	}
}

func (c *child) outputs() []*os.File {
	if c.pty != nil {
		return []*os.File{c.pty}
	}
	return []*os.File{c.stdout, c.stderr}
}

func (c *child) closeAll() {
	for _, f := range []*os.File{c.pty, c.stdin, c.stdout, c.stderr} {
		if f != nil {
			f.Close()
		}
	}
}

func (c *child) resize(cols, rows int) error {
	if c.pty == nil {
		return invalid("resize needs a tty")
	}
	return setWinsize(c.pty, cols, rows)
}

func (c *child) control(m controlMsg, logf func(string, ...any)) {
	if m.Resize != nil {
		if err := c.resize(m.Resize.Cols, m.Resize.Rows); err != nil {
			logf("resize pid %d: %v", c.pid, err)
		}
	}
	if len(m.Signal) > 0 {
		sig, err := parseSignal(m.Signal)
		if err != nil {
			logf("signal pid %d: %v", c.pid, err)
			return
		}
		c.killGroup(sig)
	}
}

func parseSignal(raw json.RawMessage) (syscall.Signal, error) {
	var n int
	if json.Unmarshal(raw, &n) == nil {
		if n <= 0 || n > 64 {
			return 0, invalid("bad signal number %d", n)
		}
		return syscall.Signal(n), nil
	}
	var name string
	if err := json.Unmarshal(raw, &name); err != nil {
		return 0, invalid("signal must be a name or a number")
	}
	name = strings.ToUpper(strings.TrimSpace(name))
	if n, err := strconv.Atoi(name); err == nil && n > 0 && n <= 64 {
		return syscall.Signal(n), nil
	}
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig := unix.SignalNum(name)
	if sig == 0 {
		return 0, invalid("unknown signal %q", name)
	}
	return sig, nil
}

func signalName(sig syscall.Signal) string {
	return strings.TrimPrefix(unix.SignalName(sig), "SIG")
}

func resultOf(ps *os.ProcessState, timedOut bool, started time.Time) ExecResult {
	r := ExecResult{TimedOut: timedOut, DurationMs: time.Since(started).Milliseconds()}
	if ps == nil {
		r.ExitCode = -1
		return r
	}
	r.Pid = ps.Pid()
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		name := signalName(ws.Signal())
		r.Signal = &name
		r.ExitCode = 128 + int(ws.Signal())
	} else {
		r.ExitCode = ps.ExitCode()
	}
	return r
}

func (req *execRequest) validate() error {
	if len(req.Cmd) == 0 || req.Cmd[0] == "" {
		return invalid("cmd must be a non-empty argv array")
	}
	for _, a := range req.Cmd {
		if strings.Contains(a, "\x00") {
			return invalid("cmd arguments cannot contain NUL")
		}
	}
	if req.TimeoutMs < 0 || req.Cols < 0 || req.Rows < 0 || req.Cols > 65535 || req.Rows > 65535 {
		return invalid("timeoutMs, cols and rows must be non-negative (cols/rows < 65536)")
	}
	return nil
}

// lookPath finds file in the PATH of env as a shell would.
func lookPath(file, pathEnv string) (string, *notRunnable) {
	check := func(p string) (bool, *notRunnable) {
		fi, err := os.Stat(p)
		if err != nil {
			return false, nil
		}
		if fi.IsDir() {
			return false, &notRunnable{126, fmt.Sprintf("mvm-agent: %s: is a directory\n", p)}
		}
		if fi.Mode()&0o111 == 0 {
			return false, &notRunnable{126, fmt.Sprintf("mvm-agent: %s: permission denied (not executable)\n", p)}
		}
		return true, nil
	}
	if strings.Contains(file, "/") {
		ok, nr := check(file)
		if ok {
			return file, nil
		}
		if nr != nil {
			return "", nr
		}
		return "", &notRunnable{127, fmt.Sprintf("mvm-agent: %s: no such file or directory\n", file)}
	}
	var firstBad *notRunnable
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		ok, nr := check(p)
		if ok {
			return p, nil
		}
		if nr != nil && firstBad == nil {
			firstBad = nr
		}
	}
	if firstBad != nil {
		return "", firstBad
	}
	return "", &notRunnable{127, fmt.Sprintf("mvm-agent: %s: command not found (PATH=%s)\n", file, pathEnv)}
}

// spawn starts req's process: its own process group (a session with the pty as controlling
// terminal for a tty), the user's credentials, the merged environment. A binary that cannot run
// gives a notRunnable, other problems (cwd, user) an error.
func (a *Agent) spawn(req *execRequest, withStdin bool) (*child, *notRunnable, error) {
	u, err := lookupUser(req.User)
	if err != nil {
		return nil, nil, err
	}
	env := map[string]string{"PATH": DefaultPath, "HOME": u.Home, "USER": u.Name, "LOGNAME": u.Name}
	if u.Shell != "" {
		env["SHELL"] = u.Shell
	}
	for k, v := range a.defaultEnv() {
		env[k] = v
	}
	for k, v := range req.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.Contains(v, "\x00") {
			return nil, nil, invalid("bad env entry %q", k)
		}
		env[k] = v
	}
	if req.Tty && env["TERM"] == "" {
		env["TERM"] = "xterm-256color"
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
		if fi, err := os.Stat(u.Home); err == nil && fi.IsDir() {
			cwd = u.Home
		}
	} else if fi, err := os.Stat(cwd); err != nil {
		return nil, nil, toError(err, cwd)
	} else if !fi.IsDir() {
		return nil, nil, newErr(CodeENOTDIR, cwd, "cwd %s is not a directory", cwd)
	}
	path, nr := lookPath(req.Cmd[0], env["PATH"])
	if nr != nil {
		return nil, nr, nil
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	envList := make([]string, 0, len(keys))
	for _, k := range keys {
		envList = append(envList, k+"="+env[k])
	}

	cmd := &exec.Cmd{Path: path, Args: req.Cmd, Env: envList, Dir: cwd, SysProcAttr: &syscall.SysProcAttr{}}
	if !u.isRoot() {
		groups := make([]uint32, len(u.Groups))
		for i, g := range u.Groups {
			groups[i] = uint32(g)
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(u.Uid), Gid: uint32(u.Gid), Groups: groups}
	}
	c := &child{cmd: cmd}
	var childEnds []*os.File
	closeChildEnds := func() {
		for _, f := range childEnds {
			f.Close()
		}
	}
	fail := func(err error) (*child, *notRunnable, error) {
		closeChildEnds()
		c.closeAll()
		return nil, nil, err
	}
	if req.Tty {
		master, slave, err := openPty()
		if err != nil {
			return fail(newErr(CodeINTERNAL, "", "cannot allocate a pty: %v", err))
		}
		c.pty = master
		childEnds = append(childEnds, slave)
		cols, rows := req.Cols, req.Rows
		if cols == 0 {
			cols = 80
		}
		if rows == 0 {
			rows = 24
		}
		_ = setWinsize(master, cols, rows)
		if !u.isRoot() {
			_ = slave.Chown(u.Uid, -1)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
	} else {
		if withStdin {
			r, w, err := os.Pipe()
			if err != nil {
				return fail(err)
			}
			c.stdin = w
			childEnds = append(childEnds, r)
			cmd.Stdin = r
		} else {
			null, err := os.Open(os.DevNull)
			if err != nil {
				return fail(err)
			}
			childEnds = append(childEnds, null)
			cmd.Stdin = null
		}
		or, ow, err := os.Pipe()
		if err != nil {
			return fail(err)
		}
		c.stdout = or
		childEnds = append(childEnds, ow)
		er, ew, err := os.Pipe()
		if err != nil {
			return fail(err)
		}
		c.stderr = er
		childEnds = append(childEnds, ew)
		cmd.Stdout, cmd.Stderr = ow, ew
		cmd.SysProcAttr.Setpgid = true
	}
	c.started = time.Now()
	if err := cmd.Start(); err != nil {
		closeChildEnds()
		c.closeAll()
		var errno syscall.Errno
		if errors.As(err, &errno) {
			switch errno {
			case syscall.ENOENT:
				return nil, &notRunnable{127, fmt.Sprintf("mvm-agent: %s: %v (a missing interpreter?)\n", path, errno)}, nil
			case syscall.EACCES, syscall.ENOEXEC, syscall.EPERM, syscall.ETXTBSY:
				return nil, &notRunnable{126, fmt.Sprintf("mvm-agent: cannot execute %s in %s as %s: %v\n", path, cwd, u.Name, errno)}, nil
			}
		}
		return nil, nil, newErr(CodeINTERNAL, "", "starting %s: %v", path, err)
	}
	closeChildEnds()
	c.pid = cmd.Process.Pid
	// The agent protects itself from the OOM killer; its children must not inherit that.
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", c.pid), []byte("0"), 0)
	return c, nil, nil
}

func opExec(s *Stream, raw []byte) (any, error) {
	a := s.c.a
	var req execRequest
	if err := decodeReq(raw, &req); err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	if req.Background {
		return a.procs.start(&req)
	}
	c, nr, err := a.spawn(&req, req.Stdin)
	if err != nil {
		return nil, err
	}
	if nr != nil {
		ch := byte(frame.ChanErr)
		if req.Tty {
			ch = frame.ChanOut
		}
		if err := s.sendData(ch, []byte(nr.msg)); err != nil {
			return nil, err
		}
		s.sendEOF(frame.ChanOut)
		s.sendEOF(frame.ChanErr)
		return ExecResult{ExitCode: nr.code}, nil
	}
	a.fgAdd(c)
	defer a.fgRemove(c)
	defer c.closeAll()
	s.event(map[string]any{"started": map[string]any{"pid": c.pid}})

	// Input: channel 0 to the pipe or the pty.
	if c.stdin != nil || c.pty != nil {
		dst := c.stdin
		if c.pty != nil {
			dst = c.pty
		}
		go func() {
			_, err := io.Copy(dst, s)
			switch {
			case err == nil && c.pty != nil:
				_, _ = c.pty.Write([]byte{4}) // EOF on a tty: ^D
			case err == nil:
				c.stdin.Close()
			case s.ctx.Err() == nil:
				// The process closed its stdin (EPIPE) or exited: drop the rest, never block the host.
				s.discardIn()
				if c.stdin != nil {
					c.stdin.Close()
				}
			}
		}()
	}

	// Output: pumped within the host's credit; after exit, until EOF or idle.
	var exited atomic.Bool
	var wg sync.WaitGroup
	pump := func(ch byte, f *os.File) {
		defer wg.Done()
		_, err := s.pumpFrom(ch, f, func() {
			if exited.Load() {
				_ = f.SetReadDeadline(time.Now().Add(drainIdle))
			}
		})
		if err != nil && !isEndOfOutput(err) && s.ctx.Err() == nil {
			a.logf("exec pid %d: reading channel %d: %v", c.pid, ch, err)
		}
		if s.ctx.Err() == nil {
			s.sendEOF(ch)
		}
	}
	if c.pty != nil {
		wg.Add(1)
		go pump(frame.ChanOut, c.pty)
		s.sendEOF(frame.ChanErr)
	} else {
		wg.Add(2)
		go pump(frame.ChanOut, c.stdout)
		go pump(frame.ChanErr, c.stderr)
	}

	waitCh := make(chan struct{})
	go func() {
		_ = c.cmd.Wait()
		close(waitCh)
	}()
	var timeout <-chan time.Time
	if req.TimeoutMs > 0 {
		t := time.NewTimer(time.Duration(req.TimeoutMs) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	timedOut := false
	ctxDone := s.ctx.Done()
wait:
	for {
		select {
		case <-waitCh:
			break wait
		case <-timeout:
			timedOut = true
			timeout = nil
			c.killGroup(unix.SIGKILL)
		case m := <-s.ctrl:
			c.control(m, a.logf)
		case <-ctxDone:
			ctxDone = nil
			c.killGroup(unix.SIGKILL)
		}
	}
	exited.Store(true)
	for _, f := range c.outputs() {
		_ = f.SetReadDeadline(time.Now().Add(drainIdle))
	}
	wg.Wait()
	if err := s.ctx.Err(); err != nil {
		return nil, err
	}
	return resultOf(c.cmd.ProcessState, timedOut, c.started), nil
}

// isEndOfOutput: a read deadline after exit, or EIO from a pty whose slave closed.
func isEndOfOutput(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, syscall.EIO) || errors.Is(err, os.ErrClosed)
}

// --- pty -----------------------------------------------------------------------------------------

func openPty() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	rc, err := master.SyscallConn()
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	var n uint32
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr != nil {
			return
		}
		n, ierr = unix.IoctlGetUint32(int(fd), unix.TIOCGPTN)
	}); err != nil || ierr != nil {
		master.Close()
		return nil, nil, errors.Join(err, ierr)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	return master, slave, nil
}

func setWinsize(f *os.File, cols, rows int) error {
	if cols <= 0 || rows <= 0 || cols > 65535 || rows > 65535 {
		return invalid("bad terminal size %dx%d", cols, rows)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
	}); err != nil {
		return err
	}
	return ierr
}
