package storetest

import (
	"fmt"
	"os"
	"testing"

	"github.com/scopewatch/scopewatch/internal/store"
)

// recorder is a testing.TB that keeps what Errorf was told.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *recorder) Helper() {}

func TestCheckFindsCorruption(t *testing.T) {
	path := t.TempDir() + "/c.db"
	schema := store.Schema{Owner: "t", Migrations: []store.Migration{{SQL: `CREATE TABLE x (id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX x_v ON x(v);`}}}
	db := Open(t, path, schema)
	for i := range 2000 {
		if _, err := db.Exec(`INSERT INTO x(v) VALUES (?)`, fmt.Sprintf("value-%06d-%s", i, "padding padding padding")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	good := &recorder{TB: t}
	Check(good, db)
	if len(good.errs) != 0 {
		t.Fatalf("a sound database failed: %v", good.errs)
	}

	// Overwrite part of a page in the middle of the file, as a torn write
	// on a bad card would.
	bad := t.TempDir() + "/bad.db"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(data) / 2; i < len(data)/2+600; i++ {
		data[i] = 0xA5
	}
	if err := os.WriteFile(bad, data, 0o600); err != nil {
		t.Fatal(err)
	}
	rdb := OpenReadOnly(t, bad)
	rec := &recorder{TB: t}
	Check(rec, rdb)
	if len(rec.errs) == 0 {
		t.Fatal("a corrupted database passed its integrity check")
	}
}
