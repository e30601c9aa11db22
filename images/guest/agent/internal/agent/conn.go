package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"mvm/guest-agent/internal/frame"
)

const (
	// ProtocolVersion is the version HELLO negotiates.
	ProtocolVersion = 1
	// DefaultWindow is the initial credit per stream, channel and direction unless HELLO says otherwise.
	DefaultWindow = 256 * 1024
	minWindow     = 64 * 1024
	maxWindow     = 16 * 1024 * 1024
	maxStreams    = 4096
)

// Conn is one byte stream to the host: a vsock or Unix connection (one host connection), or a
// serial port or stdio (a stream that outlives host connections: each HELLO starts a new
// session). A session is the set of streams opened since the last HELLO; a new HELLO or the end
// of the connection cancels them (foreground processes are killed, background ones survive).
type Conn struct {
	a         *Agent
	transport string
	r         io.Reader
	w         io.Writer

	wmu     sync.Mutex
	wcond   *sync.Cond
	ctrlQ   []outFrame
	dataQ   []outFrame
	wclosed bool

	mu         sync.Mutex
	gen        uint64 // session generation, bumped by every reset; frames of older ones are dropped
	session    bool   // a HELLO opened the current generation
	streams    map[uint32]*Stream
	peerWindow int64 // the host's receive window: our initial send credit per channel
	ourWindow  int64 // our receive window: the host's initial send credit per channel
	nagged     bool  // "send HELLO first" already answered in this generation
}

type outFrame struct {
	gen  uint64 // 0: always written; else dropped unless it is still the current generation
	b    []byte
	done chan struct{} // closed once written or dropped (nil: nobody waits)
}

func (a *Agent) newConn(transport string, r io.Reader, w io.Writer) *Conn {
	c := &Conn{a: a, transport: transport, r: r, w: w, streams: map[uint32]*Stream{}, peerWindow: DefaultWindow, ourWindow: DefaultWindow}
	c.wcond = sync.NewCond(&c.wmu)
	return c
}

// NewConn makes a connection over a byte stream; transport names it in HELLO and logs.
func (a *Agent) NewConn(transport string, r io.Reader, w io.Writer) *Conn {
	return a.newConn(transport, r, w)
}

