package agent

import (
	"encoding/binary"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// A minimal rtnetlink client (links, IPv4 addresses, the default route): identity reconfigures
// interfaces through it, so it works on images without `ip`.
type rtnl struct {
	fd  int
	seq uint32
}

func openRtnl() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &rtnl{fd: fd}, nil
}

func (n *rtnl) close() { unix.Close(n.fd) }

func nlAttr(typ uint16, data []byte) []byte {
	l := 4 + len(data)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(l))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[4:], data)
	return b
}

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

// do sends one request and collects the replies: until the ACK, or NLMSG_DONE for a dump.
func (n *rtnl) do(typ, flags uint16, body ...[]byte) ([]syscall.NetlinkMessage, error) {
	n.seq++
	size := unix.SizeofNlMsghdr
	for _, b := range body {
		size += len(b)
	}
	msg := make([]byte, 0, size)
	h := make([]byte, unix.SizeofNlMsghdr)
	binary.NativeEndian.PutUint32(h[0:4], uint32(size))
	binary.NativeEndian.PutUint16(h[4:6], typ)
	binary.NativeEndian.PutUint16(h[6:8], unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags)
	binary.NativeEndian.PutUint32(h[8:12], n.seq)
	msg = append(msg, h...)
	for _, b := range body {
		msg = append(msg, b...)
	}
	if err := unix.Sendto(n.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var out []syscall.NetlinkMessage
	buf := make([]byte, 64*1024)
	for {
		k, _, err := unix.Recvfrom(n.fd, buf, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:k])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Header.Seq != n.seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return nil, fmt.Errorf("netlink: short error message")
				}
				if e := int32(binary.NativeEndian.Uint32(m.Data[0:4])); e != 0 {
					return nil, unix.Errno(-e)
				}
				return out, nil
			default:
				out = append(out, m)
			}
		}
	}
}

func ifinfo(index int, flags, change uint32) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:8], uint32(index))
	binary.NativeEndian.PutUint32(b[8:12], flags)
	binary.NativeEndian.PutUint32(b[12:16], change)
	return b
}

func (n *rtnl) setLinkUp(index int, up bool) error {
	var flags uint32
	if up {
		flags = unix.IFF_UP
	}
	_, err := n.do(unix.RTM_NEWLINK, 0, ifinfo(index, flags, unix.IFF_UP))
	return err
}

func (n *rtnl) setMAC(index int, mac net.HardwareAddr) error {
	_, err := n.do(unix.RTM_NEWLINK, 0, ifinfo(index, 0, 0), nlAttr(unix.IFLA_ADDRESS, mac))
	return err
}

func ifaddr(index int, prefix int) []byte {
	b := make([]byte, unix.SizeofIfAddrmsg)
	b[0] = unix.AF_INET
	b[1] = byte(prefix)
	binary.NativeEndian.PutUint32(b[4:8], uint32(index))
	return b
}

// flushIPv4 removes every IPv4 address of the link.
func (n *rtnl) flushIPv4(index int) error {
	msgs, err := n.do(unix.RTM_GETADDR, unix.NLM_F_DUMP, ifaddr(0, 0))
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWADDR || len(m.Data) < unix.SizeofIfAddrmsg {
			continue
		}
		if int(binary.NativeEndian.Uint32(m.Data[4:8])) != index || m.Data[0] != unix.AF_INET {
			continue
		}
		// Send back the message's own header and attributes as the deletion request.
		if _, err := n.do(unix.RTM_DELADDR, 0, m.Data); err != nil {
			return err
		}
	}
	return nil
}

func (n *rtnl) addIPv4(index int, ip net.IP, prefix int) error {
	_, err := n.do(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, ifaddr(index, prefix), nlAttr(unix.IFA_LOCAL, ip.To4()), nlAttr(unix.IFA_ADDRESS, ip.To4()))
	return err
}

func (n *rtnl) replaceDefaultRoute(index int, gw net.IP) error {
	rt := make([]byte, unix.SizeofRtMsg)
	rt[0] = unix.AF_INET
	rt[4] = unix.RT_TABLE_MAIN
	rt[5] = unix.RTPROT_BOOT
	rt[6] = unix.RT_SCOPE_UNIVERSE
	rt[7] = unix.RTN_UNICAST
	_, err := n.do(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, rt, nlAttr(unix.RTA_GATEWAY, gw.To4()), nlAttr(unix.RTA_OIF, u32(uint32(index))))
	return err
}
