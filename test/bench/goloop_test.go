package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// The reference loop must carry what a proxy carries, or its figures mean
// nothing: 4 MiB of random bytes each way at once, through a slow reader
// (the loop's buffer for a full destination), then the half-close, on 8
// connections together (on goloop2 the kernel spreads them over its two
// loops).
func TestGoLoopCarriesBytes(t *testing.T) {
	for _, role := range []string{roleLoop, roleLoop2} {
		t.Run(role, func(t *testing.T) { testLoopCarriesBytes(t, role) })
	}
}

func testLoopCarriesBytes(t *testing.T, role string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serve(ln, func(c *net.TCPConn) { // echo, then end when the client does
		defer c.Close()
		io.Copy(c, c)
		c.CloseWrite()
	})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := systemSetup{self: self}.goProxy(role, role)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	in, err := s.start(ctx, t.TempDir(), backends{Echo: ln.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := in.stop(); err != nil {
			t.Error(err)
		}
	}()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", in.Small)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(50 * time.Second))
			sent := make([]byte, 4<<20)
			rand.Read(sent)
			go func() {
				c.Write(sent)
				c.(*net.TCPConn).CloseWrite()
			}()
			var got bytes.Buffer
			chunk := make([]byte, 1000)
			for {
				n, err := c.Read(chunk)
				got.Write(chunk[:n])
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Errorf("after %d bytes: %v", got.Len(), err)
					return
				}
				if got.Len() < 1<<20 {
					time.Sleep(50 * time.Microsecond) // slow at first: the loop holds what the app cannot take
				}
			}
			if !bytes.Equal(got.Bytes(), sent) {
				t.Errorf("got %d bytes back, not the %d sent", got.Len(), len(sent))
			}
		}()
	}
	wg.Wait()
}
