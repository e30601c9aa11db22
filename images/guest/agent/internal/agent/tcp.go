package agent

import (
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"mvm/guest-agent/internal/frame"
)

func init() {
	handlers["tcp.connect"] = opTCPConnect
}

// tcp.connect {port, host = 127.0.0.1, timeoutMs = 10000} → EVENT {connected}, then DATA 0
// (host → guest) and DATA 1 (guest → host) with EOF each way (half-close), RESPONSE
// {bytesIn, bytesOut} once both directions ended. Port forwarding and WebSocket upgrades run over
// this: the agent only moves bytes.
func opTCPConnect(s *Stream, raw []byte) (any, error) {
	var req struct {
		Port      int    `json:"port"`
		Host      string `json:"host"`
		TimeoutMs int64  `json:"timeoutMs"`
	}
	if err := decodeReq(raw, &req); err != nil {
		return nil, err
	}
	if req.Port <= 0 || req.Port > 65535 {
		return nil, invalid("port must be 1..65535")
	}
	if req.Host == "" {
		req.Host = "127.0.0.1"
	}
	timeout := 10 * time.Second
	if req.TimeoutMs > 0 {
		timeout = time.Duration(req.TimeoutMs) * time.Millisecond
	}
	addr := net.JoinHostPort(req.Host, strconv.Itoa(req.Port))
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(s.ctx, "tcp", addr)
	if err != nil {
		e := asError(err, "")
		e.Message = "connect " + addr + ": " + e.Message
		return nil, e
	}
	tc := conn.(*net.TCPConn)
	defer tc.Close()
	s.event(map[string]any{"connected": map[string]any{"local": tc.LocalAddr().String(), "remote": tc.RemoteAddr().String()}})

	var wg sync.WaitGroup
	var in int64
	wg.Add(1)
	go func() { // host → guest
		defer wg.Done()
		n, err := io.Copy(tc, s)
		in = n
		if err == nil {
			_ = tc.CloseWrite()
			return
		}
		if s.ctx.Err() == nil {
			s.discardIn() // the guest side closed; drop what the host still sends
		}
	}()
	out, err := s.pumpFrom(frame.ChanOut, tc, nil)
	if err != nil && s.ctx.Err() != nil {
		tc.Close()
		wg.Wait()
		return nil, s.ctx.Err()
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		s.c.a.logf("tcp %s: %v", addr, err)
	}
	s.sendEOF(frame.ChanOut)
	// Both ways must end: the host's EOF (or the guest's close making writes fail).
	wg.Wait()
	return map[string]any{"bytesIn": in, "bytesOut": out}, nil
}
