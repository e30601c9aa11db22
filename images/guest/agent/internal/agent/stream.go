package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"mvm/guest-agent/internal/frame"
)

// handler serves one op: it runs in the stream's own goroutine and returns the RESPONSE body or
// an error (sent as ERROR). Handlers stop when s.ctx is done (cancel, session reset).
type handler func(s *Stream, req []byte) (any, error)

// Stream is one REQUEST and everything that flows on its id until RESPONSE or ERROR.
//
// Flow control: the agent may send DATA on a channel only while it holds credit for it
// (initially the host's HELLO window, then what WINDOW frames grant); the host likewise on
// channel 0, and the agent grants credit back as the handler consumes the bytes (Read).
type Stream struct {
	c   *Conn
	gen uint64
	id  uint32
	op  string

	ctx    context.Context
	cancel context.CancelFunc

	mu         sync.Mutex
	credit     [3]int64
	creditWake [3]chan struct{}

	inQ         [][]byte
	inOff       int
	inEOF       bool
	inDiscard   bool
	inWake      chan struct{}
	inWindow    int64 // our receive window
	inAllowed   int64 // bytes the host may have sent so far (window + grants)
	inRecv      int64
	inUngranted int64

	ctrl          chan controlMsg
	hostCancelled atomic.Bool
	finished      atomic.Bool
}

type controlMsg struct {
	Signal json.RawMessage `json:"signal,omitempty"`
	Resize *struct {
		Cols int `json:"cols"`
		Rows int `json:"rows"`
	} `json:"resize,omitempty"`
	Cancel bool `json:"cancel,omitempty"`
}

