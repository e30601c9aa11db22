package agent

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"mvm/guest-agent/internal/frame"
)

const (
	maxRunningProcs     = 256
	maxExitedProcs      = 64
	defaultBufferBytes  = 1 << 20
	maxBufferBytes      = 16 << 20
	ringChunk           = 64 * 1024
	backgroundReadChunk = 32 * 1024
)

func init() {
	handlers["process.list"] = opProcessList
	handlers["process.signal"] = opProcessSignal
	handlers["process.attach"] = opProcessAttach
}

// ring keeps the last max bytes of a stream (in chunks allocated as output arrives); readers
// address bytes by absolute offset and learn how many they missed.
type ring struct {
	mu      sync.Mutex
	max     int64
	chunks  [][]byte
	first   int64 // absolute offset of chunks[0][0]
	end     int64 // absolute offset after the last byte
	closed  bool
	changed chan struct{}
}

func newRing(max int64) *ring { return &ring{max: max, changed: make(chan struct{})} }

func (r *ring) write(p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(p) > 0 {
		n := len(r.chunks)
		if n == 0 || len(r.chunks[n-1]) == cap(r.chunks[n-1]) {
			r.chunks = append(r.chunks, make([]byte, 0, ringChunk))
			n++
		}
		last := r.chunks[n-1]
		k := min(cap(last)-len(last), len(p))
		r.chunks[n-1] = append(last, p[:k]...)
		p = p[k:]
		r.end += int64(k)
	}
	for len(r.chunks) > 1 && r.end-r.first-int64(len(r.chunks[0])) >= r.max {
		r.first += int64(len(r.chunks[0]))
		r.chunks[0] = nil
		r.chunks = r.chunks[1:]
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *ring) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		close(r.changed)
		r.changed = make(chan struct{})
	}
}

// read returns up to n bytes at off (moved to the oldest kept byte if older, counted in
// dropped), whether the ring is closed and drained at off, and a channel closed on change.
func (r *ring) read(off int64, n int) (data []byte, next, dropped int64, eof bool, changed <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if off < r.first {
		dropped = r.first - off
		off = r.first
	}
	pos := r.first
	for _, c := range r.chunks {
		if off < pos+int64(len(c)) {
			data = c[off-pos:]
			if len(data) > n {
				data = data[:n]
			}
			break
		}
		pos += int64(len(c))
	}
	next = off + int64(len(data))
	return data, next, dropped, r.closed && next == r.end, r.changed
}

func (r *ring) size() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.end
}

// bgProc is a background process: it runs without a stream, its output goes to rings.
type bgProc struct {
	ID        string
	Tag       string
	Cmd       []string
	Tty       bool
	child     *child
	notRun    bool
	out, err  *ring
	mu        sync.Mutex
	exited    bool
	result    ExecResult
	startedAt time.Time
	endedAt   time.Time
	done      chan struct{}
}

type processTable struct {
	a     *Agent
	mu    sync.Mutex
	procs map[string]*bgProc
}

func newProcessTable(a *Agent) *processTable {
	return &processTable{a: a, procs: map[string]*bgProc{}}
}

func newProcessID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "p-" + hex.EncodeToString(b)
}

func (t *processTable) counts() (running, total int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.procs {
		p.mu.Lock()
		if !p.exited {
			running++
		}
		p.mu.Unlock()
	}
	return running, len(t.procs)
}

// evictLocked forgets the oldest exited processes beyond maxExitedProcs.
func (t *processTable) evictLocked() {
	var exited []*bgProc
	for _, p := range t.procs {
		p.mu.Lock()
		if p.exited {
			exited = append(exited, p)
		}
		p.mu.Unlock()
	}
	if len(exited) <= maxExitedProcs {
		return
	}
	sort.Slice(exited, func(i, j int) bool { return exited[i].endedAt.Before(exited[j].endedAt) })
	for _, p := range exited[:len(exited)-maxExitedProcs] {
		delete(t.procs, p.ID)
	}
}

func (t *processTable) get(id string) (*bgProc, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.procs[id]
	if p == nil {
		return nil, newErr(CodeENOENT, "", "no background process %q (it may have been forgotten: the agent keeps the last %d exited ones)", id, maxExitedProcs)
	}
	return p, nil
}

