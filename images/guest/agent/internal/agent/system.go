package agent

import (
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func init() {
	handlers["setup"] = opSetup
	handlers["identity"] = opIdentity
	handlers["shutdown"] = opShutdown
}

type setupFile struct {
	Path    string  `json:"path"`
	Mode    *uint32 `json:"mode"`
	Content *string `json:"content"` // base64, inline
	Size    *int64  `json:"size"`    // else: this many bytes of channel 0
}

// setup {env, files: [{path, mode, content | size}]} (+ DATA 0 … EOF 0 when a file has no inline
// content: the contents of those files, concatenated in order) → RESPONSE {env, files}.
// env is merged into the default env of later execs (kept in the state dir, so an agent
// restarted by init keeps it); files are written with their parents created.
func opSetup(s *Stream, raw []byte) (any, error) {
	var req struct {
		Env   map[string]string `json:"env"`
		Files []setupFile       `json:"files"`
	}
	if err := decodeReq(raw, &req); err != nil {
		return nil, err
	}
	streamed := false
	for i := range req.Files {
		f := &req.Files[i]
		p, err := cleanAbs(fmt.Sprintf("files[%d].path", i), f.Path)
		if err != nil {
			return nil, err
		}
		f.Path = p
		if (f.Content == nil) == (f.Size == nil) {
			return nil, invalid("files[%d]: give exactly one of content (base64) and size (streamed on channel 0)", i)
		}
		if f.Size != nil {
			if *f.Size < 0 {
				return nil, invalid("files[%d].size must be non-negative", i)
			}
			streamed = true
		}
	}
	if len(req.Env) > 0 {
		if err := s.c.a.mergeSetupEnv(req.Env); err != nil {
			return nil, err
		}
	}
	written := make([]map[string]any, 0, len(req.Files))
	for i, f := range req.Files {
		if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
			return nil, toError(err, filepath.Dir(f.Path))
		}
		mode := os.FileMode(0o644)
		if f.Mode != nil {
			mode = os.FileMode(*f.Mode & 0o7777)
		}
		out, err := os.OpenFile(f.Path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, mode)
		if err != nil {
			return nil, toError(err, f.Path)
		}
		var n int64
		if f.Content != nil {
			b, derr := base64.StdEncoding.DecodeString(*f.Content)
			if derr != nil {
				out.Close()
				return nil, invalid("files[%d].content is not base64: %v", i, derr)
			}
			k, werr := out.Write(b)
			n, err = int64(k), werr
		} else {
			n, err = io.CopyN(out, s, *f.Size)
			if err == io.EOF {
				err = invalid("files[%d] (%s): channel 0 ended after %d of %d bytes", i, f.Path, n, *f.Size)
			}
		}
		if err == nil {
			err = out.Chmod(mode)
		}
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, toError(err, f.Path)
		}
		written = append(written, map[string]any{"path": f.Path, "size": n})
	}
	if streamed {
		extra, err := io.Copy(io.Discard, s)
		if err != nil {
			return nil, err
		}
		if extra > 0 {
			return nil, invalid("channel 0 carried %d bytes more than the files' sizes", extra)
		}
	}
	return map[string]any{"env": len(req.Env), "files": written}, nil
}

type identityInterface struct {
	Name    string   `json:"name"`
	MAC     string   `json:"mac"`
	IP      string   `json:"ip"`
	Prefix  int      `json:"prefix"`
	Gateway string   `json:"gateway"`
	DNS     []string `json:"dns"`
}

var machineIDRe = regexp.MustCompile(`^[0-9a-f]{32}$`)

// sysPath maps an absolute guest path into the sysroot.
func (a *Agent) sysPath(p string) string { return filepath.Join(a.cfg.Sysroot, p) }

