package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fast makes every handshake look at the files, so rotation tests need no
// sleeps; the rate limit itself is tested with a fake clock.
const fast = time.Nanosecond

func mustServer(t testing.TB, f Files, log *slog.Logger) *tls.Config {
	t.Helper()
	c, err := Server(Config{Files: f, CheckInterval: fast}, log)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustClient(t testing.TB, f Files, serverName string) *tls.Config {
	t.Helper()
	c, err := Client(Config{Files: f, CheckInterval: fast, ServerName: serverName}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConfigBasics(t *testing.T) {
	ca := newCA(t, "ca")
	f := writeSet(t, t.TempDir(), ca.issue(t, "x", nil), ca.pem)
	srv := mustServer(t, f, nil)
	if srv.MinVersion != tls.VersionTLS12 || srv.ClientAuth != tls.RequireAndVerifyClientCert || srv.GetConfigForClient == nil {
		t.Errorf("server config: min %x auth %v getConfig %v", srv.MinVersion, srv.ClientAuth, srv.GetConfigForClient != nil)
	}
	per, err := srv.GetConfigForClient(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	if per.MinVersion != tls.VersionTLS12 || per.ClientAuth != tls.RequireAndVerifyClientCert || per.ClientCAs == nil ||
		len(per.Certificates) != 1 || !per.SessionTicketsDisabled {
		t.Errorf("per-handshake server config: %+v", per)
	}
	cli := mustClient(t, f, "")
	if cli.MinVersion != tls.VersionTLS12 || !cli.InsecureSkipVerify || cli.VerifyConnection == nil || cli.GetClientCertificate == nil {
		t.Errorf("client config: min %x skip %v verify %v", cli.MinVersion, cli.InsecureSkipVerify, cli.VerifyConnection != nil)
	}
	// The replacement verification must reject a connection with no chain.
	if err := cli.VerifyConnection(tls.ConnectionState{ServerName: "localhost"}); err == nil {
		t.Error("VerifyConnection accepted an empty peer chain")
	}
}

func TestMutualTLS(t *testing.T) {
	ca := newCA(t, "ca")
	other := newCA(t, "other-ca")
	srvKP := ca.issue(t, "server", nil)
	cliKP := ca.issue(t, "agent", nil)
	srvFiles := writeSet(t, t.TempDir(), srvKP, ca.pem)
	cliFiles := writeSet(t, t.TempDir(), cliKP, ca.pem)

	ts := startServer(t, mustServer(t, srvFiles, nil))
	// A server with a certificate from another CA, which trusts our clients.
	rogue := startServer(t, mustServer(t, writeSet(t, t.TempDir(), other.issue(t, "rogue", nil), ca.pem), nil))

	goodClient := mustClient(t, cliFiles, "")

	t.Run("valid client", func(t *testing.T) {
		ts.mustTalk(t, goodClient, srvKP, cliKP)
	})
	t.Run("dial IP with ServerName set to it", func(t *testing.T) {
		if _, err := ts.check(t, mustClient(t, cliFiles, "127.0.0.1"), ""); err != nil {
			t.Fatal(err)
		}
	})

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	tests := []struct {
		name      string
		ts        *testServer
		client    *tls.Config
		authority string
		clientErr string
		serverErr string
	}{{
		name:      "client without certificate",
		ts:        ts,
		client:    &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		authority: "localhost",
		serverErr: "client didn't provide a certificate",
	}, {
		name:      "client certificate from another CA",
		ts:        ts,
		client:    mustClient(t, writeSet(t, t.TempDir(), other.issue(t, "intruder", nil), ca.pem), ""),
		authority: "localhost",
		serverErr: "certificate signed by unknown authority",
	}, {
		name: "client certificate without client auth usage",
		ts:   ts,
		client: mustClient(t, writeSet(t, t.TempDir(), ca.issue(t, "server-only", func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}), ca.pem), ""),
		authority: "localhost",
		serverErr: "incompatible key usage",
	}, {
		name:      "server certificate from another CA",
		ts:        rogue,
		client:    goodClient,
		authority: "localhost",
		clientErr: "certificate signed by unknown authority",
	}, {
		name:      "wrong host name from authority",
		ts:        ts,
		client:    goodClient,
		authority: "podiam-server.example",
		clientErr: "not podiam-server.example",
	}, {
		name:      "wrong host name from ServerName override",
		ts:        ts,
		client:    mustClient(t, cliFiles, "podiam-server.example"),
		clientErr: "not podiam-server.example",
	}, {
		// Go hides IP addresses from ConnectionState.ServerName; the
		// check must fail closed rather than skip the name.
		name:      "dial IP without ServerName",
		ts:        ts,
		client:    goodClient,
		clientErr: "no server name",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.ts.mustFail(t, tt.client, tt.authority, tt.clientErr, tt.serverErr)
		})
	}

	t.Run("server certificate without server auth usage", func(t *testing.T) {
		clientOnly := ca.issue(t, "client-only", func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		})
		bad := startServer(t, mustServer(t, writeSet(t, t.TempDir(), clientOnly, ca.pem), nil))
		bad.mustFail(t, goodClient, "localhost", "incompatible key usage", "")
	})
}

// TestRotation walks a full CA rotation on live server and client configs:
// both trust old+new, leaves move to the new CA, the old CA is dropped.
func TestRotation(t *testing.T) {
	ca1, ca2 := newCA(t, "ca1"), newCA(t, "ca2")
	srv1, cli1 := ca1.issue(t, "server-1", nil), ca1.issue(t, "agent-1", nil)
	srvFiles := writeSet(t, t.TempDir(), srv1, ca1.pem)
	cliFiles := writeSet(t, t.TempDir(), cli1, ca1.pem)
	ts := startServer(t, mustServer(t, srvFiles, nil))
	client := mustClient(t, cliFiles, "")

	// An agent already rotated to ca2; it only gets in once the server
	// trusts ca2, which shows the server's CA pool is reloaded.
	early := ca2.issue(t, "agent-early", nil)
	earlyClient := mustClient(t, writeSet(t, t.TempDir(), early, bundle(ca1, ca2)), "")

	ts.mustTalk(t, client, srv1, cli1)
	ts.mustFail(t, earlyClient, "localhost", "", "certificate signed by unknown authority")

	// 1. Both sides trust old and new CA.
	writeAtomic(t, srvFiles.CA, bundle(ca1, ca2))
	writeAtomic(t, cliFiles.CA, bundle(ca1, ca2))
	ts.mustTalk(t, client, srv1, cli1)
	ts.mustTalk(t, earlyClient, srv1, early)

	// 2. The server moves to a ca2 leaf; the client must trust it.
	srv2 := ca2.issue(t, "server-2", nil)
	writeAtomic(t, srvFiles.Cert, srv2.certPEM)
	writeAtomic(t, srvFiles.Key, srv2.keyPEM)
	ts.mustTalk(t, client, srv2, cli1)

	// 3. The client moves to a ca2 leaf.
	cli2 := ca2.issue(t, "agent-2", nil)
	writeAtomic(t, cliFiles.Cert, cli2.certPEM)
	writeAtomic(t, cliFiles.Key, cli2.keyPEM)
	ts.mustTalk(t, client, srv2, cli2)

	// 4. ca1 is retired: what it signed is no longer accepted.
	writeAtomic(t, srvFiles.CA, ca2.pem)
	writeAtomic(t, cliFiles.CA, ca2.pem)
	ts.mustTalk(t, client, srv2, cli2)
	staleClient := mustClient(t, writeSet(t, t.TempDir(), ca1.issue(t, "agent-stale", nil), bundle(ca1, ca2)), "")
	ts.mustFail(t, staleClient, "localhost", "", "certificate signed by unknown authority")
	staleServer := startServer(t, mustServer(t, writeSet(t, t.TempDir(), ca1.issue(t, "server-stale", nil), ca2.pem), nil))
	staleServer.mustFail(t, client, "localhost", "certificate signed by unknown authority", "")
}

// TestKubernetesSecretVolume rotates through the kubelet's ..data symlink
// swap, where the visible paths never change.
func TestKubernetesSecretVolume(t *testing.T) {
	ca1, ca2 := newCA(t, "ca1"), newCA(t, "ca2")
	srv1, cli1 := ca1.issue(t, "server-1", nil), ca1.issue(t, "agent-1", nil)
	srvVol := newK8sVolume(t, srv1, ca1.pem)
	cliVol := newK8sVolume(t, cli1, ca1.pem)
	ts := startServer(t, mustServer(t, srvVol.files(), nil))
	client := mustClient(t, cliVol.files(), "")
	ts.mustTalk(t, client, srv1, cli1)

	// Both secrets get a ca2 leaf and the old+new bundle in one swap each.
	srv2, cli2 := ca2.issue(t, "server-2", nil), ca2.issue(t, "agent-2", nil)
	srvVol.update(t, srv2, bundle(ca1, ca2))
	cliVol.update(t, cli2, bundle(ca1, ca2))
	ts.mustTalk(t, client, srv2, cli2)

	// A second swap to ca2 only; the first generation's directory is gone.
	srvVol.update(t, srv2, ca2.pem)
	cliVol.update(t, cli2, ca2.pem)
	ts.mustTalk(t, client, srv2, cli2)
	stale := mustClient(t, writeSet(t, t.TempDir(), ca1.issue(t, "agent-stale", nil), ca2.pem), "")
	ts.mustFail(t, stale, "localhost", "", "certificate signed by unknown authority")
}

// TestBrokenUpdateKeepsOldMaterial breaks one file on a live side, checks
// that handshakes go on with the old material and one warning, then repairs
// the file and checks the repair is picked up.
func TestBrokenUpdateKeepsOldMaterial(t *testing.T) {
	ca := newCA(t, "ca")
	ca2 := newCA(t, "ca2")
	half := func(b []byte) []byte { return b[:len(b)/2] }
	tests := []struct {
		name     string
		onServer bool
		// breakFiles damages f; next is a valid pair to rotate to afterwards.
		breakFiles func(t *testing.T, f Files, next keyPair)
	}{{
		name: "half-written server certificate", onServer: true,
		breakFiles: func(t *testing.T, f Files, next keyPair) {
			writeInPlace(t, f.Cert, half(next.certPEM))
		},
	}, {
		name: "server key not matching certificate", onServer: true,
		breakFiles: func(t *testing.T, f Files, next keyPair) {
			writeInPlace(t, f.Cert, next.certPEM) // key still the old one
		},
	}, {
		name: "garbage server CA", onServer: true,
		breakFiles: func(t *testing.T, f Files, _ keyPair) {
			writeInPlace(t, f.CA, []byte("not a certificate\n"))
		},
	}, {
		// The standard library would keep ca and silently drop ca2.
		name: "half-written server CA bundle", onServer: true,
		breakFiles: func(t *testing.T, f Files, _ keyPair) {
			writeInPlace(t, f.CA, append(bundle(ca), half(ca2.pem)...))
		},
	}, {
		name: "empty server key", onServer: true,
		breakFiles: func(t *testing.T, f Files, _ keyPair) {
			writeInPlace(t, f.Key, nil)
		},
	}, {
		name: "missing server certificate", onServer: true,
		breakFiles: func(t *testing.T, f Files, _ keyPair) {
			if err := os.Remove(f.Cert); err != nil {
				t.Fatal(err)
			}
		},
	}, {
		name: "half-written client key",
		breakFiles: func(t *testing.T, f Files, next keyPair) {
			writeInPlace(t, f.Cert, next.certPEM)
			writeInPlace(t, f.Key, half(next.keyPEM))
		},
	}, {
		name: "garbage client CA",
		breakFiles: func(t *testing.T, f Files, _ keyPair) {
			writeInPlace(t, f.CA, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n"))
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv1, cli1 := ca.issue(t, "server-1", nil), ca.issue(t, "agent-1", nil)
			srvFiles := writeSet(t, t.TempDir(), srv1, ca.pem)
			cliFiles := writeSet(t, t.TempDir(), cli1, ca.pem)
			srvLog, cliLog := &recorder{}, &recorder{}
			ts := startServer(t, mustServer(t, srvFiles, slog.New(srvLog)))
			client, err := Client(Config{Files: cliFiles, CheckInterval: fast}, slog.New(cliLog))
			if err != nil {
				t.Fatal(err)
			}
			ts.mustTalk(t, client, srv1, cli1)

			broken, log, next := srvFiles, srvLog, ca.issue(t, "server-2", nil)
			wantServer, wantClient := srv1, cli1
			if !tt.onServer {
				broken, log, next = cliFiles, cliLog, ca.issue(t, "agent-2", nil)
			}
			tt.breakFiles(t, broken, next)
			for range 3 {
				ts.mustTalk(t, client, wantServer, wantClient)
			}
			if n := log.count(slog.LevelWarn); n != 1 {
				t.Errorf("%d warnings over 3 handshakes, want 1:\n%s", n, log.dump())
			}

			// The repair is picked up without a restart.
			writeSet(t, dirOf(broken), next, ca.pem)
			if tt.onServer {
				wantServer = next
			} else {
				wantClient = next
			}
			ts.mustTalk(t, client, wantServer, wantClient)
			if n := log.count(slog.LevelWarn); n != 1 {
				t.Errorf("%d warnings after repair, want 1:\n%s", n, log.dump())
			}
			if n := log.count(slog.LevelInfo); n != 1 {
				t.Errorf("%d reload infos after repair, want 1:\n%s", n, log.dump())
			}
		})
	}
}

// writeInPlace rewrites path in place, like a tool caught half-way.
func writeInPlace(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func dirOf(f Files) string { return filepath.Dir(f.Cert) }
