// udpecho: a UDP echo server for ipvsca's tests, reading with net.UDPConn.ReadMsgUDP and
// answering with WriteMsgUDP (recvmsg and sendmsg). It asks for IP_PKTINFO, as DNS
// servers on a wildcard address do, and answers from the address the datagram was sent
// to. It prints "ready" once bound, then for every datagram the peer Go reports and the
// address it was sent to ("PEER to LOCAL"), and echoes the data. Built with
// CGO_ENABLED=0: static, issuing its syscalls without libc.
package main

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"unsafe"
)

func main() {
	addr, err := net.ResolveUDPAddr("udp4", os.Args[1])
	if err != nil {
		fail(err)
	}
	conn, err := net.ListenUDP("udp4", addr)
	if err != nil {
		fail(err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		fail(err)
	}
	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		sockErr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_PKTINFO, 1)
	}); err != nil {
		fail(err)
	}
	if sockErr != nil {
		fail(sockErr)
	}
	fmt.Println("ready")
	buf := make([]byte, 2048)
	oob := make([]byte, 256)
	for {
		n, oobn, _, peer, err := conn.ReadMsgUDP(buf, oob)
		if err != nil {
			fail(err)
		}
		local, ok := destination(oob[:oobn])
		if !ok {
			fail(fmt.Errorf("no IP_PKTINFO from %v", peer))
		}
		fmt.Printf("%v to %v\n", peer, local)
		if _, _, err := conn.WriteMsgUDP(buf[:n], pktinfo(local), peer); err != nil {
			fail(err)
		}
	}
}

// destination is the address a datagram was sent to, from its IP_PKTINFO control message.
func destination(oob []byte) (net.IP, bool) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, false
	}
	for _, m := range msgs {
		if m.Header.Level == syscall.IPPROTO_IP && m.Header.Type == syscall.IP_PKTINFO &&
			len(m.Data) >= syscall.SizeofInet4Pktinfo {
			info := (*syscall.Inet4Pktinfo)(unsafe.Pointer(&m.Data[0]))
			return net.IP(info.Spec_dst[:]).To4(), true
		}
	}
	return nil, false
}

// pktinfo is the control message that sends from `from` (any interface).
func pktinfo(from net.IP) []byte {
	b := make([]byte, syscall.CmsgSpace(syscall.SizeofInet4Pktinfo))
	h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = syscall.IPPROTO_IP
	h.Type = syscall.IP_PKTINFO
	h.SetLen(syscall.CmsgLen(syscall.SizeofInet4Pktinfo))
	info := (*syscall.Inet4Pktinfo)(unsafe.Pointer(&b[syscall.CmsgLen(0)]))
	copy(info.Spec_dst[:], from.To4())
	return b
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
