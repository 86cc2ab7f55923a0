// echo_go.go - bench_echo's Go peer: a server on Go's net package, one
// goroutine per connection, that sends back whatever each connection sends,
// upper-cased (ASCII), until the client closes.
//
// usage: echo_go PORT      (0: the kernel picks one)
//
// Listens on 127.0.0.1 (Go's listen backlog is the system's somaxconn) and
// prints "listening on 127.0.0.1:PORT" once it accepts connections.  Each
// goroutine reads into its own buffer, upper-cases it in place and writes it
// back whole (net.Conn.Write writes everything or fails).  The runtime's
// netpoller (epoll) parks a goroutine whose socket has nothing to read.
// GOMAXPROCS follows the CPUs the process may run on (bench_echo pins it to
// one).  Runs until killed.
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
)

func serve(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 16384)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			b := buf[:n]
			for i, ch := range b {
				if ch >= 'a' && ch <= 'z' {
					b[i] = ch - 'a' + 'A'
				}
			}
			if _, werr := c.Write(b); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func main() {
	port := -1
	if len(os.Args) == 2 {
		if p, err := strconv.Atoi(os.Args[1]); err == nil && p >= 0 && p <= 65535 {
			port = p
		}
	}
	if port < 0 {
		fmt.Fprintln(os.Stderr, "usage: echo_go PORT")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo_go: listen:", err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", ln.Addr().String())
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		go serve(c)
	}
}
