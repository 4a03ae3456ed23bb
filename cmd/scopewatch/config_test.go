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
	if err := runConfig(context.Background(), []string{"check", p}, &out, &errb); err != nil || !strings.Contains(out.String(), "ok") {
		t.Fatalf("default config refused: %v %s", err, out.String())
	}
	os.WriteFile(p, []byte("slides:\n  target_cell: 1000\n"), 0o600)
	err := runConfig(context.Background(), []string{"check", p}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "slides.target_cell") || !strings.Contains(err.Error(), "target_cells") {
		t.Fatalf("bad config: %v", err)
	}
}
