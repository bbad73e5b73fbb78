package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// printer writes the demo's output: progress steps ("starting x... ok"),
// shell-like commands run in pods with their output, and plain lines. Once
// the demo is interrupted it falls silent, so that the goroutine still
// finishing a step cannot scribble over the cleanup messages.
type printer struct {
	mu    sync.Mutex
	w     io.Writer
	open  bool // a step line awaits its "ok"
	muted bool
}

func newPrinter(w io.Writer) *printer { return &printer{w: w} }

// step prints "what... " and returns a function that completes the line
// with "ok" and the time taken.
func (p *printer) step(format string, args ...any) func() {
	start := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.muted {
		return func() {}
	}
	p.endLine()
	fmt.Fprintf(p.w, format+"... ", args...)
	p.open = true
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.muted || !p.open {
			return
		}
		if d := time.Since(start); d >= time.Second {
			fmt.Fprintf(p.w, "ok (%s)\n", d.Round(100*time.Millisecond))
		} else {
			fmt.Fprintln(p.w, "ok")
		}
		p.open = false
	}
}

// linef prints one line.
func (p *printer) linef(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.muted {
		return
	}
	p.endLine()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// command shows a command as typed at a prompt in pod, then its output
// indented under it.
func (p *printer) command(pod, cmdline string) {
	p.linef("   %s$ %s", pod, cmdline)
}

// output prints text indented as a command's output.
func (p *printer) output(text string) {
	text = strings.TrimRight(text, "\n")
	if text == "" {
		return
	}
	for _, l := range strings.Split(text, "\n") {
		p.linef("     %s", l)
	}
}

// failed ends an open step line with FAILED.
func (p *printer) failed() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open && !p.muted {
		fmt.Fprintln(p.w, "FAILED")
		p.open = false
	}
}

// interrupted announces the signal and mutes everything after it.
func (p *printer) interrupted(sig os.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.muted {
		return
	}
	p.endLine()
	fmt.Fprintf(p.w, "interrupted (%v): stopping everything\n", sig)
	p.muted = true
}

func (p *printer) endLine() {
	if p.open {
		fmt.Fprintln(p.w)
		p.open = false
	}
}
