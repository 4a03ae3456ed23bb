package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func schemaA(n int) Schema {
	steps := []Migration{
		{SQL: `CREATE TABLE a_items (id INTEGER PRIMARY KEY, v TEXT NOT NULL)`},
		{SQL: `ALTER TABLE a_items ADD COLUMN extra INTEGER NOT NULL DEFAULT 0`},
		{Func: func(ctx context.Context, tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO a_items(v) VALUES ('seed')`)
			return err
		}},
	}
	return Schema{Owner: "a", Migrations: steps[:n]}
}

func schemaB() Schema {
	return Schema{Owner: "b", Migrations: []Migration{
		{SQL: `CREATE TABLE b_parent (id INTEGER PRIMARY KEY); CREATE TABLE b_child (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES b_parent(id))`},
	}}
}

func userVersion(t *testing.T, db *sql.DB) int {
	t.Helper()
	var v int
	if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestOpenSettings(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "x.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for pragma, want := range map[string]string{
		"journal_mode": "wal", "synchronous": "2", "foreign_keys": "1", "busy_timeout": "10000",
	} {
		var got string
		if err := db.QueryRow("PRAGMA " + pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("PRAGMA %s = %s, want %s", pragma, got, want)
		}
	}
	if got := db.Stats().MaxOpenConnections; got != 1 {
		t.Errorf("max open connections = %d, want 1", got)
	}
}

func TestMigrationsIncremental(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "m.db")
	db, err := Open(ctx, path, Options{}, schemaA(1), schemaB())
	if err != nil {
		t.Fatal(err)
	}
	if v := userVersion(t, db); v != 2 {
		t.Fatalf("user_version = %d, want 2", v)
	}
	db.Close()

	// A newer binary adds steps for owner a only.
	db, err = Open(ctx, path, Options{}, schemaA(3), schemaB())
	if err != nil {
		t.Fatal(err)
	}
	if v := userVersion(t, db); v != 4 {
		t.Fatalf("user_version = %d, want 4", v)
	}
	vs, err := Versions(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if vs["a"] != 3 || vs["b"] != 1 {
		t.Fatalf("versions = %v", vs)
	}
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM a_items WHERE v='seed' AND extra=0`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("seed rows = %d, %v", n, err)
	}
	// Foreign keys enforced.
	if _, err := db.Exec(`INSERT INTO b_child(parent) VALUES (42)`); err == nil {
		t.Fatal("foreign key violation accepted")
	}
	db.Close()

	// Reopening is a no-op; an older binary is refused.
	db, err = Open(ctx, path, Options{}, schemaA(3), schemaB())
	if err != nil {
		t.Fatal(err)
	}
	if n := userVersion(t, db); n != 4 {
		t.Fatalf("user_version after reopen = %d", n)
	}
	db.Close()
	if _, err := Open(ctx, path, Options{}, schemaA(2)); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("older schema: err = %v, want ErrSchemaTooNew", err)
	}
}

func TestMigrationAtomic(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "atomic.db")
	bad := Schema{Owner: "c", Migrations: []Migration{{SQL: `CREATE TABLE c_ok (id INTEGER)`}, {SQL: `THIS IS NOT SQL`}}}
	if _, err := Open(ctx, path, Options{}, schemaA(1), bad); err == nil || !strings.Contains(err.Error(), `owner "c" step 2`) {
		t.Fatalf("err = %v, want failure naming owner c step 2", err)
	}
	db, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name IN ('a_items','c_ok')`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d tables survived a failed migration, want 0", n)
	}
}

func TestBadSchemas(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, ":memory:", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for name, ss := range map[string][]Schema{
		"empty owner": {{Owner: ""}},
		"duplicate":   {{Owner: "x"}, {Owner: "x"}},
		"both set":    {{Owner: "x", Migrations: []Migration{{SQL: "SELECT 1", Func: func(context.Context, *sql.Tx) error { return nil }}}}},
		"neither set": {{Owner: "x", Migrations: []Migration{{}}}},
	} {
		if err := Migrate(ctx, db, ss...); !errors.Is(err, ErrBadSchema) {
			t.Errorf("%s: err = %v, want ErrBadSchema", name, err)
		}
	}
}

func TestIntegrityAndSize(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	db, err := Open(ctx, path, Options{}, schemaA(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := IntegrityCheck(ctx, db); err != nil {
		t.Fatal(err)
	}
	before, err := Measure(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 4000)
	for i := 0; i < 100; i++ {
		if _, err := db.Exec(`INSERT INTO a_items(v) VALUES (?)`, big); err != nil {
			t.Fatal(err)
		}
	}
	after, err := Measure(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if after.UsedBytes-before.UsedBytes < 400_000 {
		t.Fatalf("used bytes grew by %d after 400 kB of rows", after.UsedBytes-before.UsedBytes)
	}
	if _, err := db.Exec(`DELETE FROM a_items`); err != nil {
		t.Fatal(err)
	}
	freed, _ := Measure(ctx, db)
	if freed.UsedBytes >= after.UsedBytes || freed.FileBytes != after.FileBytes {
		t.Fatalf("after delete: %+v, before delete %+v", freed, after)
	}
	if err := Checkpoint(ctx, db); err != nil {
		t.Fatal(err)
	}
	db.Close()

	// Corrupt a page in the middle of the file: integrity_check must notice.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 4096)
	for i := range junk {
		junk[i] = 0xA5
	}
	if _, err := f.WriteAt(junk, 2*after.PageSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
	db, err = sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := IntegrityCheck(ctx, db); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("integrity check on corrupted file: %v, want ErrCorrupt", err)
	}
}

func TestOpenReadOnly(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	if _, err := OpenReadOnly(path, Options{}); err == nil {
		t.Fatal("read-only open of a missing file succeeded")
	}
	w, err := Open(ctx, path, Options{}, schemaA(1))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r, err := OpenReadOnly(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := w.Exec(`INSERT INTO a_items(v) VALUES ('w')`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := r.QueryRow(`SELECT COUNT(*) FROM a_items`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("reader sees %d rows, %v", n, err)
	}
	if _, err := r.Exec(`INSERT INTO a_items(v) VALUES ('r')`); err == nil {
		t.Fatal("read-only pool accepted a write")
	}
}

// TestIsFull: a database that may not grow past max_page_count fails with
// SQLITE_FULL, which IsFull recognises; other errors are not "full".
func TestIsFull(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "f.db"), Options{}, schemaA(1))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var pages int
	if err := db.QueryRow(`PRAGMA page_count`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(fmt.Sprintf(`PRAGMA max_page_count = %d`, pages+4)); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 4000)
	var full error
	for i := 0; i < 100 && full == nil; i++ {
		_, full = db.Exec(`INSERT INTO a_items(v) VALUES (?)`, big)
	}
	if !IsFull(full) {
		t.Fatalf("insert into a capped database: %v, want IsFull", full)
	}
	if !IsFull(fmt.Errorf("enqueue: %w", full)) {
		t.Fatal("IsFull does not look through wrapping")
	}
	_, other := db.Exec(`INSERT INTO no_such_table(v) VALUES (1)`)
	if other == nil || IsFull(other) || IsFull(nil) || IsFull(errors.New("full")) {
		t.Fatalf("IsFull true for an error that is not SQLITE_FULL: %v", other)
	}
}
