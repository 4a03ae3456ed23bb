package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A daemon started by hand has no systemd StateDirectory to create its
// folder; opening the store must make it rather than fail.
func TestOpenServeStoreCreatesStateDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "nested", "scopewatch.db")
	s, err := openServeStore(context.Background(), path, time.Now)
	if err != nil {
		t.Fatalf("open store in a missing folder: %v", err)
	}
	t.Cleanup(func() { s.db.Close() })
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		t.Errorf("state folder mode %v lets others in", perm)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database file: %v", err)
	}
}
