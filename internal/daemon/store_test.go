package daemon

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/scopewatch/scopewatch/internal/store"
)

// A daemon started by hand has no systemd StateDirectory to create its
// folder; opening the store must make it rather than fail.
func TestOpenServeStoreCreatesStateDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "nested", "scopewatch.db")
	db, err := openServeDB(context.Background(), path)
	if err != nil {
		t.Fatalf("open store in a missing folder: %v", err)
	}
	t.Cleanup(func() { db.Close() })
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

// A database from before the one outbox keeps what it had not relayed:
// migration 3 hands serve_outbox's unsent rows to the outbox, alerts as
// alerts, and drops the table.
func TestServeOutboxMovesToTheOneOutbox(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "scopewatch.db")
	old := store.Schema{Owner: serveSchema.Owner, Migrations: serveSchema.Migrations[:2]}
	db, err := store.Open(ctx, path, store.Options{}, old)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO serve_outbox(id, topic, payload, priority, created_at, relayed_at) VALUES ('result/s1-1', 'scopewatch/v1/lab/dev/result', x'7b7d', 1, 1, NULL)`,
		`INSERT INTO serve_outbox(id, topic, payload, priority, created_at, relayed_at) VALUES ('alert/a1', 'scopewatch/v1/lab/dev/alert', x'7b7d', 0, 2, NULL)`,
		`INSERT INTO serve_outbox(id, topic, payload, priority, created_at, relayed_at) VALUES ('result/s0-1', 'scopewatch/v1/lab/dev/result', x'7b7d', 1, 0, 5)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	db, err = openServeDB(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT id, kind FROM feedback_outbox ORDER BY priority, seq`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var id, kind string
		rows.Scan(&id, &kind)
		got = append(got, id+" "+kind)
	}
	rows.Close()
	if want := []string{"alert/a1 alert", "result/s1-1 result"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("moved %v, want %v (the relayed row stays behind)", got, want)
	}
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = 'serve_outbox'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("serve_outbox still there (%d, %v)", n, err)
	}
}