// writeThrough writes a sysroot file, following a symlink the way the guest would (an absolute
// target is taken inside the sysroot), e.g. /etc/resolv.conf -> /run/resolv.conf.
func (a *Agent) writeThrough(p string, data []byte, mode os.FileMode) error {
	full := a.sysPath(p)
	for i := 0; i < 8; i++ {
		target, err := os.Readlink(full)
		if err != nil {
			break
		}
		if filepath.IsAbs(target) {
			full = a.sysPath(target)
		} else {
			full = filepath.Join(filepath.Dir(full), target)
		}
	}
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return err
	}
	tmp := full + ".mvm-tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, full)
}

// identity {hostname, machineId, interfaces: [{name = eth<i>, mac, ip, prefix, gateway, dns}],
// timeMs, entropy (base64)} → {applied: [...], skipped: [...]}: re-identifies a clone restored
// from a memory snapshot. Every step given is attempted; if any fails the answer is an ERROR
// naming the failed steps (and the applied ones).
func opIdentity(s *Stream, raw []byte) (any, error) {
	a := s.c.a
	var req struct {
		Hostname   string              `json:"hostname"`
		MachineID  string              `json:"machineId"`
		Interfaces []identityInterface `json:"interfaces"`
		TimeMs     int64               `json:"timeMs"`
		Entropy    string              `json:"entropy"`
	}
	if err := decodeReq(raw, &req); err != nil {
		return nil, err
	}
	var applied, skipped, failed []string
	var firstErr *Error
	step := func(name string, err error) {
		if err == nil {
			applied = append(applied, name)
			return
		}
		e := asError(err, "")
		if firstErr == nil {
			firstErr = e
		}
		failed = append(failed, name+": "+e.Message)
	}
	// 1. The RNG first: a clone must not repeat its template's random numbers.
	if req.Entropy != "" {
		b, err := base64.StdEncoding.DecodeString(req.Entropy)
		if err != nil {
			return nil, invalid("entropy is not base64: %v", err)
		}
		step(fmt.Sprintf("entropy (%d bytes written to /dev/urandom and credited with RNDADDENTROPY)", len(b)), addEntropy(b))
	}
	// 2. The clock.
	if req.TimeMs > 0 {
		if a.cfg.SetClock {
			ts := unix.NsecToTimespec(req.TimeMs * int64(time.Millisecond))
			step("clock", unix.ClockSettime(unix.CLOCK_REALTIME, &ts))
		} else {
			skipped = append(skipped, "clock (the agent runs with --no-set-clock)")
		}
	}
	// 3. Names.
	if req.Hostname != "" {
		if len(req.Hostname) > 64 || strings.ContainsAny(req.Hostname, " /\x00\n") {
			return nil, invalid("bad hostname %q", req.Hostname)
		}
		step("hostname", a.setHostname(req.Hostname))
	}
	if req.MachineID != "" {
		id := strings.ToLower(strings.ReplaceAll(req.MachineID, "-", ""))
		if !machineIDRe.MatchString(id) {
			return nil, invalid("machineId must be 32 hex digits")
		}
		step("machine-id", a.writeThrough("/etc/machine-id", []byte(id+"\n"), 0o444))
	}
	// 4. Network (rtnetlink: no `ip` needed in the image).
	var dns []string
	for i, ifc := range req.Interfaces {
		name := ifc.Name
		if name == "" {
			name = fmt.Sprintf("eth%d", i)
		}
		step("interface "+name, configureInterface(name, ifc))
		dns = append(dns, ifc.DNS...)
	}
	if len(dns) > 0 {
		var b strings.Builder
		for _, d := range dns {
			if net.ParseIP(d) == nil {
				return nil, invalid("bad dns server %q", d)
			}
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		step("resolv.conf", a.writeThrough("/etc/resolv.conf", []byte(b.String()), 0o644))
	}
	if firstErr != nil {
		firstErr.Message = fmt.Sprintf("identity: %s (applied: %s)", strings.Join(failed, "; "), strings.Join(applied, ", "))
		return nil, firstErr
	}
	if applied == nil {
		applied = []string{}
	}
	if skipped == nil {
		skipped = []string{}
	}
	return map[string]any{"applied": applied, "skipped": skipped}, nil
}

func (a *Agent) setHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return err
	}
	if err := a.writeThrough("/etc/hostname", []byte(name+"\n"), 0o644); err != nil {
		return err
	}
	// 127.0.1.1 <name> in /etc/hosts, as the init script writes it.
	hosts := a.sysPath("/etc/hosts")
	b, _ := os.ReadFile(hosts)
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "127.0.1.1") || l == "" {
			continue
		}
		lines = append(lines, l)
	}
	lines = append(lines, "127.0.1.1 "+name)
	return a.writeThrough("/etc/hosts", []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

func configureInterface(name string, ifc identityInterface) error {
	link, err := net.InterfaceByName(name)
	if err != nil {
		return newErr(CodeENOENT, "", "no interface %s", name)
	}
	nl, err := openRtnl()
	if err != nil {
		return err
	}
	defer nl.close()
	if ifc.MAC != "" {
		mac, err := net.ParseMAC(ifc.MAC)
		if err != nil || len(mac) != 6 {
			return invalid("bad mac %q", ifc.MAC)
		}
		if err := nl.setLinkUp(link.Index, false); err != nil {
			return fmt.Errorf("link down: %w", err)
		}
		if err := nl.setMAC(link.Index, mac); err != nil {
			return fmt.Errorf("set mac: %w", err)
		}
	}
	if err := nl.setLinkUp(link.Index, true); err != nil {
		return fmt.Errorf("link up: %w", err)
	}
	if ifc.IP != "" {
		ip := net.ParseIP(ifc.IP).To4()
		if ip == nil {
			return invalid("bad IPv4 address %q", ifc.IP)
		}
		prefix := ifc.Prefix
		if prefix == 0 {
			prefix = 24
		}
		if prefix < 1 || prefix > 32 {
			return invalid("bad prefix %d", prefix)
		}
		if err := nl.flushIPv4(link.Index); err != nil {
			return fmt.Errorf("flush addresses: %w", err)
		}
		if err := nl.addIPv4(link.Index, ip, prefix); err != nil {
			return fmt.Errorf("add %s/%d: %w", ip, prefix, err)
		}
	}
	if ifc.Gateway != "" {
		gw := net.ParseIP(ifc.Gateway).To4()
		if gw == nil {
			return invalid("bad gateway %q", ifc.Gateway)
		}
		if err := nl.replaceDefaultRoute(link.Index, gw); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}

// addEntropy mixes b into the kernel pool (a write to /dev/urandom) and credits it
// (RNDADDENTROPY, which needs CAP_SYS_ADMIN).
func addEntropy(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return err
	}
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b)+3)
	*(*int32)(unsafe.Pointer(&info[0])) = int32(len(b) * 8)
	*(*int32)(unsafe.Pointer(&info[4])) = int32(len(b))
	copy(info[8:], b)
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0])))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", errno)
	}
	return nil
}

// shutdown {} → {initPid}: sync, then (after the answer is out) SIGTERM to init — the default
// init powers off on TERM — and, when init is PID 1 and the guest is still up after the grace
// period, reboot(2) POWER_OFF.
func opShutdown(s *Stream, _ []byte) (any, error) {
	a := s.c.a
	unix.Sync()
	pid := a.cfg.InitPID
	a.logf("shutdown requested: SIGTERM to pid %d", pid)
	go func() {
		time.Sleep(100 * time.Millisecond)
		if err := unix.Kill(pid, unix.SIGTERM); err != nil {
			a.logf("shutdown: kill %d: %v", pid, err)
		}
		if pid != 1 {
			return
		}
		time.Sleep(a.cfg.ShutdownGrace)
		a.logf("shutdown: init did not power off within %s: reboot(POWER_OFF)", a.cfg.ShutdownGrace)
		unix.Sync()
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			a.logf("shutdown: reboot: %v", err)
		}
	}()
	return map[string]any{"initPid": pid}, nil
}

