// echo: a net/http server for ipvsca's tests. It prints "ready" once listening, then for
// every request the client address Go reports (r.RemoteAddr, from accept4), and answers
// it with the same. Built with CGO_ENABLED=0: static, issuing its syscalls without libc.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
)

func main() {
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	handler := func(w http.ResponseWriter, r *http.Request) {
		fmt.Println(r.RemoteAddr)
		fmt.Fprintln(w, r.RemoteAddr)
	}
	if err := http.Serve(ln, http.HandlerFunc(handler)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
