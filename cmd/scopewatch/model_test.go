package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestModelCommand: status and rollback reach the daemon's routes with
// the token, print the answer, and turn the daemon's error into a message
// and a non-zero exit.
func TestModelCommand(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Authorization"))
		switch r.URL.Path {
		case "/v1/model":
			w.Write([]byte(`{"model_version":"v1"}`))
		case "/v1/model/rollback":
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte(`{"error":"no previous model to roll back to","reason":"no_previous_model"}`))
		}
	}))
	defer srv.Close()
	for _, c := range []struct {
		args       []string
		code       int
		out, errs  string
		wantRouted string
	}{
		{[]string{"model", "status", "--http", srv.URL, "--token", "tok"}, 0, `"model_version":"v1"`, "", "GET /v1/model Bearer tok"},
		{[]string{"model", "rollback", "--http", srv.URL, "--by", "ana"}, 1, "", "no previous model to roll back to (HTTP 409)", "POST /v1/model/rollback?by=ana "},
		{[]string{"model"}, 2, "", "want model status or model rollback", ""},
	} {
		got = nil
		var out, errs bytes.Buffer
		code := run(context.Background(), c.args, &out, &errs)
		if code != c.code || !strings.Contains(out.String(), c.out) || !strings.Contains(errs.String(), c.errs) {
			t.Errorf("%v: exit %d, out %q, err %q", c.args, code, out.String(), errs.String())
		}
		if c.wantRouted != "" && (len(got) != 1 || got[0] != c.wantRouted) {
			t.Errorf("%v: requests %q, want %q", c.args, got, c.wantRouted)
		}
	}
}
