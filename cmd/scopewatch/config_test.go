package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if err := runConfig(context.Background(), []string{"default"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, out.Bytes(), 0o600)
	out.Reset()
	if err := runConfig(context.Background(), []string{"check", "--no-load", p}, &out, &errb); err != nil || !strings.Contains(out.String(), "ok") {
		t.Fatalf("default config refused: %v %s", err, out.String())
	}
	// Without --no-load the check opens the model it names: the installed
	// path of the default is not there in a checkout, and says so.
	if err := runConfig(context.Background(), []string{"check", p}, &out, &errb); err == nil || !strings.Contains(err.Error(), "/usr/share/scopewatch/models/default") {
		t.Fatalf("check of a config whose model is missing: %v", err)
	}
	os.WriteFile(p, []byte("slides:\n  target_cell: 1000\n"), 0o600)
	err := runConfig(context.Background(), []string{"check", p}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "slides.target_cell") || !strings.Contains(err.Error(), "target_cells") {
		t.Fatalf("bad config: %v", err)
	}
}

// The checkout's own configuration passes the full check (model and ONNX
// Runtime loaded) from the top of the source tree, as the README runs it.
func TestDevConfigLoadsFromACheckout(t *testing.T) {
	t.Chdir(repoRoot(t))
	var out, errb bytes.Buffer
	if err := runConfig(context.Background(), []string{"check", "systemd/dev.yaml"}, &out, &errb); err != nil || !strings.Contains(out.String(), "loads from models/default") {
		t.Fatalf("systemd/dev.yaml: %v %s", err, out.String())
	}
}
