// Package agent serves the mvm guest agent protocol (docs/guest-agent-protocol.md) on any byte
// stream: sessions, streams with flow control, and the ops (exec, processes, files, tar, TCP,
// setup, identity, shutdown).
package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Config is the agent's configuration (command-line flags of mvm-agent).
type Config struct {
	Version string
	Build   string
	Log     *log.Logger
	// Sysroot prefixes the files `identity` rewrites (etc/hostname, etc/machine-id, etc/hosts,
	// etc/resolv.conf); "/" in a guest, a temp dir in tests.
	Sysroot string
	// StateDir keeps what must survive an agent restart within one boot (the setup env).
	StateDir string
	// InitPID is the process `shutdown` signals (1 in a guest).
	InitPID int
	// SetClock lets `identity` set the system clock (off in host tests).
	SetClock bool
	// ShutdownGrace is how long `shutdown` waits for init before reboot(2) (when InitPID is 1).
	ShutdownGrace time.Duration
}

// Agent is the state shared by every connection: background processes, the setup env.
type Agent struct {
	cfg     Config
	ctx     context.Context
	stop    context.CancelFunc
	started time.Time
	bootID  string

	envMu    sync.Mutex
	setupEnv map[string]string

	procs *processTable

	fgMu sync.Mutex
	fg   map[*child]struct{}
}

// New makes an agent; Close kills the processes it started.
func New(cfg Config) *Agent {
	if cfg.Sysroot == "" {
		cfg.Sysroot = "/"
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/run/mvm-agent"
	}
	if cfg.InitPID == 0 {
		cfg.InitPID = 1
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = log.New(os.Stderr, "mvm-agent: ", log.LstdFlags|log.Lmicroseconds)
	}
	a := &Agent{cfg: cfg, started: time.Now(), fg: map[*child]struct{}{}}
	a.ctx, a.stop = context.WithCancel(context.Background())
	a.procs = newProcessTable(a)
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		a.bootID = strings.TrimSpace(string(b))
	}
	a.loadSetupEnv()
	return a
}

func (a *Agent) logf(format string, args ...any) { a.cfg.Log.Printf(format, args...) }

// Close cancels every stream and kills every process group the agent started.
func (a *Agent) Close() {
	a.stop()
	a.fgMu.Lock()
	for c := range a.fg {
		c.killGroup(unix.SIGKILL)
	}
	a.fgMu.Unlock()
	a.procs.killAll()
}

func (a *Agent) fgAdd(c *child) {
	a.fgMu.Lock()
	a.fg[c] = struct{}{}
	a.fgMu.Unlock()
}

func (a *Agent) fgRemove(c *child) {
	a.fgMu.Lock()
	delete(a.fg, c)
	a.fgMu.Unlock()
}

// Capabilities are the op families this agent serves (HELLO answer).
var Capabilities = []string{"exec", "tty", "process", "file", "tar", "tcp", "setup", "identity", "shutdown"}

func (a *Agent) helloInfo(transport string, window int64) map[string]any {
	return map[string]any{
		"agent":        "mvm-agent",
		"version":      a.cfg.Version,
		"build":        a.cfg.Build,
		"protocol":     ProtocolVersion,
		"bootId":       a.bootID,
		"pid":          os.Getpid(),
		"startedAt":    a.started.UTC().Format(time.RFC3339Nano),
		"transport":    transport,
		"capabilities": Capabilities,
		"window":       window,
		"maxData":      64 * 1024,
	}
}

var handlers = map[string]handler{}

func init() {
	handlers["health"] = opHealth
}

func opHealth(s *Stream, _ []byte) (any, error) {
	a := s.c.a
	host, _ := os.Hostname()
	up := 0.0
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			up, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	running, total := a.procs.counts()
	return map[string]any{
		"version":            a.cfg.Version,
		"build":              a.cfg.Build,
		"uptimeSeconds":      up,
		"agentUptimeSeconds": time.Since(a.started).Seconds(),
		"bootId":             a.bootID,
		"hostname":           host,
		"pid":                os.Getpid(),
		"processes":          map[string]int{"running": running, "total": total},
	}, nil
}

// --- setup env, kept in StateDir so an agent restarted by init still has it -------------------

func (a *Agent) envFile() string { return filepath.Join(a.cfg.StateDir, "env.json") }

func (a *Agent) loadSetupEnv() {
	a.setupEnv = map[string]string{}
	b, err := os.ReadFile(a.envFile())
	if err != nil {
		return
	}
	if err := json.Unmarshal(b, &a.setupEnv); err != nil {
		a.logf("ignoring %s: %v", a.envFile(), err)
		a.setupEnv = map[string]string{}
	}
}

func (a *Agent) mergeSetupEnv(env map[string]string) error {
	a.envMu.Lock()
	defer a.envMu.Unlock()
	for k, v := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.Contains(v, "\x00") {
			return invalid("bad env entry %q", k)
		}
		a.setupEnv[k] = v
	}
	b, _ := json.Marshal(a.setupEnv)
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	tmp := a.envFile() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, a.envFile())
}

func (a *Agent) defaultEnv() map[string]string {
	a.envMu.Lock()
	defer a.envMu.Unlock()
	m := make(map[string]string, len(a.setupEnv))
	for k, v := range a.setupEnv {
		m[k] = v
	}
	return m
}

func readSmallFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 0, 4096)
	for int64(len(b)) < limit {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			break
		}
	}
	return b, nil
}
