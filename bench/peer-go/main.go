// The Go peer for the receiver benchmark: what a performance-minded team would write with the
// standard library alone. net/http, the raw body kept for the HMAC (crypto/hmac, constant-time
// hmac.Equal), the key base64-decoded first and as text second (ens-api.md §6.3), then
// encoding/json into one map of raw fields per event (what code reading the event type
// would do), then 200.
//
//	peer-go KEYFILE [PATH]    # prints "listening on http://127.0.0.1:PORT"
package main

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
)

const maxBody = 8 << 20

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: peer-go KEYFILE [PATH]")
		os.Exit(2)
	}
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	keyText := strings.TrimSpace(strings.SplitN(string(text), "\n", 2)[0])
	keys := [][]byte{[]byte(keyText)}
	if decoded, err := base64.StdEncoding.DecodeString(keyText); err == nil {
		keys = [][]byte{decoded, []byte(keyText)}
	}
	path := "/ens/bench"
	if len(os.Args) > 2 {
		path = os.Args[2]
	}

	verified := func(body []byte, header string) bool {
		sig, err := base64.StdEncoding.DecodeString(header)
		if err != nil || len(sig) != sha256.Size {
			return false
		}
		for _, k := range keys {
			mac := hmac.New(sha256.New, k)
			mac.Write(body)
			if hmac.Equal(mac.Sum(nil), sig) {
				return true
			}
		}
		return false
	}

	mux := http.NewServeMux()
	mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			http.Error(w, "cannot read body", http.StatusRequestEntityTooLarge)
			return
		}
		if !verified(body, r.Header.Get("X-Sfmc-Ens-Signature")) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var events []map[string]json.RawMessage
		if err := json.Unmarshal(body, &events); err != nil {
			http.Error(w, "not a batch", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "listening on http://%s\n", ln.Addr())
	out.Flush()
	if err := http.Serve(ln, mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
