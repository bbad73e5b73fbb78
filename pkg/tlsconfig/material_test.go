package tlsconfig

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
)

func TestParseMaterial(t *testing.T) {
	root := newCA(t, "root")
	other := newCA(t, "other")
	inter := root.intermediate(t, "intermediate")
	leaf := root.issue(t, "leaf", nil)
	chained := inter.issue(t, "chained", nil)
	otherLeaf := root.issue(t, "other-leaf", nil)
	half := func(b []byte) []byte { return b[:len(b)/2] }

	tests := []struct {
		name           string
		cert, key, ca  []byte
		wantErr        string // "" = must load
		wantCAs        int
		wantLeafIssuer string
	}{
		{name: "leaf and one CA", cert: leaf.certPEM, key: leaf.keyPEM, ca: root.pem, wantCAs: 1, wantLeafIssuer: "root"},
		{name: "old and new CA bundle", cert: leaf.certPEM, key: leaf.keyPEM, ca: bundle(other, root), wantCAs: 2, wantLeafIssuer: "root"},
		{name: "leaf with intermediate", cert: chained.certPEM, key: chained.keyPEM, ca: root.pem, wantCAs: 1, wantLeafIssuer: "intermediate"},
		{name: "text around blocks", cert: leaf.certPEM, key: leaf.keyPEM,
			ca: []byte("# old\n" + string(other.pem) + "# new\n" + string(root.pem) + "\n# end\n"), wantCAs: 2, wantLeafIssuer: "root"},
		{name: "key of another certificate", cert: leaf.certPEM, key: otherLeaf.keyPEM, ca: root.pem, wantErr: "private key does not match"},
		{name: "half-written certificate", cert: half(leaf.certPEM), key: leaf.keyPEM, ca: root.pem, wantErr: "certificate file: PEM block 1 is truncated"},
		{name: "half-written intermediate", cert: append(bytes.Clone(leaf.certPEM), half(inter.pem)...), key: leaf.keyPEM, ca: root.pem,
			wantErr: "certificate file: PEM block 2 is truncated"},
		{name: "half-written key", cert: leaf.certPEM, key: half(leaf.keyPEM), ca: root.pem, wantErr: "certificate and key"},
		{name: "empty key", cert: leaf.certPEM, key: nil, ca: root.pem, wantErr: "certificate and key"},
		{name: "empty CA", cert: leaf.certPEM, key: leaf.keyPEM, ca: nil, wantErr: "CA file: no PEM certificate"},
		{name: "garbage CA", cert: leaf.certPEM, key: leaf.keyPEM, ca: []byte("hello"), wantErr: "CA file: no PEM certificate"},
		{name: "half-written CA bundle", cert: leaf.certPEM, key: leaf.keyPEM, ca: append(bundle(root), half(other.pem)...),
			wantErr: "CA file: PEM block 2 is truncated"},
		{name: "corrupt DER in CA", cert: leaf.certPEM, key: leaf.keyPEM,
			ca: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), wantErr: "CA file: PEM block 1:"},
		{name: "key in CA file", cert: leaf.certPEM, key: leaf.keyPEM, ca: leaf.keyPEM, wantErr: `CA file: PEM block 1 is "PRIVATE KEY"`},
		{name: "key in certificate file", cert: leaf.keyPEM, key: leaf.keyPEM, ca: root.pem, wantErr: `certificate file: PEM block 1 is "PRIVATE KEY"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := parseMaterial(tt.cert, tt.key, tt.ca)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.caCount != tt.wantCAs {
				t.Errorf("caCount = %d, want %d", m.caCount, tt.wantCAs)
			}
			if m.cert.Leaf == nil || m.cert.Leaf.Issuer.CommonName != tt.wantLeafIssuer {
				t.Fatalf("leaf = %v, want one issued by %q", m.cert.Leaf, tt.wantLeafIssuer)
			}
			// The pool must hold exactly what the file held: the leaf
			// verifies against it, with its chain as intermediates.
			inter := x509.NewCertPool()
			for _, der := range m.cert.Certificate[1:] {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				inter.AddCert(c)
			}
			if _, err := m.cert.Leaf.Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: inter}); err != nil {
				t.Errorf("leaf does not verify against the loaded pool: %v", err)
			}
		})
	}
}
