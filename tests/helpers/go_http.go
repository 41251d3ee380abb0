// go_http: net/http for the seccomp back end's tests.
//
//	go_http serve ADDR          answer every request "hello REMOTE via LOCAL"
//	go_http get URL N [keep]    N requests (a new connection each unless keep), print bodies
//	go_http bench URL N [keep]  N requests, print the mean microseconds per request
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func serve(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	fmt.Println("listening", ln.Addr())
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		fmt.Fprintf(w, "hello %s via %s\n", r.RemoteAddr, local)
	})
	fmt.Println("error", http.Serve(ln, handler))
	os.Exit(2)
}

func client(keep bool) *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: !keep}, Timeout: 10 * time.Second}
}

func get(url string, n int, keep bool) {
	c := client(keep)
	for i := 0; i < n; i++ {
		resp, err := c.Get(url)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Print(string(body))
	}
}

func bench(url string, n int, keep bool) {
	c := client(keep)
	start := time.Now()
	for i := 0; i < n; i++ {
		resp, err := c.Get(url)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	fmt.Printf("%.2f\n", float64(time.Since(start).Microseconds())/float64(n))
}

func main() {
	if len(os.Args) >= 3 && os.Args[1] == "serve" {
		serve(os.Args[2])
	}
	if len(os.Args) >= 4 {
		n, _ := strconv.Atoi(os.Args[3])
		keep := len(os.Args) > 4 && os.Args[4] == "keep"
		switch os.Args[1] {
		case "get":
			get(os.Args[2], n, keep)
			return
		case "bench":
			bench(os.Args[2], n, keep)
			return
		}
	}
	fmt.Fprintln(os.Stderr, "usage: see the comment at the top")
	os.Exit(2)
}
