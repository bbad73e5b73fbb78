package manifests

import "testing"

func TestCheckFlag(t *testing.T) {
	flags := parseHelp(`Usage of podiam agent:
  -iptables
    	install the DNAT rule for 169.254.169.254
  -port int
    	port the metadata handler listens on (default 8181)
  -server-address string
    	server address
`)
	if len(flags) != 3 || !flags["iptables"] || flags["port"] {
		t.Fatalf("parseHelp: %v", flags)
	}
	for _, c := range []struct {
		arg string
		ok  bool
	}{
		{"--iptables", true},
		{"--iptables=false", true},
		{"--no-iptables", true},
		{"--port=8181", true},
		{"--server-address=podiam-server:9610", true},
		{"--port", false},          // value in the next argument
		{"--no-port", false},       // not a boolean
		{"--no-iptables=1", false}, // --no- takes no value
		{"--ipatbles", false},      // misspelt
		{"-port=1", false},         // single dash: not how KIAM manifests write flags
		{"server", false},
	} {
		if err := checkFlag(c.arg, flags); (err == nil) != c.ok {
			t.Errorf("checkFlag(%q) = %v, want ok=%v", c.arg, err, c.ok)
		}
	}
}