// start runs req in the background and answers at once {processId, pid}.
func (t *processTable) start(req *execRequest) (any, error) {
	buf := req.BufferBytes
	if buf <= 0 {
		buf = defaultBufferBytes
	}
	buf = min(buf, maxBufferBytes)
	t.mu.Lock()
	t.evictLocked()
	running := 0
	for _, p := range t.procs {
		p.mu.Lock()
		if !p.exited {
			running++
		}
		p.mu.Unlock()
	}
	t.mu.Unlock()
	if running >= maxRunningProcs {
		return nil, newErr(CodeLIMIT, "", "too many background processes running (%d)", running)
	}
	c, nr, err := t.a.spawn(req, false)
	if err != nil {
		return nil, err
	}
	p := &bgProc{ID: newProcessID(), Tag: req.Tag, Cmd: req.Cmd, Tty: req.Tty, child: c, out: newRing(buf), err: newRing(buf), startedAt: time.Now(), done: make(chan struct{})}
	t.mu.Lock()
	t.procs[p.ID] = p
	t.mu.Unlock()
	if nr != nil {
		// Like a foreground exec: exit code 127/126 and the message on stderr, not an error.
		p.notRun = true
		p.err.write([]byte(nr.msg))
		p.out.close()
		p.err.close()
		p.exited, p.endedAt = true, time.Now()
		p.result = ExecResult{ExitCode: nr.code}
		close(p.done)
		return map[string]any{"processId": p.ID, "pid": 0}, nil
	}
	go t.run(p, req.TimeoutMs)
	return map[string]any{"processId": p.ID, "pid": c.pid}, nil
}

func (t *processTable) run(p *bgProc, timeoutMs int64) {
	c := p.child
	var wg sync.WaitGroup
	var exitedFlag sync.Once
	exitedCh := make(chan struct{})
	drain := func(f *os.File, r *ring) {
		defer wg.Done()
		defer r.close()
		buf := make([]byte, backgroundReadChunk)
		for {
			select {
			case <-exitedCh:
				_ = f.SetReadDeadline(time.Now().Add(drainIdle))
			default:
			}
			n, err := f.Read(buf)
			if n > 0 {
				r.write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}
	if c.pty != nil {
		wg.Add(1)
		go drain(c.pty, p.out)
		p.err.close()
	} else {
		wg.Add(2)
		go drain(c.stdout, p.out)
		go drain(c.stderr, p.err)
	}
	waitCh := make(chan struct{})
	go func() {
		_ = c.cmd.Wait()
		close(waitCh)
	}()
	timedOut := false
	if timeoutMs > 0 {
		tm := time.NewTimer(time.Duration(timeoutMs) * time.Millisecond)
		select {
		case <-waitCh:
		case <-tm.C:
			timedOut = true
			c.killGroup(unix.SIGKILL)
			<-waitCh
		}
		tm.Stop()
	} else {
		<-waitCh
	}
	exitedFlag.Do(func() { close(exitedCh) })
	for _, f := range c.outputs() {
		_ = f.SetReadDeadline(time.Now().Add(drainIdle))
	}
	wg.Wait()
	res := resultOf(c.cmd.ProcessState, timedOut, c.started)
	p.mu.Lock()
	p.exited, p.endedAt, p.result = true, time.Now(), res
	p.mu.Unlock()
	c.closeAll()
	close(p.done)
	t.a.logf("background %s (pid %d) exited: code %d", p.ID, c.pid, res.ExitCode)
}

func (t *processTable) killAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.procs {
		p.mu.Lock()
		if !p.exited && p.child != nil {
			p.child.killGroup(unix.SIGKILL)
		}
		p.mu.Unlock()
	}
}

type processInfo struct {
	ProcessID   string     `json:"processId"`
	Pid         int        `json:"pid"`
	Cmd         []string   `json:"cmd"`
	Tag         string     `json:"tag,omitempty"`
	Tty         bool       `json:"tty"`
	Running     bool       `json:"running"`
	StartedAt   string     `json:"startedAt"`
	EndedAt     string     `json:"endedAt,omitempty"`
	Result      *ExecResult `json:"result,omitempty"`
	StdoutBytes int64      `json:"stdoutBytes"`
	StderrBytes int64      `json:"stderrBytes"`
}

func (p *bgProc) info() processInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := p.Cmd
	if len(cmd) > 16 {
		cmd = append(append([]string{}, cmd[:16]...), "…")
	}
	in := processInfo{ProcessID: p.ID, Cmd: cmd, Tag: p.Tag, Tty: p.Tty, Running: !p.exited, StartedAt: p.startedAt.UTC().Format(time.RFC3339Nano), StdoutBytes: p.out.size(), StderrBytes: p.err.size()}
	if p.child != nil {
		in.Pid = p.child.pid
	}
	if p.exited {
		r := p.result
		in.Result = &r
		in.EndedAt = p.endedAt.UTC().Format(time.RFC3339Nano)
	}
	return in
}

