// mvm-agent is the guest agent of the MicroVM Service: it runs as root inside every guest and
// serves the host's exec, process, file, tar, TCP, setup, identity and shutdown calls over a
// virtio channel (docs/guest-agent-protocol.md).
//
// In a guest (no transport flag): it serves the virtio-serial port named org.mvm.agent.0 (QEMU)
// and AF_VSOCK port 1024 (Firecracker), waiting for either to appear, and logs to
// /run/mvm-agent.log. For tests and development: --listen unix:PATH (repeatable), --stdio,
// --serial PATH.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"mvm/guest-agent/internal/agent"
	"mvm/guest-agent/internal/transport"
)

// Set by scripts/build-guest-agent.sh (-ldflags -X).
var (
	version = "0.1.0"
	build   = "dev"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var listens listFlag
	flag.Var(&listens, "listen", "serve a Unix socket: unix:PATH (repeatable; tests and development)")
	stdio := flag.Bool("stdio", false, "serve stdin/stdout as one byte stream (like a serial port)")
	serial := flag.String("serial", "", "serve this character device as a serial port")
	guest := flag.Bool("guest", false, "serve the virtio-serial port and vsock (the default without --listen/--stdio/--serial)")
	portName := flag.String("virtio-port", "org.mvm.agent.0", "name of the virtio-serial port")
	vsockPort := flag.Uint("vsock-port", 1024, "AF_VSOCK port (0: no vsock)")
	sysDir := flag.String("sys", "/sys", "sysfs root (virtio port discovery)")
	devDir := flag.String("dev", "/dev", "device directory (virtio port discovery)")
	logPath := flag.String("log", "/run/mvm-agent.log", `log file ("-": stderr)`)
	sysroot := flag.String("sysroot", "/", "root of the files identity rewrites (etc/hostname, etc/machine-id, etc/hosts, etc/resolv.conf)")
	stateDir := flag.String("state-dir", "/run/mvm-agent", "state kept across agent restarts within a boot (setup env)")
	initPID := flag.Int("init-pid", 1, "the process shutdown signals (SIGTERM)")
	noClock := flag.Bool("no-set-clock", false, "identity does not set the system clock")
	grace := flag.Duration("shutdown-grace", 10*time.Second, "how long shutdown waits for init before reboot(2) POWER_OFF (init-pid 1 only)")
	raw := flag.String("raw", "", "benchmark baseline instead of the protocol: echo, sink:PATH, source:PATH")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()

	if *showVersion {
		fmt.Printf("mvm-agent %s (build %s)\n", version, build)
		return
	}
	useGuest := *guest || (len(listens) == 0 && !*stdio && *serial == "")

	logger, err := openLog(*logPath, useGuest && !*stdio)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mvm-agent: %v\n", err)
		os.Exit(2)
	}
	logf := logger.Printf
	logf("mvm-agent %s (build %s) pid %d starting", version, build, os.Getpid())
	if os.Geteuid() == 0 {
		// Keep the agent alive under memory pressure; its children are reset to 0.
		_ = os.WriteFile("/proc/self/oom_score_adj", []byte("-900"), 0)
	}

	a := agent.New(agent.Config{Version: version, Build: build, Log: logger, Sysroot: *sysroot, StateDir: *stateDir, InitPID: *initPID, SetClock: !*noClock, ShutdownGrace: *grace})
	var h transport.Handler
	if *raw != "" {
		if h, err = transport.RawHandler(*raw); err != nil {
			logf("%v", err)
			fmt.Fprintf(os.Stderr, "mvm-agent: %v\n", err)
			os.Exit(2)
		}
	} else {
		h = func(name string, r io.Reader, w io.Writer, onConn func(*agent.Conn)) error {
			c := a.NewConn(name, r, w)
			if onConn != nil {
				onConn(c)
			}
			return c.Serve()
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	run := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	done := make(chan string, 1)
	for _, l := range listens {
		path, ok := strings.CutPrefix(l, "unix:")
		if !ok || path == "" {
			fmt.Fprintf(os.Stderr, "mvm-agent: --listen wants unix:PATH, got %q\n", l)
			os.Exit(2)
		}
		run(func() {
			if err := transport.ListenUnix(ctx, path, h, logf); err != nil {
				logf("listen %s: %v", path, err)
				fmt.Fprintf(os.Stderr, "mvm-agent: listen %s: %v\n", path, err)
				done <- "listen failed"
			}
		})
		logf("listening on unix:%s", path)
	}
	if *stdio {
		run(func() {
			err := h("stdio", os.Stdin, os.Stdout, nil)
			logf("stdio ended: %v", err)
			done <- "stdin closed"
		})
	}
	if *serial != "" {
		run(func() {
			err := transport.ServeSerial(ctx, "serial", *serial, h, logf)
			logf("serial %s ended: %v", *serial, err)
			done <- "serial ended"
		})
	}
	if useGuest {
		run(func() { transport.WatchVirtioPort(ctx, *sysDir, *devDir, *portName, h, logf) })
		if *vsockPort > 0 {
			run(func() { transport.ListenVsock(ctx, uint32(*vsockPort), h, logf) })
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP)
	var why string
	select {
	case s := <-sigs:
		why = s.String()
	case why = <-done:
	}
	logf("stopping (%s)", why)
	cancel()
	a.Close()
	// Do not wait for ever on a stuck transport.
	stopped := make(chan struct{})
	go func() { wg.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
	}
	if why == "listen failed" {
		os.Exit(1)
	}
}

// openLog opens the log (appending; rotated to .1 beyond 1 MiB). In a guest, stdout and stderr
// are pointed at it too, so nothing — not even a panic — reaches the console.
func openLog(path string, takeStdio bool) (*log.Logger, error) {
	if path == "-" {
		return log.New(os.Stderr, "mvm-agent: ", log.LstdFlags|log.Lmicroseconds), nil
	}
	w := &rotatingFile{path: path, max: 1 << 20}
	if err := w.open(); err != nil {
		return nil, fmt.Errorf("log %s: %w", path, err)
	}
	if takeStdio {
		_ = unix.Dup3(int(w.f.Fd()), 1, 0)
		_ = unix.Dup3(int(w.f.Fd()), 2, 0)
	}
	return log.New(w, "", log.LstdFlags|log.Lmicroseconds), nil
}

type rotatingFile struct {
	mu   sync.Mutex
	path string
	max  int64
	f    *os.File
	size int64
}

func (r *rotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fi, _ := f.Stat()
	r.f, r.size = f, 0
	if fi != nil {
		r.size = fi.Size()
	}
	return nil
}

func (r *rotatingFile) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.size+int64(len(p)) > r.max {
		_ = os.Rename(r.path, r.path+".1")
		old := r.f
		if err := r.open(); err == nil {
			old.Close()
		} else {
			r.f = old
		}
	}
	n, err := r.f.Write(p)
	r.size += int64(n)
	return n, err
}
