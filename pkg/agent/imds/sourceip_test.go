package imds

import (
	"net/netip"
	"testing"
)

// TestSourceIP: the string a request is keyed by is the address's String
// (mapped IPv4 unmapped, zone dropped) whether it is taken from RemoteAddr
// as it is or made anew.
func TestSourceIP(t *testing.T) {
	for _, remote := range []string{
		"10.0.0.1:40000", "10.0.0.1", "[fd00::1]:80", "fd00::1", "[::ffff:10.0.0.1]:80",
		"[FD00:0:0::1]:80", "[fe80::1%eth0]:80", "[fd00:0:0:0:0:0:0:1]:1", "[::1]:1", "0.0.0.0:0",
		"[2001:db8::1:0:0:1]:80", "[2001:db8:0:0:1:0:0:1]:80",
	} {
		ip, s, ok := sourceIP(remote)
		want, err := netip.ParseAddrPort(remote)
		wantIP := want.Addr()
		if err != nil {
			wantIP = netip.MustParseAddr(remote)
		}
		wantIP = wantIP.Unmap().WithZone("")
		if !ok || ip != wantIP || s != wantIP.String() {
			t.Errorf("sourceIP(%q) = %v, %q, %v; want %v, %q", remote, ip, s, ok, wantIP, wantIP.String())
		}
	}
	for _, remote := range []string{"", "pipe", "010.0.0.1:1", "10.0.0.1:x", "[10.0.0.1]:1"} {
		if _, _, ok := sourceIP(remote); ok {
			t.Errorf("sourceIP(%q) accepted", remote)
		}
	}
}
