// Package transport finds and serves the channels the host reaches the agent on: a virtio-serial
// port (QEMU), AF_VSOCK (Firecracker's vsock), Unix sockets and stdio (tests, development).
package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"mvm/guest-agent/internal/agent"
)

// Logf is the logger transports report to.
type Logf func(format string, args ...any)

// Handler serves one byte stream (the agent protocol, or a raw benchmark mode).
type Handler func(transport string, r io.Reader, w io.Writer, onConn func(*agent.Conn)) error

// pollInterval: fast while the guest is booting (modules load asynchronously), then slow.
func pollInterval(since time.Time) time.Duration {
	if time.Since(since) < 10*time.Second {
		return 20 * time.Millisecond
	}
	return time.Second
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// FindVirtioPort returns /dev/<port> for the virtio-serial port whose
// /sys/class/virtio-ports/<port>/name is name.
func FindVirtioPort(sysDir, devDir, name string) (string, bool) {
	entries, err := os.ReadDir(filepath.Join(sysDir, "class/virtio-ports"))
	if err != nil {
		return "", false
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysDir, "class/virtio-ports", e.Name(), "name"))
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := filepath.Join(devDir, e.Name())
		if _, err := os.Stat(dev); err == nil {
			return dev, true
		}
	}
	return "", false
}

// WatchVirtioPort waits for the named virtio-serial port, serves it, and looks for it again if
// it goes away (hot unplug).
func WatchVirtioPort(ctx context.Context, sysDir, devDir, name string, h Handler, logf Logf) {
	since := time.Now()
	announced := false
	for ctx.Err() == nil {
		dev, ok := FindVirtioPort(sysDir, devDir, name)
		if !ok {
			if !announced && time.Since(since) > 10*time.Second {
				logf("virtio-serial: no port named %s yet (virtio_console loaded? QEMU -device virtserialport,name=%s); still looking", name, name)
				announced = true
			}
			if !sleepCtx(ctx, pollInterval(since)) {
				return
			}
			continue
		}
		logf("virtio-serial: port %s is %s (found after %s)", name, dev, time.Since(since).Round(time.Millisecond))
		err := ServeSerial(ctx, "serial", dev, h, logf)
		logf("virtio-serial: %s: %v; looking for the port again", dev, err)
		since = time.Now()
		if !sleepCtx(ctx, time.Second) {
			return
		}
	}
}

// ServeSerial serves a character device that outlives host connections (a virtio-serial port,
// or a tty in tests). A read of 0 bytes on a virtio port means the host side is not connected:
// the session is reset at once and the reader waits for the port's next change (the host
// reconnecting) through the poller instead of spinning.
func ServeSerial(ctx context.Context, name, path string, h Handler, logf Logf) error {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	makeRaw(f)
	sr := &serialReader{f: f, ctx: ctx}
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	return h(name, sr, f, func(c *agent.Conn) {
		sr.onDisconnect = func() { c.Reset("the host side of the port closed") }
	})
}

// makeRaw puts a tty into raw mode (a no-op for a virtio port, which is not a tty).
func makeRaw(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		t, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
		if err != nil {
			return
		}
		t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		t.Oflag &^= unix.OPOST
		t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		t.Cflag &^= unix.CSIZE | unix.PARENB
		t.Cflag |= unix.CS8
		t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
		_ = unix.IoctlSetTermios(int(fd), unix.TCSETS, t)
	})
}

type serialReader struct {
	f            *os.File
	ctx          context.Context
	onDisconnect func()
	gone         bool
}

func (r *serialReader) Read(p []byte) (int, error) {
	rc, err := r.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), p)
			switch {
			case rerr == unix.EAGAIN || rerr == unix.EINTR:
				return false
			case rerr == nil && n == 0:
				// The host is not connected. Reset once, then wait for the next edge.
				if !r.gone {
					r.gone = true
					if r.onDisconnect != nil {
						r.onDisconnect()
					}
				}
				return false
			}
			return true
		})
		if err != nil {
			// Not pollable (no edge to wait for), or closed.
			if r.ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
				return 0, io.EOF
			}
			if !sleepCtx(r.ctx, 50*time.Millisecond) {
				return 0, io.EOF
			}
			continue
		}
		if rerr == unix.EIO {
			// A tty whose other side closed: wait for it to come back.
			if !sleepCtx(r.ctx, 100*time.Millisecond) {
				return 0, io.EOF
			}
			continue
		}
		if rerr != nil {
			return 0, rerr
		}
		r.gone = false
		return n, nil
	}
}

// ListenVsock listens on AF_VSOCK port (any CID) once the vsock transport is there, and serves
// every connection.
func ListenVsock(ctx context.Context, port uint32, h Handler, logf Logf) {
	since := time.Now()
	var fd int
	announced := false
	for {
		var err error
		fd, err = unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			if err = unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err == nil {
				err = unix.Listen(fd, 64)
			}
			if err != nil {
				unix.Close(fd)
			}
		}
		if err == nil {
			break
		}
		if !announced && time.Since(since) > 10*time.Second {
			logf("vsock: cannot listen on port %d yet (%v; vmw_vsock_virtio_transport loaded?); still trying", port, err)
			announced = true
		}
		if !sleepCtx(ctx, pollInterval(since)) {
			return
		}
	}
	logf("vsock: listening on port %d (after %s)", port, time.Since(since).Round(time.Millisecond))
	context.AfterFunc(ctx, func() { unix.Shutdown(fd, unix.SHUT_RDWR); unix.Close(fd) })
	for {
		nfd, sa, err := unix.Accept4(fd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if err == unix.EINTR || err == unix.ECONNABORTED {
				continue
			}
			logf("vsock: accept: %v", err)
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return
			}
			continue
		}
		peer := "?"
		if vm, ok := sa.(*unix.SockaddrVM); ok {
			peer = vmAddr(vm)
		}
		go func() {
			f := os.NewFile(uintptr(nfd), "vsock:"+peer)
			defer f.Close()
			stop := context.AfterFunc(ctx, func() { f.Close() })
			defer stop()
			if err := h("vsock", f, f, nil); err != nil && ctx.Err() == nil {
				logf("vsock %s: %v", peer, err)
			}
		}()
	}
}

func vmAddr(a *unix.SockaddrVM) string {
	return strings.Join([]string{itoa(a.CID), itoa(a.Port)}, ":")
}

func itoa(v uint32) string {
	if v == 0 {
		return "0"
	}
	var b [10]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return string(b[i:])
}

// ListenUnix serves every connection to a Unix socket at path (for tests and development).
func ListenUnix(ctx context.Context, path string, h Handler, logf Logf) error {
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	_ = os.Chmod(path, 0o600)
	context.AfterFunc(ctx, func() { l.Close() })
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			if err := h("unix", c, c, nil); err != nil && ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				logf("unix %s: %v", path, err)
			}
		}()
	}
}