func newStream(c *Conn, gen uint64, id uint32, op string, sendWindow, recvWindow int64) *Stream {
	s := &Stream{c: c, gen: gen, id: id, op: op, inWake: make(chan struct{}, 1), inWindow: recvWindow, inAllowed: recvWindow, ctrl: make(chan controlMsg, 32)}
	s.ctx, s.cancel = context.WithCancel(c.a.ctx)
	for i := range s.credit {
		s.credit[i] = sendWindow
		s.creditWake[i] = make(chan struct{}, 1)
	}
	return s
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (s *Stream) run(h handler, req []byte) {
	defer func() {
		if r := recover(); r != nil {
			s.c.a.logf("panic in %s (stream %d): %v\n%s", s.op, s.id, r, debug.Stack())
			s.finish(nil, newErr(CodeINTERNAL, "", "agent panic in %s: %v", s.op, r))
		}
	}()
	res, err := h(s, req)
	s.finish(res, err)
}

// finish sends the final frame (once) and releases the stream.
func (s *Stream) finish(res any, err error) {
	if !s.finished.CompareAndSwap(false, true) {
		return
	}
	defer s.cancel()
	if !s.c.removeStream(s) {
		return // the session was reset: nobody is listening for this stream any more
	}
	if e := asError(err, ""); e != nil {
		if s.hostCancelled.Load() {
			e = newErr(CodeCANCELLED, "", "cancelled by the host")
		}
		s.c.sendJSON(s.gen, frame.Error, s.id, e)
		return
	}
	if res == nil {
		res = struct{}{}
	}
	s.c.sendJSON(s.gen, frame.Response, s.id, res)
}

// abandon cancels the stream after a session reset (no final frame).
func (s *Stream) abandon() {
	s.finished.Store(true)
	s.cancel()
}

// violation ends the stream with a PROTOCOL error (the host broke the rules on it).
func (s *Stream) violation(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.c.a.logf("%s: protocol error on stream %d (%s): %s", s.c.transport, s.id, s.op, msg)
	s.finish(nil, &Error{Code: CodePROTOCOL, Message: msg})
}

func (s *Stream) event(v any) { s.c.sendJSON(s.gen, frame.Event, s.id, v) }

func (s *Stream) addCredit(ch byte, n int64) {
	s.mu.Lock()
	s.credit[ch] += n
	s.mu.Unlock()
	wake(s.creditWake[ch])
}

// waitCredit blocks until the host granted credit on ch; one goroutine per channel may wait.
func (s *Stream) waitCredit(ch byte) (int64, error) {
	for {
		s.mu.Lock()
		c := s.credit[ch]
		s.mu.Unlock()
		if c > 0 {
			return c, nil
		}
		select {
		case <-s.creditWake[ch]:
		case <-s.ctx.Done():
			return 0, s.ctx.Err()
		}
	}
}

// sendData sends p on ch as DATA frames, within credit, returning once they are written.
func (s *Stream) sendData(ch byte, p []byte) error {
	for len(p) > 0 {
		c, err := s.waitCredit(ch)
		if err != nil {
			return err
		}
		n := int(min(c, int64(len(p)), frame.MaxData))
		s.mu.Lock()
		s.credit[ch] -= int64(n)
		s.mu.Unlock()
		done := make(chan struct{})
		s.c.enqueue(outFrame{gen: s.gen, b: frame.Encode(frame.Data, s.id, []byte{ch}, p[:n]), done: done}, true)
		select {
		case <-done:
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
		p = p[n:]
	}
	return nil
}

func (s *Stream) sendEOF(ch byte) { s.c.sendCtrl(s.gen, frame.EOF, s.id, []byte{ch}) }

// chanWriter is an io.Writer onto one outbound channel.
type chanWriter struct {
	s  *Stream
	ch byte
	n  int64
}

func (w *chanWriter) Write(p []byte) (int, error) {
	if err := w.s.sendData(w.ch, p); err != nil {
		return 0, err
	}
	w.n += int64(len(p))
	return len(p), nil
}

// pumpFrom copies r to channel ch, reading only as much as the host has granted, so a slow
// host leaves the data in r (a pipe fills and its writer blocks). readHook runs before each
// read (used to arm read deadlines).
func (s *Stream) pumpFrom(ch byte, r io.Reader, readHook func()) (int64, error) {
	buf := make([]byte, frame.MaxData)
	var total int64
	for {
		c, err := s.waitCredit(ch)
		if err != nil {
			return total, err
		}
		if readHook != nil {
			readHook()
		}
		n, rerr := r.Read(buf[:min(c, int64(len(buf)))])
		if n > 0 {
			if err := s.sendData(ch, buf[:n]); err != nil {
				return total, err
			}
			total += int64(n)
		}
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
	}
}

func (s *Stream) pushIn(b []byte) {
	s.mu.Lock()
	if s.inEOF {
		s.mu.Unlock()
		s.violation("DATA after EOF on channel 0")
		return
	}
	s.inRecv += int64(len(b))
	if s.inRecv > s.inAllowed {
		s.mu.Unlock()
		s.violation("the host sent %d bytes on channel 0 with credit for %d", s.inRecv, s.inAllowed)
		return
	}
	var grant int64
	if s.inDiscard {
		grant = int64(len(b))
		s.inAllowed += grant
	} else if len(b) > 0 {
		s.inQ = append(s.inQ, b)
	}
	s.mu.Unlock()
	if grant > 0 {
		s.c.sendCtrl(s.gen, frame.Window, s.id, frame.WindowBytes(frame.ChanIn, uint32(grant)))
	}
	wake(s.inWake)
}

func (s *Stream) pushEOF() {
	s.mu.Lock()
	s.inEOF = true
	s.mu.Unlock()
	wake(s.inWake)
}

// Read reads channel 0 (stdin, upload); it returns io.EOF after the host's EOF and the
// context's error when the stream is cancelled. Consumed bytes are granted back to the host.
func (s *Stream) Read(p []byte) (int, error) {
	for {
		s.mu.Lock()
		if len(s.inQ) > 0 {
			n := copy(p, s.inQ[0][s.inOff:])
			s.inOff += n
			if s.inOff == len(s.inQ[0]) {
				s.inQ[0] = nil
				s.inQ = s.inQ[1:]
				s.inOff = 0
			}
			s.inUngranted += int64(n)
			var grant int64
			if s.inUngranted >= s.inWindow/4 {
				grant = s.inUngranted
				s.inUngranted = 0
				s.inAllowed += grant
			}
			s.mu.Unlock()
			if grant > 0 {
				s.c.sendCtrl(s.gen, frame.Window, s.id, frame.WindowBytes(frame.ChanIn, uint32(grant)))
			}
			return n, nil
		}
		if s.inEOF {
			s.mu.Unlock()
			return 0, io.EOF
		}
		s.mu.Unlock()
		select {
		case <-s.inWake:
		case <-s.ctx.Done():
			return 0, s.ctx.Err()
		}
	}
}

// discardIn drops whatever the host sends on channel 0 from now on, granting it back at once
// (the consumer went away, e.g. a process that closed its stdin), so the host never blocks.
func (s *Stream) discardIn() {
	s.mu.Lock()
	s.inDiscard = true
	grant := s.inUngranted
	for i := range s.inQ {
		grant += int64(len(s.inQ[i]))
	}
	grant -= int64(s.inOff)
	s.inQ, s.inOff, s.inUngranted = nil, 0, 0
	s.inAllowed += grant
	s.mu.Unlock()
	if grant > 0 {
		s.c.sendCtrl(s.gen, frame.Window, s.id, frame.WindowBytes(frame.ChanIn, uint32(grant)))
	}
}

func (s *Stream) onControl(payload []byte) {
	var m controlMsg
	if err := json.Unmarshal(payload, &m); err != nil {
		s.violation("CONTROL is not JSON: %v", err)
		return
	}
	if m.Cancel {
		s.hostCancelled.Store(true)
		s.cancel()
		return
	}
	select {
	case s.ctrl <- m:
	default:
		s.c.a.logf("stream %d (%s): dropping a CONTROL frame, %d already pending", s.id, s.op, len(s.ctrl))
	}
}

// decodeReq unmarshals a REQUEST body into v, as an EINVAL error when it does not fit.
func decodeReq(req []byte, v any) error {
	if err := json.Unmarshal(req, v); err != nil {
		return invalid("bad request: %v", err)
	}
	return nil
}