// process.list {tag?} → DATA 1: one JSON object per line (processInfo), EOF, RESPONSE {count}.
func opProcessList(s *Stream, raw []byte) (any, error) {
	var req struct {
		Tag string `json:"tag"`
	}
	if err := decodeReq(raw, &req); err != nil {
		return nil, err
	}
	t := s.c.a.procs
	t.mu.Lock()
	list := make([]*bgProc, 0, len(t.procs))
	for _, p := range t.procs {
		if req.Tag == "" || p.Tag == req.Tag {
			list = append(list, p)
		}
	}
	t.mu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].startedAt.Before(list[j].startedAt) })
	w := &chanWriter{s: s, ch: frame.ChanOut}
	enc := json.NewEncoder(w)
	for _, p := range list {
		if err := enc.Encode(p.info()); err != nil {
			return nil, err
		}
	}
	s.sendEOF(frame.ChanOut)
	return map[string]any{"count": len(list)}, nil
}

// process.signal {processId, signal} → {}; the signal goes to the process group.
func opProcessSignal(s *Stream, raw []byte) (any, error) {
	var req struct {
		ProcessID string          `json:"processId"`
		Signal    json.RawMessage `json:"signal"`
	}
	if err := decodeReq(raw, &req); err != nil {
		return nil, err
	}
	p, err := s.c.a.procs.get(req.ProcessID)
	if err != nil {
		return nil, err
	}
	sig := unix.SIGTERM
	if len(req.Signal) > 0 {
		if sig, err = parseSignal(req.Signal); err != nil {
			return nil, err
		}
	}
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	if exited {
		return nil, newErr(CodeESRCH, "", "process %s has exited", p.ID)
	}
	p.child.killGroup(sig)
	return map[string]any{}, nil
}

// process.attach {processId} → EVENT attached, DATA 1/2 (the kept output, then live), EOF 1/2,
// RESPONSE (the exit, with droppedBytes) once the process has exited and its output was sent.
// A tty process also takes DATA 0 (input) and CONTROL resize; CONTROL signal works for any.
// Ending the stream (cancel, reset) leaves the process running.
func opProcessAttach(s *Stream, raw []byte) (any, error) {
	var req struct {
		ProcessID string `json:"processId"`
	}
	if err := decodeReq(raw, &req); err != nil {
		return nil, err
	}
	p, err := s.c.a.procs.get(req.ProcessID)
	if err != nil {
		return nil, err
	}
	pid := 0
	if p.child != nil {
		pid = p.child.pid
	}
	p.mu.Lock()
	running := !p.exited
	p.mu.Unlock()
	s.event(map[string]any{"attached": map[string]any{"processId": p.ID, "pid": pid, "running": running}})
	if p.Tty && running && p.child != nil && p.child.pty != nil {
		pty := p.child.pty
		go func() {
			if _, err := io.Copy(pty, s); err != nil && s.ctx.Err() == nil {
				s.discardIn()
			}
		}()
	} else {
		s.discardIn()
	}
	var dropped [3]int64
	var wg sync.WaitGroup
	follow := func(ch byte, r *ring) {
		defer wg.Done()
		var off int64
		for {
			c, err := s.waitCredit(ch)
			if err != nil {
				return
			}
			data, next, d, eof, changed := r.read(off, int(min(c, frame.MaxData)))
			dropped[ch] += d
			if len(data) > 0 {
				if err := s.sendData(ch, data); err != nil {
					return
				}
				off = next
				continue
			}
			off = next
			if eof {
				s.sendEOF(ch)
				return
			}
			select {
			case <-changed:
			case <-s.ctx.Done():
				return
			}
		}
	}
	wg.Add(2)
	go follow(frame.ChanOut, p.out)
	go follow(frame.ChanErr, p.err)
	followed := make(chan struct{})
	go func() {
		wg.Wait()
		close(followed)
	}()
	for {
		select {
		case <-followed:
			if err := s.ctx.Err(); err != nil {
				return nil, err
			}
			<-p.done
			p.mu.Lock()
			res := p.result
			p.mu.Unlock()
			return map[string]any{"exitCode": res.ExitCode, "signal": res.Signal, "timedOut": res.TimedOut, "durationMs": res.DurationMs, "pid": pid, "droppedBytes": dropped[1] + dropped[2]}, nil
		case m := <-s.ctrl:
			p.mu.Lock()
			live := !p.exited && p.child != nil
			p.mu.Unlock()
			if live {
				p.child.control(m, s.c.a.logf)
			}
		case <-s.ctx.Done():
			<-followed
			return nil, s.ctx.Err()
		}
	}
}
