package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

const modelUsage = `usage: scopewatch model <subcommand> [flags]

Talks to a running daemon's HTTP API (http.listen; the bearer token of
http.token from --token or $SCOPEWATCH_HTTP_TOKEN).

subcommands:
  status     the serving model, the rollout's slots, stage and shadow evidence (GET /v1/model)
  rollback   serve the previous slot again (POST /v1/model/rollback); the
             version left is never taken again from an offer`

// runModel is `scopewatch model status|rollback`.
func runModel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "status" && args[0] != "rollback") {
		fmt.Fprintln(stderr, modelUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return flag.ErrHelp
		}
		return fmt.Errorf("%w: want model status or model rollback", errUsage)
	}
	sub := args[0]
	fs := newFlagSet("model "+sub, stderr)
	addr := fs.String("http", "http://127.0.0.1:8470", "the daemon's HTTP address (http.listen)")
	token := fs.String("token", os.Getenv("SCOPEWATCH_HTTP_TOKEN"), "bearer token (http.token)")
	by := fs.String("by", os.Getenv("USER"), "who rolls back, for the journal and the alert")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long (a rollback waits for images in flight)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %v", errUsage, fs.Args())
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	method, path := http.MethodGet, "/v1/model"
	if sub == "rollback" {
		method, path = http.MethodPost, "/v1/model/rollback?by="+url.QueryEscape(*by)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(*addr, "/")+path, nil)
	if err != nil {
		return fmt.Errorf("%w: --http: %v", errUsage, err)
	}
	if *token != "" {
		req.Header.Set("Authorization", "Bearer "+*token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("model %s: %w (is the daemon running, with http.enabled, on %s?)", sub, err, *addr)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("model %s: %w", sub, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("model %s: %s (HTTP %d)", sub, e.Error, resp.StatusCode)
		}
		return fmt.Errorf("model %s: HTTP %d: %s", sub, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	_, err = stdout.Write(body)
	return err
}
