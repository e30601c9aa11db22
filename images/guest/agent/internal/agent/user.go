package agent

import (
	"encoding/json"
	"os/user"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// guestUser is a user of the guest's /etc/passwd (or a bare uid).
type guestUser struct {
	Name   string
	Uid    int
	Gid    int
	Groups []int
	Home   string
	Shell  string
}

func (u *guestUser) isRoot() bool { return u == nil || (u.Uid == 0 && u.Gid == 0) }

// lookupUser resolves a request's "user": a name or a uid (JSON string or number), from the
// guest's /etc/passwd and /etc/group. An empty value is root. A uid with no passwd entry runs
// with gid = uid and home /.
func lookupUser(raw json.RawMessage) (*guestUser, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return rootUser(), nil
	}
	var spec string
	var num json.Number
	if err := json.Unmarshal(raw, &num); err == nil {
		spec = num.String()
	} else if err := json.Unmarshal(raw, &spec); err != nil {
		return nil, invalid("user must be a name or a uid")
	}
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return rootUser(), nil
	}
	var u *user.User
	var err error
	if _, nerr := strconv.Atoi(spec); nerr == nil {
		u, err = user.LookupId(spec)
		if err != nil {
			uid, _ := strconv.Atoi(spec)
			if uid < 0 {
				return nil, invalid("bad uid %s", spec)
			}
			return &guestUser{Name: spec, Uid: uid, Gid: uid, Home: "/"}, nil
		}
	} else {
		u, err = user.Lookup(spec)
		if err != nil {
			return nil, invalid("unknown user %q (not in the guest's /etc/passwd)", spec)
		}
	}
	gu := &guestUser{Name: u.Username, Home: u.HomeDir}
	gu.Uid, _ = strconv.Atoi(u.Uid)
	gu.Gid, _ = strconv.Atoi(u.Gid)
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.Atoi(s); err == nil {
				gu.Groups = append(gu.Groups, g)
			}
		}
	}
	if len(gu.Groups) == 0 {
		gu.Groups = []int{gu.Gid}
	}
	gu.Shell = shellOf(u.Username)
	return gu, nil
}

func rootUser() *guestUser {
	return &guestUser{Name: "root", Uid: 0, Gid: 0, Groups: []int{0}, Home: "/root", Shell: shellOf("root")}
}

// shellOf reads the login shell from /etc/passwd (os/user does not expose it).
func shellOf(name string) string {
	b, err := readSmallFile("/etc/passwd", 1<<20)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 7 && f[0] == name {
			return f[6]
		}
	}
	return ""
}

// becomeUser switches the calling goroutine's OS thread to u's file-system identity (fsuid,
// fsgid, supplementary groups) so that file operations get the permission checks (and
// ownership) of that user, then keeps the goroutine locked to the thread for good: the Go
// runtime ends a thread whose goroutine exits while locked, so the identity never leaks to
// other goroutines. (setfsuid and the raw setgroups syscall are per-thread on Linux, and the
// runtime creates new threads from a clean template thread while this one is locked.)
func becomeUser(u *guestUser) error {
	if u.isRoot() {
		return nil
	}
	runtime.LockOSThread()
	if err := unix.Setgroups(u.Groups); err != nil {
		return newErr(CodeINTERNAL, "", "setgroups: %v", err)
	}
	if err := unix.Setfsgid(u.Gid); err != nil {
		return newErr(CodeINTERNAL, "", "setfsgid: %v", err)
	}
	if err := unix.Setfsuid(u.Uid); err != nil {
		return newErr(CodeINTERNAL, "", "setfsuid: %v", err)
	}
	return nil
}
