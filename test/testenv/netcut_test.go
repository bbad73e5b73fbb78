package testenv

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestFaultNetCut(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			conn, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(conn, conn); conn.Close() }()
		}
	}()
	c := StartNetCut(t, "", echo.Addr().String())
	roundTrip := func(conn net.Conn) error {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(conn, buf); err != nil {
			return err
		}
		if string(buf) != "ping" {
			return errors.New("garbled: " + string(buf))
		}
		return nil
	}
	open, err := net.Dial("tcp", c.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := roundTrip(open); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	c.Cut()
	if err := roundTrip(open); err == nil {
		t.Fatal("an open connection survived Cut")
	}
	if conn, err := net.DialTimeout("tcp", c.Addr, time.Second); err == nil {
		conn.Close()
		t.Fatal("a new connection was accepted after Cut")
	}
	c.Restore(t)
	again, err := net.Dial("tcp", c.Addr)
	if err != nil {
		t.Fatalf("dial after Restore: %v", err)
	}
	defer again.Close()
	if err := roundTrip(again); err != nil {
		t.Fatalf("after Restore: %v", err)
	}
}