// Serve runs the connection until its reader fails (the connection closed); it then cancels
// the session's streams and returns the reader's error (nil for a clean EOF).
func (c *Conn) Serve() error {
	go c.writeLoop()
	dec := frame.NewDecoder(c.r)
	var err error
	for {
		var f frame.Frame
		f, err = dec.Next()
		if err != nil {
			break
		}
		c.dispatch(f)
	}
	if dec.Stats.SkippedBytes > 0 {
		c.a.logf("%s: connection ended; resynchronised over %d bytes (%d bad CRCs)", c.transport, dec.Stats.SkippedBytes, dec.Stats.BadCRC)
	}
	c.Reset("connection closed")
	c.wmu.Lock()
	c.wclosed = true
	c.wcond.Broadcast()
	c.wmu.Unlock()
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// Reset ends the current session: every stream is cancelled without a final frame (the host
// that opened them is gone), queued frames of the session are dropped. Used on HELLO, when the
// connection ends, and when a serial port reports that the host side closed.
func (c *Conn) Reset(why string) {
	c.mu.Lock()
	streams := c.streams
	n := len(streams)
	c.streams = map[uint32]*Stream{}
	old := c.gen
	had := c.session
	c.gen++
	c.session = false
	c.nagged = false
	c.mu.Unlock()
	for _, s := range streams {
		s.abandon()
	}
	if had && n > 0 {
		c.a.logf("%s: session reset (%s): %d stream(s) cancelled", c.transport, why, n)
	}
	c.wmu.Lock()
	c.ctrlQ = dropGen(c.ctrlQ, old)
	c.dataQ = dropGen(c.dataQ, old)
	c.wmu.Unlock()
}

func dropGen(q []outFrame, gen uint64) []outFrame {
	out := q[:0]
	for _, f := range q {
		if f.gen != 0 && f.gen == gen {
			if f.done != nil {
				close(f.done)
			}
			continue
		}
		out = append(out, f)
	}
	return out
}

func (c *Conn) currentGen() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// writeLoop writes queued frames, control frames first (DATA producers wait for their frame
// to be written, so a stream's DATA always precedes its EOF and final frame), coalescing
// small frames into one write.
func (c *Conn) writeLoop() {
	bw := bufio.NewWriterSize(c.w, 256*1024)
	for {
		c.wmu.Lock()
		for len(c.ctrlQ) == 0 && len(c.dataQ) == 0 && !c.wclosed {
			c.wcond.Wait()
		}
		if c.wclosed && len(c.ctrlQ) == 0 && len(c.dataQ) == 0 {
			c.wmu.Unlock()
			return
		}
		var f outFrame
		if len(c.ctrlQ) > 0 {
			f = c.ctrlQ[0]
			c.ctrlQ[0] = outFrame{}
			c.ctrlQ = c.ctrlQ[1:]
		} else {
			f = c.dataQ[0]
			c.dataQ[0] = outFrame{}
			c.dataQ = c.dataQ[1:]
		}
		more := len(c.ctrlQ)+len(c.dataQ) > 0
		c.wmu.Unlock()
		if f.gen == 0 || f.gen == c.currentGen() {
			if _, err := bw.Write(f.b); err != nil {
				c.a.logf("%s: write: %v", c.transport, err)
			}
			if !more {
				if err := bw.Flush(); err != nil {
					c.a.logf("%s: write: %v", c.transport, err)
					bw.Reset(c.w)
				}
			}
		}
		if f.done != nil {
			close(f.done)
		}
	}
}

func (c *Conn) enqueue(f outFrame, data bool) {
	c.wmu.Lock()
	if c.wclosed {
		c.wmu.Unlock()
		if f.done != nil {
			close(f.done)
		}
		return
	}
	if data {
		c.dataQ = append(c.dataQ, f)
	} else {
		c.ctrlQ = append(c.ctrlQ, f)
	}
	c.wcond.Signal()
	c.wmu.Unlock()
}

// sendCtrl queues a small frame for the given generation (0 = any).
func (c *Conn) sendCtrl(gen uint64, kind frame.Kind, stream uint32, payload ...[]byte) {
	c.enqueue(outFrame{gen: gen, b: frame.Encode(kind, stream, payload...)}, false)
}

func (c *Conn) sendJSON(gen uint64, kind frame.Kind, stream uint32, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(&Error{Code: CodeINTERNAL, Message: "encoding the answer: " + err.Error()})
		kind = frame.Error
	}
	if len(b) > frame.MaxPayload {
		b, _ = json.Marshal(&Error{Code: CodeLIMIT, Message: fmt.Sprintf("answer of %d bytes exceeds the frame limit", len(b))})
		kind = frame.Error
	}
	c.sendCtrl(gen, kind, stream, b)
}

func (c *Conn) protocolError(stream uint32, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.a.logf("%s: protocol error on stream %d: %s", c.transport, stream, msg)
	c.sendJSON(0, frame.Error, stream, &Error{Code: CodePROTOCOL, Message: msg})
}

type helloRequest struct {
	Protocol json.RawMessage `json:"protocol"`
	Window   int64           `json:"window"`
	Client   string          `json:"client"`
	Version  string          `json:"version"`
}

func (c *Conn) dispatch(f frame.Frame) {
	switch f.Kind {
	case frame.Hello:
		c.onHello(f)
		return
	case frame.Ping:
		c.sendCtrl(0, frame.Pong, 0, f.Payload)
		return
	}
	c.mu.Lock()
	gen, session := c.gen, c.session
	s := c.streams[f.Stream]
	nag := !session && !c.nagged
	if nag {
		c.nagged = true
	}
	c.mu.Unlock()
	if !session {
		// No session: the agent (re)started under a host that did not say HELLO to it.
		if f.Kind == frame.Request {
			c.sendJSON(0, frame.Error, f.Stream, &Error{Code: CodePROTOCOL, Message: "no session: send HELLO first (the agent may have restarted)"})
		} else if nag {
			c.sendJSON(0, frame.Error, 0, &Error{Code: CodePROTOCOL, Message: "no session: send HELLO first (the agent may have restarted)"})
		}
		return
	}
	switch f.Kind {
	case frame.Request:
		c.onRequest(gen, f)
	case frame.Data:
		if s == nil {
			return // a stream that already ended; the host may still have had DATA in flight
		}
		ch, b, err := frame.DataPayload(f.Payload)
		if err != nil || ch != frame.ChanIn {
			s.violation("DATA on channel %d: the host sends on channel 0 only", ch)
			return
		}
		s.pushIn(b)
	case frame.EOF:
		if s == nil {
			return
		}
		if len(f.Payload) < 1 || f.Payload[0] != frame.ChanIn {
			s.violation("EOF on a channel other than 0")
			return
		}
		s.pushEOF()
	case frame.Window:
		if s == nil {
			return
		}
		ch, inc, err := frame.WindowPayload(f.Payload)
		if err != nil || ch > frame.ChanErr {
			s.violation("bad WINDOW frame")
			return
		}
		s.addCredit(ch, int64(inc))
	case frame.Control:
		if s == nil {
			return
		}
		s.onControl(f.Payload)
	default:
		c.a.logf("%s: ignoring %s frame from the host on stream %d", c.transport, f.Kind, f.Stream)
	}
}

