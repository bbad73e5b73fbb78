package tlsconfig

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConstructorErrors(t *testing.T) {
	ca := newCA(t, "ca")
	kp := ca.issue(t, "x", nil)
	good := writeSet(t, t.TempDir(), kp, ca.pem)
	mismatched := writeSet(t, t.TempDir(), kp, ca.pem)
	writeAtomic(t, mismatched.Key, ca.issue(t, "y", nil).keyPEM)
	garbage := writeSet(t, t.TempDir(), kp, []byte("garbage"))

	tests := []struct {
		name    string
		cfg     Config
		wantIs  error
		wantMsg string
	}{
		{name: "no paths", cfg: Config{}, wantIs: ErrInvalidConfig},
		{name: "no CA path", cfg: Config{Files: Files{Cert: good.Cert, Key: good.Key}}, wantIs: ErrInvalidConfig},
		{name: "negative interval", cfg: Config{Files: good, CheckInterval: -time.Second}, wantIs: ErrInvalidConfig},
		{name: "missing CA", cfg: Config{Files: Files{Cert: good.Cert, Key: good.Key, CA: filepath.Join(t.TempDir(), "nope")}}, wantIs: fs.ErrNotExist},
		{name: "key of another certificate", cfg: Config{Files: mismatched}, wantMsg: "private key does not match"},
		{name: "garbage CA", cfg: Config{Files: garbage}, wantMsg: "no PEM certificate"},
	}
	for _, tt := range tests {
		for side, ctor := range map[string]func(Config, *slog.Logger) (any, error){
			"server": func(c Config, l *slog.Logger) (any, error) { return Server(c, l) },
			"client": func(c Config, l *slog.Logger) (any, error) { return Client(c, l) },
		} {
			t.Run(side+"/"+tt.name, func(t *testing.T) {
				_, err := ctor(tt.cfg, nil)
				if err == nil {
					t.Fatal("constructor succeeded, want an error")
				}
				if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
					t.Errorf("err = %v, want errors.Is %v", err, tt.wantIs)
				}
				if !strings.Contains(err.Error(), tt.wantMsg) {
					t.Errorf("err = %v, want it to contain %q", err, tt.wantMsg)
				}
			})
		}
	}
	for _, ctor := range []func(Config, *slog.Logger) (any, error){
		func(c Config, l *slog.Logger) (any, error) { return Server(c, l) },
		func(c Config, l *slog.Logger) (any, error) { return Client(c, l) },
	} {
		if _, err := ctor(Config{Files: good}, nil); err != nil {
			t.Errorf("valid files: %v", err)
		}
	}
}

// TestRateLimit checks that the files are looked at no more than once per
// CheckInterval, and that a change is seen once the interval has passed.
func TestRateLimit(t *testing.T) {
	ca := newCA(t, "ca")
	kp1, kp2 := ca.issue(t, "one", nil), ca.issue(t, "two", nil)
	dir := t.TempDir()
	f := writeSet(t, dir, kp1, ca.pem)
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}

	for _, tc := range []struct {
		interval, want time.Duration
	}{{0, time.Second}, {time.Minute, time.Minute}} {
		writeSet(t, dir, kp1, ca.pem)
		s, err := newSource(Config{Files: f, CheckInterval: tc.interval}, nil, clock.Now)
		if err != nil {
			t.Fatal(err)
		}
		leaf := func() []byte { return s.current().cert.Leaf.Raw }
		if !bytes.Equal(leaf(), kp1.cert.Raw) {
			t.Fatal("initial certificate not loaded")
		}
		writeSet(t, dir, kp2, ca.pem)
		clock.Advance(tc.want - time.Nanosecond)
		if !bytes.Equal(leaf(), kp1.cert.Raw) {
			t.Fatalf("interval %v: change seen before %v passed", tc.interval, tc.want)
		}
		clock.Advance(time.Nanosecond)
		if !bytes.Equal(leaf(), kp2.cert.Raw) {
			t.Fatalf("interval %v: change not seen after %v", tc.interval, tc.want)
		}
		// A check resets the window: an immediate change waits again.
		writeSet(t, dir, kp1, ca.pem)
		if !bytes.Equal(leaf(), kp2.cert.Raw) {
			t.Fatalf("interval %v: checked twice within one interval", tc.interval)
		}
	}
}

// TestWarnOncePerChange drives the reload logic directly: each distinct bad
// content is reported once, the good material stays, and the same bad
// content after a successful reload is reported again.
func TestWarnOncePerChange(t *testing.T) {
	ca := newCA(t, "ca")
	kp1, kp2 := ca.issue(t, "one", nil), ca.issue(t, "two", nil)
	f := writeSet(t, t.TempDir(), kp1, ca.pem)
	rec := &recorder{}
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	s, err := newSource(Config{Files: f, CheckInterval: time.Second}, slog.New(rec), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	tick := func() *material {
		clock.Advance(time.Second)
		return s.current()
	}
	want := func(step string, kp keyPair, warns, infos int) {
		t.Helper()
		if m := tick(); !bytes.Equal(m.cert.Leaf.Raw, kp.cert.Raw) {
			t.Errorf("%s: serving %q, want %q", step, m.cert.Leaf.Subject.CommonName, kp.cert.Subject.CommonName)
		}
		if w, i := rec.count(slog.LevelWarn), rec.count(slog.LevelInfo); w != warns || i != infos {
			t.Errorf("%s: %d warnings, %d infos, want %d, %d:\n%s", step, w, i, warns, infos, rec.dump())
		}
	}
	first := tick()
	want("unchanged", kp1, 0, 0)
	if tick() != first {
		t.Error("unchanged files produced a new material")
	}

	writeInPlace(t, f.Key, []byte("garbage"))
	for range 3 {
		want("garbage key", kp1, 1, 0)
	}
	writeInPlace(t, f.Key, nil)
	want("empty key", kp1, 2, 0)
	want("empty key again", kp1, 2, 0)
	if err := os.Remove(f.Key); err != nil {
		t.Fatal(err)
	}
	want("missing key", kp1, 3, 0)
	want("missing key again", kp1, 3, 0)

	writeSet(t, filepath.Dir(f.Cert), kp2, ca.pem)
	want("repaired", kp2, 3, 1)
	want("repaired again", kp2, 3, 1)

	writeInPlace(t, f.Key, []byte("garbage"))
	want("garbage key after repair", kp2, 4, 1)
}
