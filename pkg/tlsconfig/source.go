package tlsconfig

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// maxFileSize guards against a path that points at something endless
// (/dev/zero) or huge; real PEM files and CA bundles are far smaller.
const maxFileSize = 4 << 20

// source hands out the current material and reloads it from the files when
// their content changed.
//
// Change detection compares a hash of the file contents rather than
// (inode, size, mtime): the files are tiny and are only read on a handshake
// at most once per interval, and content never misses an in-place rewrite
// that keeps the size within one mtime tick (ECDSA keys always have the same
// size). Reads follow symlinks, so a Kubernetes ..data swap is seen as new
// content. Hashing exactly the bytes that get parsed also avoids a race
// between checking and reading.
type source struct {
	files    Files
	interval time.Duration
	now      func() time.Time
	log      *slog.Logger

	mu        sync.Mutex
	nextCheck time.Time
	cur       *material
	curSum    [sha256.Size]byte
	// badSum is the content last rejected, so that a broken rotation is
	// logged once and not on every handshake until someone fixes it.
	badSum [sha256.Size]byte
	hasBad bool
}

func newSource(cfg Config, log *slog.Logger, now func() time.Time) (*source, error) {
	f := cfg.Files
	if f.Cert == "" || f.Key == "" || f.CA == "" {
		return nil, fmt.Errorf("%w: Files.Cert, Files.Key and Files.CA are all required", ErrInvalidConfig)
	}
	if cfg.CheckInterval < 0 {
		return nil, fmt.Errorf("%w: negative CheckInterval %v", ErrInvalidConfig, cfg.CheckInterval)
	}
	interval := cfg.CheckInterval
	if interval == 0 {
		interval = defaultCheckInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &source{files: f, interval: interval, now: now, log: log}

	c := s.read()
	m, err := c.parse()
	if err != nil {
		return nil, fmt.Errorf("tlsconfig: load %s, %s, %s: %w", f.Cert, f.Key, f.CA, err)
	}
	s.cur, s.curSum = m, c.sum()
	s.nextCheck = now().Add(interval)
	return s, nil
}

// current returns the material to use for a handshake. It never fails: at
// worst it returns the last material that loaded.
func (s *source) current() *material {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.Before(s.nextCheck) {
		return s.cur
	}
	s.nextCheck = now.Add(s.interval)

	c := s.read()
	sum := c.sum()
	if sum == s.curSum || (s.hasBad && sum == s.badSum) {
		return s.cur
	}
	m, err := c.parse()
	if err != nil {
		s.badSum, s.hasBad = sum, true
		s.log.Warn("tls files changed but do not load, keeping previous certificates",
			"cert_file", s.files.Cert, "key_file", s.files.Key, "ca_file", s.files.CA, "err", err)
		return s.cur
	}
	s.cur, s.curSum, s.hasBad = m, sum, false
	s.log.Info("tls certificates reloaded",
		"cert_file", s.files.Cert, "ca_file", s.files.CA,
		"subject", m.cert.Leaf.Subject.String(), "not_after", m.cert.Leaf.NotAfter, "ca_count", m.caCount)
	return s.cur
}

// contents is one read of the three files.
type contents struct {
	cert, key, ca          []byte
	certErr, keyErr, caErr error
}

func (s *source) read() contents {
	var c contents
	c.cert, c.certErr = readFile(s.files.Cert)
	c.key, c.keyErr = readFile(s.files.Key)
	c.ca, c.caErr = readFile(s.files.CA)
	return c
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxFileSize)
	}
	return b, nil
}

// sum fingerprints the read, errors included, so that a file that stays
// missing is reported once, and one that comes back is retried.
func (c contents) sum() [sha256.Size]byte {
	h := sha256.New()
	for _, part := range []struct {
		b   []byte
		err error
	}{{c.cert, c.certErr}, {c.key, c.keyErr}, {c.ca, c.caErr}} {
		data, tag := part.b, byte('d')
		if part.err != nil {
			data, tag = []byte(part.err.Error()), 'e'
		}
		var hdr [9]byte
		hdr[0] = tag
		binary.BigEndian.PutUint64(hdr[1:], uint64(len(data)))
		h.Write(hdr[:])
		h.Write(data)
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

func (c contents) parse() (*material, error) {
	if err := errors.Join(c.certErr, c.keyErr, c.caErr); err != nil {
		return nil, err
	}
	return parseMaterial(c.cert, c.key, c.ca)
}