func (c *Conn) onHello(f frame.Frame) {
	var h helloRequest
	if err := json.Unmarshal(f.Payload, &h); err != nil {
		c.protocolError(0, "HELLO is not JSON: %v", err)
		return
	}
	if !supportsProtocol(h.Protocol) {
		c.sendJSON(0, frame.Error, 0, &Error{Code: CodeUNSUPPORTED, Message: fmt.Sprintf("protocol %s not supported; this agent speaks protocol %d", string(h.Protocol), ProtocolVersion)})
		return
	}
	c.Reset("HELLO")
	c.mu.Lock()
	c.session = true
	gen := c.gen
	c.peerWindow = DefaultWindow
	if h.Window > 0 {
		c.peerWindow = min(max(h.Window, minWindow), maxWindow)
	}
	c.mu.Unlock()
	c.a.logf("%s: HELLO from %q %q: session %d, host window %d", c.transport, h.Client, h.Version, gen, c.peerWindow)
	c.sendJSON(gen, frame.Hello, 0, c.a.helloInfo(c.transport, c.ourWindow))
}

// supportsProtocol accepts `1`, `[1, 2]` or an absent field (protocol 1).
func supportsProtocol(raw json.RawMessage) bool {
	if len(raw) == 0 {
		return true
	}
	var one int
	if json.Unmarshal(raw, &one) == nil {
		return one == ProtocolVersion
	}
	var many []int
	if json.Unmarshal(raw, &many) == nil {
		for _, v := range many {
			if v == ProtocolVersion {
				return true
			}
		}
	}
	return false
}

type requestHead struct {
	Op string `json:"op"`
}

func (c *Conn) onRequest(gen uint64, f frame.Frame) {
	if f.Stream == 0 {
		c.protocolError(0, "REQUEST on stream 0")
		return
	}
	var head requestHead
	if err := json.Unmarshal(f.Payload, &head); err != nil {
		c.sendJSON(gen, frame.Error, f.Stream, &Error{Code: CodeEINVAL, Message: "REQUEST is not a JSON object: " + err.Error()})
		return
	}
	h, ok := handlers[head.Op]
	if !ok {
		c.sendJSON(gen, frame.Error, f.Stream, &Error{Code: CodeUNSUPPORTED, Message: fmt.Sprintf("unknown op %q", head.Op)})
		return
	}
	c.mu.Lock()
	if gen != c.gen || !c.session {
		c.mu.Unlock()
		return
	}
	if _, dup := c.streams[f.Stream]; dup {
		c.mu.Unlock()
		c.protocolError(0, "REQUEST on stream %d, which is still open", f.Stream)
		return
	}
	if len(c.streams) >= maxStreams {
		c.mu.Unlock()
		c.sendJSON(gen, frame.Error, f.Stream, &Error{Code: CodeLIMIT, Message: fmt.Sprintf("too many open streams (%d)", maxStreams)})
		return
	}
	s := newStream(c, gen, f.Stream, head.Op, c.peerWindow, c.ourWindow)
	c.streams[f.Stream] = s
	c.mu.Unlock()
	go s.run(h, f.Payload)
}

func (c *Conn) removeStream(s *Stream) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != s.gen || c.streams[s.id] != s {
		return false
	}
	delete(c.streams, s.id)
	return true
}
