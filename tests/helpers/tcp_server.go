// tcp_server: listens on the TCP address in its last argument, reports it and exits; for the
// tests that unixify refuses Go programs (which make their own system calls).
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	listener, err := net.Listen("tcp", os.Args[len(os.Args)-1])
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	fmt.Println("listening", listener.Addr())
	listener.Close()
}
